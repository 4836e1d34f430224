"""Synthetic defects, DRAEM's recipe (see SPEC "Synthetic defects" and notes/foundation.md).

A defect = Perlin-noise mask x augmented texture, blended into a good image:
    aug = img * (1 - m) + opacity * tex * m + (1 - opacity) * img * m
`opacity` is the weight of the TEXTURE inside the mask (anomalib's convention; the paper's beta = 1 - opacity).

Speed: textures are resized to the image size once (and cached per source/size), texture augmentations run on
uint8 with lookup tables / cv2, and Perlin noise is built from per-axis separable pieces. 8 samples at 256x256
take a few milliseconds on one core (benchmarks/bench_synth.py).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from recon_core.errors import ConfigError, ImageError
from recon_core.foreground import FOREGROUND_MODES, Foreground, estimate_foreground
from recon_core.foreground import MIN_PIXELS as MIN_FOREGROUND_PIXELS
from recon_core.knobs import check, knob

TEXTURE_SOURCES = ("bundled", "folder", "noise", "self")  # self: patches of the product's own good images
MAX_SCALE_EXPONENT = 7  # 2**7 = 128 cells per axis at most
MAX_FOLDER_TEXTURES = 128  # a texture folder is sampled (seeded) down to this many, to bound memory and start-up
NOISE_TEXTURES = 16  # size of the generated pool for texture_source="noise"
EMPTY_MASK_RETRIES = 4
SELF_PATCH_SHARE = (0.25, 0.75)  # texture_source "self": patch side, share of the image side
N_AUGMENTATIONS = 10  # len(AUGMENTATIONS) below (asserted there); the upper bound of texture_augmentations
MAX_SEED = 2**32 - 1  # also what a number box in the browser can hold exactly
OUTLINE_COLOUR = (255, 0, 255)  # magenta: rare in product photos
FOREGROUND_COLOUR = (0, 255, 255)  # cyan outline of the foreground in the preview
BACKGROUND_DIM = 0.4  # the preview darkens what is outside the foreground to this share


@dataclass
class SynthConfig:
    """The defect generator's knobs. Each is declared once here (range, default, help); the CLI options
    (`synth preview`), the designer's sliders and the validation are generated from these declarations."""

    perlin_scale_min: int = knob(
        0,
        "smallest Perlin scale exponent k (2**k blobs per axis)",
        lo=0,
        hi=MAX_SCALE_EXPONENT,
        upper="perlin_scale_max",
        label="Perlin scale range (2^k blobs per axis)",
        group="Defect shape (Perlin noise)",
    )
    perlin_scale_max: int = knob(
        5, "largest Perlin scale exponent k", lo=0, hi=MAX_SCALE_EXPONENT, group="Defect shape (Perlin noise)"
    )
    threshold: float = knob(
        0.5,
        "noise threshold for the mask (higher = smaller defects)",
        lo=-1.0,
        hi=0.99,
        step=0.01,
        label="Mask threshold (higher = smaller defects)",
        group="Defect shape (Perlin noise)",
    )
    rotate_noise: bool = knob(
        True,
        "rotate the Perlin noise by a random angle in +-90 degrees",
        label="Rotate the noise",
        group="Defect shape (Perlin noise)",
    )
    opacity_min: float = knob(
        0.2,
        "smallest texture weight inside the mask",
        lo=0.0,
        hi=1.0,
        step=0.05,
        upper="opacity_max",
        label="Opacity range (texture weight inside the mask)",
        group="Appearance",
    )
    opacity_max: float = knob(1.0, "largest texture weight inside the mask", lo=0.0, hi=1.0, step=0.05)
    defect_probability: float = knob(
        0.5,
        "share of training samples that get a defect",
        lo=0.0,
        hi=1.0,
        step=0.05,
        label="Defect probability",
        group="Training mix",
    )
    texture_source: str = knob(
        "bundled",
        "where textures come from",
        choices=TEXTURE_SOURCES,
        label="Texture source",
        group="Appearance",
    )
    texture_dir: str | None = knob(
        None, "folder of texture images (searched recursively) for texture source 'folder'", widget="none"
    )
    texture_augmentations: int = knob(
        3,
        "how many random augmentations each texture gets",
        lo=0,
        hi=N_AUGMENTATIONS,
        label="Texture augmentations",
        group="Appearance",
    )
    rotate_good_probability: float = knob(
        0.0,
        "probability of rotating the good image itself",
        lo=0.0,
        hi=1.0,
        step=0.05,
        label="Rotate good images: probability",
        group="Training mix",
    )
    rotate_good_degrees: float = knob(
        90.0,
        "rotation range (+-degrees) of the good image",
        lo=0.0,
        hi=180.0,
        step=5.0,
        label="Rotate good images: ± degrees",
        group="Training mix",
    )
    seed: int = knob(0, "random seed", lo=0, hi=MAX_SEED, widget="number", label="Seed", group="Training mix")
    thin_probability: float = knob(
        0.0,
        "share of defects drawn as thin scratches/cracks (1-3 px wide at 256 px) instead of Perlin blobs",
        lo=0.0,
        hi=1.0,
        step=0.05,
        label="Thin defects (scratches): share",
        group="Defect shape (Perlin noise)",
    )
    real_defect_share: float = knob(
        0.5,
        "share of the defects that are transplanted real ones when training has labelled defects (DRAEM, DSR)",
        lo=0.0,
        hi=1.0,
        step=0.05,
        label="Real defects: share of the defects transplanted from them",
        group="Real defects (when the project has some for training)",
    )
    real_image_share: float = knob(
        0.1,
        "share of DRAEM's / DSR's training samples that are the labelled defect images themselves",
        lo=0.0,
        hi=0.5,
        step=0.05,
        label="Real defects: share of samples shown as they are",
        group="Real defects (when the project has some for training)",
    )
    foreground: str = knob(
        "auto",
        "where defects go: auto (a product on a plain background gets defects only on itself, textures anywhere; "
        "decided from the goods) | on (only on the product) | off (anywhere in the image)",
        choices=FOREGROUND_MODES,
        label="Where defects go",
        group="Appearance",
    )

    def __post_init__(self) -> None:
        check(self, "synth")
        if self.texture_source == "folder" and not self.texture_dir:
            raise ConfigError("synth.texture_dir: texture_source 'folder' needs a texture_dir")


