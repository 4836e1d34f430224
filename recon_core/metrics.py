"""Detection metrics and operating thresholds.

Conventions: higher score = more anomalous; labels 1 = defect, 0 = good; masks (N, H, W) in {0, 1}, maps
(N, H, W) real. Undefined metrics (one class only, no masks) are nan from the functions and None in evaluate().
Thresholds never fall back silently: if one cannot be chosen, ReconError says why.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from recon_core.errors import ReconError

AUPRO_THRESHOLDS = 1000  # threshold grid size for AUPRO (quantiles of the good-pixel scores)
VERDICTS = ("accept", "review", "reject")


def _labels_scores(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ReconError(f"metrics: {y.size} labels but {s.size} scores")
    if not np.all(np.isfinite(s)):
        raise ReconError("metrics: scores contain NaN or infinite values")
    if np.any((y != 0) & (y != 1)):
        raise ReconError("metrics: labels must be 0 (good) or 1 (defect)")
    return y, s


def _two_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < int(y.sum()) < y.size


def image_auroc(labels: Any, scores: Any) -> float:
    y, s = _labels_scores(labels, scores)
    return float(roc_auc_score(y, s)) if _two_classes(y) else math.nan


def image_ap(labels: Any, scores: Any) -> float:
    y, s = _labels_scores(labels, scores)
    return float(average_precision_score(y, s)) if _two_classes(y) else math.nan


def _pixels(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(masks)
    a = np.asarray(maps, dtype=np.float32)
    if m.shape != a.shape:
        raise ReconError(f"metrics: masks {m.shape} and maps {a.shape} differ in shape")
    return (m > 0.5).astype(np.uint8), a


def _sorted_split(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted defect-pixel scores and sorted good-pixel scores (np.sort on float32 is fast; argsort is not)."""
    m, a = _pixels(masks, maps)
    if not np.all(np.isfinite(a)):
        raise ReconError("metrics: anomaly maps contain NaN or infinite values")
    sel = m.astype(bool)
    return np.sort(a[sel], axis=None), np.sort(a[~sel], axis=None)


def pixel_auroc(masks: Any, maps: Any) -> float:
    """Exact ROC AUC over all pixels (ties count half), as the Mann-Whitney statistic. Same value as
    sklearn.metrics.roc_auc_score, but millions of pixels take a fraction of a second instead of many seconds."""
    pos, neg = _sorted_split(masks, maps)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    below = np.searchsorted(neg, pos, side="left").astype(np.float64)
    ties = np.searchsorted(neg, pos, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (pos.size * float(neg.size)))


def pixel_ap(masks: Any, maps: Any) -> float:
    """Exact average precision over all pixels, sklearn's definition (sum over thresholds of
    recall step x precision), evaluated at the distinct defect-pixel scores where recall changes."""
    pos, neg = _sorted_split(masks, maps)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    values, counts = np.unique(pos, return_counts=True)  # ascending
    tp = pos.size - np.searchsorted(pos, values, side="left")  # defect pixels >= v
    fp = neg.size - np.searchsorted(neg, values, side="left")  # good pixels >= v
    precision = tp / (tp + fp)
    return float(np.sum(counts / pos.size * precision))


