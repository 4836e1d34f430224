#!/usr/bin/env bash
# Benchmark rows for the three baselines (autoencoder, GANomaly, AAE + Hotelling's T²), CPU preset.
# Every timed run holds the shared lock /tmp/recon-bench.lock (one hold per phase: the lock is busy, so fewer
# waits). Rows are appended to benchmarks/results/baselines.{csv,json,md}.
#
#   bash benchmarks/run_baselines.sh            # all phases, in the order a0 c a12 b
#   bash benchmarks/run_baselines.sh a0 a12     # 20 good images x seed 0 / seeds 1 2, every category
#   bash benchmarks/run_baselines.sh b          # 50 good images x seed 0, every category
#   bash benchmarks/run_baselines.sh c          # AAE with 1 and 5 labelled defects (tire, fabric01), seeds 0 1 2
#                                               # (0 labelled defects = the a0/a12 rows)
#
# Budgets are ITERATIONS, not minutes, so a re-run reproduces the same metrics whatever else the machine is
# doing (only the times change); each run trains for ~15-25 s on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/root/.cache/recon-studio/venv-d3e63a945700/bin:$PATH"
export PY=${PY:-python} OUT=${OUT:-benchmarks/results} NAME=${NAME:-baselines}
LOCK=${LOCK:-/tmp/recon-bench.lock}
export CATEGORIES=${CATEGORIES:-"mvtec_ad/bottle mvtec3d_ad/tire magnetic_tile/magnetic_tile aitex/fabric01"}
export ITERS_autoencoder=${ITERS_autoencoder:-250} ITERS_ganomaly=${ITERS_ganomaly:-300} ITERS_aae=${ITERS_aae:-600}

bench_all() {  # shots seeds...  -- the three models in ONE lock hold
  flock "$LOCK" bash -c '
    shots=$1; shift
    for m in autoencoder ganomaly aae; do
      iters=ITERS_$m
      # shellcheck disable=SC2086
      "$PY" -m recon_core bench --models "$m" --categories $CATEGORIES --shots "$shots" --seeds "$@" \
        --iterations "${!iters}" --preset cpu --out "$OUT" --name "$NAME" --tag baselines
    done' bench_all "$@"
}

phase_a0() { bench_all 20 0; }     # 20 good images, seed 0
phase_a12() { bench_all 20 1 2; }  # 20 good images, seeds 1 and 2
phase_b() { bench_all 50 0; }      # 50 good images, seed 0

phase_c() {  # AAE + RunSpec.labelled_defects through the same bench runner (its run-spec seam); k in "overrides"
  flock "$LOCK" "$PY" - "$ITERS_aae" "$OUT" "$NAME" <<'PYEOF'
import functools
import sys

import recon_core.bench as bench
from recon_core.bundle import load_bundle
from recon_core.runs import RunSpec, execute_run

iterations, out, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
run_one = bench.run_one
for category in ("mvtec3d_ad/tire", "aitex/fabric01"):
    for k in (1, 5):
        bench._run_api = lambda k=k: (functools.partial(RunSpec, labelled_defects=k), execute_run, load_bundle)
        # the "overrides" column keeps these rows apart from the 0-labelled ones in the summary
        bench.run_one = lambda *a, k=k, **kw: {**run_one(*a, **kw), "overrides": f"labelled_defects={k}"}
        cfg = bench.BenchConfig(models=["aae"], categories=[category], shots=[20], seeds=[0, 1, 2],
                                iterations=iterations, preset="cpu", out_dir=out, name=name,
                                tag=f"baselines labelled_defects={k}")
        bench.run_bench(cfg)
PYEOF
}

phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(a0 c a12 b)
for p in "${phases[@]}"; do "phase_$p"; done
