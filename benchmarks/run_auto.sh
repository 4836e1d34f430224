#!/usr/bin/env bash
# `auto` against always-DRAEM on the same data, fixed ITERATIONS (a busy machine replays the same work):
#   auto  = autoencoder min(N, 250) iterations + DRAEM N iterations, each on 16 of the 20 goods (4 held out to choose)
#   draem = DRAEM N iterations on all 20 goods
# Rows go to benchmarks/results/auto_vs_draem.{csv,json,md}; the auto runs' choices (candidates' validation signals
# and their test AUROC, never used to choose) to benchmarks/results/auto_choices.md. Run folders (weights) are kept
# outside the repository, in $KEEP.
#
#   bash benchmarks/run_auto.sh [N=660] [SEEDS=0]      CATEGORIES="mvtec_ad/bottle mvtec3d_ad/tire" by default
#   MODELS=auto   skips the always-DRAEM runs (when benchmarks/results/issue12.* already has them: same K, same N)
#   K=5           5 real defects with masks per run (default 0); `auto` lets 2 of them choose and 3 train DRAEM.
#                 Choices go to auto_choices_k5.md; keep K > 0 runs apart (KEEP=/tmp/recon-auto-runs-k5)
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/common.sh
iterations="${1:-660}"
shift || true
seeds="${*:-0}"
categories="${CATEGORIES:-mvtec_ad/bottle mvtec3d_ad/tire}"
k="${K:-0}"
if [ "$k" = 0 ]; then choices=auto_choices.md; else choices="auto_choices_k$k.md"; fi
KEEP="${KEEP:-/tmp/recon-auto-runs$([ "$k" = 0 ] || echo "-k$k")}"
# shellcheck disable=SC2086
locked_bench --models ${MODELS:-auto draem} --categories $categories --shots 20 --seeds $seeds --iterations "$iterations" \
  --labelled-defects "$k" --preset cpu --name auto_vs_draem --keep-runs "$KEEP" --tag "auto: autoencoder 250 it + draem $iterations it"
"$py" benchmarks/auto_choices.py "$KEEP" "benchmarks/results/$choices"