def aupro(masks: Any, maps: Any, max_fpr: float = 0.3, num_thresholds: int = AUPRO_THRESHOLDS) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by max_fpr (1.0 = perfect).

    Each connected ground-truth region (8-connectivity, per image) counts equally: PRO(t) = mean over regions of
    the fraction of the region's pixels scoring >= t. FPR(t) = fraction of good pixels scoring >= t. Computed on
    a grid of thresholds at quantiles of the good-pixel scores (exact FPR steps), with histograms, then
    integrated by the trapezoid rule with the curve interpolated at max_fpr.
    """
    if not 0 < max_fpr <= 1:
        raise ReconError(f"aupro: max_fpr must be in (0, 1], got {max_fpr}")
    m, a = _pixels(masks, maps)
    if m.ndim == 2:
        m, a = m[None], a[None]
    if not np.all(np.isfinite(a)):
        raise ReconError("metrics: anomaly maps contain NaN or infinite values")
    good_sorted = np.sort(a[m == 0], axis=None)
    if good_sorted.size == 0 or not m.any():
        return math.nan
    # label regions per image so regions never join across images
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True  # 8-connected within an image, never across images
    regions, n_regions = ndimage.label(m, structure=structure)
    # Thresholds (descending): good-pixel scores at evenly spaced FPRs up to a bit past max_fpr, each also
    # nudged just above itself so that ties (e.g. binary maps) give the exact FPR steps on both sides.
    n_good = good_sorted.size
    fpr_grid = np.linspace(0.0, min(1.0, max_fpr * 1.05), num_thresholds)
    idx = np.clip(np.ceil((1.0 - fpr_grid) * n_good).astype(np.int64) - 1, 0, n_good - 1)
    grid = good_sorted[idx].astype(np.float64)
    thresholds = np.unique(np.concatenate([grid, np.nextafter(grid, np.inf), [np.inf]]))[::-1]
    fpr = 1.0 - np.searchsorted(good_sorted, thresholds, side="left") / n_good
    # PRO(t): per region, the share of its pixels >= t. Each defect pixel is detected from the first (highest)
    # threshold <= its score onwards, so a (region x first-threshold) histogram + cumsum gives every count at once.
    lab = regions[m > 0] - 1
    val = a[m > 0]
    ascending = thresholds[::-1]
    first = len(thresholds) - np.searchsorted(ascending, val, side="right")
    width = len(thresholds) + 1  # last column: below every threshold (never detected)
    hist = np.bincount(lab * width + first, minlength=n_regions * width).reshape(n_regions, width)
    sizes = hist.sum(axis=1)
    detected = np.cumsum(hist[:, :-1], axis=1)
    pro = (detected / sizes[:, None]).mean(axis=0)
    # integrate PRO over FPR in [0, max_fpr]
    keep = fpr <= max_fpr
    x, y = fpr[keep], pro[keep]
    if x[-1] < max_fpr:
        beyond = np.flatnonzero(fpr > max_fpr)
        if beyond.size:  # interpolate linearly between the last point inside and the first beyond max_fpr
            j = beyond[0]
            x0, x1, y0, y1 = fpr[j - 1], fpr[j], pro[j - 1], pro[j]
            y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        else:
            y_end = y[-1]
        x, y = np.append(x, max_fpr), np.append(y, y_end)
    return float(np.trapezoid(y, x) / max_fpr)


def f1_max(labels: Any, scores: Any) -> tuple[float, float]:
    """Best F1 over thresholds and the threshold achieving it (score >= threshold -> defect)."""
    y, s = _labels_scores(labels, scores)
    if not _two_classes(y):
        return math.nan, math.nan
    precision, recall, thresholds = precision_recall_curve(y, s)
    p, r = precision[:-1], recall[:-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def roc_points(labels: Any, scores: Any) -> dict[str, list[float]]:
    y, s = _labels_scores(labels, scores)
    if not _two_classes(y):
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    thr = np.where(np.isfinite(thr), thr, np.max(s) + 1.0)  # sklearn's first threshold is +inf; JSON can't hold it
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thr.tolist()}


def pr_points(labels: Any, scores: Any) -> dict[str, list[float]]:
    y, s = _labels_scores(labels, scores)
    if not _two_classes(y):
        return {"precision": [], "recall": [], "thresholds": []}
    precision, recall, thr = precision_recall_curve(y, s)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "thresholds": thr.tolist()}


def _none_if_nan(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def evaluate(labels: Any, scores: Any, masks: Any = None, maps: Any = None) -> dict[str, float | int | None]:
    """All headline metrics; undefined ones are None (e.g. no defects in the test set, no masks)."""
    y, s = _labels_scores(labels, scores)
    out: dict[str, float | int | None] = {
        "image_auroc": _none_if_nan(image_auroc(y, s)),
        "image_ap": _none_if_nan(image_ap(y, s)),
        "f1_max": _none_if_nan(f1_max(y, s)[0]),
        "pixel_auroc": None,
        "pixel_ap": None,
        "aupro": None,
        "n_good": int((y == 0).sum()),
        "n_defect": int((y == 1).sum()),
    }
    if masks is not None and maps is not None:
        out["pixel_auroc"] = _none_if_nan(pixel_auroc(masks, maps))
        out["pixel_ap"] = _none_if_nan(pixel_ap(masks, maps))
        out["aupro"] = _none_if_nan(aupro(masks, maps))
    return out


def _defect_kinds(labels: Any, scores: Any, defect_types: Any) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(labels, scores, {defect type: mask of its defect images}) with the types checked against the labels."""
    y, s = _labels_scores(labels, scores)
    types = np.asarray(list(defect_types), dtype=object)
    if types.shape != y.shape:
        raise ReconError(f"metrics: {y.size} labels but {types.size} defect types")
    kinds = sorted({str(t) for t in types[y == 1]})
    return y, s, {kind: (y == 1) & (types == kind) for kind in kinds}


