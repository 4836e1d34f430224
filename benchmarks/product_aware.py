"""Short DRAEM runs for issue 12 items 2-4 (foreground, map normalisation, texture source, resolution), scored on
SYNTHETIC VALIDATION built from goods the model did not train on (never the test split; `--test-sanity` adds the
test split's figures for a final sanity check only, never to choose).

Validation (fixed for every configuration, at 256 px, seeded): held-out goods (MVTec 3D-AD's validation/good, else
training-split goods outside the 20 training shots) and three kinds of defect copies of them, on the foreground:
  perlin-bundled  DRAEM-style Perlin defects with the shipped textures (faint + medium opacity)
  perlin-self     Perlin defects with patches of the goods themselves (faint + medium)
  thin            scratches/cracks: random polylines 1-3 px wide at 256 px, darker or brighter
Maps of a 128 px model are upsampled to 256 px for the pixel AUROC. Every figure is reported with and without the
map normalisation chosen after training (recon_core.normalisation, chosen on training goods).

    flock /tmp/recon-bench.lock python benchmarks/product_aware.py mvtec3d_ad/tire --iterations 300 \
        --texture-source bundled --foreground auto --out benchmarks/results/product_aware.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_core.device import configure_cpu_threads
from recon_core.evaluation import synthetic_test_set
from recon_core.foreground import estimate_foreground
from recon_core.images import list_images, load_folder, load_images, sample_shots
from recon_core.metrics import image_auroc, pixel_auroc
from recon_core.models import get_model_class
from recon_core.models.base import Budget
from recon_core.normalisation import MODES, MapNormaliser, calibrate, candidate_stats, model_pool
from recon_core.runs import resolve_data_path
from recon_core.seeding import seeded_model
from recon_core.synth import SynthConfig
from recon_core.train import fit

VAL_SIZE = 256
VAL_SEED = 12_012
N_HELD = 10
SHOTS = 20


def held_out_goods(root: Path, train_paths: list[str]) -> np.ndarray:
    """Goods the model does not train on: validation/good when the data has it, else other training-split goods."""
    val_dir = root / "validation" / "good"
    if val_dir.is_dir():
        paths = sample_shots(list_images(val_dir), N_HELD, VAL_SEED)
    else:
        rest = [p for p in list_images(root / "train" / "good") if str(p) not in set(train_paths)]
        paths = sample_shots(rest, N_HELD, VAL_SEED)
    return load_images([str(p) for p in paths], VAL_SIZE).images


def thin_defects(goods: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scratches: 1-3 polylines per image, 1-3 px wide, 20-60 % darker or brighter, on the foreground."""
    fg = estimate_foreground(goods, "auto")
    out, masks = goods.copy(), np.zeros(goods.shape[:3], np.float32)
    side = goods.shape[1]
    for i, img in enumerate(goods):
        allowed = fg.mask(img)
        ys, xs = np.nonzero(allowed)
        m = np.zeros((side, side), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(len(ys)))
            pts = [(int(xs[k]), int(ys[k]))]
            angle = rng.uniform(0, np.pi)
            for _ in range(int(rng.integers(2, 5))):
                angle += rng.normal(0, 0.4)
                step = rng.uniform(8, 30)
                x, y = pts[-1]
                pts.append(
                    (
                        int(np.clip(x + step * np.cos(angle), 0, side - 1)),
                        int(np.clip(y + step * np.sin(angle), 0, side - 1)),
                    )
                )
            cv2.polylines(m, [np.array(pts, np.int32)], False, 1, int(rng.integers(1, 4)))
        m = (m.astype(bool) & allowed).astype(np.float32)
        shift = rng.uniform(0.2, 0.6) * (1 if rng.random() < 0.5 else -1)
        out[i] = np.clip(img + shift * m[..., None], 0, 1)
        masks[i] = m
    return out, masks


