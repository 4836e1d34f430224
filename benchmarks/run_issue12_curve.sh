#!/usr/bin/env bash
# Issue 12's rows: K = 0/1/5 real defects, `cpu` preset, 20 goods, a fixed BUDGET: an iteration count (1330 = DRAEM's
# 10 min on a quiet 2-core machine; a busy machine replays the same iterations and gets the same accuracy) or minutes
# ("10min": DSR, whose three stages are planned on time; each row records the iterations it ran). One `bench` call
# per (seed, K, category), in priority order, so an interrupted queue leaves the most useful rows first; rows already
# in the results are skipped (SKIP_DONE=0 reruns them). Rows go to benchmarks/results/issue12.{csv,json,md}.
#
#   bash benchmarks/run_issue12_curve.sh [BUDGET=1330] [SEEDS="0 1 2"]
#   MODEL=draem PRESET=cpu CATEGORIES="mvtec3d_ad/tire magnetic_tile/magnetic_tile" KS="5 0 1" (defaults)
#   SYNTH='{"foreground": "off"}'   a defect-design variant (bench --synth-config), kept apart by its overrides
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
budget="${1:-1330}"
shift || true
seeds="${*:-0 1 2}"
model="${MODEL:-draem}"
preset="${PRESET:-cpu}"
categories="${CATEGORIES:-mvtec3d_ad/tire magnetic_tile/magnetic_tile}"
ks="${KS:-5 0 1}"
synth="${SYNTH:-}"
if [[ "$budget" == *min ]]; then budget_args=(--minutes "${budget%min}"); else budget_args=(--iterations "$budget"); fi
synth_args=()
overrides=""
if [ -n "$synth" ]; then
  synth_args=(--synth-config "$synth")
  overrides="{\"synth\": $synth}"
fi
for seed in $seeds; do
  for k in $ks; do
    for category in $categories; do
      if [ "${SKIP_DONE:-1}" = "1" ] && "$py" benchmarks/has_row.py benchmarks/results/issue12.json "$model" "$category" "$k" "$seed" "$budget" \
        --overrides "$overrides" --preset "$preset"; then
        echo "[skip] $model $preset $category K=$k seed $seed $budget ${synth}: row exists"; continue
      fi
      echo "[run] $model $preset $category K=$k seed $seed $budget ${synth} ($(date -u +%H:%M))"
      locked_bench --models "$model" --categories "$category" --shots 20 --seeds "$seed" "${budget_args[@]}" \
        --labelled-defects "$k" --preset "$preset" --name issue12 "${synth_args[@]}" \
        --tag "issue12 (foreground auto, map normalisation auto unless overridden), K=$k, $budget = 10 min quiet"
    done
  done
done
