#!/usr/bin/env bash
# Issue 12's K = 0/1/5 real-defect curve: DRAEM `cpu`, 20 goods, fixed ITERATIONS (1330 = 10 min on a quiet 2-core
# machine; a busy machine replays the same iterations and gets the same accuracy). One `bench` call per
# (seed, category, K), in priority order, so an interrupted queue leaves the most useful rows first.
# Rows go to benchmarks/results/issue12.{csv,json,md}.
#
#   bash benchmarks/run_issue12_curve.sh [ITERATIONS=1330] [SEEDS="0 1 2"]
#   CATEGORIES="mvtec3d_ad/tire magnetic_tile/magnetic_tile" KS="5 0 1" (defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
iterations="${1:-1330}"
shift || true
seeds="${*:-0 1 2}"
categories="${CATEGORIES:-mvtec3d_ad/tire magnetic_tile/magnetic_tile}"
ks="${KS:-5 0 1}"
for seed in $seeds; do
  for k in $ks; do
    for category in $categories; do
      if [ "${SKIP_DONE:-1}" = "1" ] && "$py" benchmarks/has_row.py benchmarks/results/issue12.json draem "$category" "$k" "$seed" "$iterations"; then
        echo "[skip] $category K=$k seed $seed: row exists"; continue
      fi
      echo "[run] $category K=$k seed $seed $iterations it ($(date -u +%H:%M))"
      locked_bench --models draem --categories "$category" --shots 20 --seeds "$seed" --iterations "$iterations" \
        --labelled-defects "$k" --preset cpu --name issue12 \
        --tag "issue12 K-curve (foreground auto, map normalisation auto), K=$k, $iterations it = 10 min quiet"
    done
  done
done