# ---------------------------------------------------------------------------------------------------------
# Perlin noise


def _fade(t: np.ndarray) -> np.ndarray:
    return ((6 * t - 15) * t + 10) * t * t * t


def perlin_noise(size: int, res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of shape (size, size), `res` = cells per axis (each dividing size).
    Roughly in [-1, 1]. Built from per-axis vectors: each output term is an outer-product-shaped gather,
    so the cost is a handful of full-size array operations."""
    ry, rx = res
    dy, dx = size // ry, size // rx
    angles = rng.random((ry + 1, rx + 1), dtype=np.float32) * np.float32(2 * np.pi)
    gy, gx = np.sin(angles), np.cos(angles)
    # local coordinate within a cell, per axis (offset by half a pixel so lattice points are not sampled exactly)
    ty = (np.arange(size, dtype=np.float32) % dy + 0.5) / dy
    tx = (np.arange(size, dtype=np.float32) % dx + 0.5) / dx

    def expand(grid: np.ndarray) -> np.ndarray:
        # each cell's value repeated over its dy x dx pixels (nearest resize = exact repeat, and fast)
        return cv2.resize(np.ascontiguousarray(grid), (size, size), interpolation=cv2.INTER_NEAREST)

    def corner(oy: int, ox: int) -> np.ndarray:
        # dot(gradient at the cell corner, offset from that corner)
        gxc = expand(gx[oy : oy + ry, ox : ox + rx])
        gyc = expand(gy[oy : oy + ry, ox : ox + rx])
        return gxc * (tx - ox)[None, :] + gyc * (ty - oy)[:, None]

    fy = _fade(ty)[:, None]
    fx = _fade(tx)[None, :]
    n00, n01, n10, n11 = corner(0, 0), corner(0, 1), corner(1, 0), corner(1, 1)
    top = n00 + fx * (n01 - n00)
    bottom = n10 + fx * (n11 - n10)
    return np.float32(math.sqrt(2)) * (top + fy * (bottom - top))


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


# ---------------------------------------------------------------------------------------------------------
# Texture augmentations (uint8 HxWx3 in, uint8 out); DRAEM picks 3 of these at random per sample


def _lut(img: np.ndarray, table: np.ndarray) -> np.ndarray:
    table = np.clip(table, 0, 255).astype(np.uint8)
    if table.ndim == 1:
        return cv2.LUT(img, table)
    return cv2.LUT(img, np.ascontiguousarray(table.T[None, :, :]))  # per-channel table (3, 256) -> (1, 256, 3)


_LEVELS = np.arange(256, dtype=np.float32)


def _contrast(img, rng):  # gamma contrast per channel (imgaug GammaContrast((0.5, 2.0), per_channel=True))
    gammas = rng.uniform(0.5, 2.0, size=3).astype(np.float32)
    return _lut(img, 255.0 * (_LEVELS[None, :] / 255.0) ** gammas[:, None])


def _brightness(img, rng):  # multiply and add to brightness
    return _lut(img, _LEVELS * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30))


def _sharpness(img, rng):  # unsharp mask / blur, factor 0 (blurred) .. 2 (sharpened)
    blurred = cv2.blur(img, (3, 3))
    factor = rng.uniform(0.0, 2.0)
    return cv2.addWeighted(img, factor, blurred, 1.0 - factor, 0.0)


def _hue_saturation(img, rng):
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    hue_shift = int(rng.integers(-25, 26))  # OpenCV hue is 0..179 (i.e. +-50 on a 0..360/2 scale)
    sat_shift = rng.uniform(-50, 50)
    hsv[..., 0] = cv2.LUT(hsv[..., 0], ((np.arange(256) + hue_shift) % 180).astype(np.uint8))
    hsv[..., 1] = cv2.LUT(hsv[..., 1], np.clip(_LEVELS + sat_shift, 0, 255).astype(np.uint8))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _solarize(img, rng):
    threshold = rng.uniform(32, 128)
    return _lut(img, np.where(threshold <= _LEVELS, 255 - _LEVELS, _LEVELS))


def _posterize(img, rng):
    bits = int(rng.integers(2, 7))
    keep = (0xFF << (8 - bits)) & 0xFF
    return _lut(img, np.arange(256) & keep)


def _invert(img, rng):
    return 255 - img


def _autocontrast(img, rng):  # stretch each channel to the full range
    bounds = [cv2.minMaxLoc(channel)[:2] for channel in cv2.split(img)]
    lo = np.array([b[0] for b in bounds], np.float32)
    span = np.maximum(np.array([b[1] for b in bounds], np.float32) - lo, 1.0)
    return _lut(img, (_LEVELS[None, :] - lo[:, None]) * (255.0 / span[:, None]))


def _equalize(img, rng):
    return cv2.merge([cv2.equalizeHist(np.ascontiguousarray(img[..., c])) for c in range(3)])


def _rotate(img, rng):
    h, w = img.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-45, 45), 1.0)
    return cv2.warpAffine(img, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


AUGMENTATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "contrast": _contrast,
    "brightness": _brightness,
    "sharpness": _sharpness,
    "hue_saturation": _hue_saturation,
    "solarize": _solarize,
    "posterize": _posterize,
    "invert": _invert,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
    "rotation": _rotate,
}
_AUG_LIST = list(AUGMENTATIONS.values())
assert len(AUGMENTATIONS) == N_AUGMENTATIONS  # the declared bound of SynthConfig.texture_augmentations


# ---------------------------------------------------------------------------------------------------------
# Texture sources


def bundled_textures_dir() -> Path:
    """assets/textures: procedural, licence-clean textures made by scripts/make_textures.py ($RECON_TEXTURES_DIR
    where a cluster node received them with the job)."""
    override = os.environ.get("RECON_TEXTURES_DIR")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "assets" / "textures"


def _texture_files(folder: Path, recursive: bool) -> list[Path]:
    from recon_core.images import SUPPORTED_SUFFIXES

    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(p for p in pattern if p.suffix.lower() in SUPPORTED_SUFFIXES and p.is_file())


@functools.lru_cache(maxsize=8)
def _load_texture_pool(folder: str, recursive: bool, height: int, width: int, seed: int, stamp: int) -> np.ndarray:
    """uint8 (T, H, W, 3), cached so a live preview does not re-read the folder each time (`stamp` = the
    folder's modification time, so adding or removing files at its top level refreshes the cache)."""
    from recon_core.images import load_image

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"synth.texture_dir: {folder} is not a folder")
    files = _texture_files(root, recursive)
    if len(files) > MAX_FOLDER_TEXTURES:
        pick = np.random.default_rng(seed).choice(len(files), MAX_FOLDER_TEXTURES, replace=False)
        files = [files[i] for i in sorted(pick)]
    pool = []
    for path in files:
        try:
            pool.append(_to_uint8(load_image(path, None), height, width))
        except ImageError:
            continue  # a bad texture file is skipped; the pool must just not be empty
    if not pool:
        raise ConfigError(f"synth.texture_dir: no usable images in {folder}")
    return np.stack(pool)


def _to_uint8(img: np.ndarray, height: int, width: int) -> np.ndarray:
    if img.dtype != np.uint8:
        img = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if img.shape[:2] != (height, width):
        shrink = img.shape[0] >= height and img.shape[1] >= width
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)


