"""The auto model's choice rule: each trained candidate's validation signals (probe defects on held-out goods, and
real defects when the project has some), whether the real defects are decisive (paired bootstrap), and the winner
with a reason a person can read. Pure functions of scores and maps; recon_core.auto trains the candidates and calls
these. The test split is never an input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


def _resize_images(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1] == size:
        return images
    interp = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (size, size), interpolation=interp) for im in images]).astype(np.float32)


def resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) anomaly maps -> (N, size, size) float32, bilinear: maps of models with other resolutions judged on
    one grid (auto's candidates; benchmarks/pixel_at_128.py)."""
    if maps.shape[1] == size:
        return maps.astype(np.float32)
    return np.stack([cv2.resize(m.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR) for m in maps])


def _auroc(metrics: Any, labels: np.ndarray, scores: np.ndarray) -> float | None:
    value = metrics.image_auroc(labels, scores)
    return None if value is None or np.isnan(value) else float(value)


@dataclass
class RealEvidence:
    """One candidate's scores on the choosing images: held-out goods (label 0) then real defects (label 1)."""

    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None
    maps: np.ndarray

    def signal(self, index: np.ndarray | None = None) -> tuple[float | None, float | None, float | None]:
        """-> (real signal = mean of the defined parts, image AUROC, pixel AUROC) on the images `index`."""
        from recon_core import metrics

        i = np.arange(len(self.labels)) if index is None else index
        image = _auroc(metrics, self.labels[i], self.scores[i])
        pixel = None if self.masks is None else _round(metrics.pixel_auroc(self.masks[i], self.maps[i]))
        parts = [v for v in (image, pixel) if v is not None]
        return (float(np.mean(parts)) if parts else None), image, pixel


def lead_share(leader: RealEvidence, other: RealEvidence, resamples: int, seed: int) -> float:
    """Share of paired bootstrap resamples (goods and defects each drawn with replacement, the same draw for both
    candidates) in which `leader`'s real signal beats `other`'s; ties count half."""
    rng = np.random.default_rng(seed)
    goods, defects = np.flatnonzero(leader.labels == 0), np.flatnonzero(leader.labels == 1)
    wins = 0.0
    for _ in range(resamples):
        index = np.concatenate([rng.choice(goods, len(goods)), rng.choice(defects, len(defects))])
        a, b = leader.signal(index)[0], other.signal(index)[0]
        a, b = -1.0 if a is None else a, -1.0 if b is None else b
        wins += 1.0 if a > b else 0.5 if a == b else 0.0
    return wins / resamples


def score_candidate(model: Any, probes: Any, real: dict[str, Any] | None) -> tuple[dict[str, Any], RealEvidence | None]:
    """Validation signals of one trained model (scored as its bundle scores, map normalisation included): probe
    defects on held-out goods, and real defects if any (-> also their per-image evidence, for lead_share)."""
    from recon_core import metrics

    size = probes.images.shape[1]
    batch = int(getattr(model.config, "batch_size", 8))
    model.train_mode(False)
    pred = model.score(_resize_images(probes.images, model.config.image_size), batch_size=batch)
    scores = np.asarray(pred.image_scores, np.float64)
    maps = resize_maps(np.asarray(pred.maps), size)
    goods = probes.labels == 0
    per_kind: dict[str, float] = {}
    for kind in sorted(set(probes.kinds) - {"good"}):
        sel = goods | np.array([k == kind for k in probes.kinds])
        value = _auroc(metrics, probes.labels[sel], scores[sel])
        if value is not None:
            per_kind[kind] = round(value, 4)
    out: dict[str, Any] = {
        "probe_image_auroc": round(float(np.mean(list(per_kind.values()))), 4) if per_kind else None,
        "probe_pixel_auroc": _round(metrics.pixel_auroc(probes.masks, maps)),
        "probe_detected_without_false_alarm": round(float(np.mean(scores[~goods] > scores[goods].max())), 4),
        "probe_image_auroc_by_kind": per_kind,
        "held_out_good_scores": [round(float(s), 6) for s in scores[goods]],
    }
    if real is None:
        return out, None
    rp = model.score(_resize_images(real["images"], model.config.image_size), batch_size=batch)
    evidence = RealEvidence(
        labels=np.concatenate([np.zeros(int(goods.sum()), int), np.ones(len(real["images"]), int)]),
        scores=np.concatenate([scores[goods], np.asarray(rp.image_scores, np.float64)]),
        masks=None if real["masks"] is None else np.concatenate([probes.masks[goods], real["masks"]]),
        maps=np.concatenate([maps[goods], resize_maps(np.asarray(rp.maps), size)]),
    )
    signal, image, pixel = evidence.signal()
    out.update(real_image_auroc=_round(image), real_pixel_auroc=pixel, real_signal=_round(signal))
    return out, evidence