def by_defect_type(
    labels: Any, scores: Any, defect_types: Any, masks: Any = None, maps: Any = None
) -> list[dict[str, Any]]:
    """Each kind of defect against all the good images: which kinds the model finds and which it misses (a headline
    AUROC can hide a kind at chance behind an easy one). One row per defect type, by name: `type`, `n`,
    `image_auroc` (that type's images vs every good image) and, with masks and maps, `pixel_auroc` (that type's
    defect pixels vs the good pixels of those images and of every good image) and `pixel_share` (its share of all
    defect pixels: the headline pixel AUROC is mostly the figure of the types with the largest share). Undefined
    figures are None."""
    y, s, kinds = _defect_kinds(labels, scores, defect_types)
    with_maps = masks is not None and maps is not None
    if with_maps:  # converted once, not per type
        masks, maps = np.asarray(masks), np.asarray(maps)
        defect_pixels = masks.reshape(len(y), -1) > 0.5
        total = int(defect_pixels.sum())
    rows: list[dict[str, Any]] = []
    for kind, mine in kinds.items():
        keep = (y == 0) | mine
        row: dict[str, Any] = {
            "type": kind,
            "n": int(mine.sum()),
            "image_auroc": _none_if_nan(image_auroc(y[keep], s[keep])),
            "pixel_auroc": None,
            "pixel_share": None,
        }
        if with_maps:
            row["pixel_auroc"] = _none_if_nan(pixel_auroc(masks[keep], maps[keep]))
            row["pixel_share"] = float(defect_pixels[mine].sum() / total) if total else None
        rows.append(row)
    return rows


def caught_by_type(labels: Any, scores: Any, defect_types: Any, threshold: Threshold) -> dict[str, float]:
    """Share of each defect type's images rejected at `threshold` (score >= its value): the detection rate per kind."""
    _, s, kinds = _defect_kinds(labels, scores, defect_types)
    return {kind: float((s[mine] >= threshold.value).mean()) for kind, mine in kinds.items()}


# ---------------------------------------------------------------------------------------------------------
# Thresholds


@dataclass
class Threshold:
    """score >= value -> "reject"; review_below <= score < value -> "review"; else "accept"."""

    value: float
    method: str
    review_below: float | None = None
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.value, numbers.Real) or isinstance(self.value, bool) or not math.isfinite(self.value):
            raise ReconError(f"threshold: value must be a finite number, got {self.value!r}")
        self.value = float(self.value)
        if self.review_below is not None:
            if not isinstance(self.review_below, numbers.Real) or not math.isfinite(self.review_below):
                raise ReconError(f"threshold: review_below must be finite, got {self.review_below!r}")
            if self.review_below > self.value:
                raise ReconError(
                    f"threshold: review_below ({self.review_below}) must not exceed the reject threshold ({self.value})"
                )
            self.review_below = float(self.review_below)

    def with_review(self, review_below: float | None) -> Threshold:
        return Threshold(self.value, self.method, review_below, dict(self.params))