def noise_textures(n: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Coloured Perlin-noise textures (uint8 (n, H, W, 3)): the fallback when there is no texture source."""
    size = _next_pow2(max(height, width))
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        channels = []
        for _ in range(3):
            k = int(rng.integers(1, min(6, int(math.log2(size))) + 1))
            layer = perlin_noise(size, (2**k, 2**k), rng)[:height, :width]
            channels.append(layer)
        tex = np.stack(channels, axis=-1)
        tex = (tex - tex.min()) / max(float(tex.max() - tex.min()), 1e-6)
        out[i] = np.clip(tex * 255.0, 0, 255).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=8)
def _noise_pool(size: int, seed: int) -> np.ndarray:
    pool = noise_textures(NOISE_TEXTURES, size, size, np.random.default_rng(seed))
    pool.flags.writeable = False  # shared between generators
    return pool


def scratch_mask(
    rng: np.random.Generator, height: int, width: int, allowed: np.ndarray | None = None
) -> np.ndarray | None:
    """A thin-defect mask (float32 (H, W) {0, 1}): 1-3 wandering polylines, 1-3 px wide at 256 px (scaled), starting
    inside `allowed` and clipped to it. None when nothing is left (the caller falls back to a Perlin blob)."""
    side = min(height, width)
    if allowed is not None:
        ys, xs = np.nonzero(allowed)
        if not len(ys):
            return None
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        if allowed is not None:
            k = int(rng.integers(len(ys)))
            points = [(float(xs[k]), float(ys[k]))]
        else:
            points = [(rng.uniform(0, width - 1), rng.uniform(0, height - 1))]
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(2, 6))):
            angle += rng.normal(0, 0.5)
            step = rng.uniform(0.04, 0.15) * side
            x, y = points[-1]
            points.append(
                (
                    min(max(x + step * math.cos(angle), 0), width - 1),
                    min(max(y + step * math.sin(angle), 0), height - 1),
                )
            )
        thickness = max(1, round(int(rng.integers(1, 4)) * side / 256))
        cv2.polylines(mask, [np.array(points, np.int32)], False, 1, thickness)
    if allowed is not None:
        mask &= allowed.astype(np.uint8)
    return mask.astype(np.float32) if mask.any() else None


def _patch(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random square patch of a good image, flipped / turned at random, stretched back to the image size: the
    product's own material, out of place (texture_source "self")."""
    h, w = image.shape[:2]
    side = max(2, int(min(h, w) * rng.uniform(*SELF_PATCH_SHARE)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    patch = np.rot90(image[y : y + side, x : x + side], int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return cv2.resize(np.ascontiguousarray(patch), (w, h), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------------------------------------------------
# Generator


class DefectGenerator:
    """Makes (augmented, mask, has_defect) batches from good images. Seed through the rng passed to each call.

    `goods` (the training good images, (N, H, W, 3) in [0, 1]) feed the foreground estimate (config.foreground)
    and texture_source "self"; without them defects may land anywhere. `foreground` overrides the estimate.
    With a `bank` (recon_core.defect_bank.DefectBank of the run's labelled defects), config.real_defect_share of
    the defects are transplanted real ones, on the foreground like the others."""

    def __init__(
        self,
        config: SynthConfig,
        image_size: int,
        textures: np.ndarray | None = None,
        *,
        goods: np.ndarray | None = None,
        foreground: Foreground | None = None,
        bank: Any = None,
    ) -> None:
        if not isinstance(config, SynthConfig):
            raise ConfigError(f"expected a SynthConfig, got {type(config).__name__}")
        if image_size < 8:
            raise ConfigError(f"image_size must be at least 8, got {image_size}")
        self.config = config
        self.image_size = int(image_size)
        self.bank = bank
        self._pools: dict[tuple[int, int], np.ndarray] = {}
        if foreground is None:
            if goods is not None and len(goods):
                foreground = estimate_foreground(goods, config.foreground)
            else:
                foreground = Foreground(False, reason="no good images given: whole image")
        self.foreground = foreground
        if textures is None and config.texture_source == "self":
            if goods is None or not len(goods):
                raise ConfigError("synth.texture_source 'self' needs the good images (none were given)")
            textures = goods
        if textures is not None:
            textures = np.asarray(textures)
            if textures.ndim != 4 or textures.shape[-1] != 3 or len(textures) == 0:
                raise ConfigError(f"textures must be (T, H, W, 3), got shape {textures.shape}")
            self._source = np.stack([_to_uint8(t, image_size, image_size) for t in textures])
        elif config.texture_source == "noise":
            self._source = _noise_pool(image_size, config.seed)
        else:
            folder = str(bundled_textures_dir()) if config.texture_source == "bundled" else str(config.texture_dir)
            recursive = config.texture_source == "folder"
            try:
                stamp = Path(folder).stat().st_mtime_ns
            except OSError as exc:
                raise ConfigError(f"synth.texture_dir: {folder} is not a folder") from exc
            self._source = _load_texture_pool(folder, recursive, image_size, image_size, config.seed, stamp)
            self._source.flags.writeable = False  # shared between generators through the cache
        self._pools[(image_size, image_size)] = self._source

    @property
    def textures(self) -> np.ndarray:
        """The texture pool, uint8 (T, S, S, 3) at the generator's image size."""
        return self._source

    def _pool(self, height: int, width: int) -> np.ndarray:
        if (height, width) not in self._pools:
            self._pools[(height, width)] = np.stack([_to_uint8(t, height, width) for t in self._source])
        return self._pools[(height, width)]

    # -- masks ------------------------------------------------------------------------------------------

    def _one_noise(self, side: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        cfg = self.config
        max_k = min(cfg.perlin_scale_max, int(math.log2(side)))
        min_k = min(cfg.perlin_scale_min, max_k)
        ky, kx = rng.integers(min_k, max_k + 1, size=2)
        noise = perlin_noise(side, (2 ** int(ky), 2 ** int(kx)), rng)
        if cfg.rotate_noise:
            matrix = cv2.getRotationMatrix2D((side / 2, side / 2), rng.uniform(-90, 90), 1.0)
            noise = cv2.warpAffine(noise, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        return noise[:height, :width]

    def _one_mask(
        self, rng: np.random.Generator, height: int, width: int, allowed: np.ndarray | None = None
    ) -> np.ndarray:
        """A binary Perlin mask, never empty; inside `allowed` (bool (H, W), the foreground) when given."""
        side = _next_pow2(max(height, width))  # generate at the next power of two, then crop
        noise = None
        for _ in range(EMPTY_MASK_RETRIES + 1):
            noise = self._one_noise(side, rng, height, width)
            mask = noise > self.config.threshold
            if allowed is not None:
                mask &= allowed
            if mask.any():
                return mask.astype(np.float32)
        # Still empty (threshold near the noise's maximum, or a small foreground): take the blob around the
        # noise peak (top 2%) of the allowed region.
        values = noise if allowed is None else noise[allowed]
        mask = noise >= np.quantile(values, 0.98)
        if allowed is not None:
            mask &= allowed
        return mask.astype(np.float32)

    def perlin_masks(
        self, n: int, rng: np.random.Generator, size: int | None = None, images: np.ndarray | None = None
    ) -> np.ndarray:
        """n binary masks (n, S, S) float32, never empty. Also used by DSR at feature resolution. With `images`
        ((n, H, W, 3)) and an enabled foreground, mask i lies on image i's foreground (scaled to S)."""
        side = int(size or self.image_size)
        if images is None or not self.foreground.enabled:
            return self._masks(n, rng, side, side)
        out = np.empty((n, side, side), np.float32)
        for i in range(n):
            allowed = self.foreground.mask(images[i])
            if allowed.shape != (side, side):  # a pixel of the small grid is allowed if most of what it covers is
                allowed = cv2.resize(allowed.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA) >= 0.5
            out[i] = self._one_mask(rng, side, side, allowed if allowed.any() else None)
        return out

    def _masks(self, n: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        out = np.empty((n, height, width), np.float32)
        for i in range(n):
            out[i] = self._one_mask(rng, height, width)
        return out

    # -- textures and blending --------------------------------------------------------------------------

    def _texture(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        pool = self._pool(height, width)
        tex = pool[int(rng.integers(len(pool)))]
        if self.config.texture_source == "self":
            tex = _patch(tex, rng)
        count = self.config.texture_augmentations
        if count:
            for idx in rng.choice(len(_AUG_LIST), size=count, replace=False):
                tex = _AUG_LIST[int(idx)](tex, rng)
        return tex

    def _rotate_good(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        deg = self.config.rotate_good_degrees
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-deg, deg), 1.0)
        out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        return np.clip(out, 0.0, 1.0)

    def augment(
        self, images: np.ndarray, rng: np.random.Generator, force_defect: bool = False, crops: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """images (B, H, W, 3) float in [0, 1] -> (augmented (B, H, W, 3) float32, masks (B, H, W) float32,
        has_defect (B,) bool). Samples without a defect are returned unchanged (after optional rotation)
        with an all-zero mask. `crops`: the images are windows of larger ones (DRAEM's train_crop), so one that
        shows (almost) none of the product stays clean instead of taking the whole-image fallback of the
        foreground, which would put its defect on the background."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ConfigError(f"augment expects images (B, H, W, 3), got shape {images.shape}")
        cfg = self.config
        batch, height, width = images.shape[:3]
        out = images.astype(np.float32, copy=True)
        masks = np.zeros((batch, height, width), np.float32)
        has_defect = np.zeros(batch, bool)
        for i in range(batch):
            if cfg.rotate_good_probability > 0 and rng.random() < cfg.rotate_good_probability:
                out[i] = self._rotate_good(out[i], rng)
            if not (force_defect or rng.random() < cfg.defect_probability):
                continue
            allowed = self.foreground.mask(out[i], whole_if_empty=not crops) if self.foreground.enabled else None
            if allowed is not None and allowed.sum() < MIN_FOREGROUND_PIXELS:  # a crop of background only
                continue
            if self.bank is not None and rng.random() < cfg.real_defect_share:
                pasted = self.bank.paste(out[i], rng, allowed)
                if pasted is not None:
                    out[i], masks[i] = pasted
                    has_defect[i] = True
                    continue
            mask = None
            if cfg.thin_probability > 0 and rng.random() < cfg.thin_probability:
                mask = scratch_mask(rng, height, width, allowed)
            if mask is None:
                mask = self._one_mask(rng, height, width, allowed)
            tex = self._texture(rng, height, width).astype(np.float32)
            tex *= np.float32(1 / 255)
            opacity = np.float32(rng.uniform(cfg.opacity_min, cfg.opacity_max))
            # img*(1-m) + opacity*tex*m + (1-opacity)*img*m == img + opacity*m*(tex - img), computed in place;
            # outside the mask this adds exactly 0, so those pixels are exact copies of the input
            img = out[i]
            tex -= img
            tex *= (opacity * mask)[..., None]
            tex += img
            np.clip(tex, 0.0, 1.0, out=img)
            masks[i] = mask
            has_defect[i] = True
        return out, masks, has_defect


# ---------------------------------------------------------------------------------------------------------
# Preview


def preview(
    images: np.ndarray,
    config: SynthConfig,
    n: int = 8,
    *,
    force_defect: bool = True,
    foreground: Foreground | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """n augmented samples of `images` (cycled in a seeded order) and their masks, seeded by config.seed.
    Every preview sample gets a defect by default (the designer wants to see defects); pass force_defect=False
    to honour defect_probability. `foreground`: the product region estimate to use (default: estimated from
    `images` as config.foreground says)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ConfigError(f"preview expects images (N, H, W, 3), got shape {images.shape}")
    if n < 1:
        raise ConfigError(f"preview needs n >= 1, got {n}")
    rng = np.random.default_rng(config.seed)
    pick = rng.permutation(len(images))
    chosen = images[np.resize(pick, n)]
    # cheap: texture pools are cached per source and size; the foreground is estimated from all the images given
    generator = DefectGenerator(config, images.shape[1], goods=images, foreground=foreground)
    augmented, masks, _ = generator.augment(chosen, rng, force_defect=force_defect)
    return augmented, masks


def preview_grid(
    augmented: np.ndarray,
    masks: np.ndarray,
    columns: int = 4,
    gap: int = 2,
    foregrounds: np.ndarray | None = None,
) -> np.ndarray:
    """A uint8 (H, W, 3) grid of the samples with each mask's outline drawn in magenta. With `foregrounds`
    ((N, H, W) bool), what lies outside the foreground is darkened and the foreground outlined in cyan."""
    augmented = np.asarray(augmented)
    n, height, width = augmented.shape[:3]
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    grid = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8)
    thickness = max(1, height // 128)
    for i in range(n):
        tile = np.ascontiguousarray(np.clip(augmented[i] * 255.0 + 0.5, 0, 255).astype(np.uint8))
        if foregrounds is not None and not np.all(foregrounds[i]):
            fg = np.asarray(foregrounds[i], bool)
            tile[~fg] = (tile[~fg] * BACKGROUND_DIM).astype(np.uint8)
            outline, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, outline, -1, FOREGROUND_COLOUR, thickness)
        mask = (np.asarray(masks[i]) > 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(tile, contours, -1, OUTLINE_COLOUR, thickness)
        r, c = divmod(i, columns)
        y, x = r * (height + gap), c * (width + gap)
        grid[y : y + height, x : x + width] = tile
    return grid
