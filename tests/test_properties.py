"""Property-based tests (hypothesis) of the defect generator and the metrics, derandomized so every run draws
the same examples (a failure reproduces; no luck-dependent CI). Complements test_synth.py::test_property_any_knobs
(fixed-size square batches) and test_metrics.py::test_auroc_invariant_to_monotone_transforms (image AUROC only).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon_core.errors import ReconError
from recon_core.metrics import (
    evaluate,
    f1_max,
    image_ap,
    image_auroc,
    threshold_at_fpr,
    threshold_f1,
    threshold_quantile,
    verdicts,
)
from recon_core.synth import AUGMENTATIONS, MAX_SCALE_EXPONENT, DefectGenerator, SynthConfig

FAST = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------------
# generator


@st.composite
def synth_configs(draw: st.DrawFn) -> SynthConfig:
    """Any valid SynthConfig, bounds included (opacity_min == opacity_max, probabilities 0 and 1, ...)."""
    lo = draw(st.integers(0, 4))
    op_lo = draw(st.floats(0.0, 1.0))
    return SynthConfig(
        perlin_scale_min=lo,
        perlin_scale_max=draw(st.integers(lo, min(MAX_SCALE_EXPONENT, 5))),
        threshold=draw(st.one_of(st.just(0.99), st.just(-1.0), st.floats(-1.0, 0.99))),
        rotate_noise=draw(st.booleans()),
        opacity_min=op_lo,
        opacity_max=draw(st.one_of(st.just(op_lo), st.floats(op_lo, 1.0))),
        defect_probability=draw(st.sampled_from([0.0, 1.0, 0.5, 0.3])),
        texture_source=draw(st.sampled_from(["bundled", "noise"])),
        texture_augmentations=draw(st.integers(0, len(AUGMENTATIONS))),
        rotate_good_probability=draw(st.sampled_from([0.0, 1.0])),
        rotate_good_degrees=draw(st.floats(0.0, 180.0)),
        seed=draw(st.integers(0, 2**31)),
    )


@FAST
@given(
    cfg=synth_configs(),
    batch=st.integers(1, 4),
    height=st.integers(16, 40),
    width=st.integers(16, 40),
    content=st.sampled_from(["random", "black", "white"]),
)
def test_generator_any_knobs_any_shape(cfg, batch, height, width, content):
    rng = np.random.default_rng(cfg.seed % 1000)
    images = {
        "random": rng.random((batch, height, width, 3), dtype=np.float32),
        "black": np.zeros((batch, height, width, 3), np.float32),
        "white": np.ones((batch, height, width, 3), np.float32),
    }[content]
    gen = DefectGenerator(cfg, max(height, width))
    aug, masks, has = gen.augment(images, np.random.default_rng(cfg.seed))
    assert aug.shape == images.shape and aug.dtype == np.float32
    assert masks.shape == (batch, height, width) and has.shape == (batch,)
    assert np.isfinite(aug).all() and aug.min() >= 0 and aug.max() <= 1
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert (masks.reshape(batch, -1).max(axis=1) > 0).tolist() == has.tolist()  # flag <=> non-empty mask
    if cfg.defect_probability == 0:
        assert not has.any()
    if cfg.defect_probability == 1:
        assert has.all()
    if cfg.rotate_good_probability == 0:  # aligned: pixels outside the mask are untouched
        np.testing.assert_array_equal(aug[masks == 0], images[masks == 0])
    again = DefectGenerator(cfg, max(height, width)).augment(images, np.random.default_rng(cfg.seed))
    np.testing.assert_array_equal(again[0], aug)  # the same seed gives the same defects
    np.testing.assert_array_equal(again[1], masks)


@FAST
@given(cfg=synth_configs(), size=st.integers(8, 72), n=st.integers(1, 3))
def test_perlin_masks_binary_never_empty(cfg, size, n):
    masks = DefectGenerator(cfg, size).perlin_masks(n, np.random.default_rng(cfg.seed), size)
    assert masks.shape == (n, size, size) and masks.dtype == np.float32
    assert set(np.unique(masks)) <= {0.0, 1.0} and (masks.reshape(n, -1).sum(axis=1) > 0).all()


def _encoded_seeds() -> dict[str, bytes]:
    import io

    from PIL import Image

    rgb = Image.fromarray((np.random.default_rng(0).random((24, 28, 3)) * 255).astype(np.uint8))
    out = {}
    for fmt, img, kwargs in [
        ("PNG", rgb, {}),
        ("JPEG", rgb, {}),
        ("TIFF", rgb, {"compression": "tiff_lzw"}),
        ("GIF", rgb, {}),
        ("BMP", rgb, {}),
        ("WEBP", rgb, {}),
        ("PNG-P", rgb.convert("P"), {}),
        ("TIFF-16", Image.fromarray(np.asarray(rgb)[..., 0].astype(np.uint16) * 257), {}),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt.split("-")[0], **kwargs)
        out[fmt] = buf.getvalue()
    return out


SEEDS = _encoded_seeds()
edits = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255), st.sampled_from("sdi")), max_size=8)


@FAST
@given(fmt=st.sampled_from(sorted(SEEDS)), changes=edits)
def test_damaged_image_bytes_load_or_raise_image_error(tmp_path_factory, fmt, changes):
    """Fuzz: random byte edits of valid files of every format give a valid image or an ImageError, never another
    exception (that would abort a whole folder load). 3000 unseeded edits found none after the fixes."""
    from recon_core.errors import ImageError
    from recon_core.images import load_image, load_mask

    data = bytearray(SEEDS[fmt])
    for where, value, op in changes:
        at = int(where * len(data))
        if op == "s":
            data[at] = value
        elif op == "d":
            del data[at : at + value % 40 + 1]
        else:
            data[at:at] = bytes([value]) * (value % 16 + 1)
    path = tmp_path_factory.mktemp("fuzz") / f"x.{fmt.split('-')[0].lower()}"
    path.write_bytes(bytes(data))
    for load in (load_image, load_mask):
        try:
            out = load(path, 16)
        except ImageError as exc:
            assert path.name in str(exc)
            continue
        assert out.dtype == np.float32 and np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


# ---------------------------------------------------------------------------------------------------------
# metrics

# scores on a 0.01 grid so that the transforms below stay strictly monotone in floating point
scores_and_labels = st.integers(4, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-5_000, 5_000), min_size=n, max_size=n).map(lambda v: np.asarray(v) / 100),
        st.lists(st.integers(0, 1), min_size=n, max_size=n).map(np.asarray),
    )
)
MONOTONE = [lambda s: 3 * s + 7, lambda s: np.tanh(s / 60), lambda s: s**3, np.exp]


@FAST
@given(data=scores_and_labels)
def test_ap_f1_and_verdicts_invariant_to_monotone_transforms(data):
    scores, labels = data
    if not 0 < labels.sum() < labels.size:
        labels = np.r_[0, 1, labels[2:]]  # make both classes present
    ap, (f1, thr) = image_ap(labels, scores), f1_max(labels, scores)
    picked = verdicts(scores, threshold_f1(labels, scores))
    for f in MONOTONE:
        moved = f(scores)
        assert image_ap(labels, moved) == pytest.approx(ap, abs=1e-9)
        assert f1_max(labels, moved)[0] == pytest.approx(f1, abs=1e-9)
        assert f1_max(labels, moved)[1] == pytest.approx(float(f(np.float64(thr))), rel=1e-9)
        assert verdicts(moved, threshold_f1(labels, moved)) == picked  # same images rejected


@FAST
@given(value=st.floats(-1e6, 1e6), n_good=st.integers(1, 20), n_defect=st.integers(1, 20))
def test_all_equal_scores(value, n_good, n_defect):
    labels = np.r_[np.zeros(n_good, int), np.ones(n_defect, int)]
    scores = np.full(labels.size, value)
    assert image_auroc(labels, scores) == 0.5  # no information: chance
    assert image_ap(labels, scores) == pytest.approx(n_defect / labels.size)
    f1, thr = f1_max(labels, scores)
    assert thr == value and f1 == pytest.approx(2 * n_defect / (labels.size + n_defect))  # reject everything
    assert verdicts(scores, threshold_f1(labels, scores)) == ["reject"] * labels.size


@FAST
@given(scores=st.lists(st.floats(-100, 100), min_size=1, max_size=30), label=st.sampled_from([0, 1]))
def test_one_class_only(scores, label):
    labels = [label] * len(scores)
    assert math.isnan(image_auroc(labels, scores)) and math.isnan(image_ap(labels, scores))
    result = evaluate(labels, scores)
    assert result["image_auroc"] is None and result["f1_max"] is None  # undefined, never a made-up number
    with pytest.raises(ReconError, match="needs both good and defect images"):
        threshold_f1(labels, scores)
    if label == 1:
        with pytest.raises(ReconError, match="needs scores of good images"):
            threshold_at_fpr(labels, scores, 0.05)


@FAST
@given(
    scores=st.lists(st.floats(-100, 100), min_size=2, max_size=30),
    where=st.integers(0, 29),
    bad=st.sampled_from([math.nan, math.inf, -math.inf]),
)
def test_nan_or_infinite_scores_are_refused(scores, where, bad):
    scores = list(scores)
    scores[where % len(scores)] = bad
    labels = [i % 2 for i in range(len(scores))]
    for call in (image_auroc, image_ap, f1_max, evaluate, threshold_f1):
        with pytest.raises(ReconError, match="NaN or infinite"):
            call(labels, scores)
    with pytest.raises(ReconError, match="NaN or infinite"):
        threshold_quantile(scores, 0.9)
    if math.isnan(bad):  # a failed prediction is never accepted
        assert verdicts(scores, threshold_quantile([0.0, 1.0], 0.5))[where % len(scores)] == "review"


# ---------------------------------------------------------------------------------------------------------
# configs from untrusted JSON (a hand-edited synth.json, a job spec, a bundle's saved settings)

scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8)
json_values = scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=5), scalars, max_size=3)


def _config_classes() -> dict[str, type]:
    from recon_core.metrics import Threshold
    from recon_core.models import get_model_class, model_names
    from recon_core.runs import RunSpec

    return {"synth": SynthConfig, "runspec": RunSpec, "threshold": Threshold} | {
        name: get_model_class(name).config_class for name in model_names()
    }


@pytest.mark.parametrize("target", sorted(_config_classes()))
@FAST
@given(data=st.data())
def test_any_json_gives_a_config_or_a_config_error(target, data):
    from recon_core.config import from_dict
    from recon_core.errors import ConfigError

    cls = _config_classes()[target]
    keys = st.sampled_from([*cls.__dataclass_fields__, "unknown"])
    raw = data.draw(st.dictionaries(keys, json_values, max_size=4))
    try:
        config = from_dict(cls, raw)
    except ConfigError as exc:  # e.g. aae blocks=-2000 used to raise ZeroDivisionError
        assert str(exc)
        return
    assert isinstance(config, cls)