def validation_sets(held: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """kind -> (images, labels, masks) at VAL_SIZE."""
    sets = {}
    names = [str(i) for i in range(len(held))]
    for kind, source in (("perlin-bundled", "bundled"), ("perlin-self", "self")):
        cfg = SynthConfig(texture_source=source, foreground="auto", seed=VAL_SEED)
        ts = synthetic_test_set(held, names, cfg, VAL_SIZE)
        sets[kind] = (ts.images, np.asarray(ts.labels), np.asarray(ts.masks))
    thin, masks = thin_defects(held, np.random.default_rng(VAL_SEED))
    n = len(held)
    sets["thin"] = (
        np.concatenate([held, thin]),
        np.r_[np.zeros(n, int), np.ones(n, int)],
        np.concatenate([np.zeros_like(masks), masks]),
    )
    return sets


def score_sets(model, sets, train_images: np.ndarray) -> dict[str, dict[str, float]]:
    """Each validation kind scored raw, with the chosen normalisation ("norm") and with every candidate forced
    (statistics from the training goods), to check the choice made on training goods against held-out goods."""
    chosen = model.normaliser
    good_maps = model.predict(train_images).maps
    variants: dict[str, object] = {"raw": None, "norm": chosen}
    for mode in MODES[1:]:
        variants[mode] = MapNormaliser(mode, *candidate_stats(mode, good_maps), model_pool(model))
    out = {}
    for kind, (images, labels, masks) in sets.items():
        for label, normaliser in variants.items():
            model.normaliser = normaliser
            pred = model.score(images)
            maps = np.asarray(pred.maps, np.float32)
            if maps.shape[1] != VAL_SIZE:
                maps = np.stack([cv2.resize(m, (VAL_SIZE, VAL_SIZE), interpolation=cv2.INTER_LINEAR) for m in maps])
            out[f"{kind}/{label}"] = {
                "image_auroc": round(float(image_auroc(labels, pred.image_scores)), 4),
                "pixel_auroc": round(float(pixel_auroc(masks, maps)), 4),
            }
    model.normaliser = chosen
    return out


def test_split(model, root: Path) -> dict[str, float]:
    """Final sanity only: the real test split (never used to choose anything)."""
    from recon_core.images import load_dataset

    test = load_dataset(root, model.config.image_size).test
    out = {}
    for label, normalised in (("raw", False), ("norm", True)):
        pred = model.score(test.images) if normalised else model.predict(test.images)
        out[f"test/{label}"] = {
            "image_auroc": round(float(image_auroc(test.labels, pred.image_scores)), 4),
            "pixel_auroc": round(float(pixel_auroc(test.masks, pred.maps)), 4) if test.has_masks else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--texture-source", default="bundled")
    ap.add_argument("--foreground", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-sanity", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/product_aware.jsonl")
    ap.add_argument("--bundle", help="score this trained run (model.pt, with its data.json) instead of training")
    args = ap.parse_args()
    configure_cpu_threads()
    root = resolve_data_path(args.data)
    load = os.getloadavg()
    t0 = time.perf_counter()
    if args.bundle:  # inference only: the run's own training goods, from its data.json
        from recon_core.bundle import load_bundle

        loaded = load_bundle(args.bundle, "cpu")
        model, synth = loaded.model, loaded.synth_config or SynthConfig()
        train_paths = json.loads((Path(args.bundle).parent / "data.json").read_text())["train"]
        train = load_images(train_paths, model.config.image_size)
        iterations = int(loaded.metadata.get("iterations", 0))
        args.preset, args.texture_source, args.foreground = (
            loaded.metadata.get("preset"),
            synth.texture_source,
            synth.foreground,
        )
    else:
        cls = get_model_class("draem")
        config = cls.config_from_preset(args.preset)
        train = load_folder(root / "train" / "good", config.image_size, shots=SHOTS, seed=args.seed)
        synth = SynthConfig(texture_source=args.texture_source, foreground=args.foreground, seed=args.seed)
        model = seeded_model(cls, config, torch.device("cpu"), args.seed)
        iterations = fit(model, train.images, synth, Budget(iterations=args.iterations), seed=args.seed).iterations
    train_s = time.perf_counter() - t0
    held = held_out_goods(root, list(train.paths))
    model.normaliser, norm_figures = calibrate(model, train.images, synth)
    row = {
        "data": args.data,
        "preset": args.preset,
        "texture_source": args.texture_source,
        "foreground": args.foreground,
        "foreground_decision": estimate_foreground(train.images, args.foreground).reason,
        "seed": args.seed,
        "iterations": iterations,
        "bundle": args.bundle,
        "train_seconds": round(train_s, 1),
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "normalisation": getattr(model.normaliser, "mode", "none"),
        "normalisation_validation": norm_figures,
        **score_sets(model, validation_sets(held), train.images),
    }
    print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write(json.dumps(row) + "\n")
    if args.test_sanity:  # kept apart, so choices are made on the validation file without seeing these
        keys = ("data", "preset", "texture_source", "foreground", "seed", "iterations", "normalisation")
        sanity = {**{k: row[k] for k in keys}, **test_split(model, root)}
        with open(Path(args.out).with_suffix(".test.jsonl"), "a") as fh:
            fh.write(json.dumps(sanity) + "\n")


if __name__ == "__main__":
    main()
