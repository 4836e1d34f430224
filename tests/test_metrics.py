"""Metrics and thresholds: hand-computed values, AUPRO, degenerate inputs, review band, invariances."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import average_precision_score, roc_auc_score

from recon_core.errors import ReconError
from recon_core.metrics import (
    Threshold,
    aupro,
    confusion,
    evaluate,
    f1_max,
    image_ap,
    image_auroc,
    pixel_ap,
    pixel_auroc,
    pr_points,
    roc_points,
    threshold_at_fpr,
    threshold_f1,
    threshold_manual,
    threshold_quantile,
    verdicts,
)

LABELS = [0, 0, 1, 1]
SCORES = [0.1, 0.4, 0.35, 0.8]


def test_image_metrics_known_values():
    assert image_auroc(LABELS, SCORES) == pytest.approx(0.75)  # 3 of 4 (good, defect) pairs ordered right
    assert image_ap(LABELS, SCORES) == pytest.approx((1 / 1 + 2 / 3) / 2)
    f1, thr = f1_max(LABELS, SCORES)
    assert f1 == pytest.approx(0.8) and thr == pytest.approx(0.35)  # tp 2, fp 1 -> P 2/3, R 1


def test_ties_count_half():
    assert image_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_pixel_metrics_match_sklearn_with_ties():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 16, 16)) < 0.2
    maps = np.round(rng.random((3, 16, 16)) + 0.3 * masks, 1)  # many ties
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)


def hand_aupro_case():
    """Ten good pixels score 0.0 .. 0.9 (the other good ones -1); region A (2 px) scores 0.95; region B (2 px)
    scores 0.85 and 0.05."""
    maps = np.zeros((1, 4, 7), np.float32)
    masks = np.zeros((1, 4, 7), np.uint8)
    good = [(r, c) for r in range(4) for c in range(7)]
    region_a = [(0, 0), (0, 1)]
    region_b = [(3, 5), (3, 6)]
    for r, c in region_a + region_b:
        masks[0, r, c] = 1
    free = [p for p in good if p not in region_a + region_b]
    for r, c in free:
        maps[0, r, c] = -1.0  # most good pixels score low ...
    for i, (r, c) in enumerate(free[:10]):
        maps[0, r, c] = i / 10  # ... ten of them 0.0 .. 0.9
    maps[0, 0, 0] = maps[0, 0, 1] = 0.95
    maps[0, 3, 5], maps[0, 3, 6] = 0.85, 0.05
    n_good = len(free)
    return masks, maps, n_good


def test_aupro_hand_case():
    masks, maps, n_good = hand_aupro_case()
    # each good pixel above a threshold adds 1/n_good to the FPR. Thresholds: > 0.95 -> PRO 0;
    # (0.9, 0.95] -> PRO 0.5 (A found), FPR 0; (0.85, 0.9] -> PRO 0.5, FPR 1 step; (0.8, 0.85] -> PRO 0.75
    # (half of B), FPR 1 step; then PRO stays 0.75 until past FPR 0.3 (B's other pixel scores 0.05).
    step = 1 / n_good
    max_fpr = 0.3
    expected = (step * 0.5 + (max_fpr - step) * 0.75) / max_fpr
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-9)


def test_aupro_perfect_and_worst():
    masks = np.zeros((4, 16, 16), np.uint8)
    masks[1, 2:6, 2:6] = 1
    masks[2, 8:, 8:] = 1
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    assert aupro(masks, -masks.astype(np.float32)) == pytest.approx(0.0)


def test_aupro_regions_weighted_equally():
    # a big region found, a small one missed: PRO = 0.5 whatever the sizes (pixel recall would be ~0.99)
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[0, :20, :20] = 1
    masks[1, 0, 0] = 1  # same place in another image: must be a separate region
    maps = np.zeros_like(masks, dtype=np.float32)
    maps[0, :20, :20] = 1.0
    maps[1, 0, 0] = -1.0
    assert aupro(masks, maps) == pytest.approx(0.5)


def test_aupro_max_fpr_validated():
    with pytest.raises(ReconError):
        aupro(np.ones((1, 4, 4)), np.ones((1, 4, 4)), max_fpr=0)


@pytest.mark.parametrize(
    "labels",
    [[0, 0, 0], [1, 1, 1], []],
)
def test_degenerate_labels_nan(labels):
    scores = list(range(len(labels)))
    assert math.isnan(image_auroc(labels, scores)) and math.isnan(image_ap(labels, scores))
    assert all(math.isnan(v) for v in f1_max(labels, scores))
    assert roc_points(labels, scores)["fpr"] == []


def test_degenerate_masks_nan():
    zeros = np.zeros((2, 8, 8))
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert math.isnan(pixel_auroc(zeros, maps)) and math.isnan(pixel_ap(zeros, maps)) and math.isnan(aupro(zeros, maps))
    ones = np.ones((2, 8, 8))
    assert math.isnan(pixel_auroc(ones, maps)) and math.isnan(aupro(ones, maps))


def test_evaluate_keys_and_none():
    result = evaluate([0, 0, 0], [0.1, 0.2, 0.3])
    assert set(result) == {
        "image_auroc",
        "image_ap",
        "f1_max",
        "pixel_auroc",
        "pixel_ap",
        "aupro",
        "n_good",
        "n_defect",
    }
    assert result["image_auroc"] is None and result["pixel_auroc"] is None and result["aupro"] is None
    assert result["n_good"] == 3 and result["n_defect"] == 0
    json.dumps(result)  # no NaN sneaks into JSON
    masks = np.zeros((4, 8, 8))
    masks[2:, 2:5, 2:5] = 1
    maps = masks + 0.1
    full = evaluate(LABELS, SCORES, masks, maps)
    assert full["image_auroc"] == pytest.approx(0.75) and full["pixel_auroc"] == pytest.approx(1.0)
    assert full["aupro"] == pytest.approx(1.0) and full["n_defect"] == 2


def test_bad_inputs_raise():
    with pytest.raises(ReconError):
        image_auroc([0, 1], [0.1])
    with pytest.raises(ReconError):
        image_auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ReconError):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ReconError):
        pixel_auroc(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))


def test_evaluate_fast_on_200_maps():
    rng = np.random.default_rng(0)
    masks = np.zeros((200, 256, 256), np.uint8)
    masks[100:, 40:80, 60:120] = 1
    maps = rng.random(masks.shape, dtype=np.float32) + 0.5 * masks
    labels = (masks.reshape(200, -1).max(axis=1) > 0).astype(int)
    start = time.perf_counter()
    result = evaluate(labels, maps.reshape(200, -1).max(axis=1), masks, maps)
    assert time.perf_counter() - start < 15  # measured ~0.6 s on one core; generous for a busy CI machine
    assert 0.5 < result["aupro"] < 1 and 0.5 < result["pixel_auroc"] < 1


def test_curves_are_json_ready():
    roc = roc_points(LABELS, SCORES)
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and all(math.isfinite(t) for t in roc["thresholds"])
    json.dumps(roc)
    pr = pr_points(LABELS, SCORES)
    assert len(pr["precision"]) == len(pr["recall"]) == len(pr["thresholds"]) + 1


# ---------------------------------------------------------------------------------------------------------
# thresholds


def test_threshold_f1():
    thr = threshold_f1(LABELS, SCORES)
    assert thr.value == pytest.approx(0.35) and thr.method == "f1" and thr.params["f1"] == pytest.approx(0.8)
    with pytest.raises(ReconError, match="both good and defect"):
        threshold_f1([0, 0], [0.1, 0.2])


def test_threshold_at_fpr():
    good = [i / 10 for i in range(1, 11)]
    labels = [0] * 10 + [1, 1]
    scores = [*good, 0.95, 0.5]
    thr = threshold_at_fpr(labels, scores, 0.1)
    assert thr.value == pytest.approx(1.0) and thr.params["fpr"] == pytest.approx(0.1)
    thr = threshold_at_fpr(labels, scores, 0.2)
    assert thr.value == pytest.approx(0.9) and thr.params["tpr"] == pytest.approx(0.5)
    strict = threshold_at_fpr(labels, scores, 0.0)
    assert strict.value > 1.0 and strict.params["fpr"] == 0
    with pytest.raises(ReconError, match="good"):
        threshold_at_fpr([1, 1], [0.1, 0.2], 0.1)
    with pytest.raises(ReconError):
        threshold_at_fpr(labels, scores, 1.5)


def test_threshold_at_fpr_never_exceeds_target_with_ties():
    thr = threshold_at_fpr([0, 0, 0, 0, 1], [0.5, 0.5, 0.5, 0.1, 0.9], 0.25)
    assert thr.params["fpr"] <= 0.25 and thr.value > 0.5


def test_threshold_quantile():
    good = np.arange(101, dtype=float)
    assert threshold_quantile(good, 0.9).value == pytest.approx(90.0)
    assert threshold_quantile(good, 1.0).value > 100
    with pytest.raises(ReconError, match="at least 2"):
        threshold_quantile([1.0], 0.9)
    with pytest.raises(ReconError):
        threshold_quantile(good, 0.0)


def test_threshold_manual_and_validation():
    assert threshold_manual(0.3).value == 0.3
    with pytest.raises(ReconError):
        threshold_manual(float("nan"))
    with pytest.raises(ReconError, match="review_below"):
        Threshold(0.5, "manual", review_below=0.7)


def test_verdicts_with_review_band():
    thr = Threshold(0.5, "manual", review_below=0.3)
    assert verdicts([0.1, 0.3, 0.49, 0.5, 0.9], thr) == ["accept", "review", "review", "reject", "reject"]
    assert verdicts([0.1, 0.3, 0.6], Threshold(0.5, "manual")) == ["accept", "accept", "reject"]
    assert verdicts([float("nan"), float("inf")], Threshold(0.5, "manual")) == ["review", "reject"]
    assert Threshold(np.float32(0.5), "f1", review_below=np.float32(0.25)).value == 0.5


def test_confusion():
    thr = Threshold(0.5, "manual", review_below=0.3)
    c = confusion([0, 0, 0, 1, 1, 1], [0.1, 0.4, 0.6, 0.35, 0.7, 0.9], thr)
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (2, 1, 2, 1)
    assert c["review_good"] == 1 and c["review_defect"] == 1
    assert c["precision"] == pytest.approx(2 / 3) and c["fpr"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------------------
# invariances

# scores on a 0.01 grid: transforms stay strictly monotone in floating point (no denormal collisions)
scores_st = hnp.arrays(np.int64, st.integers(4, 40), elements=st.integers(-10_000, 10_000)).map(lambda a: a / 100)


@settings(max_examples=60, deadline=None)
@given(scores=scores_st, seed=st.integers(0, 1000))
def test_auroc_invariant_to_monotone_transforms(scores, seed):
    labels = np.random.default_rng(seed).integers(0, 2, scores.size)
    base = image_auroc(labels, scores)
    if math.isnan(base):
        return
    for transformed in (3 * scores + 7, np.tanh(scores / 50), scores**3):
        assert image_auroc(labels, transformed) == pytest.approx(base, abs=1e-9)
    assert image_auroc(labels, -scores) == pytest.approx(1 - base, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_pixel_metrics_agree_with_sklearn_and_aupro_bounded(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 12, 12), np.uint8)
    for i in range(3):
        r, c = rng.integers(0, 9, 2)
        masks[i, r : r + rng.integers(1, 4), c : c + rng.integers(1, 4)] = 1
    maps = np.round(rng.random((3, 12, 12)) + rng.random() * masks, 2)
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-9)
    value = aupro(masks, maps)
    assert 0 <= value <= 1
    assert aupro(masks, np.exp(maps)) == pytest.approx(value, abs=1e-9)


def test_threshold_json_round_trip():
    from recon_core.config import from_dict, to_dict

    thr = threshold_at_fpr(LABELS, SCORES, 0.5).with_review(0.2)
    assert from_dict(Threshold, to_dict(thr)) == thr


def _brute_aupro(masks, maps, max_fpr=0.3):
    """Reference: PRO and FPR at EVERY distinct score, regions from skimage, same integration rule."""
    from skimage.measure import label

    regions = []
    for m in range(len(masks)):
        lab = label(masks[m], connectivity=2)
        regions += [maps[m][lab == r] for r in range(1, lab.max() + 1)]
    good = maps[masks == 0]
    ts = np.concatenate([[np.inf], np.unique(maps)[::-1]])
    fpr = np.array([(good >= t).mean() for t in ts])
    pro = np.array([np.mean([(r >= t).mean() for r in regions]) for t in ts])
    keep = fpr <= max_fpr
    j = np.flatnonzero(fpr > max_fpr)[0]
    y_end = pro[j - 1] + (pro[j] - pro[j - 1]) * (max_fpr - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
    return np.trapezoid(np.append(pro[keep], y_end), np.append(fpr[keep], max_fpr)) / max_fpr


@pytest.mark.parametrize("seed", range(4))
def test_aupro_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((4, 24, 24), np.uint8)
    for i in range(4):
        for _ in range(rng.integers(0, 3)):
            r, c = rng.integers(0, 20, 2)
            masks[i, r : r + rng.integers(1, 5), c : c + rng.integers(1, 5)] = 1
    masks[0, 0, 0] = 1
    maps = rng.random(masks.shape) + rng.random() * masks
    assert aupro(masks, maps) == pytest.approx(_brute_aupro(masks, maps), abs=1e-9)


def test_by_defect_type_finds_the_kind_a_headline_hides():
    """Two kinds of defect: one scored far above every good image, one among them. The headline AUROC is 0.75;
    per type it is 1.0 and 0.5 (with masks, the pixel AUROC per type follows the same split)."""
    from recon_core.metrics import by_defect_type, caught_by_type

    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    types = ["good"] * 4 + ["crack", "crack", "stain", "stain"]
    scores = [0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.15, 0.35]
    assert image_auroc(labels, scores) == pytest.approx(0.75)
    masks = np.zeros((8, 4, 4))
    masks[4:, 0, 0] = 1
    maps = np.zeros((8, 4, 4))
    maps[4:6, 0, 0] = 1.0  # crack pixels above every good pixel, stain pixels level with them (ties count half)
    rows = by_defect_type(labels, scores, types, masks, maps)
    assert [(r["type"], r["n"]) for r in rows] == [("crack", 2), ("stain", 2)]
    assert rows[0]["image_auroc"] == pytest.approx(1.0) and rows[1]["image_auroc"] == pytest.approx(0.5)
    assert rows[0]["pixel_auroc"] == pytest.approx(1.0) and rows[1]["pixel_auroc"] == pytest.approx(0.5)
    assert [r["pixel_share"] for r in rows] == [0.5, 0.5]  # one defect pixel in each of the 4 defect images
    assert [r["pixel_auroc"] for r in by_defect_type(labels, scores, types)] == [None, None]  # no masks
    caught = caught_by_type(labels, scores, types, Threshold(0.5, "manual"))
    assert caught == {"crack": 1.0, "stain": 0.0}
    assert json.loads(json.dumps(rows)) == rows  # stored in eval.json / metrics.json as it is
    with pytest.raises(ReconError, match="defect types"):
        by_defect_type(labels, scores, types[:-1])
    # no good images: each type's image AUROC is undefined, not a crash
    assert by_defect_type([1, 1], [0.2, 0.3], ["a", "b"])[0]["image_auroc"] is None
