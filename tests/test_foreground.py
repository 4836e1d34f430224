"""Foreground estimate: objects on a plain background vs textures, defects only on the product, preview overlay."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest

from recon_core.errors import ConfigError
from recon_core.foreground import Foreground, estimate_foreground
from recon_core.models.draem import DraemSynth
from recon_core.models.dsr import Dsr, DsrSynth
from recon_core.synth import FOREGROUND_COLOUR, DefectGenerator, SynthConfig, preview, preview_grid

SIZE = 64


def objects(n: int = 6, seed: int = 0, background=(0.1, 0.12, 0.15)) -> tuple[np.ndarray, np.ndarray]:
    """A textured disc (the product) at a jittered position on a plain, slightly noisy background; -> (images,
    true product masks)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out, truth = [], []
    for _ in range(n):
        cy, cx = SIZE / 2 + rng.uniform(-6, 6, size=2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < (SIZE * 0.28) ** 2
        img = np.asarray(background, np.float32) + rng.normal(0, 0.01, (SIZE, SIZE, 3)).astype(np.float32)
        img[disc] = 0.5 + 0.3 * rng.random((int(disc.sum()), 3), dtype=np.float32)
        out.append(np.clip(img, 0, 1))
        truth.append(disc)
    return np.stack(out).astype(np.float32), np.stack(truth)


def textures(n: int = 6, seed: int = 0) -> np.ndarray:
    """Busy texture everywhere, border included (fabric, tiles)."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, SIZE // 4, SIZE // 4, 3), dtype=np.float32)
    return np.repeat(np.repeat(base, 4, axis=1), 4, axis=2) * 0.6 + 0.2


def test_auto_turns_on_for_an_object_on_a_plain_background_and_finds_it():
    goods, truth = objects()
    fg = estimate_foreground(goods, "auto")
    assert fg.enabled, fg.reason
    masks = fg.masks(goods)
    inter = (masks & truth).sum(axis=(1, 2))
    union = (masks | truth).sum(axis=(1, 2))
    assert np.all(inter / union > 0.75)  # dilated a little on purpose, so IoU is below 1
    assert np.all(truth[~masks] == 0)  # nothing of the product is left out
    assert masks[:, 0, 0].sum() == 0  # corners are background


def test_auto_gives_the_whole_image_for_textures():
    fg = estimate_foreground(textures(), "auto")
    assert not fg.enabled
    assert "whole image" in fg.reason
    assert fg.mask(textures(1)[0]).all()


def test_on_and_off_override_the_decision():
    assert estimate_foreground(textures(), "on").enabled
    assert not estimate_foreground(objects()[0], "off").enabled
    with pytest.raises(ConfigError, match="foreground"):
        estimate_foreground(objects()[0], "sometimes")
    with pytest.raises(ConfigError, match="foreground"):
        SynthConfig(foreground="yes")


def test_a_mostly_empty_image_falls_back_to_the_whole_image():
    goods, _ = objects()
    fg = estimate_foreground(goods, "on")
    blank = np.broadcast_to(np.asarray([0.1, 0.12, 0.15], np.float32), (SIZE, SIZE, 3)).copy()
    assert fg.mask(blank).all()  # a defect must always have somewhere to go


@pytest.mark.parametrize("texture_source", ["noise", "self"])
def test_defects_land_only_on_the_product_and_masks_match_changed_pixels(texture_source):
    goods, _ = objects(8)
    cfg = SynthConfig(texture_source=texture_source, foreground="auto", opacity_min=1.0, opacity_max=1.0)
    gen = DefectGenerator(cfg, SIZE, goods=goods)
    assert gen.foreground.enabled
    aug, masks, has = gen.augment(goods, np.random.default_rng(1), force_defect=True)
    assert has.all()
    for img, a, m in zip(goods, aug, masks, strict=True):
        allowed = gen.foreground.mask(img)
        assert m.any()
        assert not (m.astype(bool) & ~allowed).any()
        assert np.array_equal(a[m == 0], img[m == 0])  # outside the mask nothing changes


def test_without_the_foreground_defects_also_hit_the_background():
    """The restriction is what keeps defects off the background (guards the test above)."""
    goods, truth = objects(8)
    cfg = SynthConfig(texture_source="noise", foreground="off")
    _, masks, _ = DefectGenerator(cfg, SIZE, goods=goods).augment(goods, np.random.default_rng(1), force_defect=True)
    assert (masks.astype(bool) & ~truth).any()


def test_dsr_feature_level_masks_lie_on_the_product():
    """DSR's feature-space defects (Perlin masks at 1/4 resolution) follow the foreground too; off, they also hit
    the background (regression: they ignored it)."""
    goods, truth = objects(8)
    side = SIZE // 4
    # cells of the 1/4 grid with no product in them or their neighbours (the estimate is dilated a little)
    near = [
        cv2.dilate(cv2.resize(t.astype(np.uint8), (side, side), interpolation=cv2.INTER_AREA), np.ones((3, 3)))
        for t in truth
    ]
    far_background = np.stack(near) == 0
    on = DefectGenerator(SynthConfig(texture_source="noise", foreground="on"), SIZE, goods=goods)
    masks = on.perlin_masks(len(goods), np.random.default_rng(2), size=side, images=goods)
    assert masks.shape == (8, side, side) and all(m.any() for m in masks)
    assert not (masks.astype(bool) & far_background).any()
    plan = DsrSynth(on, "dsr", Dsr.config_from_preset("cpu", image_size=SIZE))(goods, np.random.default_rng(3))
    assert not (plan["masks_b"].astype(bool) & far_background).any()  # what DSR's feature stage trains on
    off = DefectGenerator(SynthConfig(texture_source="noise", foreground="off"), SIZE, goods=goods)
    masks_off = off.perlin_masks(len(goods), np.random.default_rng(2), size=side, images=goods)
    assert (masks_off.astype(bool) & far_background).any()
    assert np.array_equal(masks_off, off.perlin_masks(len(goods), np.random.default_rng(2), size=side))


def test_a_crop_of_background_only_stays_clean_instead_of_taking_the_whole_crop():
    """DRAEM's train_crop: a window that shows none of the product gets no defect (regression: the whole-image
    fallback of the foreground put its defect on the background); windows on the product still get theirs."""
    goods, truth = objects(4)
    gen = DefectGenerator(SynthConfig(texture_source="noise", foreground="on"), SIZE, goods=goods)
    corner, centre = goods[:, :12, :12], goods[:, 26:38, 26:38]
    assert not truth[:, :12, :12].any() and truth[:, 26:38, 26:38].all()
    _, masks, has = gen.augment(corner, np.random.default_rng(0), force_defect=True, crops=True)
    assert not has.any() and not masks.any()
    _, _, has_whole = gen.augment(corner, np.random.default_rng(0), force_defect=True)  # not crops: the fallback
    assert has_whole.all()
    _, masks, has = gen.augment(centre, np.random.default_rng(0), force_defect=True, crops=True)
    assert has.all() and all(m.any() for m in masks)
    background = goods[:, :16, :16].repeat(2, axis=0)  # every 12 px window of these shows background only
    assert not DraemSynth(gen, train_crop=12)(background, np.random.default_rng(1))["masks"].any()  # passes crops
    assert DraemSynth(gen)(background, np.random.default_rng(1))["masks"].any()  # whole images: the fallback


def test_self_textures_need_the_goods():
    with pytest.raises(ConfigError, match="self"):
        DefectGenerator(SynthConfig(texture_source="self"), SIZE)


def test_generator_with_foreground_pickles_and_replays():
    """DataLoader workers get a pickled copy: it must produce the same defects for the same rng."""
    goods, _ = objects()
    gen = DefectGenerator(SynthConfig(texture_source="self"), SIZE, goods=goods)
    clone = pickle.loads(pickle.dumps(gen))
    a = gen.augment(goods, np.random.default_rng(3), force_defect=True)
    b = clone.augment(goods, np.random.default_rng(3), force_defect=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_preview_grid_darkens_the_background_and_outlines_the_product():
    goods, _ = objects(2)
    cfg = SynthConfig(texture_source="noise")
    fg = estimate_foreground(goods, cfg.foreground)
    aug, masks = preview(goods, cfg, n=2, foreground=fg)
    plain = preview_grid(aug, masks, columns=2)
    shaded = preview_grid(aug, masks, columns=2, foregrounds=fg.masks(aug))
    assert shaded[1, 1].sum() < plain[1, 1].sum()  # a background corner is darker
    assert (shaded.reshape(-1, 3) == FOREGROUND_COLOUR).all(axis=1).any()
    assert np.array_equal(preview_grid(aug, masks, columns=2, foregrounds=np.ones((2, SIZE, SIZE), bool)), plain)


def test_disabled_foreground_is_all_true():
    assert Foreground(False).mask(np.zeros((5, 7, 3), np.float32)).shape == (5, 7)
    assert Foreground(False).mask(np.zeros((5, 7, 3), np.float32)).all()


@pytest.mark.shared_data
def test_auto_decision_on_the_shared_categories(shared_data):
    """Objects on a plain background (bottle, tire) get a foreground; textures (tiles, fabric) the whole image.
    Training goods only."""
    from recon_core.images import load_folder

    expected = {
        "mvtec_ad/bottle": True,
        "mvtec3d_ad/tire": True,
        "magnetic_tile/magnetic_tile": False,
        "aitex/fabric01": False,
    }
    for category, on in expected.items():
        folder = shared_data / category / "train" / "good"
        if not folder.is_dir():
            pytest.skip(f"{folder} missing")
        goods = load_folder(folder, 128, shots=20, seed=0).images
        fg = estimate_foreground(goods, "auto")
        assert fg.enabled == on, f"{category}: {fg.reason}"
        if on:
            share = fg.masks(goods).mean()
            assert 0.1 < share < 0.9, f"{category}: product covers {share:.0%}"


def test_thin_defects_are_thin_and_on_the_product():
    import cv2

    goods, _ = objects(8)
    cfg = SynthConfig(texture_source="noise", thin_probability=1.0, opacity_min=1.0, opacity_max=1.0)
    gen = DefectGenerator(cfg, SIZE, goods=goods)
    _, masks, has = gen.augment(goods, np.random.default_rng(5), force_defect=True)
    assert has.all()
    for img, m in zip(goods, masks, strict=True):
        assert m.any() and not (m.astype(bool) & ~gen.foreground.mask(img)).any()
        core = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8))
        assert core.sum() <= 0.2 * m.sum()  # 1 px lines at 64 px: nothing survives a 3x3 erosion
    blobs = DefectGenerator(SynthConfig(texture_source="noise", perlin_scale_max=2), SIZE, goods=goods)
    _, blob_masks, _ = blobs.augment(goods, np.random.default_rng(5), force_defect=True)
    eroded = sum(cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).sum() for m in blob_masks)
    assert eroded > 0.3 * blob_masks.sum()  # Perlin blobs are not (guards the assertion above)
