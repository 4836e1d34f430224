"""A few real defects as a training signal (issue 12 item 1): the masked regions of K labelled defect images, cut out
and transplanted onto good images.

Each connected region of a defect mask is one patch (its bounding box plus a margin, and the region's mask). A paste
takes a random patch, turns it (0/90/180/270 degrees, mirror), scales it, jitters its brightness and contrast and
blends it onto the good image at a random place inside the allowed region (the product's foreground, when known):

    soft     out = img + alpha * (patch - img), alpha ramping from 0.5 at the region's edge to 1 inside it
    poisson  gradient-domain blend: the defect's own edges and texture on the target's brightness

Only pixels of the returned mask change, and every pixel of the mask gets at least half of the patch (soft) or the
Poisson solution, so the mask is what was pasted. Plain numpy arrays: a bank pickles (DataLoader workers) and is
seeded only by the rng passed to each call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from recon_core.errors import ConfigError

BLEND_MODES = ("soft", "poisson")
MARGIN = 2  # pixels of context kept around a region (Poisson blending reads the boundary)
MIN_REGION_PIXELS = 3  # smaller mask specks (annotation noise) are not patches
SCALE_RANGE = (0.7, 1.3)
MAX_SIDE_SHARE = 0.9  # a patch never covers more than this share of the image side
BRIGHTNESS_JITTER = 0.08  # +- added to the patch (images in [0, 1])
CONTRAST_JITTER = (0.8, 1.25)  # patch contrast around its own mean
FEATHER = 2.0  # pixels over which a soft paste ramps to full strength inside the region
PLACEMENT_TRIES = 6


@dataclass
class Patch:
    image: np.ndarray  # float32 (h, w, 3) in [0, 1]: the region's bounding box plus MARGIN
    mask: np.ndarray  # bool (h, w): the region
    source: int  # index of the labelled defect image it was cut from


def _resize_images(images: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(images), size, size, 3), np.float32)
    for i, img in enumerate(images):
        img = np.asarray(img, np.float32)
        if img.max() > 1.0:
            img = img / 255.0
        shrink = img.shape[0] >= size
        out[i] = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)


def _resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(masks), size, size), bool)
    for i, m in enumerate(masks):
        m = (np.asarray(m, np.float32) > 0.5 * max(float(np.max(m)), 1e-6)).astype(np.float32)
        out[i] = cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) >= 0.5  # thin defects: see below
        if m.any() and not out[i].any():  # a defect thinner than a pixel at this size: keep its trace
            out[i] = cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) > 0
    return out


def cut_patches(images: np.ndarray, masks: np.ndarray) -> list[Patch]:
    """One patch per connected mask region of each image (images (K, S, S, 3) float, masks (K, S, S) bool)."""
    patches = []
    for k, (img, mask) in enumerate(zip(images, masks, strict=True)):
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        h, w = mask.shape
        for label in range(1, count):
            x, y, bw, bh, area = (int(v) for v in stats[label])
            if area < MIN_REGION_PIXELS:
                continue
            y0, x0 = max(0, y - MARGIN), max(0, x - MARGIN)
            y1, x1 = min(h, y + bh + MARGIN), min(w, x + bw + MARGIN)
            patches.append(Patch(img[y0:y1, x0:x1].copy(), labels[y0:y1, x0:x1] == label, k))
    return patches


class DefectBank:
    """Transplants of K real defects; `images`/`masks` keep the labelled images themselves (real positives)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray | None, image_size: int) -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or not len(images):
            raise ConfigError(f"defect bank: expected defect images (K, H, W, 3), got shape {images.shape}")
        if masks is None:
            raise ConfigError("defect bank: the labelled defect images have no masks (ground truth) to cut from")
        masks = np.asarray(masks)
        if masks.shape[:3] != images.shape[:3]:
            raise ConfigError(f"defect bank: masks {masks.shape} do not match images {images.shape}")
        self.image_size = int(image_size)
        self.images = _resize_images(images, self.image_size)
        self.masks = _resize_masks(masks, self.image_size)
        self.patches = cut_patches(self.images, self.masks)
        if not self.patches:
            raise ConfigError("defect bank: the labelled defects' masks are empty; nothing to transplant")

    def __len__(self) -> int:
        return len(self.patches)

    # -- real positives ---------------------------------------------------------------------------------------

    def real_positives(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n of the labelled defect images themselves (float32 (n, S, S, 3)) and their masks (float32 (n, S, S))."""
        idx = rng.integers(0, len(self.images), n)
        return self.images[idx].copy(), self.masks[idx].astype(np.float32)

    # -- transplants ------------------------------------------------------------------------------------------

    def _transform(self, patch: Patch, rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, ...]:
        img, mask = patch.image, patch.mask
        turns = int(rng.integers(4))
        img, mask = np.rot90(img, turns), np.rot90(mask, turns)
        if rng.random() < 0.5:
            img, mask = img[:, ::-1], mask[:, ::-1]
        h, w = mask.shape
        scale = min(rng.uniform(*SCALE_RANGE), MAX_SIDE_SHARE * height / h, MAX_SIDE_SHARE * width / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        img = np.ascontiguousarray(img)
        mask = np.ascontiguousarray(mask, dtype=np.float32)
        if (nh, nw) != (h, w):
            scaled = cv2.resize(mask, (nw, nh), interpolation=cv2.INTER_LINEAR) >= 0.5
            if scaled.any():  # a thin region may vanish when shrunk: then keep its size
                img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
                mask = scaled.astype(np.float32)
        mean = img.reshape(-1, 3).mean(axis=0)
        contrast = rng.uniform(*CONTRAST_JITTER)
        img = np.clip((img - mean) * contrast + mean + rng.uniform(-BRIGHTNESS_JITTER, BRIGHTNESS_JITTER), 0, 1)
        return img.astype(np.float32), mask > 0.5

    def _place(
        self, mask: np.ndarray, rng: np.random.Generator, allowed: np.ndarray | None, height: int, width: int
    ) -> tuple[int, int, np.ndarray] | None:
        """Top-left corner and the placed full-size mask (inside `allowed`), or None when nothing fits."""
        h, w = mask.shape
        centres = np.flatnonzero(allowed) if allowed is not None else None
        best = None
        for _ in range(PLACEMENT_TRIES):
            if centres is not None:
                cy, cx = divmod(int(centres[rng.integers(len(centres))]), width)
                y, x = int(np.clip(cy - h // 2, 0, height - h)), int(np.clip(cx - w // 2, 0, width - w))
            else:
                y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            placed = np.zeros((height, width), bool)
            placed[y : y + h, x : x + w] = mask
            if allowed is not None:
                placed &= allowed
            share = placed.sum() / max(1, mask.sum())
            if best is None or share > best[0]:
                best = (share, y, x, placed)
            if share >= 0.9:
                break
        if best is None or not best[3].any():
            return None
        return best[1], best[2], best[3]

    def paste(
        self, image: np.ndarray, rng: np.random.Generator, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """One transplanted defect on `image` (float (H, W, 3) in [0, 1]) -> (image float32, mask float32 (H, W)),
        the mask inside `allowed` (bool (H, W)) when given; None when the region cannot be placed there."""
        height, width = image.shape[:2]
        if allowed is not None and not allowed.any():
            allowed = None
        patch = self.patches[int(rng.integers(len(self.patches)))]
        src, mask = self._transform(patch, rng, height, width)
        spot = self._place(mask, rng, allowed, height, width)
        if spot is None:
            return None
        y, x, placed = spot
        h, w = mask.shape
        canvas = np.asarray(image, np.float32).copy()
        canvas[y : y + h, x : x + w] = src
        mode = BLEND_MODES[int(rng.integers(len(BLEND_MODES)))]
        out = _poisson(canvas, image, placed) if mode == "poisson" else _soft(canvas, image, placed)
        return out, placed.astype(np.float32)


def _soft(canvas: np.ndarray, image: np.ndarray, placed: np.ndarray) -> np.ndarray:
    dist = cv2.distanceTransform(placed.astype(np.uint8), cv2.DIST_L2, 3)
    alpha = (np.clip(0.5 + dist / (2 * FEATHER), 0.0, 1.0) * placed).astype(np.float32)
    base = np.asarray(image, np.float32)
    return np.clip(base + alpha[..., None] * (canvas - base), 0.0, 1.0)


def _poisson(canvas: np.ndarray, image: np.ndarray, placed: np.ndarray) -> np.ndarray:
    """Gradient-domain (Poisson) blend: inside the region and a margin around it, out = canvas + h with h harmonic
    and equal to (image - canvas) on the margin's outer ring, so the defect keeps its own edges and texture but sits
    on the target's brightness. Only pixels of `placed` are taken from it. (Solved here: cv2.seamlessClone of
    OpenCV 5.1 leaves small regions unchanged.)"""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    height, width = placed.shape
    region = cv2.dilate(placed.astype(np.uint8), np.ones((2 * MARGIN + 1, 2 * MARGIN + 1), np.uint8)) > 0
    ys, xs = np.nonzero(region)
    index = np.full((height, width), -1, np.int64)
    index[ys, xs] = np.arange(len(ys))
    diff = np.asarray(image, np.float32) - canvas  # the boundary values of h
    rows, cols, vals = [np.arange(len(ys))], [np.arange(len(ys))], [np.zeros(len(ys))]
    rhs = np.zeros((len(ys), 3))
    bounded = False
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)  # beyond the image: no constraint
        vals[0] += inside
        nbr = np.where(inside, index[np.clip(ny, 0, height - 1), np.clip(nx, 0, width - 1)], -1)
        linked = inside & (nbr >= 0)
        rows.append(np.flatnonzero(linked))
        cols.append(nbr[linked])
        vals.append(-np.ones(int(linked.sum())))
        ring = inside & (nbr < 0)
        rhs[ring] += diff[ny[ring], nx[ring]]
        bounded |= bool(ring.any())
    if not bounded:  # the region covers the whole image: nothing to blend into
        return _soft(canvas, image, placed)
    matrix = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), (len(ys), len(ys)))
    h = np.asarray(spsolve(matrix.tocsr(), rhs)).reshape(len(ys), 3)
    out = np.asarray(image, np.float32).copy()
    blended = np.clip(canvas[ys, xs] + h, 0.0, 1.0)
    keep = placed[ys, xs]
    out[ys[keep], xs[keep]] = blended[keep]
    return out


def bank_from_files(pairs: list[tuple[str, str]], image_size: int) -> DefectBank:
    """A bank from (defect image path, mask path) pairs, e.g. a project's training defects."""
    from recon_core.images import load_image, load_mask

    if not pairs:
        raise ConfigError("defect bank: no labelled defect images given")
    images = np.stack([load_image(image, image_size) for image, _ in pairs])
    masks = np.stack([load_mask(mask, image_size) for _, mask in pairs])
    return DefectBank(images, masks, image_size)


