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
import time
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
# What the per-type rows say in words (type_findings). Descriptions of a result, not settings of a model:
NEAR_CHANCE = 0.6  # image AUROC at most this: the image score barely tells the kind from good parts
FOUND_BY_MAPS = 0.9  # pixel AUROC at least this: the maps do mark the kind's pixels
DOMINANT_PIXEL_SHARE = 0.5  # a kind holding this share of all defect pixels sets the pooled pixel AUROC,
HIDDEN_GAP = 0.1  # which is worth saying when another kind's own pixel AUROC differs from it by this much


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


def _goods_only(images: np.ndarray, paths: list[str]) -> Any:
    from recon_core.images import TestSet

    return TestSet(
        images=images,
        labels=np.zeros(len(paths), int),
        masks=np.zeros(images.shape[:3], np.float32),
        has_masks=False,
        paths=list(paths),
        defect_types=["good"] * len(paths),
    )


def _load_test(data: Any, image_size: int) -> Any:
    """The images to evaluate on as an images.TestSet: the test split, else the folder's images as goods."""
    from recon_core.images import TestSet, load_dataset

    if isinstance(data, TestSet):
        return data
    dataset = load_dataset(data, image_size)
    if dataset.test is not None and len(dataset.test):
        return dataset.test
    return _goods_only(dataset.train.images, list(dataset.train.paths))


def _training_of(loaded: Any) -> Any:
    """The training files of the run a bundle belongs to (its folder's data.json), or None."""
    from recon_core.leakage import training_files

    return training_files(Path(loaded.path).parent) if getattr(loaded, "path", "") else None


def evaluate_bundle(
    bundle: Any, data_path_or_testset: Any, *, synthetic_fallback: bool = True, training: Any = None
) -> EvalResult:
    """Score the test set (a data path or an images.TestSet) and compute metrics. With no defect images and
    synthetic_fallback, evaluate on the good images + synthetic defects instead (synthetic=True).

    Images identical to the run's training files (`training`: leakage.TrainingFiles; by default read from the
    bundle's run folder) are left out; metrics["warnings"] says what the figures cannot be trusted for."""
    from recon_core import metrics
    from recon_core.leakage import duplicate_groups, exclude_training

    loaded = _as_bundle(bundle)
    model = loaded.model
    size = model.config.image_size
    test = _load_test(data_path_or_testset, size)
    test, exclusion = exclude_training(test, training if training is not None else _training_of(loaded))
    duplicates = duplicate_groups([p for p in test.paths if "#" not in p])
    synthetic = False
    if not (np.asarray(test.labels) == 1).any():
        if not synthetic_fallback:
            raise DataError("evaluation: the test data has no defect images (synthetic fallback disabled)")
        if len(test) == 0:
            raise DataError("evaluation: no images to evaluate on")
        test = synthetic_test_set(test.images, list(test.paths), loaded.synth_config, size)
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
    result_metrics["by_type"] = metrics.by_defect_type(
        labels, scores, test.defect_types, test.masks if use_masks else None, maps if use_masks else None
    )
    result_metrics["synthetic"] = synthetic
    result_metrics.update(exclusion.to_metrics())
    result_metrics["outlying_goods"] = [Path(test.paths[i]).name for i in metrics.outlying_goods(labels, scores)]
    result_metrics["warnings"] = (
        leak_warnings(exclusion, duplicates)
        + detection_warnings(result_metrics)
        + outlier_warnings(result_metrics)
        + training_warnings(model.name, loaded.metadata.get("preset"), loaded.metadata.get("iterations"))
    )
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


# ---------------------------------------------------------------------------------------------------------
# Warnings carried by every evaluation (rules in notes/evaluation.md)

MIN_ITERATIONS_FOR_MINUTES_PRESETS = 200  # DRAEM `cpu` does ~300-400 in its 10 min on an idle 2-core machine
UNDERTRAINED_SHARE = 0.25  # fewer than a quarter of a preset's suggested iterations: under-trained


