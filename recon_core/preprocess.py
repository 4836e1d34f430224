"""The one image preprocessing of Recon Studio: decoded photo -> the model's input. Used by the engine
(`images.load_image`) and shipped verbatim in every export zip next to `predict_onnx.py`, so the exported ONNX model
sees exactly the pixels the app's model sees.

Self-contained on purpose: numpy, Pillow and OpenCV only (no recon_core imports).

- any PIL mode -> float32 RGB in [0, 1]; transparency composited onto BLACK; 16-bit scaled by 65535;
- EXIF orientation applied, first frame of multi-frame files;
- resized (stretched) to size x size with OpenCV: INTER_AREA when shrinking, Lanczos when enlarging
  (masks: nearest, pixel-centre sampling). PIL's resize filters give different pixels (score differences of
  up to ~0.007 were measured), which is why nothing else may resize model inputs.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image, ImageOps


def open_image(path: str | os.PathLike) -> Image.Image:
    """Decode a file (first frame) and apply its EXIF orientation. No size or safety checks: the app's loader
    (`images._read`) adds those before calling `to_float`."""
    with open(path, "rb") as handle:
        img = Image.open(handle)
        img.load()
    return ImageOps.exif_transpose(img)


def to_float(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 array in [0, 1], (H, W) or (H, W, 3). Transparency is composited on black."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    mode = img.mode
    if mode in ("RGBA", "LA", "RGBa", "La"):
        arr = np.asarray(img.convert("RGBA" if mode[0] == "R" else "LA"), dtype=np.float32) / 255.0
        alpha = arr[..., -1:]
        colour = arr[..., :-1] * alpha  # composite on black
        return colour[..., 0] if colour.shape[-1] == 1 else colour
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.float32) / 65535.0
    if mode == "I":
        # 32-bit signed container; PIL uses it for 16-bit PNG/TIFF data, so values above 255 mean 16 bits
        arr = np.asarray(img).astype(np.float64)
        scale = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(arr / scale, 0, 1).astype(np.float32)
    if mode == "F":
        arr = np.asarray(img).astype(np.float32)
        peak = float(np.nanmax(arr)) if arr.size else 0.0
        scale = 1.0 if peak <= 1.0 else (255.0 if peak <= 255.0 else 65535.0)
        return np.clip(np.nan_to_num(arr / scale), 0, 1).astype(np.float32)
    if mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def resize(arr: np.ndarray, size: int | tuple[int, int] | None, nearest: bool = False) -> np.ndarray:
    """Resize to size x size (or (height, width)): area when shrinking, Lanczos when enlarging, nearest for masks."""
    if size is None:
        return arr
    height, width = (size, size) if isinstance(size, int) else size
    if arr.shape[:2] == (height, width):
        return arr
    if nearest:
        interp = cv2.INTER_NEAREST_EXACT  # pixel-centre sampling (plain INTER_NEAREST is shifted)
    elif arr.shape[0] >= height and arr.shape[1] >= width:
        interp = cv2.INTER_AREA  # shrinking: area averaging, no aliasing
    else:
        interp = cv2.INTER_LANCZOS4
    out = cv2.resize(arr, (width, height), interpolation=interp)
    return out if nearest else np.clip(out, 0.0, 1.0)


def prepare(arr: np.ndarray, size: int | None) -> np.ndarray:
    """A decoded float image ((H, W) or (H, W, 3)) -> float32 (size, size, 3) RGB in [0, 1], contiguous."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(resize(arr, size), dtype=np.float32)


def model_input(path: str | os.PathLike, size: int) -> np.ndarray:
    """A file -> the model's input (size, size, 3) float32 RGB in [0, 1]: exactly what the app feeds its model."""
    return prepare(to_float(open_image(path)), size)


def to_nchw(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) -> (N, 3, H, W) float32, the ONNX input layout."""
    return np.ascontiguousarray(np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2))
