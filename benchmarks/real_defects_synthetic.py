"""The real-defect mix (synth.real_defect_share / real_image_share) on synthetic validation data: a tiny DRAEM
(32 px) on a generated product, K = 3 labelled defects of one kind, scored on 20 unseen defects of the SAME kind
and on 20 of OTHER kinds (does a high real share cost what Perlin defects teach?). Seconds per run; no real data.

    python benchmarks/real_defects_synthetic.py --iterations 100 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]
from test_defect_bank import SIZE, goods, stains  # noqa: E402 - the test's generated product

from recon_core.metrics import image_auroc, pixel_auroc  # noqa: E402
from recon_core.models.base import Budget  # noqa: E402
from recon_core.models.draem import Draem  # noqa: E402
from recon_core.seeding import seeded_model  # noqa: E402
from recon_core.synth import SynthConfig  # noqa: E402
from recon_core.train import fit  # noqa: E402

TINY = {"image_size": SIZE, "recon_width": 8, "disc_width": 8, "recon_depth": 3, "disc_depth": 3, "lr": 2e-3}


def scratches(n: int, seed: int, contrast: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 300)
    images, masks = goods(n, seed + 70), np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        length = int(rng.integers(10, 17))
        y, x = (int(v) for v in rng.integers(4, SIZE - 4 - length, 2))
        dy, dx = [(0, 1), (1, 0), (1, 1), (1, -1)][int(rng.integers(4))]
        x = x + length if dx < 0 else x
        for t in range(length):
            masks[i, y + dy * t, x + dx * t] = 1
    images[masks > 0] -= contrast
    return np.clip(images, 0, 1), masks


def squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 500)
    images, masks = goods(n, seed + 90), np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        y, x = (int(v) for v in rng.integers(2, SIZE - 8, 2))
        images[i, y : y + 5, x : x + 5] += 0.15
        masks[i, y : y + 5, x : x + 5] = 1
    return np.clip(images, 0, 1), masks


KINDS = {"stain": stains, "scratch": scratches, "square": squares}


def evaluate(model: Draem, kind: str, seed: int) -> tuple[float, float]:
    bad, masks = KINDS[kind](20, seed + 2)
    good = goods(20, seed + 9)
    pred = model.predict(np.concatenate([good, bad]))
    labels = np.r_[np.zeros(20), np.ones(20)]
    return image_auroc(labels, pred.image_scores), pixel_auroc(np.concatenate([np.zeros_like(masks), masks]), pred.maps)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--kinds", nargs="+", default=["stain", "scratch"])
    mixes = ["none", "0:0.1", "0.25:0.1", "0.5:0.1", "0.75:0.1", "1:0.1", "0.5:0", "0.5:0.25"]
    p.add_argument("--mixes", nargs="+", default=mixes, help="real_defect_share:real_image_share, or none (no bank)")
    args = p.parse_args()
    torch.set_num_threads(1)
    for kind in args.kinds:
        for seed in args.seeds:
            labelled, labelled_masks = KINDS[kind](3, seed + 1)
            for mix in args.mixes:
                started = time.time()
                model = seeded_model(Draem, Draem.config_from_preset("cpu", **TINY), torch.device("cpu"), seed)
                share, image_share = (0.0, 0.0) if mix == "none" else (float(v) for v in mix.split(":"))
                if mix != "none":
                    model.set_labelled_defects(labelled, labelled_masks)
                synth = SynthConfig(texture_source="noise", real_defect_share=share, real_image_share=image_share)
                summary = fit(model, goods(20, seed), synth, Budget(iterations=args.iterations), seed=seed)
                row = {"bank_kind": kind, "seed": seed, "mix": mix, "iterations": summary.iterations}
                for other in KINDS:
                    img, pix = evaluate(model, other, seed)
                    row[f"{other}_image"], row[f"{other}_pixel"] = round(img, 4), round(pix, 4)
                row["seconds"] = round(time.time() - started, 1)
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
