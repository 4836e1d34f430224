"""Pixel metrics of the 32 px models (GANomaly, AAE) on the 128 px grid that DRAEM, DSR and the autoencoder are
judged on: a kept bench run's evaluation maps (`eval.npz`, at the model's own resolution) bilinearly upsampled to
128 px against the 128 px masks, beside the figures at the model's own grid. One JSON line per run.

    python -m recon_core bench --models aae --categories mvtec3d_ad/tire --shots 20 --seeds 0 1 2 \\
        --iterations 600 --preset cpu --out /tmp/chk --name chk --keep-runs KEPT
    python benchmarks/pixel_at_128.py ../shared/data/mvtec3d_ad/tire KEPT/aae-mvtec3d_ad-tire-*

(The kept runs' own metrics equal the `baselines.*` rows of the same seed bit for bit.) Results:
`results/pixel_at_128.jsonl`, README "Baselines".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_core import metrics
from recon_core.auto_choice import resize_maps
from recon_core.images import load_test_set

GRID = 128


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data", help="the category's MVTec-layout folder (its test/ and ground_truth/)")
    ap.add_argument("runs", nargs="+", help="kept bench run folders (eval.npz + eval.json)")
    args = ap.parse_args()
    test = load_test_set(args.data, GRID)
    if test is None or not test.has_masks:
        sys.exit(f"{args.data}: no test split with masks")
    mask_of = dict(zip(test.paths, test.masks, strict=True))
    for run in map(Path, args.runs):
        with np.load(run / "eval.npz") as ev:
            labels, scores, maps = ev["labels"], ev["scores"], ev["maps"]
        record = json.loads((run / "eval.json").read_text())
        own = record["metrics"]  # the run's own evaluation, at the model's resolution
        masks = np.stack([mask_of[p] for p in record["paths"]])
        grid = metrics.evaluate(labels, scores, masks, resize_maps(maps, GRID))
        row = {"run": run.name, "map_px": int(maps.shape[-1]), "grid_px": GRID}
        row.update({f"{k}_own": own[k] for k in ("pixel_auroc", "aupro")})
        row.update({f"{k}_{GRID}": grid[k] for k in ("pixel_auroc", "aupro")})
        print(json.dumps(row))


if __name__ == "__main__":
    main()
