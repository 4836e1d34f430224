#!/usr/bin/env bash
# Reproduce the DSR CPU benchmark table benchmarks/results/dsr.* (see benchmarks/README.md and notes/dsr.md).
# Every timed run holds the shared lock so two timed runs never overlap. Usage:
#   bash benchmarks/run_dsr.sh [MINUTES] [PRESET] [SEEDS...]     (defaults: 10 cpu 0)
#   CATEGORIES="magnetic_tile/magnetic_tile aitex/fabric01" bash benchmarks/run_dsr.sh 10 cpu 1 2
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes="${1:-10}"
preset="${2:-cpu}"
seeds=("${@:3}")
[ ${#seeds[@]} -eq 0 ] && seeds=(0)
source benchmarks/common.sh
categories=${CATEGORIES:-"mvtec3d_ad/tire mvtec_ad/bottle magnetic_tile/magnetic_tile aitex/fabric01"}
for category in $categories; do
  locked_bench --models dsr --preset "$preset" --minutes "$minutes" --categories "$category" --shots 20 \
    --seeds "${seeds[@]}" --name dsr --tag target
done