def transplant_preview(
    goods: np.ndarray, bank: DefectBank, n: int, seed: int, foreground: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """n goods (cycled in a seeded order) each with one transplanted real defect, as training makes them (inside
    the `foreground` estimate when it is enabled); the designer's preview. A defect that cannot be placed leaves
    its good image unchanged, with an empty mask."""
    goods = np.asarray(goods, np.float32)
    rng = np.random.default_rng(seed)
    chosen = goods[np.resize(rng.permutation(len(goods)), n)]
    masks = np.zeros(chosen.shape[:3], np.float32)
    for i in range(n):
        allowed = foreground.mask(chosen[i]) if foreground is not None and foreground.enabled else None
        pasted = bank.paste(chosen[i], rng, allowed)
        if pasted is not None:
            chosen[i], masks[i] = pasted
    return chosen, masks


class LabelledDefectsMixin:
    """For models that train with a run's labelled defects (DRAEM, DSR): keeps them as a DefectBank."""

    uses_labelled_defects = True
    defect_bank: DefectBank | None = None

    def set_labelled_defects(self, images: np.ndarray, masks: np.ndarray | None = None) -> None:
        if images is None or not len(images):
            self.defect_bank = None
            return
        if masks is None:
            name = getattr(self, "name", "model")
            raise ConfigError(f"{name}: labelled defect images need masks (ground truth) to train with")
        self.defect_bank = DefectBank(images, masks, self.config.image_size)  # type: ignore[attr-defined]
