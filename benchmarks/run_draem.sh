#!/usr/bin/env bash
# Reproduce the DRAEM CPU benchmark tables in benchmarks/results/ (see benchmarks/README.md and notes/draem.md).
# Every timed run holds the shared lock so two timed runs never overlap. Usage:
#   bash benchmarks/run_draem.sh [MINUTES] [PRESET]        (defaults: 5 cpu)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes="${1:-5}"
preset="${2:-cpu}"
source benchmarks/common.sh
bench() { locked_bench --models draem --preset "$preset" --minutes "$minutes" --name draem --tag target "$@"; }

# 1) targets: 20 shots; bottle and tire over 3 seeds, magnetic tile and AITEX one seed
bench --categories mvtec_ad/bottle mvtec3d_ad/tire --shots 20 --seeds 0
bench --categories magnetic_tile/magnetic_tile aitex/fabric01 --shots 20 --seeds 0
bench --categories mvtec_ad/bottle mvtec3d_ad/tire --shots 20 --seeds 1 2
# 2) few-shot curve (one seed)
bench --categories mvtec_ad/bottle mvtec3d_ad/tire --shots 10 50 --seeds 0 --name draem_shots
