"""DRAEM preset search on training data only (no test split is read).

For each candidate configuration: train on `shots` good images of train/good (seeded sample) with a wall-clock or
iteration budget (lr x0.1 at 80% and 90%, as train.fit does), then score a *synthetic validation set* built
from OTHER train/good images: the held-out goods as they are, and the same goods with synthetic defects drawn
from a different source than training (procedural noise textures, different seed). Reports validation image
AUROC / pixel AUROC, seconds per iteration, images/s and inference ms/image (batch 8, 256 px input).

    flock /tmp/recon-bench.lock python benchmarks/draem_search.py --category mvtec3d_ad/tire --minutes 2 \
        --config cpu --config cpu:recon_width=16,lr=1e-3 --out benchmarks/results/draem_search.jsonl

`--probe` measures throughput only (10 iterations after 2 warm-up iterations, no validation).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (see recon_core/__init__.py)
from pathlib import Path

import numpy as np
import torch

from recon_core.images import list_images, load_images
from recon_core.metrics import image_auroc, pixel_auroc
from recon_core.models.draem import Draem
from recon_core.synth import DefectGenerator, SynthConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def parse_config(text: str) -> tuple[str, dict]:
    """'preset' or 'preset:key=value,key=value' -> (preset, overrides)."""
    preset, _, rest = text.partition(":")
    overrides: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value not in ("true", "false") else value == "true"
    return preset, overrides


def split_train(root: Path, shots: int, n_val: int, seed: int) -> tuple[list[Path], list[Path]]:
    paths = list_images(root / "train" / "good")
    order = np.random.default_rng(seed).permutation(len(paths))
    train = sorted(paths[i] for i in order[:shots])
    val = sorted(paths[i] for i in order[shots : shots + n_val])
    return train, val


def synthetic_validation(goods: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    gen = DefectGenerator(SynthConfig(texture_source="noise", opacity_min=0.3, opacity_max=1.0, seed=seed + 1), size)
    aug, masks, _ = gen.augment(goods, np.random.default_rng(seed + 99), force_defect=True)
    images = np.concatenate([goods, aug])
    labels = np.r_[np.zeros(len(goods)), np.ones(len(aug))].astype(int)
    all_masks = np.concatenate([np.zeros_like(masks), masks])
    return images, labels, all_masks


def train(model: Draem, images: np.ndarray, iterations: int | None, minutes: float | None, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.setup_training(images, SynthConfig(seed=seed), seed)
    stage = model.stages()[0]
    batch = model.cfg.batch_size
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    base_lr = model.cfg.lr
    start = time.perf_counter()
    total = iterations
    it = 0
    losses: dict = {}
    while True:
        if total is None and it == 5:  # calibrate like train.fit: fix the schedule after a few iterations
            per_it = (time.perf_counter() - start) / 5
            total = max(6, int(minutes * 60 / per_it))
        if total is not None and it >= total:
            break
        frac = it / total if total else 0.0
        lr = base_lr * (0.1 ** sum(frac >= d for d in stage.lr_drops))
        for group in stage.optimizers[0].param_groups:
            group["lr"] = lr
        idx = rng.choice(len(data), batch, replace=len(data) < batch)
        losses = stage.step(data[idx], rng)
        it += 1
    seconds = time.perf_counter() - start
    return {"iterations": it, "seconds": seconds, "s_per_it": seconds / it, "images_per_s": it * batch / seconds,
            "final_losses": losses}  # fmt: skip


def inference_ms(model: Draem, repeats: int = 5) -> float:
    x = np.random.default_rng(0).random((8, 256, 256, 3), dtype=np.float32)
    model.predict(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict(x, batch_size=8)
        times.append((time.perf_counter() - t) / 8 * 1000)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--category", action="append", required=True)
    ap.add_argument("--config", action="append", required=True, help="preset[:key=value,...]")
    ap.add_argument("--shots", type=int, default=20)
    ap.add_argument("--val", type=int, default=20)
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--iterations", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--probe", action="store_true")
    ap.add_argument("--probe-iterations", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/draem_search.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for category in args.category:
        root = Path(args.data) / category
        train_paths, val_paths = split_train(root, args.shots, args.val, args.seed)
        for text in args.config:
            preset, overrides = parse_config(text)
            model = Draem(Draem.config_from_preset(preset, **overrides))
            size = model.cfg.image_size
            images = load_images(train_paths, size).images
            row = {"category": category, "config": text, "threads": args.threads, "shots": args.shots,
                   "params_m": round(model.parameter_count() / 1e6, 2)}  # fmt: skip
            if args.probe:
                train(model, images, 2, None, args.seed)  # warm-up (allocator, oneDNN primitives)
                row.update(train(model, images, args.probe_iterations, None, args.seed))
            else:
                row.update(train(model, images, args.iterations, args.minutes, args.seed))
                goods = load_images(val_paths, size).images
                val_images, labels, masks = synthetic_validation(goods, size, args.seed)
                pred = model.predict(val_images)
                row["val_image_auroc"] = image_auroc(labels, pred.image_scores)
                row["val_pixel_auroc"] = pixel_auroc(masks, pred.maps)
            row["infer_ms"] = inference_ms(model)
            row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
