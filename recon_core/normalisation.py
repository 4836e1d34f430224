"""Scores relative to what good parts look like: anomaly-map normalisation with statistics of good images' maps.

Fixed structures (a tyre's edges, a bottle's rim) can score high on every good image. After training, the model
scores good images; their maps give a per-pixel mean and spread (parts photographed in place) or one robust global
location and scale. A normalised map is `(map - mean) / scale`; the image score is then the max of its k x k
average-pooled map (the model's own pooling window when it has one).

Which of the candidates (MODES) is used is chosen on synthetic validation: the goods and copies of them with
synthetic defects (evaluation.synthetic_test_set: faint and medium ones, on the foreground), scored by the mean of
image and pixel AUROC; "none" (the model's own scores) unless another candidate beats it by MIN_GAIN. The goods'
statistics are computed leave-one-out for the validation (a good image, and its defect copy, are normalised with
statistics of the others), so the per-pixel candidates do not win by cancelling the validation goods' own maps.
Never the test split. The choice and the statistics are stored in the bundle and applied by AnomalyModel.score /
scoring_module (so in evaluation, prediction and the ONNX export alike).

Per-pixel candidates need goods the model did NOT train on. On its own training goods a model's maps are quiet
except for the fixed structures, so per-pixel statistics from them look like a win on the leave-one-out validation
and then misfire on new goods, whose maps vary elsewhere. Measured on goods never trained on plus probe defects
(notes/product_aware.md): tire DRAEM lost 0.01-0.10 pixel AUROC with them, and a bottle DRAEM run whose training-goods
validation chose pixel-z (0.930 vs 0.920) lost 0.021 pixel AUROC with it (0.829 vs 0.850), image AUROC unchanged.
So with training goods (`goods_trained_on`, what execute_run has) only "global" can be chosen; the per-pixel
figures are still computed and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from recon_core.errors import CheckpointError, ConfigError

MODES = ("none", "global", "pixel-mean", "pixel-z")
MIN_GAIN = 0.005  # a normalisation must beat the raw scores by this (mean of image and pixel AUROC) to be used
SHIFT_SHARE = 1 / 64  # parts are never exactly in place: per-pixel statistics are max-filtered over this share of
# the side (a structure a pixel or two off still finds its own statistics; a blur would leave its edges hot)
SCALE_FLOOR_SHARE = 0.5  # pixel-z: per-pixel scale at least this share of the global scale (a pixel that never
# moved on the goods must not turn noise into a huge score)
MIN_GOODS = 3  # fewer goods give no usable statistics


@dataclass
class MapNormaliser:
    """(map - mean) / scale, image score = max of the pool x pool average of the normalised map."""

    mode: str
    mean: np.ndarray  # (S, S) float32
    scale: np.ndarray  # (S, S) float32, > 0
    pool: int = 1
    validation: dict[str, float] = field(default_factory=dict)  # candidate -> its validation figure

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.mode == "none":
            raise ConfigError(f"normalisation: mode {self.mode!r} is not one of {list(MODES[1:])}")
        self.mean = np.asarray(self.mean, np.float32)
        self.scale = np.asarray(self.scale, np.float32)
        if self.mean.ndim != 2 or self.mean.shape != self.scale.shape or not np.all(self.scale > 0):
            raise ConfigError("normalisation: mean and scale must be equal-shaped 2-D maps with scale > 0")

    def maps(self, maps: np.ndarray) -> np.ndarray:
        return ((np.asarray(maps, np.float32) - self.mean) / self.scale).astype(np.float32)

    def apply(self, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw maps (N, S, S) -> (image scores (N,), normalised maps (N, S, S))."""
        normed = self.maps(maps)
        return pooled_max(normed, self.pool), normed

    def wrap(self, module: nn.Module) -> nn.Module:
        """The scoring module with this normalisation inside the graph (for ONNX export)."""
        return _Normalised(module, self)

    # ---- persistence (tensors and plain types only: bundles load with weights_only=True) -----------------
    def state(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "mean": torch.from_numpy(self.mean.copy()),
            "scale": torch.from_numpy(self.scale.copy()),
            "pool": int(self.pool),
            "validation": {k: float(v) for k, v in self.validation.items()},
        }

    @classmethod
    def from_state(cls, state: Any) -> MapNormaliser:
        try:
            return cls(
                mode=str(state["mode"]),
                mean=state["mean"].cpu().numpy(),
                scale=state["scale"].cpu().numpy(),
                pool=int(state["pool"]),
                validation={str(k): float(v) for k, v in dict(state.get("validation", {})).items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError, ConfigError) as exc:
            raise CheckpointError(f"bundle field 'normalisation' is damaged: {exc}") from exc


class _Normalised(nn.Module):
    def __init__(self, inner: nn.Module, norm: MapNormaliser) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.from_numpy(norm.mean.copy())[None])
        self.register_buffer("inv_scale", torch.from_numpy((1.0 / norm.scale).astype(np.float32))[None])
        self.pool = int(norm.pool)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from recon_core.models.layers import mean_pool_max

        _, maps = self.inner(x)
        normed = (maps - self.mean) * self.inv_scale
        return mean_pool_max(normed, self.pool), normed


