"""Score a trained bundle on a test set and compute the headline metrics.

Projects without real defect images get a synthetic stand-in: the held-out good images plus copies of them
with synthetic defects (same generator as training, seeded), half FAINT (opacity 0.01-0.2) and half MEDIUM
(opacity 0.2-0.5). It measures sensitivity to subtle changes, but it shares the training defect distribution, so
it is optimistic compared with real defects; results carry `synthetic=True` so the UI can say so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from recon_core.errors import DataError, ReconError

SYNTH_EVAL_SEED = 20_211_011  # fixed: every run of a project is judged on the same synthetic defects
FAINT_OPACITY = (0.01, 0.2)
MEDIUM_OPACITY = (0.2, 0.5)
STORED_MAP_SIZE = 128  # maps larger than this are downsampled (area) for storage; metrics use full maps


@dataclass
class EvalResult:
    labels: np.ndarray  # (N,) int
    scores: np.ndarray  # (N,) float
    maps: np.ndarray  # (N, h, w) float32 (maybe downsampled)
    masks: np.ndarray  # (N, h, w) float32
    has_masks: bool
    paths: list[str]
    defect_types: list[str]
    metrics: dict[str, Any]
    synthetic: bool
    images: np.ndarray | None = field(default=None, repr=False)  # kept in memory only (heatmaps), never saved


def _as_bundle(bundle: Any) -> Any:
    from recon_core.bundle import LoadedBundle, load_bundle

    if isinstance(bundle, LoadedBundle):
        return bundle
    if isinstance(bundle, str | os.PathLike):
        return load_bundle(bundle)
    raise ReconError(f"evaluate: expected a bundle path or LoadedBundle, got {type(bundle).__name__}")


def synthetic_test_set(goods: np.ndarray, paths: list[str], synth_config: Any, image_size: int) -> Any:
    """Goods + faint and medium synthetic-defect copies of them (seeded)."""
    from recon_core.images import TestSet
    from recon_core.synth import DefectGenerator, SynthConfig

    if len(goods) == 0:
        raise DataError("evaluation: no good images to build a synthetic test set from")
    base = synth_config if synth_config is not None else SynthConfig()
    rng = np.random.default_rng(SYNTH_EVAL_SEED)
    n = len(goods)
    half = max(1, n // 2)
    # first half of the goods get a faint defect, the rest a medium one (a single good image gets both)
    groups = (("faint", FAINT_OPACITY, np.arange(half)), ("medium", MEDIUM_OPACITY, np.arange(half if n > 1 else 0, n)))
    parts, masks, types, names = [], [], [], []
    for label, (lo, hi), idx in groups:
        cfg = dataclasses.replace(base, opacity_min=lo, opacity_max=hi, rotate_good_probability=0.0)
        aug, m, _ = DefectGenerator(cfg, image_size, goods=goods).augment(goods[idx], rng, force_defect=True)
        parts.append(aug)
        masks.append(m)
        types += [f"synthetic-{label}"] * len(idx)
        names += [f"{paths[i]}#synthetic-{label}" for i in idx]
    defects = np.concatenate(parts)
    h, w = goods.shape[1:3]
    return TestSet(
        images=np.concatenate([goods, defects]).astype(np.float32),
        labels=np.concatenate([np.zeros(n, int), np.ones(len(defects), int)]),
        masks=np.concatenate([np.zeros((n, h, w), np.float32), np.concatenate(masks)]),
        has_masks=True,
        paths=list(paths) + names,
        defect_types=["good"] * n + types,
    )


def _downsample(maps: np.ndarray, size: int = STORED_MAP_SIZE) -> np.ndarray:
    if maps.ndim != 3 or max(maps.shape[1:]) <= size:
        return maps.astype(np.float32)
    return np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA) for m in maps])


def _load_test(data: Any, image_size: int) -> tuple[Any, np.ndarray | None, list[str]]:
    """-> (test set or None, good images to fall back on, their paths)."""
    from recon_core.images import TestSet, load_dataset

    if isinstance(data, TestSet):
        goods = data.images[data.labels == 0]
        return data, goods, [p for p, y in zip(data.paths, data.labels, strict=True) if y == 0]
    dataset = load_dataset(data, image_size)
    test = dataset.test
    if test is not None and len(test):
        goods = test.images[test.labels == 0]
        return test, goods, [p for p, y in zip(test.paths, test.labels, strict=True) if y == 0]
    return None, dataset.train.images, list(dataset.train.paths)


def evaluate_bundle(bundle: Any, data_path_or_testset: Any, *, synthetic_fallback: bool = True) -> EvalResult:
    """Score the test set (a data path or an images.TestSet) and compute metrics. With no defect images and
    synthetic_fallback, evaluate on the good images + synthetic defects instead (synthetic=True)."""
    from recon_core import metrics

    loaded = _as_bundle(bundle)
    model = loaded.model
    size = model.config.image_size
    test, goods, good_paths = _load_test(data_path_or_testset, size)
    synthetic = False
    if test is None or not (np.asarray(test.labels) == 1).any():
        if not synthetic_fallback:
            raise DataError("evaluation: the test data has no defect images (synthetic fallback disabled)")
        if goods is None or len(goods) == 0:
            raise DataError("evaluation: no images to evaluate on")
        test = synthetic_test_set(goods, good_paths, loaded.synth_config, size)
        synthetic = True
    if test.images.shape[1:3] != (size, size):
        raise DataError(f"evaluation: test images are {test.images.shape[1:3]}, the model expects {size}x{size}")
    model.train_mode(False)
    pred = model.score(test.images, batch_size=int(getattr(model.config, "batch_size", 8)))
    scores = np.asarray(pred.image_scores, dtype=np.float64)
    maps = np.asarray(pred.maps, dtype=np.float32)
    labels = np.asarray(test.labels, dtype=int)
    use_masks = bool(test.has_masks)
    result_metrics = metrics.evaluate(labels, scores, test.masks if use_masks else None, maps if use_masks else None)
    result_metrics["synthetic"] = synthetic
    return EvalResult(
        labels=labels,
        scores=scores,
        maps=_downsample(maps),
        masks=_downsample(np.asarray(test.masks, dtype=np.float32)),
        has_masks=use_masks,
        paths=list(test.paths),
        defect_types=list(test.defect_types),
        metrics=result_metrics,
        synthetic=synthetic,
        images=test.images,
    )


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".npz", ".json") else path


def save_eval(result: EvalResult, path: str | Path) -> None:
    """Write <path>.npz (arrays) and <path>.json (metrics, paths, types); `path` may carry either suffix."""
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    npz = stem.with_name(stem.name + ".npz")
    tmp = stem.with_name(stem.name + ".tmp.npz")
    np.savez_compressed(
        tmp,
        labels=result.labels.astype(np.int64),
        scores=result.scores.astype(np.float64),
        maps=result.maps.astype(np.float16),
        masks=result.masks.astype(np.uint8),
    )
    os.replace(tmp, npz)
    meta = {
        "metrics": result.metrics,
        "synthetic": result.synthetic,
        "has_masks": result.has_masks,
        "paths": result.paths,
        "defect_types": result.defect_types,
    }
    from recon_core.config import save_json

    save_json(stem.with_name(stem.name + ".json"), meta)


def load_eval(path: str | Path) -> EvalResult:
    stem = _stem(path)
    npz_path, json_path = stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")
    try:
        with np.load(npz_path, allow_pickle=False) as arrays:
            data = {k: arrays[k] for k in ("labels", "scores", "maps", "masks")}
        meta = json.loads(json_path.read_text())
    except FileNotFoundError as exc:
        raise ReconError(f"{exc.filename}: no saved evaluation (run eval first)") from exc
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:  # truncated / damaged files
        raise ReconError(f"{stem}: saved evaluation is unreadable ({exc}); evaluate again") from exc
    if not isinstance(meta, dict):
        raise ReconError(f"{json_path}: saved evaluation is unreadable (not a JSON object); evaluate again")
    return EvalResult(
        labels=data["labels"].astype(int),
        scores=data["scores"].astype(np.float64),
        maps=data["maps"].astype(np.float32),
        masks=data["masks"].astype(np.float32),
        has_masks=bool(meta.get("has_masks")),
        paths=list(meta.get("paths", [])),
        defect_types=list(meta.get("defect_types", [])),
        metrics=dict(meta.get("metrics", {})),
        synthetic=bool(meta.get("synthetic")),
    )
