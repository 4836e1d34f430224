"""Validation-only check of the image score: is the whole-map pooled max the right summary of a trained model's map?

Scores goods the model never trained on (MVTec 3D-AD tire `validation/good`, or `train/good`: the run's training
shots are skipped; never the test split) and probe defects drawn on their foreground (recon_core.probe_defects), then
prints the image AUROC of the model's own score, of the pooled max restricted to the per-image foreground estimate
(fitted on the run's training goods), of other pooling windows and of top-q means, where the goods' map maximum
lies, and, when the bundle has a map normalisation, both AUROCs without it.

    python benchmarks/image_score_check.py RUN/model.pt ../shared/data/mvtec3d_ad/tire/validation/good RUN/data.json
(data.json: the run's record, whose "train" list names the training goods.) Results: notes/product_aware.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_core.bundle import load_bundle
from recon_core.foreground import estimate_foreground
from recon_core.images import list_images, load_images
from recon_core.metrics import image_auroc, pixel_auroc
from recon_core.normalisation import model_pool, pooled_max
from recon_core.probe_defects import make_probe_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("goods", help="a folder of good images the model did not train on (not the test split)")
    ap.add_argument("record", help="the run's data.json (its 'train' list fits the foreground estimate)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-goods", type=int, default=40, help="at most this many unseen goods (sorted by name)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_bundle(args.bundle).model
    size = int(model.config.image_size)
    trained_on = json.loads(Path(args.record).read_text())["train"]
    skip = set(trained_on)
    unseen = [p for p in list_images(args.goods) if str(p) not in skip][: args.max_goods]
    goods = load_images(unseen, size).images  # goods the model never trained on (its training goods are skipped)
    train = load_images(trained_on, size).images
    fg = estimate_foreground(train, "auto")
    probes = make_probe_set(goods, args.seed, regions=fg.masks(goods))
    pred = model.score(probes.images)
    maps, labels = np.asarray(pred.maps, np.float32), probes.labels
    on_product = fg.masks(probes.images)
    pool = model_pool(model)
    print(f"foreground: {fg.reason}")
    print(f"{(labels == 0).sum()} goods, {labels.sum()} probes; pixel AUROC {pixel_auroc(probes.masks, maps):.3f}")
    print(f"image AUROC, the model's score: {image_auroc(labels, np.asarray(pred.image_scores)):.3f}")
    if model.normaliser is not None:  # the map normalisation chosen after training, against the raw map
        raw = model.predict(probes.images)
        print(
            f"map normalisation {model.normaliser.mode!r} (validation {model.normaliser.validation}); without it: "
            f"image AUROC {image_auroc(labels, np.asarray(raw.image_scores)):.3f}, "
            f"pixel AUROC {pixel_auroc(probes.masks, np.asarray(raw.maps, np.float32)):.3f}"
        )
    restricted = pooled_max(np.where(on_product, maps, maps.min()), pool)
    print(f"image AUROC, pooled max on the foreground only: {image_auroc(labels, restricted):.3f}")
    good_maps, good_fg = maps[labels == 0], on_product[labels == 0]
    inside = sum(bool(f.flat[int(np.argmax(m))]) for m, f in zip(good_maps, good_fg, strict=True))
    print(f"goods whose map maximum lies on the foreground: {inside} of {len(good_maps)}")
    for window in (1, 5, 11, 21, 31, 45):
        print(f"pooled max, window {window}: {image_auroc(labels, pooled_max(maps, window)):.3f}")
    flat = np.sort(maps.reshape(len(maps), -1), axis=1)
    for share in (0.001, 0.01, 0.05):
        k = max(1, int(flat.shape[1] * share))
        print(f"mean of the top {share:.1%}: {image_auroc(labels, flat[:, -k:].mean(1)):.3f}")
    print(f"mean of the map: {image_auroc(labels, flat.mean(1)):.3f}")


if __name__ == "__main__":
    main()
