"""Where the product is: an automatic foreground estimate from the good images, so synthetic (and transplanted)
defects land on the product rather than on an empty background.

Rule (see notes/product_aware.md): a product photographed on a plain background has a homogeneous image border.
The background colour is the median of the goods' border pixels (after a small blur against sensor noise); a pixel
is foreground when its colour is far from it: further than BORDER_FACTOR x the 99th percentile of the border
pixels' own distance (at least MIN_THRESHOLD). Holes are filled (a dark bottle centre on a white background is
still the bottle), specks removed and the mask dilated a little, so defects on the product's outline count.

`auto` turns the estimate on only when the border is plain (90th percentile distance below PLAIN_BORDER) and the
estimated foreground is a sensible share of the image (MIN_SHARE..MAX_SHARE on the median good); textures (fabric,
tiles) have busy borders and get the whole image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from recon_core.errors import ConfigError

FOREGROUND_MODES = ("auto", "on", "off")
BORDER_SHARE = 0.05  # border ring width, share of the image side
PLAIN_BORDER = 0.035  # auto: border pixels' 90th percentile (blurred) colour distance below this = plain
# background; measured on training goods: bottle 0.003, tire 0.016 | fabric01 0.054, magnetic tile 0.25
BORDER_FACTOR = 2.5  # foreground = distance above this x the border's 99th percentile
MIN_THRESHOLD = 0.04  # colour distance in [0, sqrt(3)] RGB units
MIN_SHARE, MAX_SHARE = 0.03, 0.95  # auto: the median good's foreground share must lie in this range
DILATE_SHARE = 0.02  # grow the mask by this share of the side (defects on the outline)
MIN_PIXELS = 16  # a per-image mask smaller than this falls back to the whole image
SMOOTH_SHARE = 0.04  # blur window of the distance map, share of the side


@dataclass
class Foreground:
    """Background colour model fitted on the goods. `enabled` False = the whole image is foreground."""

    enabled: bool
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    threshold: float = 1.0
    reason: str = ""

    def mask(self, image: np.ndarray, whole_if_empty: bool = True) -> np.ndarray:
        """(H, W, 3) float in [0, 1] -> (H, W) bool foreground. All True when disabled or, with `whole_if_empty`,
        when the estimate finds (almost) nothing on this image, so a defect always has somewhere to go."""
        image = np.asarray(image, dtype=np.float32)
        h, w = image.shape[:2]
        if not self.enabled:
            return np.ones((h, w), bool)
        dist = _distance(image, np.asarray(self.background, np.float32))
        fg = (dist > self.threshold).astype(np.uint8)
        side = min(h, w)
        k = _odd(max(3, round(side * 0.03)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)  # specks of noise
        fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel)
        fg = _fill_holes(fg)
        grow = _odd(max(1, round(side * DILATE_SHARE) * 2 + 1))
        fg = cv2.dilate(fg, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (grow, grow)))
        out = fg.astype(bool)
        return out if out.sum() >= MIN_PIXELS or not whole_if_empty else np.ones((h, w), bool)

    def masks(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) -> (N, H, W) bool."""
        return np.stack([self.mask(img) for img in np.asarray(images)]) if len(images) else np.zeros((0, 0, 0), bool)


def _odd(n: int) -> int:
    return int(n) | 1


def _distance(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Colour distance to the background after a small blur (sensor noise and JPEG artefacts are not product)."""
    side = min(image.shape[:2])
    k = _odd(max(3, round(side / 64)))
    smooth = cv2.GaussianBlur(np.ascontiguousarray(image, dtype=np.float32), (k, k), 0)
    dist = np.linalg.norm(smooth - background, axis=-1)
    # the local mean of the distance: speckle on the background averages out, a dark product on a dark
    # background (a tyre's sidewall) stays consistently away from the background colour
    k = _odd(max(3, round(side * SMOOTH_SHARE)))
    return cv2.GaussianBlur(dist, (k, k), 0)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill regions of background that do not touch the image border (uint8 0/1 in and out)."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)
    holes = flood[1:-1, 1:-1] == 0
    return (mask.astype(bool) | holes).astype(np.uint8)


def border_ring(height: int, width: int) -> np.ndarray:
    b = max(1, round(min(height, width) * BORDER_SHARE))
    ring = np.ones((height, width), bool)
    ring[b:-b, b:-b] = False
    return ring


def estimate_foreground(goods: np.ndarray, mode: str = "auto") -> Foreground:
    """Fit the background model on good images (N, H, W, 3) in [0, 1]. mode: "auto" (decide from the goods),
    "on" (always use the estimate), "off" (whole image)."""
    if mode not in FOREGROUND_MODES:
        raise ConfigError(f"synth.foreground: {mode!r} is not one of {list(FOREGROUND_MODES)}")
    if mode == "off":
        return Foreground(False, reason="off: defects anywhere in the image")
    goods = np.asarray(goods, dtype=np.float32)
    if goods.ndim != 4 or goods.shape[-1] != 3 or len(goods) == 0:
        raise ConfigError(f"foreground: expected good images (N, H, W, 3), got shape {goods.shape}")
    h, w = goods.shape[1:3]
    ring = border_ring(h, w)
    border = goods[:, ring].reshape(-1, 3)
    background = np.median(border, axis=0).astype(np.float32)
    border_dist = np.concatenate([_distance(img, background)[ring] for img in goods])
    spread90, spread99 = (float(q) for q in np.quantile(border_dist, [0.9, 0.99]))
    threshold = max(MIN_THRESHOLD, BORDER_FACTOR * spread99)
    fitted = Foreground(True, tuple(float(c) for c in background), threshold)
    share = float(np.median([fitted.mask(img).mean() for img in goods]))
    facts = f"border spread {spread90:.3f}, product covers {share:.0%} of the median good"
    if mode == "on":
        fitted.reason = f"on: {facts}"
        return fitted
    if spread90 >= PLAIN_BORDER:
        return Foreground(False, reason=f"auto -> whole image: the border is not plain ({facts}); a texture?")
    if not MIN_SHARE <= share <= MAX_SHARE:
        return Foreground(False, reason=f"auto -> whole image: no clear product on the plain background ({facts})")
    fitted.reason = f"auto -> on: plain background, {facts}"
    return fitted


__all__ = ["FOREGROUND_MODES", "Foreground", "border_ring", "estimate_foreground"]
