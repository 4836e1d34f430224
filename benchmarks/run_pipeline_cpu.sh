#!/usr/bin/env bash
# Issue 15, CPU figures: DRAEM `cpu` preset steps/s through train.fit before the data pipeline (a checkout of
# e7a09cd, batches made inline) and after it with 0, 1 and 2 data workers; 10 timed iterations after a 2-iteration
# warm-up, 2 threads, load average recorded. Holds the shared bench lock. Usage (from the repo root):
#   git worktree add /tmp/recon-before e7a09cd && bash benchmarks/run_pipeline_cpu.sh /tmp/recon-before [ROUNDS]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
before="${1:?path of a checkout of e7a09cd}"
rounds="${2:-1}"
out="$PWD/benchmarks/results/pipeline_cpu.jsonl"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
cp benchmarks/train_speed.py "$before/benchmarks/train_speed.py"  # it measures older fit versions too
speed=(--model draem --presets cpu --iterations 10 --threads 2 --json "$out")
for round in $(seq "$rounds"); do
  (cd "$before" && flock /tmp/recon-bench.lock env PYTHONPATH=. python benchmarks/train_speed.py "${speed[@]}" \
    --tag "before e7a09cd round $round")
  flock /tmp/recon-bench.lock env PYTHONPATH=. python benchmarks/train_speed.py "${speed[@]}" --workers 0 1 2 \
    --tag "after round $round"
done