def threshold_f1(labels: Any, scores: Any) -> Threshold:
    y, s = _labels_scores(labels, scores)
    if not _two_classes(y):
        raise ReconError("threshold: F1-optimal needs both good and defect images with scores")
    f1, value = f1_max(y, s)
    return Threshold(value, "f1", params={"f1": f1})


def threshold_at_fpr(labels: Any, scores: Any, target_fpr: float) -> Threshold:
    """The lowest threshold whose false-positive rate on the GOOD images is <= target_fpr."""
    y, s = _labels_scores(labels, scores)
    if not 0 <= target_fpr < 1:
        raise ReconError(f"threshold: target FPR must be in [0, 1), got {target_fpr}")
    good = np.sort(s[y == 0])
    if good.size == 0:
        raise ReconError("threshold: a target FPR needs scores of good images")
    allowed = math.floor(target_fpr * good.size + 1e-9)  # good images allowed at or above the threshold
    if allowed == 0:
        # nothing good may be rejected: just above the highest good score
        value = float(np.nextafter(good[-1], np.inf))
    else:
        value = float(good[good.size - allowed])
        # ties: if equal scores push us over the target, move above them
        if (good >= value).sum() > allowed:
            value = float(np.nextafter(value, np.inf))
    fpr = float((good >= value).mean())
    tpr = float((s[y == 1] >= value).mean()) if (y == 1).any() else None
    params = {"target_fpr": float(target_fpr), "fpr": fpr, "tpr": tpr, "warnings": fpr_support(good.size, target_fpr)}
    return Threshold(value, "fpr", params=params)


def threshold_quantile(good_scores: Any, quantile: float) -> Threshold:
    """A quantile of held-out GOOD scores (e.g. 0.99: about 1% of good parts would be rejected)."""
    s = np.asarray(good_scores, dtype=np.float64).ravel()
    if not 0 < quantile <= 1:
        raise ReconError(f"threshold: quantile must be in (0, 1], got {quantile}")
    if s.size < 2:
        raise ReconError(f"threshold: a quantile needs at least 2 good scores, got {s.size}")
    if not np.all(np.isfinite(s)):
        raise ReconError("threshold: good scores contain NaN or infinite values")
    value = float(np.quantile(s, quantile))
    if quantile == 1:
        value = float(np.nextafter(value, np.inf))  # accept every held-out good image
    params = {"quantile": float(quantile), "n_good": int(s.size), "warnings": fpr_support(s.size, 1 - quantile)}
    return Threshold(value, "quantile", params=params)


def threshold_manual(value: float) -> Threshold:
    return Threshold(value, "manual")