def leak_warnings(exclusion: Any, duplicates: list[list[str]]) -> list[str]:
    out = []
    if exclusion.removed:
        out.append(
            f"{len(exclusion.removed)} evaluation image(s) are identical to images this run trained on; they were "
            "left out of the evaluation."
        )
    if exclusion.kept_training_goods:
        out.append(
            f"Evaluated on {exclusion.kept_training_goods} good image(s) this run trained on (there are no others): "
            "false-alarm figures and thresholds are optimistic. Add good images the run has not seen."
        )
    if duplicates:
        out.append(
            f"{sum(len(g) - 1 for g in duplicates)} evaluation image(s) are byte-identical copies of others "
            "(e.g. " + " = ".join(Path(p).name for p in duplicates[0][:2]) + "): they count twice."
        )
    return out


def detection_warnings(m: dict[str, Any]) -> list[str]:
    """At or below chance (image AUROC <= metrics.CHANCE_AUROC), or not shown better than chance (the 95 %
    interval from the counts reaches 0.5)."""
    from recon_core.metrics import CHANCE_AUROC, auroc_interval

    auc, n_good, n_defect = m.get("image_auroc"), int(m.get("n_good") or 0), int(m.get("n_defect") or 0)
    if auc is None:
        return []
    lo, hi = auroc_interval(auc, n_defect, n_good)
    kind = "synthetic" if m.get("synthetic") else "real"
    counts = f"{n_good} good / {n_defect} {kind} defect images"
    if auc <= CHANCE_AUROC:
        return [
            f"At or below chance on {kind} defects: image AUROC {auc:.3f} (95 % interval {lo:.2f}-{hi:.2f}, "
            f"{counts}). The model does not tell these defects from good parts: do not use it for decisions; train "
            "longer, try another model or preset, or design synthetic defects closer to the real ones."
        ]
    if not m.get("synthetic") and lo <= 0.5:
        return [
            f"Not shown better than chance: image AUROC {auc:.3f}, but with {counts} its 95 % interval reaches "
            f"{lo:.2f}. Add real defect and good images before relying on it."
        ]
    return []


def outlier_warnings(m: dict[str, Any]) -> list[str]:
    """Good images scored far above every other good (metrics.outlying_goods): a variant training lacked."""
    names = m.get("outlying_goods") or []
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [
        f"{len(names)} good image(s) score far above all the other good images ({shown}): they likely show a "
        "variant of the product that no training image shows (another position, lighting, an edge of the part), "
        "so the model calls them defective. They lower the image AUROC and lift a threshold set from good images. "
        "Add photos like them to the training goods and train again (or remove them if they are not good parts)."
    ]


def training_warnings(model: str | None, preset: str | None, iterations: Any) -> list[str]:
    """Far fewer iterations than the preset needs (a minutes budget on a busy machine buys few)."""
    from recon_core.models import get_model_class

    if not model or not isinstance(iterations, int):
        return []
    try:
        suggested = get_model_class(model).suggested_budget(preset)
    except ReconError:
        return []
    if "iterations" in suggested:
        floor = UNDERTRAINED_SHARE * float(suggested["iterations"])
        basis = f"preset {preset!r} is meant for {int(suggested['iterations'])}"
    elif "minutes" in suggested:
        floor = MIN_ITERATIONS_FOR_MINUTES_PRESETS
        basis = f"preset {preset!r} needs at least ~{MIN_ITERATIONS_FOR_MINUTES_PRESETS} to learn anything useful"
    else:
        return []
    if iterations >= floor:
        return []
    return [
        f"Under-trained: {iterations} iterations, {basis}. Train longer (a larger budget, or when the machine is "
        "less busy: a minutes budget on a busy machine buys few iterations) or continue this run."
    ]


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
        metrics=with_legacy_warning(dict(meta.get("metrics", {}))),
        synthetic=bool(meta.get("synthetic")),
    )


