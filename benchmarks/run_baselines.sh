#!/usr/bin/env bash
# Benchmark rows for the three baselines (autoencoder, GANomaly, AAE + Hotelling's T²), CPU preset.
# Every timed run holds the shared lock /tmp/recon-bench.lock (one hold per phase: the lock is busy, so fewer
# waits). Rows are appended to benchmarks/results/baselines.{csv,json,md}. Python: $PYTHON, else `python` on PATH.
#
#   bash benchmarks/run_baselines.sh            # all phases, in the order a0 c a12 b
#   bash benchmarks/run_baselines.sh a0 a12     # 20 good images x seed 0 / seeds 1 2, every category
#   bash benchmarks/run_baselines.sh b b12      # 50 good images x seed 0 / seeds 1 2, every category
#   bash benchmarks/run_baselines.sh c          # AAE with 1 and 5 labelled defects (tire, fabric01), seeds 0 1 2
#                                               # (0 labelled defects = the a0/a12 rows)
#
# Budgets are ITERATIONS, not minutes, so the amount of training does not depend on the machine's load; each run
# trains for ~10-45 s on 2 cores. Since seeded starting weights (2026-12-02) a row is bit-reproducible for one seed,
# iteration count, thread count and CPU (rows before that date varied run to run: notes/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export PY="${PYTHON:-python}" OUT=${OUT:-benchmarks/results} NAME=${NAME:-baselines}
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # idle OpenMP threads sleep (big win on a shared 2-core CPU)
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
phase_b12() { bench_all 50 1 2; }  # 50 good images, seeds 1 and 2

phase_c() {  # AAE with 1 and 5 real defect images (seeded choice from the test split, removed from evaluation)
  flock "$LOCK" "$PY" -m recon_core bench --models aae --categories mvtec3d_ad/tire aitex/fabric01 --shots 20 \
    --labelled-defects 1 5 --seeds 0 1 2 --iterations "$ITERS_aae" --preset cpu --out "$OUT" --name "$NAME" \
    --tag baselines
}

phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(a0 c a12 b)
for p in "${phases[@]}"; do "phase_$p"; done
