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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from recon_core.errors import ConfigError, ImageError

TEXTURE_SOURCES = ("bundled", "folder", "noise")
MAX_SCALE_EXPONENT = 7  # 2**7 = 128 cells per axis at most
MAX_FOLDER_TEXTURES = 128  # a texture folder is sampled (seeded) down to this many, to bound memory and start-up
NOISE_TEXTURES = 16  # size of the generated pool for texture_source="noise"
EMPTY_MASK_RETRIES = 4
OUTLINE_COLOUR = (255, 0, 255)  # magenta: rare in product photos


@dataclass
class SynthConfig:
    perlin_scale_min: int = 0
    perlin_scale_max: int = 5
    threshold: float = 0.5
    rotate_noise: bool = True
    opacity_min: float = 0.2
    opacity_max: float = 1.0
    defect_probability: float = 0.5
    texture_source: str = "bundled"  # "bundled" | "folder" | "noise"
    texture_dir: str | None = None
    texture_augmentations: int = 3
    rotate_good_probability: float = 0.0
    rotate_good_degrees: float = 90.0
    seed: int = 0
    # share of the defects that are transplanted real ones when the run has labelled defects (recon_core.defect_bank)
    real_defect_share: float = 0.5
    # share of DRAEM's / DSR's training samples that are the labelled defect images themselves (their masks as targets)
    real_image_share: float = 0.1

    def __post_init__(self) -> None:
        def number(name: str, lo: float, hi: float, integer: bool = False) -> None:
            value = getattr(self, name)
            kinds = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or isinstance(value, complex):
                raise ConfigError(f"synth.{name}: expected {'an integer' if integer else 'a number'}, got {value!r}")
            if not (lo <= value <= hi) or (not integer and math.isnan(value)):
                raise ConfigError(f"synth.{name}: {value!r} is outside [{lo}, {hi}]")

        number("perlin_scale_min", 0, MAX_SCALE_EXPONENT, integer=True)
        number("perlin_scale_max", 0, MAX_SCALE_EXPONENT, integer=True)
        if self.perlin_scale_min > self.perlin_scale_max:
            raise ConfigError(
                f"synth.perlin_scale_min ({self.perlin_scale_min}) must not exceed perlin_scale_max "
                f"({self.perlin_scale_max})"
            )
        number("threshold", -1.0, 0.99)
        number("opacity_min", 0.0, 1.0)
        number("opacity_max", 0.0, 1.0)
        if self.opacity_min > self.opacity_max:
            raise ConfigError(
                f"synth.opacity_min ({self.opacity_min}) must not exceed opacity_max ({self.opacity_max})"
            )
        number("defect_probability", 0.0, 1.0)
        number("texture_augmentations", 0, len(AUGMENTATIONS), integer=True)
        number("rotate_good_probability", 0.0, 1.0)
        number("rotate_good_degrees", 0.0, 180.0)
        number("seed", 0, 2**63 - 1, integer=True)
        number("real_defect_share", 0.0, 1.0)
        number("real_image_share", 0.0, 0.5)
        if not isinstance(self.rotate_noise, bool):
            raise ConfigError(f"synth.rotate_noise: expected true/false, got {self.rotate_noise!r}")
        if self.texture_source not in TEXTURE_SOURCES:
            raise ConfigError(f"synth.texture_source: {self.texture_source!r} is not one of {list(TEXTURE_SOURCES)}")
        if self.texture_source == "folder" and not self.texture_dir:
            raise ConfigError("synth.texture_dir: texture_source 'folder' needs a texture_dir")
        if self.texture_dir is not None and not isinstance(self.texture_dir, str):
            raise ConfigError(f"synth.texture_dir: expected text, got {self.texture_dir!r}")


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


# ---------------------------------------------------------------------------------------------------------
# Texture sources


def bundled_textures_dir() -> Path:
    """assets/textures: procedural, licence-clean textures made by scripts/make_textures.py."""
    return Path(__file__).resolve().parent.parent / "assets" / "textures"


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


# ---------------------------------------------------------------------------------------------------------
# Generator