def defect_type_rows(result: EvalResult, threshold: Any = None) -> list[dict[str, Any]]:
    """metrics.by_defect_type of an evaluation (computed on full-size maps when it was made; an evaluation saved
    before that existed is recomputed from its stored maps), plus `caught`, each type's share rejected at
    `threshold` (a metrics.Threshold) when one is given."""
    from recon_core import metrics

    if len(result.defect_types) != len(result.labels):
        return []  # an evaluation saved without its defect types
    rows = result.metrics.get("by_type")
    if rows is None:
        with_maps = result.has_masks and result.maps.shape == result.masks.shape
        rows = metrics.by_defect_type(
            result.labels,
            result.scores,
            result.defect_types,
            result.masks if with_maps else None,
            result.maps if with_maps else None,
        )
    rows = [dict(r) for r in rows]
    if threshold is not None:
        caught = metrics.caught_by_type(result.labels, result.scores, result.defect_types, threshold)
        for row in rows:
            row["caught"] = caught.get(row["type"])
    return rows


def describe_type_row(row: dict[str, Any]) -> str:
    """'crack (57 images): image AUROC 0.612, pixel AUROC 0.540, caught 30 %' (figures it lacks are left out)."""
    parts = [
        f"{label} {row[key]:.3f}"
        for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"))
        if row.get(key) is not None
    ]
    if row.get("caught") is not None:
        parts.append(f"caught {100 * row['caught']:.0f} %")
    return f"{row['type']} ({row['n']} images): " + ", ".join(parts)


