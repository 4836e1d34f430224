"""`python -m recon_core pretrain-vq --data DIR --out vq.pt --minutes M`: train DSR's general VQ-VAE.

The file holds the VQ-VAE weights (loadable with torch.load(weights_only=True)), its architecture, the data it
was trained on (folders, file count, a hash of the file list, procedural image count) and the training record
(steps, seconds, held-out PSNR and code perplexity, the command line). A DSR model uses it with
`vq_init=<path>` (or "bundled" for assets/vq/dsr_vq_textures.pt).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from recon_core.config import to_dict
from recon_core.device import configure_cpu_threads, resolve_device
from recon_core.errors import ConfigError, DataError
from recon_core.images import SUPPORTED_SUFFIXES, load_images
from recon_core.models.dsr import VQ_FILE_FORMAT, VQ_FILE_VERSION, Dsr, DsrConfig, vq_from_config, vq_stats, vq_step

log = logging.getLogger(__name__)
MAX_FILES = 5000  # a folder is sampled (seeded) down to this many images to bound memory


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"--data {folder}: not a folder")
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")
    )


def procedural_images(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Licence-clean synthetic images (float32 (n, size, size, 3)): coloured Perlin fields, stripes and
    checkers, and simple 'objects' (filled shapes with shading and speckle on a gradient background)."""
    from recon_core.synth import noise_textures

    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        kind = i % 3
        if kind == 0:
            img = noise_textures(1, size, size, rng)[0].astype(np.float32) / 255.0
        elif kind == 1:
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
            angle = rng.uniform(0, np.pi)
            freq = rng.uniform(2, 24)
            t = np.cos(angle) * xx + np.sin(angle) * yy
            wave = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * t)) * rng.uniform(0.2, 1.0)
            if rng.random() < 0.5:  # checker: multiply by a perpendicular wave
                t2 = -np.sin(angle) * xx + np.cos(angle) * yy
                wave = wave * (0.5 + 0.5 * np.sign(np.sin(2 * np.pi * freq * t2)))
            colours = rng.uniform(0, 1, (2, 3)).astype(np.float32)
            img = colours[0] * (1 - wave[..., None]) + colours[1] * wave[..., None]
        else:
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
            c0, c1 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
            img = c0 * (1 - yy[..., None]) + c1 * yy[..., None]
            img = np.ascontiguousarray(img)
            for _ in range(int(rng.integers(1, 6))):
                colour = tuple(float(v) for v in rng.uniform(0, 1, 3))
                centre = (int(rng.integers(0, size)), int(rng.integers(0, size)))
                if rng.random() < 0.6:
                    axes = (int(rng.integers(size // 16, size // 2)), int(rng.integers(size // 16, size // 2)))
                    cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
                else:
                    end = (int(rng.integers(0, size)), int(rng.integers(0, size)))
                    cv2.line(img, centre, end, colour, int(rng.integers(1, max(2, size // 16))), cv2.LINE_AA)
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.5))
        img = img + rng.normal(0, rng.uniform(0.0, 0.04), img.shape).astype(np.float32)  # sensor-like speckle
        out[i] = np.clip(img, 0, 1)
    return out


def _batch(images: np.ndarray, size: int, batch: int, rng: np.random.Generator) -> torch.Tensor:
    """Random crops (images are stored at 2x the model size: a crop is a zoomed-in view, a resize the whole
    image) with flips and 90-degree turns, as (B, 3, size, size)."""
    out = np.empty((batch, size, size, 3), np.float32)
    big = images.shape[1]
    for i in range(batch):
        img = images[int(rng.integers(len(images)))]
        if rng.random() < 0.5 and big > size:
            y, x = rng.integers(0, big - size + 1, size=2)
            img = img[y : y + size, x : x + size]
        else:
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.rot90(img, int(rng.integers(4)))
        out[i] = img
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this file (from the parsed options, so it is right however we were called)."""
    parts = ["python -m recon_core pretrain-vq"]
    for folder in args.data or []:
        parts.append(f"--data {folder}")
    for source in args.images_from or []:
        parts.append(f"--images-from {source}")
    for name in ("minutes", "iterations", "preset", "image_size", "codebook_size", "embedding_dim", "hidden", "seed"):
        value = getattr(args, name)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {value}")
    parts.append(f"--out {args.out}")
    return " ".join(parts)


def pretrain_command(args: argparse.Namespace) -> int:
    if args.minutes is None and args.iterations is None:
        raise ConfigError("pretrain-vq: give --minutes or --iterations")
    if (args.minutes is not None and args.minutes <= 0) or (args.iterations is not None and args.iterations < 1):
        raise ConfigError("pretrain-vq: --minutes must be positive and --iterations at least 1")
    overrides = {k: getattr(args, k) for k in ("image_size", "codebook_size", "embedding_dim", "hidden")}
    config: DsrConfig = Dsr.config_from_preset(args.preset, **overrides)  # type: ignore[assignment]
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    store = config.image_size * 2
    files: list[Path] = []
    for folder in args.data or []:
        found = _files(Path(folder))
        if len(found) > MAX_FILES:
            found = sorted(rng.choice(np.array(found, dtype=object), MAX_FILES, replace=False).tolist())
        files += found
    loaded = load_images(files, store) if files else None
    parts = [loaded.images] if loaded is not None and len(loaded.images) else []
    n_proc = 0
    for source in args.images_from or []:
        name, _, count = source.partition(":")
        if name != "procedural":
            raise ConfigError(f"--images-from {source!r}: only 'procedural[:N]' is known")
        n_proc += int(count or 256)
    if n_proc:
        parts.append(procedural_images(n_proc, store, rng))
    if not parts or sum(len(p) for p in parts) < 4:
        raise DataError("pretrain-vq: fewer than 4 usable images (give --data folders and/or --images-from procedural)")
    images = np.concatenate(parts)
    order = rng.permutation(len(images))
    n_val = max(2, len(images) // 10)
    val, train = images[order[:n_val]], images[order[n_val:]]
    val_small = np.stack([cv2.resize(v, (config.image_size,) * 2, interpolation=cv2.INTER_AREA) for v in val])

    device = resolve_device(args.device)
    configure_cpu_threads()
    vq = vq_from_config(config).to(device)
    opt = torch.optim.Adam(vq.parameters(), lr=config.vq_lr)
    start = time.perf_counter()
    step, losses = 0, {}
    while True:
        elapsed = time.perf_counter() - start
        done = step >= args.iterations if args.iterations else elapsed >= args.minutes * 60
        if done:
            break
        frac = step / args.iterations if args.iterations else elapsed / (args.minutes * 60)
        for group in opt.param_groups:  # lr x0.1 for the last 20%
            group["lr"] = config.vq_lr * (0.1 if frac >= 0.8 else 1.0)
        losses = vq_step(
            vq, opt, _batch(train, config.image_size, config.batch_size, rng).to(device), config.commitment
        )
        step += 1
        if step % 100 == 0:
            log.info("step %d  %.0fs  recon %.5f  perplexity b %.1f t %.1f", step, elapsed, losses["recon"],
                     losses["perplexity_b"], losses["perplexity_t"])  # fmt: skip
    seconds = time.perf_counter() - start
    stats = vq_stats(vq, val_small, config.image_size, device)
    listing = "\n".join(str(p) for p in files).encode("utf-8", "surrogateescape")
    arch = to_dict(config)
    blob: dict[str, Any] = {
        "format": VQ_FILE_FORMAT,
        "version": VQ_FILE_VERSION,
        "config": {
            k: arch[k]
            for k in (
                "image_size",
                "hidden",
                "res_blocks",
                "res_hidden",
                "embedding_dim",
                "codebook_size",
                "codebook_decay",
                "dead_code_threshold",
                "vq_lr",
                "batch_size",
                "commitment",
            )
        },
        "state": {k: v.detach().cpu() for k, v in vq.state_dict().items()},
        "data": {
            "folders": [str(Path(d).resolve()) for d in args.data or []],
            "files": len(files),
            "files_sha256": hashlib.sha256(listing).hexdigest(),
            "problems": len(loaded.problems) if loaded is not None else 0,
            "procedural": n_proc,
            "seed": args.seed,
        },
        "training": {
            "steps": step,
            "seconds": round(seconds, 1),
            "final_losses": losses,
            "heldout": stats,
            "heldout_images": int(n_val),
            "threads": torch.get_num_threads(),
            "command": _command_line(args),
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    torch.save(blob, tmp)
    os.replace(tmp, out)
    psnr, pb, pt = stats["psnr"], stats["perplexity_b"], stats["perplexity_t"]
    print(
        f"saved {out} ({out.stat().st_size / 1e6:.1f} MB): {step} steps in {seconds:.0f}s on {len(train)} images; "
        f"held-out PSNR {psnr:.1f} dB, perplexity bottom {pb:.0f} / top {pt:.0f} of {config.codebook_size}"
    )
    if not math.isfinite(psnr):
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pretrain-vq",
        help="train DSR's general VQ-VAE on a collection of images",
        description="Train the two-level VQ-VAE that DSR uses, on texture/product folders and/or procedural images.",
    )
    p.add_argument("--data", action="append", help="folder of images (searched recursively); repeatable")
    p.add_argument("--images-from", action="append", metavar="SOURCE",
                   help="extra images: 'procedural[:N]' (licence-clean generated images, default N 256)")  # fmt: skip
    p.add_argument("--out", required=True, help="output file (.pt)")
    p.add_argument("--minutes", type=float, help="wall-clock budget")
    p.add_argument("--iterations", type=int, help="number of steps (instead of --minutes)")
    p.add_argument("--preset", default="cpu", help="DSR preset whose VQ-VAE sizes are used (cpu | paper)")
    p.add_argument("--image-size", type=int, dest="image_size")
    p.add_argument("--codebook-size", type=int, dest="codebook_size")
    p.add_argument("--embedding-dim", type=int, dest="embedding_dim")
    p.add_argument("--hidden", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.set_defaults(handler=pretrain_command)