def pooled_max(maps: np.ndarray, pool: int) -> np.ndarray:
    """Max of the pool x pool average (zero padding, as layers.mean_pool_max) of each map (N, S, S)."""
    from recon_core.models.layers import mean_pool_max

    with torch.no_grad():
        return mean_pool_max(torch.from_numpy(np.ascontiguousarray(maps, np.float32)), pool).numpy()


def model_pool(model: Any) -> int:
    """The model's own image-score window (DRAEM's pool_size, DSR's score_pool), else 21 at 256 px scaled."""
    from recon_core.models.layers import pool_size_for

    pool = getattr(model, "pool_size", None) or getattr(model.config, "score_pool", None)
    return int(pool) if pool and int(pool) >= 1 else pool_size_for(int(model.config.image_size))


# ---- statistics ---------------------------------------------------------------------------------------------


def _spread(a: np.ndarray) -> np.ndarray:
    """Max filter over +-r pixels, r = SHIFT_SHARE of the side (at least 1)."""
    r = max(1, round(a.shape[-1] * SHIFT_SHARE))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(np.ascontiguousarray(a, np.float32), kernel)


def _global_stats(maps: np.ndarray) -> tuple[float, float]:
    """Robust location and scale of good maps: the median, and the 99th percentile's distance from it."""
    loc = float(np.median(maps))
    scale = float(np.quantile(maps, 0.99) - loc)
    if not scale > 1e-8:
        scale = float(np.std(maps)) or 1.0
    return loc, max(scale, 1e-6)


def candidate_stats(mode: str, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, scale) maps of a candidate from good maps (N, S, S)."""
    shape = maps.shape[1:]
    loc, scale = _global_stats(maps)
    if mode == "global":
        return np.full(shape, loc, np.float32), np.full(shape, scale, np.float32)
    mean = _spread(maps.mean(axis=0))
    if mode == "pixel-mean":
        return mean, np.full(shape, scale, np.float32)
    if mode == "pixel-z":
        std = np.sqrt(np.maximum(_spread(maps.var(axis=0)), 0.0))
        return mean, np.maximum(std, SCALE_FLOOR_SHARE * scale).astype(np.float32)
    raise ConfigError(f"normalisation: unknown mode {mode!r}")


# ---- choice on synthetic validation ---------------------------------------------------------------------------


def _validation_figure(labels: np.ndarray, scores: np.ndarray, masks: np.ndarray, maps: np.ndarray) -> float:
    from recon_core.metrics import image_auroc, pixel_auroc

    return float(np.nanmean([image_auroc(labels, scores), pixel_auroc(masks, maps)]))


def calibrate(
    model: Any, goods: np.ndarray, synth_config: Any, *, goods_trained_on: bool = True, batch_size: int = 8
) -> tuple[MapNormaliser | None, dict[str, float]]:
    """Choose and fit the normalisation for a trained model from good images (N, S, S, 3) at its resolution
    -> (normaliser, or None = keep the model's own scores; each candidate's validation figure). `goods_trained_on`:
    the model trained on these goods, so only the global candidate may be chosen (module docstring). Fewer than
    MIN_GOODS goods: (None, {})."""
    from recon_core.evaluation import synthetic_test_set

    goods = np.asarray(goods, np.float32)
    n = len(goods)
    if n < MIN_GOODS:
        return None, {}
    size = int(model.config.image_size)
    # the defect copies are named "<index>#synthetic-...": that index says whose statistics to leave out
    val = synthetic_test_set(goods, [str(i) for i in range(n)], synth_config, size)
    source = np.array([int(p.split("#")[0]) for p in val.paths])
    model.train_mode(False)
    pred = model.predict(val.images, batch_size=batch_size)
    raw_maps = np.asarray(pred.maps, np.float32)
    labels, masks = np.asarray(val.labels), np.asarray(val.masks)
    pool = model_pool(model)
    good_maps = raw_maps[:n]
    figures = {"none": _validation_figure(labels, np.asarray(pred.image_scores), masks, raw_maps)}
    for mode in MODES[1:]:
        normed = np.empty_like(raw_maps)
        for i in range(n):  # leave-one-out statistics for good i and its defect copies
            mean, scale = candidate_stats(mode, np.delete(good_maps, i, axis=0))
            rows = source == i
            normed[rows] = (raw_maps[rows] - mean) / scale
        figures[mode] = _validation_figure(labels, pooled_max(normed, pool), masks, normed)
    eligible = ("global",) if goods_trained_on else MODES[1:]
    best = max(eligible, key=lambda m: figures[m])
    figures = {k: round(v, 5) for k, v in figures.items()}
    if not figures[best] >= figures["none"] + MIN_GAIN:
        return None, figures
    mean, scale = candidate_stats(best, good_maps)
    return MapNormaliser(best, mean, scale, pool, figures), figures


__all__ = ["MODES", "MapNormaliser", "calibrate", "candidate_stats", "model_pool", "pooled_max"]