class DefectGenerator:
    """Makes (augmented, mask, has_defect) batches from good images. Seed through the rng passed to each call.
    With a `bank` (recon_core.defect_bank.DefectBank of the run's labelled defects), config.real_defect_share of the
    defects are transplanted real ones instead of Perlin ones."""

    def __init__(
        self, config: SynthConfig, image_size: int, textures: np.ndarray | None = None, *, bank: Any = None
    ) -> None:
        if not isinstance(config, SynthConfig):
            raise ConfigError(f"expected a SynthConfig, got {type(config).__name__}")
        if image_size < 8:
            raise ConfigError(f"image_size must be at least 8, got {image_size}")
        self.config = config
        self.image_size = int(image_size)
        self.bank = bank
        self._pools: dict[tuple[int, int], np.ndarray] = {}
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

    def _one_mask(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        side = _next_pow2(max(height, width))  # generate at the next power of two, then crop
        noise = None
        for _ in range(EMPTY_MASK_RETRIES + 1):
            noise = self._one_noise(side, rng, height, width)
            mask = noise > self.config.threshold
            if mask.any():
                return mask.astype(np.float32)
        # Still empty (threshold near the noise's maximum): take the blob around the noise peak (top 2%).
        cut = np.quantile(noise, 0.98)
        mask = noise >= cut
        return mask.astype(np.float32)

    def perlin_masks(self, n: int, rng: np.random.Generator, size: int | None = None) -> np.ndarray:
        """n binary masks (n, S, S) float32, never empty. Also used by DSR at feature resolution."""
        side = int(size or self.image_size)
        return self._masks(n, rng, side, side)

    def _masks(self, n: int, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        out = np.empty((n, height, width), np.float32)
        for i in range(n):
            out[i] = self._one_mask(rng, height, width)
        return out

    # -- textures and blending --------------------------------------------------------------------------

    def _texture(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        pool = self._pool(height, width)
        tex = pool[int(rng.integers(len(pool)))]
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
        self, images: np.ndarray, rng: np.random.Generator, force_defect: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """images (B, H, W, 3) float in [0, 1] -> (augmented (B, H, W, 3) float32, masks (B, H, W) float32,
        has_defect (B,) bool). Samples without a defect are returned unchanged (after optional rotation)
        with an all-zero mask."""
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
            if self.bank is not None and rng.random() < cfg.real_defect_share:
                pasted = self.bank.paste(out[i], rng)
                if pasted is not None:
                    out[i], masks[i] = pasted
                    has_defect[i] = True
                    continue
            mask = self._one_mask(rng, height, width)
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
    images: np.ndarray, config: SynthConfig, n: int = 8, *, force_defect: bool = True, bank: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """n augmented samples of `images` (cycled in a seeded order) and their masks, seeded by config.seed.
    Every preview sample gets a defect by default (the designer wants to see defects); pass force_defect=False
    to honour defect_probability. With a `bank` (DefectBank), transplanted real defects appear as in training."""
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
    # cheap: texture pools are cached per source and size
    generator = DefectGenerator(config, images.shape[1], bank=bank)
    augmented, masks, _ = generator.augment(chosen, rng, force_defect=force_defect)
    return augmented, masks


def preview_grid(augmented: np.ndarray, masks: np.ndarray, columns: int = 4, gap: int = 2) -> np.ndarray:
    """A uint8 (H, W, 3) grid of the samples with each mask's outline drawn in magenta."""
    augmented = np.asarray(augmented)
    n, height, width = augmented.shape[:3]
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    grid = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8)
    thickness = max(1, height // 128)
    for i in range(n):
        tile = np.ascontiguousarray(np.clip(augmented[i] * 255.0 + 0.5, 0, 255).astype(np.uint8))
        mask = (np.asarray(masks[i]) > 0.5).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(tile, contours, -1, OUTLINE_COLOUR, thickness)
        r, c = divmod(i, columns)
        y, x = r * (height + gap), c * (width + gap)
        grid[y : y + height, x : x + width] = tile
    return grid