def _round(value: float | None) -> float | None:
    return None if value is None or np.isnan(value) else round(float(value), 4)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def real_decisive(
    signals: dict[str, dict[str, Any]],
    evidence: dict[str, RealEvidence],
    *,
    resamples: int,
    decisive_share: float,
    seed: int,
) -> tuple[bool, str]:
    """Do the real defects pick a candidate beyond their sampling noise? Stores each candidate's
    `real_lead_share` (the leader's share of resamples against it) in its signals; -> (decisive, summary)."""
    names = list(signals)
    if len(names) < 2 or not all(n in evidence for n in names):
        return True, ""
    leader = max(names, key=lambda n: -1.0 if signals[n].get("real_signal") is None else signals[n]["real_signal"])
    shares = {}
    for n in names:
        if n != leader:
            shares[n] = round(lead_share(evidence[leader], evidence[n], resamples, seed), 3)
            signals[n]["real_lead_share"] = shares[n]
    n_def = int(evidence[leader].labels.sum())
    summary = (
        f"on the real defects {leader} leads "
        + ", ".join(f"{n} in {shares[n]:.0%}" for n in shares)
        + f" of {resamples} resamples of the {n_def} choosing defect(s) and "
        + f"{len(evidence[leader].labels) - n_def} held-out goods"
    )
    return min(shares.values()) >= decisive_share, summary


def choose(signals: dict[str, dict[str, Any]], tie_margin: float, real_is_decisive: bool = True) -> tuple[str, str]:
    """-> (winner, reason). Real defects decide when there are any and they are decisive (real_decisive); else the
    probe defects. Near ties go to the secondary signal."""
    names = list(signals)
    real = real_is_decisive and all(signals[n].get("real_signal") is not None for n in names)
    primary, secondary = ("real_signal", "probe_image_auroc") if real else ("probe_image_auroc", "probe_pixel_auroc")
    labels = {
        "real_signal": "real-defect score (mean of image and pixel AUROC on the held-out defects and goods)",
        "probe_image_auroc": "probe-defect image AUROC (held-out goods vs defects of kinds no candidate trained on)",
        "probe_pixel_auroc": "probe-defect pixel AUROC",
    }

    def value(name: str, key: str) -> float:
        v = signals[name].get(key)
        return -1.0 if v is None else float(v)

    best = max(value(n, primary) for n in names)
    near = [n for n in names if value(n, primary) >= best - tie_margin]
    winner = max(near, key=lambda n: (value(n, secondary), value(n, primary)))
    others = ", ".join(f"{n} {_fmt(signals[n].get(primary))}" for n in names if n != winner)
    reason = f"{winner}: {labels[primary]} {_fmt(signals[winner].get(primary))}" + (f" vs {others}" if others else "")
    if len(near) > 1:
        reason += (
            f"; within {tie_margin:g} of each other, so the {labels[secondary]} decided "
            f"({', '.join(f'{n} {_fmt(signals[n].get(secondary))}' for n in near)})"
        )
    return winner, reason
