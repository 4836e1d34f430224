"""Defects no model trains on, for comparing models when the user has no real defect images (model "auto").

Every model here trains on Perlin-shaped texture defects (synth.py); judged on those, the model that learned them
always wins (DRAEM's synthetic pixel AUROC is 0.998 on products where it misses real defects). These probes differ
from the training defects in shape and appearance: thin scratches, soft stains, patches of the product moved
elsewhere (cut-paste) and local blur, each at several strengths, since faint defects separate models most. They are
drawn on held-out good images, so a model's false alarms on unseen goods count against it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from recon_core.errors import DataError

FAMILIES = ("scratch", "stain", "patch", "blur")
STRENGTHS = (0.3, 0.6, 1.0)  # blend factor of the full-strength change
MIN_VISIBLE = 0.04  # mean |change| inside the mask at full strength; below it the probe is drawn again
TRIES = 12


@dataclass
class ProbeSet:
    """Held-out goods followed by probe defects on copies of them."""

    images: np.ndarray  # (N, H, W, 3) float32 in [0, 1]
    masks: np.ndarray  # (N, H, W) float32 {0, 1}
    labels: np.ndarray  # (N,) int, 1 = probe defect
    kinds: list[str]  # "good" or "<family>@<strength>"


def _centre(where: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    """(x, y) of a random pixel where defects may go (the product's foreground)."""
    ys, xs = np.nonzero(where)
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


def _ellipse(size: int, centre: tuple[int, int], rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    axes = tuple(max(2, int(size * rng.uniform(lo, hi))) for _ in range(2))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(np.float32)


def _scratch(img: np.ndarray, rng: np.random.Generator, others: np.ndarray, where: np.ndarray) -> tuple:
    """A short thin line or a kinked one, a little darker or brighter than what it crosses."""
    size = img.shape[0]
    x, y = _centre(where, rng)
    points = [(x, y)]
    for _ in range(int(rng.integers(1, 3))):
        angle, length = rng.uniform(0, 2 * np.pi), size * rng.uniform(0.06, 0.15)
        x, y = (
            int(np.clip(x + length * np.cos(angle), 0, size - 1)),
            int(np.clip(y + length * np.sin(angle), 0, size - 1)),
        )
        points.append((x, y))
    mask = np.zeros((size, size), np.uint8)
    width = max(1, round(size / 128 * int(rng.integers(1, 3))))
    cv2.polylines(mask, [np.array(points, np.int32).reshape(-1, 1, 2)], False, 1, width)
    m = mask.astype(np.float32)
    shift = rng.uniform(0.25, 0.45) * (-1 if img[m > 0].mean() > 0.5 else 1)
    return m[..., None] * (np.clip(img + shift, 0, 1) - img), m


def _stain(img: np.ndarray, rng: np.random.Generator, others: np.ndarray, where: np.ndarray) -> tuple:
    """A soft-edged spot, darker and slightly discoloured."""
    mask = _ellipse(img.shape[0], _centre(where, rng), rng, 0.03, 0.09)
    soft = cv2.GaussianBlur(mask, (0, 0), max(1.0, img.shape[0] / 64))[..., None]
    tint = rng.uniform(-0.12, 0.12, 3).astype(np.float32)
    target = np.clip(img * rng.uniform(0.55, 0.85) + tint, 0, 1)
    return soft * (target - img), (soft[..., 0] > 0.5).astype(np.float32)


def _patch(img: np.ndarray, rng: np.random.Generator, others: np.ndarray, where: np.ndarray) -> tuple:
    """A piece of another good, moved: misplaced structure (cut-paste)."""
    size = img.shape[0]
    h, w = (max(3, int(size * rng.uniform(0.06, 0.16))) for _ in range(2))
    src = others[int(rng.integers(len(others)))]
    sx, sy = _centre(where, rng)
    dx, dy = _centre(where, rng)
    sy, sx = int(np.clip(sy - h // 2, 0, size - h)), int(np.clip(sx - w // 2, 0, size - w))
    dy, dx = int(np.clip(dy - h // 2, 0, size - h)), int(np.clip(dx - w // 2, 0, size - w))
    piece = src[sy : sy + h, sx : sx + w]
    if rng.random() < 0.5:
        piece = piece[:, ::-1]
    out = img.copy()
    out[dy : dy + h, dx : dx + w] = piece
    mask = np.zeros((size, size), np.float32)
    mask[dy : dy + h, dx : dx + w] = 1
    return out - img, mask


def _blur(img: np.ndarray, rng: np.random.Generator, others: np.ndarray, where: np.ndarray) -> tuple:
    """A smudged region: fine structure lost."""
    mask = _ellipse(img.shape[0], _centre(where, rng), rng, 0.05, 0.12)
    blurred = cv2.GaussianBlur(img, (0, 0), img.shape[0] / 64 * rng.uniform(2, 4))
    return mask[..., None] * (blurred - img), mask


_DRAW = {"scratch": _scratch, "stain": _stain, "patch": _patch, "blur": _blur}


def _visible_change(img: np.ndarray, family: str, rng: np.random.Generator, others: np.ndarray, where: np.ndarray):
    """A full-strength change and its mask that is visible; None when TRIES draws were all invisible (a blur on a
    flat background, a background patch moved onto background)."""
    for _ in range(TRIES):
        delta, mask = _DRAW[family](img, rng, others, where)
        if mask.sum() >= 1 and float(np.abs(delta).sum(axis=-1)[mask > 0].mean()) >= MIN_VISIBLE:
            return delta.astype(np.float32), mask
    return None


def make_probe_set(
    goods: np.ndarray,
    seed: int,
    families: tuple[str, ...] = FAMILIES,
    strengths: tuple[float, ...] = STRENGTHS,
    per_good: int = 2,
    regions: np.ndarray | None = None,
) -> ProbeSet:
    """goods (N, S, S, 3) -> the goods + per_good probes of every family on each good at every strength (the same
    change at each strength, so strengths compare like with like). `regions` (N, S, S) bool: where the product is
    (defects are centred there); None = anywhere. Seeded."""
    if len(goods) == 0:
        raise DataError("probe defects: no held-out good images to draw them on")
    rng = np.random.default_rng(seed)
    n, size = len(goods), goods.shape[1]
    images, masks, kinds = [goods.astype(np.float32)], [np.zeros((n, size, size), np.float32)], ["good"] * n
    for family in families:
        for i in range(n):
            for _ in range(per_good):
                where = regions[i] if regions is not None and regions[i].any() else np.ones((size, size), bool)
                drawn = _visible_change(goods[i], family, rng, goods, where)
                if drawn is None:
                    continue
                delta, mask = drawn
                for a in strengths:
                    images.append(np.clip(goods[i] + a * delta, 0, 1)[None])
                    masks.append(mask[None])
                    kinds.append(f"{family}@{a:g}")
    all_images = np.concatenate(images).astype(np.float32)
    labels = np.array([0 if k == "good" else 1 for k in kinds], int)
    if labels.sum() == 0:
        raise DataError("probe defects: none of the probe defects is visible on these images")
    return ProbeSet(all_images, np.concatenate(masks).astype(np.float32), labels, kinds)