def verdicts(scores: Any, threshold: Threshold) -> list[str]:
    """accept / review / reject per score. A NaN score (a failed prediction) is never accepted: it goes to review."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    out = np.full(s.shape, "accept", dtype=object)
    if threshold.review_below is not None:
        out[s >= threshold.review_below] = "review"
    out[s >= threshold.value] = "reject"
    out[np.isnan(s)] = "review"
    return out.tolist()


def confusion(labels: Any, scores: Any, threshold: Threshold) -> dict[str, Any]:
    """Counts at the threshold (reject = predicted defect). Review-band images are counted separately too."""
    y, s = _labels_scores(labels, scores)
    pred = s >= threshold.value
    tp = int(((y == 1) & pred).sum())
    fp = int(((y == 0) & pred).sum())
    tn = int(((y == 0) & ~pred).sum())
    fn = int(((y == 1) & ~pred).sum())
    review = np.zeros_like(pred)
    if threshold.review_below is not None:
        review = (s >= threshold.review_below) & ~pred
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "review_good": int(((y == 0) & review).sum()),
        "review_defect": int(((y == 1) & review).sum()),
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "fpr": fp / (fp + tn) if fp + tn else None,
        "accuracy": (tp + tn) / y.size if y.size else None,
    }


# ---------------------------------------------------------------------------------------------------------
# What the data can support (notes/evaluation.md states these rules)

RULE_OF_THREE = 3.0  # no false alarm among n goods -> false-alarm rate below 3/n with 95 % confidence
TRUST_GOODS = 30  # held-out goods for a threshold to be trusted: 0 alarms among 30 bounds the rate below 10 %
TRUST_DEFECTS = 10  # real defects to confirm the threshold catches them (detection rate in steps of 10 %)
DEFAULT_MARGIN_SD = 1.0  # the default threshold: highest held-out good score + 1 standard deviation of them
CHANCE_AUROC = 0.55  # image AUROC at or below this on real defects: no better than guessing


OUTLIER_GOODS_MIN = 8  # fewer held-out goods: their median and spread say too little to call one an outlier
OUTLIER_ROBUST_Z = 50.0  # robust z (median, 1.4826 MAD) of a good's score: normal tails measured up to ~29


def outlying_goods(labels: Any, scores: Any) -> list[int]:
    """Indices of good images that score far above the other goods: more than OUTLIER_ROBUST_Z robust standard
    deviations above their median. Such a good usually shows a variant of the product the training images lack
    (AITEX fabric01: the scan-start tiles, mostly white, score 240-14 000 robust SDs above the rest for every model
    when the 20 training goods hold none of them), which caps the image AUROC and lifts a goods-based threshold."""
    y, s = _labels_scores(labels, scores)
    good = np.flatnonzero(y == 0)
    if good.size < OUTLIER_GOODS_MIN:
        return []
    g = s[good]
    centre = float(np.median(g))
    spread = 1.4826 * float(np.median(np.abs(g - centre)))
    if spread <= 0.0:
        return []
    return [int(i) for i in good[(g - centre) / spread > OUTLIER_ROBUST_Z]]


def goods_needed(target_fpr: float) -> int | None:
    """Held-out goods a false-alarm target needs before it means something (rule of three: 3 / target); None for
    a target of 0, which no finite number of goods confirms."""
    return None if target_fpr <= 0 else math.ceil(RULE_OF_THREE / target_fpr - 1e-9)


def fpr_support(n_good: int, target_fpr: float) -> list[str]:
    """Warnings when `n_good` held-out goods cannot support a false-alarm target: its resolution is 1/n (every
    target below it gives the same threshold, just above the highest good score), and a target p is only
    confirmed by about 3/p goods."""
    if n_good <= 0:
        return ["No good images in the evaluation: a false-alarm target cannot be set."]
    out: list[str] = []
    step = 1.0 / n_good
    if target_fpr < step:
        out.append(
            f"With {n_good} held-out good images the false-alarm rate moves in steps of {step:.1%}: a target of "
            f"{target_fpr:.1%} cannot be resolved (every target below {step:.1%} gives the same threshold, just above "
            "the highest good score)."
        )
    need = goods_needed(target_fpr)
    if need is None:
        out.append("A 0 % target cannot be confirmed by any number of good images; expect some false alarms.")
    elif n_good < need:
        out.append(
            f"A {target_fpr:.1%} target needs about {need} good images the model did not train on (rule of three: "
            f"0 false alarms among n goods bound the rate below 3/n); there are {n_good}."
        )
    return out


def provisional_reason(n_good: int, n_defect: int, synthetic: bool, trained_on: bool = False) -> str | None:
    """None when the evaluation can back a threshold; else the sentence saying what would make it trustworthy.
    `trained_on`: the goods are the run's own training images (too few to hold any out)."""
    needs = []
    if trained_on:
        needs.append("good images the run did not train on (these goods were its training images)")
    if n_good < TRUST_GOODS:
        needs.append(f"at least {TRUST_GOODS} held-out good images the run did not train on (there are {n_good})")
    if synthetic or n_defect == 0:
        needs.append(f"at least {TRUST_DEFECTS} real defect images (the evaluation used synthetic defects)")
    elif n_defect < TRUST_DEFECTS:
        needs.append(f"at least {TRUST_DEFECTS} real defect images (there are {n_defect})")
    if not needs:
        return None
    return "Provisional threshold: it becomes trustworthy with " + " and ".join(needs) + "."


