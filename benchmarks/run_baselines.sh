#!/usr/bin/env bash
# Benchmark rows for the three baselines (autoencoder, GANomaly, AAE + Hotelling's T²), CPU preset.
# Every timed run takes the shared lock /tmp/recon-bench.lock (one model's runs per hold, so other engineers'
# runs can interleave between models). Rows are appended to benchmarks/results/baselines.{csv,json,md}.
#
#   bash benchmarks/run_baselines.sh            # all phases
#   bash benchmarks/run_baselines.sh a          # 20 good images x seeds 0 1 2, every category
#   bash benchmarks/run_baselines.sh b          # 50 good images x seed 0, every category
#   bash benchmarks/run_baselines.sh c          # AAE with 1 and 5 labelled defects (tire, fabric01), seeds 0 1 2
#                                               # (0 labelled defects = the phase-a rows)
#
# Budgets are ITERATIONS, not minutes, so a re-run reproduces the same numbers whatever else the machine is
# doing (only the times change); they are chosen so each run trains for ~20-30 s on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/root/.cache/recon-studio/venv-d3e63a945700/bin:$PATH"
PY=${PY:-python}
OUT=${OUT:-benchmarks/results}
NAME=${NAME:-baselines}
LOCK=/tmp/recon-bench.lock
CATEGORIES=(mvtec_ad/bottle mvtec3d_ad/tire magnetic_tile/magnetic_tile aitex/fabric01)
declare -A ITERS=([autoencoder]=300 [ganomaly]=400 [aae]=800)

bench() {  # model shots seeds...  (every category, one lock hold per model: ~5 min)
  local model=$1 shots=$2
  shift 2
  flock "$LOCK" "$PY" -m recon_core bench --models "$model" --categories "${CATEGORIES[@]}" --shots "$shots" \
    --seeds "$@" --iterations "${ITERS[$model]}" --preset cpu --out "$OUT" --name "$NAME" --tag "baselines"
}

phase_a() {
  for model in autoencoder ganomaly aae; do bench "$model" 20 0 1 2; done
}

phase_b() {
  for model in autoencoder ganomaly aae; do bench "$model" 50 0; done
}

phase_c() {  # RunSpec.labelled_defects through the same bench runner (its run-spec seam); k shown as 'overrides'
  for category in mvtec3d_ad/tire aitex/fabric01; do
    for k in 1 5; do
      flock "$LOCK" "$PY" - "$category" "$k" "${ITERS[aae]}" "$OUT" "$NAME" <<'EOF'
import functools
import sys

import recon_core.bench as bench
from recon_core.bundle import load_bundle
from recon_core.runs import RunSpec, execute_run

category, k, iterations, out, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
bench._run_api = lambda: (functools.partial(RunSpec, labelled_defects=k), execute_run, load_bundle)
run_one = bench.run_one  # the "overrides" column keeps these rows apart from the 0-labelled ones in the summary
bench.run_one = lambda *a, **kw: {**run_one(*a, **kw), "overrides": f"labelled_defects={k}"}
cfg = bench.BenchConfig(models=["aae"], categories=[category], shots=[20], seeds=[0, 1, 2], iterations=iterations,
                        preset="cpu", out_dir=out, name=name, tag=f"baselines labelled_defects={k}")
bench.run_bench(cfg)
EOF
    done
  done
}

phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(a b c)
for p in "${phases[@]}"; do "phase_$p"; done
