"""Choose the real-defect mixing ratio (synth.real_defect_share) on validation data only (issue 12 item 1).

K labelled defect images are taken from the test split exactly as a run takes them (runs._take_labelled, seeded);
the first K - V build the defect bank, the last V are validation defects, scored with V_GOODS training goods held
out of training. The test split's remaining images are never read here. Prints one JSON row per run.

    flock /tmp/recon-bench.lock python benchmarks/real_defects.py mvtec3d_ad/tire --shares 0 0.5 1 --iterations 300
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from recon_core.device import configure_cpu_threads
from recon_core.images import load_dataset
from recon_core.metrics import image_auroc, pixel_auroc
from recon_core.models.base import Budget
from recon_core.models.draem import Draem
from recon_core.runs import _take_labelled, resolve_data_path
from recon_core.seeding import seeded_model
from recon_core.synth import SynthConfig
from recon_core.train import fit

V_GOODS = 4


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("--shares", nargs="+", default=["none", "0.5", "1"], help="real_defect_share values; none: no bank")
    p.add_argument("--image-shares", type=float, nargs="+", default=[0.1])
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--validation", type=int, default=2)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--image-size", type=int, default=None)
    args = p.parse_args()
    configure_cpu_threads()
    config = Draem.config_from_preset(args.preset, image_size=args.image_size)
    data = load_dataset(resolve_data_path(args.data), config.image_size, shots=20, seed=args.seed)
    _, images, masks, paths = _take_labelled(data.test, args.k, args.seed)
    bank_images, bank_masks = images[: -args.validation], masks[: -args.validation]
    val_defects, val_masks = images[-args.validation :], masks[-args.validation :]
    goods = data.train.images
    train, val_goods = goods[:-V_GOODS], goods[-V_GOODS:]
    val_images = np.concatenate([val_goods, val_defects])
    labels = np.r_[np.zeros(V_GOODS), np.ones(args.validation)]
    val_pixel_masks = np.concatenate([np.zeros(val_goods.shape[:3], np.float32), val_masks])
    for image_share in args.image_shares:
        for share_text in args.shares:
            started = time.time()
            model = seeded_model(Draem, config, torch.device("cpu"), args.seed)
            use_bank = share_text != "none"
            share = float(share_text) if use_bank else 0.0
            if use_bank:
                model.set_labelled_defects(bank_images, bank_masks)
            synth = SynthConfig(real_defect_share=share, real_image_share=image_share)
            summary = fit(model, train, synth, Budget(iterations=args.iterations), seed=args.seed)
            pred = model.predict(val_images)
            row = {
                "data": args.data,
                "k_bank": len(bank_images) if use_bank else 0,
                "validation_defects": [str(x) for x in paths[-args.validation :]],
                "image_size": config.image_size,
                "real_defect_share": share if use_bank else None,
                "real_image_share": image_share if use_bank else 0.0,
                "iterations": summary.iterations,
                "seconds": round(time.time() - started, 1),
                "val_image_auroc": round(float(image_auroc(labels, pred.image_scores)), 4),
                "val_pixel_auroc": round(float(pixel_auroc(val_pixel_masks, pred.maps)), 4),
                "val_defect_score_mean": round(float(pred.image_scores[V_GOODS:].mean()), 4),
                "val_good_score_max": round(float(pred.image_scores[:V_GOODS].max()), 4),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