def type_findings(rows: list[dict[str, Any]], pixel_auroc: float | None = None) -> list[str]:
    """What the per-type rows mean for the user, in sentences: kinds the image score cannot tell from good parts,
    kinds the maps find but the image score misses (good parts' maps peak as high), and one kind whose area makes
    the pooled pixel AUROC its own figure while another kind's differs. Empty with fewer than two kinds (the
    headline already says it)."""
    if len(rows) < 2:
        return []
    out = []
    blind = [r for r in rows if r.get("image_auroc") is not None and r["image_auroc"] <= NEAR_CHANCE]
    seen = [r for r in blind if (r.get("pixel_auroc") or 0.0) >= FOUND_BY_MAPS]
    unseen = [r for r in blind if r not in seen]
    if unseen:
        names = ", ".join(f"{r['type']} ({r['image_auroc']:.2f})" for r in unseen)
        out.append(
            f"Near chance on {names}: the image score barely tells these kinds from good parts (image AUROC "
            f"≤ {NEAR_CHANCE}). If you have a few photos of them with masks, add them as training defects (Project "
            "page), or try another model."
        )
    if seen:
        names = ", ".join(f"{r['type']} (pixel {r['pixel_auroc']:.2f}, image {r['image_auroc']:.2f})" for r in seen)
        out.append(
            f"The maps find {names}, but the image score misses them: good parts' maps peak as high somewhere. "
            "Look at the good images' heatmaps (Evaluate page) for where."
        )
    shares = [r for r in rows if r.get("pixel_share") is not None and r["pixel_share"] >= DOMINANT_PIXEL_SHARE]
    dominant = shares[0] if shares and shares[0].get("pixel_auroc") is not None else None
    hidden = dominant is not None and any(
        r.get("pixel_auroc") is not None and abs(r["pixel_auroc"] - dominant["pixel_auroc"]) >= HIDDEN_GAP for r in rows
    )
    if hidden and pixel_auroc is not None:
        out.append(
            f"{dominant['type']} holds {100 * dominant['pixel_share']:.0f} % of all defect pixels, so the pixel AUROC "
            f"({pixel_auroc:.3f}) is mostly its figure; the other kinds' own pixel AUROC is in the table."
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# The run's current evaluation: one owner for what the picker, metrics.json and exports show

EVAL_STEMS = ("eval_app", "eval")  # the app's / CLI's re-evaluations, and the one the run made when it finished
EVAL_KEYS = (
    "image_auroc",
    "image_ap",
    "f1_max",
    "pixel_auroc",
    "pixel_ap",
    "aupro",
    "n_good",
    "n_defect",
    "synthetic",
    "excluded_training_images",
    "evaluation_goods_seen_in_training",
    "evaluation_training_goods",
    "warnings",
)


LEGACY_WARNING = (
    "This evaluation was made before Recon Studio checked evaluations for the run's own training images: it may "
    "include some. Evaluate again (Evaluate page or `python -m recon_core eval`)."
)


def with_legacy_warning(m: dict[str, Any]) -> dict[str, Any]:
    """An evaluation saved without the training-image check (older versions) says so."""
    if "n_good" in m and "excluded_training_images" not in m:
        m = {**m, "warnings": [LEGACY_WARNING, *(m.get("warnings") or [])]}
    return m


def evaluated_on(m: dict[str, Any]) -> str:
    """'real defects: 8 good / 4 defect images' or 'synthetic defects on 4 held-out good images'."""
    n_good, n_defect = m.get("n_good"), m.get("n_defect")
    if m.get("synthetic"):
        return f"synthetic defects on {n_good} held-out good images"
    return f"real defects: {n_good} good / {n_defect} defect images"


def record_evaluation(run_dir: str | Path, result: EvalResult, stem: str = "eval_app") -> Path:
    """Save `result` as the run's current evaluation (run_dir/<stem>.npz/.json) and bring metrics.json's headline
    figures up to date, so the run picker, the CLI and exports show the latest evaluation and what it was made on."""
    from recon_core.config import load_json, save_json

    run_dir = Path(run_dir)
    save_eval(result, run_dir / stem)
    path = run_dir / "metrics.json"
    try:
        current = load_json(path) if path.is_file() else {}
    except ReconError:
        current = {}
    if not isinstance(current, dict):
        current = {}
    for key in EVAL_KEYS:
        current[key] = result.metrics.get(key)
    current.update(evaluation=stem, evaluated_on=evaluated_on(result.metrics), evaluated_at=time.time())
    save_json(path, current)
    return run_dir / stem


def current_evaluation(run_dir: str | Path) -> tuple[EvalResult | None, Path | None]:
    """The run's latest saved evaluation (the newest of eval_app / eval) and its stem; (None, None) if none."""
    run_dir = Path(run_dir)
    found = [(run_dir / s).with_name(s + ".npz") for s in EVAL_STEMS]
    found = [p for p in found if p.is_file()]
    if not found:
        return None, None
    newest = max(found, key=lambda p: p.stat().st_mtime)
    stem = newest.with_name(newest.name[: -len(".npz")])
    return load_eval(stem), stem


def evaluation_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's current headline figures from metrics.json (kept current by `record_evaluation`): the EVAL_KEYS
    plus 'evaluated_on' (a sentence); empty when the run has no metrics yet."""
    try:
        m = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(m, dict):
        return {}
    m = with_legacy_warning(m)
    out = {key: m.get(key) for key in EVAL_KEYS}
    out["warnings"] = list(m.get("warnings") or [])
    out["evaluated_on"] = m.get("evaluated_on") or (evaluated_on(m) if "n_good" in m else None)
    return out


def record_threshold(run_dir: str | Path, threshold: Any) -> None:
    """Save a threshold into the run's bundle and into metrics.json (what exports and the CLI report)."""
    from recon_core.bundle import set_threshold
    from recon_core.config import load_json, save_json, to_dict

    run_dir = Path(run_dir)
    set_threshold(run_dir / "model.pt", threshold)
    path = run_dir / "metrics.json"
    if path.is_file():
        try:
            current = load_json(path)
        except ReconError:
            return
        if isinstance(current, dict):
            current["threshold"] = None if threshold is None else to_dict(threshold)
            save_json(path, current)
