#!/usr/bin/env bash
# DSR against DRAEM on the same wall-clock budget (issue 4), one timed run at a time under the shared lock.
# DSR rows go to benchmarks/results/dsr.*, DRAEM rows to draem.* (their summaries group by budget).
# Order = priority: if the session ends early the most telling rows exist. Usage:
#   bash benchmarks/run_dsr_vs_draem.sh [MINUTES]        (default 10; the issue's cap is 15)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
minutes="${1:-10}"
source benchmarks/common.sh
one() {  # MODEL CATEGORY SEED
  locked_bench --models "$1" --preset cpu --minutes "$minutes" --categories "$2" --shots 20 --seeds "$3" \
    --name "$1" --tag "target; same budget as ${minutes}-min DSR/DRAEM"
}
fabric=aitex/fabric01 magnetic=magnetic_tile/magnetic_tile
one dsr $fabric 0;    one draem $fabric 0
one dsr $magnetic 0;  one draem $magnetic 0
one dsr mvtec3d_ad/tire 0;  one dsr mvtec_ad/bottle 0
one dsr $fabric 1;    one dsr $magnetic 1
for seed in 1 2; do one draem $fabric $seed; one draem $magnetic $seed; done
one draem mvtec3d_ad/tire 0;  one draem mvtec_ad/bottle 0
