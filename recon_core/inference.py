"""Run a trained bundle on image files: scores, verdicts, heatmap overlays. A file that cannot be read is
reported as that file's problem; it never stops the others."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from recon_core.images import to_uint8

CSV_FIELDS = ["path", "score", "verdict", "problem"]


def _as_bundle(bundle: Any) -> Any:
    from recon_core.bundle import LoadedBundle, load_bundle

    return bundle if isinstance(bundle, LoadedBundle) else load_bundle(bundle)


def predict_images(bundle: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W, 3) float32 at the model's size -> (scores (N,), maps (N, H, W))."""
    loaded = _as_bundle(bundle)
    model = loaded.model
    model.train_mode(False)
    pred = model.score(np.asarray(images, dtype=np.float32), batch_size=int(getattr(model.config, "batch_size", 8)))
    return np.asarray(pred.image_scores, dtype=np.float64), np.asarray(pred.maps, dtype=np.float32)


def predict_paths(
    bundle: Any, paths: list[str] | list[Path]
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """-> (rows, maps, images). rows: one dict per input path, in order: path, score (None if unreadable),
    verdict ("accept"/"review"/"reject", or None without a threshold or score), problem (None or a reason).
    maps / images: path -> anomaly map (H, W) / resized image (H, W, 3), for readable files only."""
    from recon_core.images import load_images
    from recon_core.metrics import verdicts

    loaded = _as_bundle(bundle)
    size = loaded.model.config.image_size
    str_paths = [str(p) for p in paths]
    imageset = load_images(str_paths, size)
    problems = {p.path: p.reason for p in imageset.problems}
    maps: dict[str, np.ndarray] = {}
    images: dict[str, np.ndarray] = {}
    scores_by_path: dict[str, float] = {}
    if len(imageset):
        scores, pred_maps = predict_images(loaded, imageset.images)
        for p, s, m, img in zip(imageset.paths, scores, pred_maps, imageset.images, strict=True):
            scores_by_path[p] = float(s)
            maps[p] = m
            images[p] = img
    rows: list[dict[str, Any]] = []
    for p in str_paths:  # load_images keeps str(path) as given, so the input order is restored by name
        score = scores_by_path.get(p)
        problem = None if score is not None else problems.get(p, "could not be read")
        verdict = None
        if score is not None and loaded.threshold is not None:
            verdict = verdicts(np.array([score]), loaded.threshold)[0]
        rows.append({"path": p, "score": score, "verdict": verdict, "problem": problem})
    return rows, maps, images


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # surrogateescape: a non-UTF-8 file name is written back as its original bytes (it still names the file)
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            out = dict(row)
            out["score"] = "" if row.get("score") is None else f"{row['score']:.6g}"
            out["verdict"] = row.get("verdict") or ""
            out["problem"] = row.get("problem") or ""
            writer.writerow(out)


def normalise_map(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    amap = np.asarray(amap, dtype=np.float32)
    lo = float(np.min(amap)) if vmin is None else vmin
    hi = float(np.max(amap)) if vmax is None else vmax
    if not np.isfinite(hi - lo) or hi - lo <= 1e-12:
        return np.zeros_like(amap)
    return np.clip((amap - lo) / (hi - lo), 0.0, 1.0)


def heatmap(amap: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Anomaly map -> RGB uint8 (H, W, 3) with the JET colour map."""
    norm = (normalise_map(amap, vmin, vmax) * 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(norm, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(
    image: np.ndarray, amap: np.ndarray, alpha: float = 0.5, vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Blend a JET heatmap of `amap` over `image` ((H, W, 3) float in [0, 1] or uint8) -> uint8 (H, W, 3). The map
    is resized to the image. vmin/vmax fix the colour scale (e.g. across images); default: this map's range."""
    img = to_uint8(image)
    h, w = img.shape[:2]
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    heat = heatmap(amap, vmin, vmax)
    alpha = float(np.clip(alpha, 0.0, 1.0))
    return (img.astype(np.float32) * (1 - alpha) + heat.astype(np.float32) * alpha + 0.5).astype(np.uint8)


def save_png(path: str | Path, rgb: np.ndarray) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(np.asarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR))
    if not ok:
        from recon_core.errors import ReconError

        raise ReconError(f"{path}: could not encode image")
    path.write_bytes(encoded.tobytes())  # Python's open, not cv2.imwrite: any file name, even non-UTF-8


def panel(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None = None, alpha: float = 0.5) -> np.ndarray:
    """image | heatmap overlay | mask (if given), side by side, uint8."""
    img = to_uint8(image)
    h, w = img.shape[:2]
    parts = [img, overlay(img, amap, alpha)]
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape != (h, w):
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
        parts.append(np.repeat((m > 0.5).astype(np.uint8)[..., None] * 255, 3, axis=2))
    gap = np.full((h, 2, 3), 255, np.uint8)
    out = [parts[0]]
    for p in parts[1:]:
        out += [gap, p]
    return np.concatenate(out, axis=1)