def annotate(thr: Threshold, labels: Any, synthetic: bool, trained_on: bool = False) -> Threshold:
    """Record what the threshold was set on (counts, synthetic or real, the run's own training goods) and whether
    it is provisional."""
    y = np.asarray(labels).astype(np.int64).ravel()
    n_good, n_defect = int((y == 0).sum()), int((y == 1).sum())
    params = {**thr.params, "n_good": n_good, "n_defect": n_defect, "synthetic": bool(synthetic)}
    if trained_on:
        params["goods_seen_in_training"] = True
    reason = provisional_reason(n_good, n_defect, synthetic, trained_on)
    params.pop("provisional", None)
    if reason:
        params["provisional"] = reason
    return Threshold(thr.value, thr.method, thr.review_below, params)


def threshold_good_margin(good_scores: Any, margin_sd: float = DEFAULT_MARGIN_SD) -> Threshold:
    """The highest good score + `margin_sd` standard deviations of the good scores (just above the highest when
    there is only one): every held-out good is accepted, with room for goods a little worse than those seen."""
    s = np.asarray(good_scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise ReconError("threshold: the default threshold needs scores of good images the run did not train on")
    if not np.all(np.isfinite(s)):
        raise ReconError("threshold: good scores contain NaN or infinite values")
    spread = float(np.std(s, ddof=1)) if s.size > 1 else 0.0
    value = float(np.nextafter(s.max() + margin_sd * spread, np.inf))
    return Threshold(value, "good-margin", params={"margin_sd": margin_sd, "highest_good": float(s.max())})


def default_threshold(labels: Any, scores: Any, synthetic: bool, trained_on: bool = False) -> Threshold:
    """A new run's threshold: best F1 when the evaluation has REAL defects; otherwise from the held-out goods only
    (`threshold_good_margin`), because synthetic defects say nothing about where real ones score. Annotated."""
    y, s = _labels_scores(labels, scores)
    if not synthetic and _two_classes(y):
        thr = threshold_f1(y, s)
        basis = "best F1 on real defect images"
    else:
        thr = threshold_good_margin(s[y == 0])
        basis = f"highest held-out good score + {DEFAULT_MARGIN_SD:g} standard deviation of the good scores"
    thr = annotate(thr, y, synthetic, trained_on)
    thr.params.update(default=True, basis=basis)
    return thr


THRESHOLD_METHODS = {
    "good-margin": "held-out goods + margin",
    "f1": "best F1",
    "fpr": "target false-alarm rate",
    "quantile": "quantile of good scores",
    "roc": "ROC point",
    "manual": "by hand",
}


def describe_threshold(thr: Threshold | None) -> str:
    """One line for pages, CLI output and export READMEs: value, method, what it was set on, provisional."""
    if thr is None:
        return "no threshold"
    p = thr.params or {}
    text = f"{thr.value:.5f} ({THRESHOLD_METHODS.get(thr.method, thr.method)}"
    if p.get("default"):
        text += ", default"
    text += ")"
    if "n_good" in p:
        kind = "synthetic" if p.get("synthetic") else "real"
        text += f", set on {p['n_good']} good / {p.get('n_defect', 0)} {kind} defect images"
    if thr.review_below is not None:
        text += f", review from {thr.review_below:.5f}"
    if p.get("provisional"):
        text += ". " + str(p["provisional"])
    return text


def auroc_interval(auroc: float, n_defect: int, n_good: int, z: float = 1.96) -> tuple[float, float]:
    """Approximate 95 % interval of an AUROC from its counts (Hanley & McNeil 1982 standard error)."""
    a = min(max(float(auroc), 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_defect - 1) * (q1 - a * a) + (n_good - 1) * (q2 - a * a)) / max(1, n_defect * n_good)
    se = math.sqrt(max(var, 0.0))
    return max(0.0, auroc - z * se), min(1.0, auroc + z * se)
