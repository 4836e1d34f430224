#!/usr/bin/env bash
# Reproduce the optional general DSR VQ-VAE (assets/vq/dsr_vq_textures.pt), trained ONLY on licence-clean images:
# the procedural textures in assets/textures (scripts/make_textures.py) + 512 procedurally generated images.
# ~5 min on 2 CPU cores. Use it with: python -m recon_core train DATA --model dsr --set vq_init=bundled --set vq_weight=0
# (frozen) or --set vq_init=bundled (fine-tuned per product). Never train it on /work/shared/data (research-only).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m recon_core -v pretrain-vq --data assets/textures --images-from procedural:512 --iterations 800 --seed 0 \
  --out assets/vq/dsr_vq_textures.pt "$@"
