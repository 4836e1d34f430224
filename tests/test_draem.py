"""DRAEM and the shared layers: tiny models on generated images (fast, no shared data)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recon_core.errors import ConfigError
from recon_core.metrics import image_auroc, pixel_auroc
from recon_core.models import get_model_class
from recon_core.models.draem import Draem, DraemConfig
from recon_core.models.layers import (
    SSPCAB,
    UNet,
    binary_focal_loss,
    draem_widths,
    focal_loss,
    mean_pool_max,
    pool_size_for,
    ssim_loss,
    ssim_map,
)
from recon_core.synth import DefectGenerator, SynthConfig

SIZE = 32
TINY = {"image_size": SIZE, "recon_width": 8, "disc_width": 8, "recon_depth": 3, "disc_depth": 3, "lr": 2e-3}


@pytest.fixture(autouse=True)
def one_thread():
    # tiny convolutions are much faster on one thread, above all when other tests share the cores
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(old)


def stripes(n: int, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A 'product': vertical stripes with a random phase and a little sensor noise."""
    xx = np.mgrid[0:size, 0:size][1] / size
    out = []
    for _ in range(n):
        base = 0.5 + 0.2 * np.sin(2 * np.pi * (4 * xx + rng.uniform(0, 0.3)))
        img = np.stack([base, 0.8 * base, np.full_like(base, 0.3)], -1) + rng.normal(0, 0.02, (size, size, 3))
        out.append(img)
    return np.clip(np.array(out), 0, 1).astype(np.float32)


def tiny(**changes) -> Draem:
    return Draem(Draem.config_from_preset("cpu", **{**TINY, **changes}))


def train_steps(model: Draem, images: np.ndarray, iterations: int, seed: int = 0) -> dict[str, float]:
    """Plain training loop (constant lr); returns the last step's losses, plus 'first_total'."""
    rng = np.random.default_rng(seed)
    model.setup_training(images, SynthConfig(seed=seed), seed)
    stage = model.stages()[0]
    data = torch.from_numpy(images).permute(0, 3, 1, 2)
    losses: dict[str, float] = {}
    first = None
    for _ in range(iterations):
        losses = stage.step(data[rng.choice(len(data), model.cfg.batch_size)], rng)
        first = losses["total"] if first is None else first
    return {**losses, "first_total": first}


# ---------------------------------------------------------------------------------------------------------
# the model learns
# ---------------------------------------------------------------------------------------------------------


def test_tiny_draem_learns_a_synthetic_defect() -> None:
    train = stripes(16, np.random.default_rng(0))
    model = tiny()
    losses = train_steps(model, train, 150)  # ~10 s on one thread
    assert losses["total"] < 0.5 * losses["first_total"]

    rng = np.random.default_rng(123)  # different images, textures and masks than training
    test = stripes(30, rng)
    gen = DefectGenerator(SynthConfig(texture_source="noise", opacity_min=0.6, seed=7), SIZE)
    aug, masks, _ = gen.augment(test[15:], rng, force_defect=True)
    images = np.concatenate([test[:15], aug])
    labels = np.r_[np.zeros(15), np.ones(15)]
    pred = model.predict(images, batch_size=8)
    assert pred.image_scores.shape == (30,) and pred.maps.shape == (30, SIZE, SIZE)
    assert pred.maps.min() >= 0 and pred.maps.max() <= 1
    assert image_auroc(labels, pred.image_scores) > 0.8
    assert pixel_auroc(np.concatenate([np.zeros_like(masks), masks]), pred.maps) > 0.8


def test_untrained_model_is_near_chance_so_the_learning_test_can_fail() -> None:
    rng = np.random.default_rng(1)
    test = stripes(20, rng)
    gen = DefectGenerator(SynthConfig(texture_source="noise", opacity_min=0.6, seed=7), SIZE)
    aug, _, _ = gen.augment(test[10:], rng, force_defect=True)
    pred = tiny().predict(np.concatenate([test[:10], aug]))
    assert image_auroc(np.r_[np.zeros(10), np.ones(10)], pred.image_scores) < 0.95


# ---------------------------------------------------------------------------------------------------------
# persistence, export, batching
# ---------------------------------------------------------------------------------------------------------


def test_state_dict_round_trip_gives_identical_scores() -> None:
    images = stripes(6, np.random.default_rng(2))
    model = tiny()
    train_steps(model, images, 3)
    expected = model.predict(images)
    clone = tiny()
    clone.load_state_dict(model.state_dict())
    got = clone.predict(images)
    np.testing.assert_array_equal(got.image_scores, expected.image_scores)
    np.testing.assert_array_equal(got.maps, expected.maps)


def test_bundle_round_trip_gives_identical_scores(tmp_path) -> None:
    bundle = pytest.importorskip("recon_core.bundle")
    images = stripes(6, np.random.default_rng(3))
    model = tiny(sspcab=True)
    train_steps(model, images, 3)
    expected = model.predict(images)
    path = tmp_path / "model.pt"
    bundle.save_bundle(path, model, synth_config=SynthConfig())
    loaded = bundle.load_bundle(path, device="cpu").model
    assert isinstance(loaded, Draem) and loaded.cfg == model.cfg
    got = loaded.predict(images)
    np.testing.assert_allclose(got.image_scores, expected.image_scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.maps, expected.maps, rtol=0, atol=1e-6)


def test_batch_size_does_not_change_scores() -> None:
    images = stripes(7, np.random.default_rng(4))
    model = tiny()
    train_steps(model, images, 2)
    a, b = model.predict(images, batch_size=1), model.predict(images, batch_size=8)
    np.testing.assert_allclose(a.image_scores, b.image_scores, atol=1e-5)
    np.testing.assert_allclose(a.maps, b.maps, atol=1e-5)
    empty = model.predict(images[:0])
    assert empty.image_scores.shape == (0,) and empty.maps.shape == (0, SIZE, SIZE)


def test_onnx_module_matches_predict() -> None:
    images = stripes(4, np.random.default_rng(5))
    model = tiny()
    train_steps(model, images, 2)
    pred = model.predict(images)
    module = model.onnx_module().eval()
    with torch.no_grad():
        scores, maps = module(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(scores.numpy(), pred.image_scores, atol=1e-5)
    np.testing.assert_allclose(maps.numpy(), pred.maps, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# variants, sizes, configuration
# ---------------------------------------------------------------------------------------------------------


def test_sspcab_variant_trains_and_adds_its_loss() -> None:
    images = stripes(8, np.random.default_rng(6))
    model = tiny(sspcab=True)
    assert isinstance(model.nets.reconstructive.encoder.blocks[-1], SSPCAB)
    sspcab = model.nets.reconstructive.encoder.blocks[-1]
    weights = [p.detach().clone() for p in sspcab.parameters()]
    losses = train_steps(model, images, 2)
    assert "sspcab" in losses and math.isfinite(losses["sspcab"])
    expected = losses["l2"] + losses["ssim"] + losses["focal"] + 0.1 * losses["sspcab"]  # weight 0.1
    assert losses["total"] == pytest.approx(expected, rel=1e-5)
    assert any(not torch.equal(w, p) for w, p in zip(weights, sspcab.parameters(), strict=True))
    assert "sspcab" not in train_steps(tiny(), images, 1)


@pytest.mark.parametrize("size", [24, 37, 45])
def test_odd_sizes_train_and_predict_at_model_resolution(size: int) -> None:
    model = tiny(image_size=size, sspcab=True)
    images = stripes(4, np.random.default_rng(7), size)
    losses = train_steps(model, images, 1)
    assert all(math.isfinite(v) for v in losses.values())
    pred = model.predict(images)
    assert pred.maps.shape == (4, size, size)
    other = model.predict(stripes(3, np.random.default_rng(8), 50))  # other sizes are resized to the model's
    assert other.maps.shape == (3, size, size)


def test_channels_last_and_group_norm_give_the_same_shapes() -> None:
    images = stripes(4, np.random.default_rng(9))
    for changes in ({"channels_last": True}, {"norm": "group"}, {"norm": "instance"}):
        model = tiny(**changes)
        assert math.isfinite(train_steps(model, images, 1)["total"])
        assert model.predict(images).maps.shape == (4, SIZE, SIZE)


def test_presets_and_validation() -> None:
    assert get_model_class("draem") is Draem
    assert set(Draem.presets) >= {"paper", "gpu", "cpu", "cpu-fast"}
    paper = Draem.config_from_preset("paper")
    assert (paper.image_size, paper.recon_width, paper.disc_width, paper.lr, paper.batch_size) == (
        256,
        128,
        64,
        1e-4,
        8,
    )
    for name in Draem.presets:
        assert isinstance(Draem.config_from_preset(name), DraemConfig)
    with pytest.raises(ConfigError, match="preset"):
        Draem.config_from_preset("nope")
    with pytest.raises(ConfigError, match="norm"):
        DraemConfig(norm="layer")
    with pytest.raises(ConfigError, match="recon_width"):
        DraemConfig(recon_width=0)
    with pytest.raises(ConfigError):
        Draem.config_from_preset("cpu", unknown_key=3)
    with pytest.raises(ConfigError, match="setup_training"):
        tiny().stages()


# ---------------------------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("skips", [False, True])
def test_unet_shapes_at_odd_sizes(skips: bool) -> None:
    net = UNet(6, 2, draem_widths(4, 4), skips=skips).eval()
    for h, w in ((33, 33), (40, 29), (17, 64)):
        assert net(torch.rand(2, 6, h, w)).shape == (2, 2, h, w)


def test_reconstructive_net_has_no_shortcut() -> None:
    # without skips, the output must not depend on the input's finest detail at a pixel: swapping one pixel
    # changes the output only through the bottleneck, i.e. the change spreads over a wide area
    net = UNet(3, 3, draem_widths(4, 3), skips=False, norm="none").eval()
    assert all(up.block[0][0].in_channels == up.up_conv[0].out_channels for up in net.decoder.ups)


def test_draem_widths_ladder() -> None:
    assert draem_widths(128, 5) == [128, 256, 512, 1024, 1024]
    assert draem_widths(64, 6) == [64, 128, 256, 512, 512, 512]


def test_ssim() -> None:
    x = torch.rand(2, 3, 20, 20)
    assert torch.allclose(ssim_map(x, x), torch.ones(2, 20, 20), atol=1e-4)
    assert ssim_loss(x, x).abs() < 1e-4
    assert ssim_loss(x, torch.rand(2, 3, 20, 20)) > 0.5
    assert ssim_map(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)).shape == (1, 4, 4)  # smaller than the window


def test_ssim_stays_float32_under_bf16_autocast() -> None:
    # regression: on smooth photos (tire) bf16 autocast gave SSIM far outside [-1, 1] and a NaN loss at DRAEM's
    # first step; the variances E[x^2] - E[x]^2 need float32
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.01 * torch.rand(2, 3, 64, 64, generator=g)
    y = x + 0.005 * torch.rand(2, 3, 64, 64, generator=g)
    expected = ssim_map(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ssim_map(x, y)
        loss = ssim_loss(x.bfloat16(), y.bfloat16())
    assert got.dtype == torch.float32 and torch.allclose(got, expected, atol=1e-5)
    assert loss.dtype == torch.float32 and float(loss) == pytest.approx(1 - float(expected.mean()), abs=2e-3)


def test_focal_loss_is_float32_from_bf16_logits_under_cpu_autocast() -> None:
    # regression: CPU autocast keeps log_softmax in bf16, so DRAEM's/DSR's focal loss was computed in 8-bit mantissas
    g = torch.Generator().manual_seed(0)
    logits = 6 * torch.randn(2, 2, 32, 32, generator=g)
    target = (torch.rand(2, 32, 32, generator=g) > 0.9).float()
    expected = focal_loss(logits, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = focal_loss(logits.bfloat16(), target)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(focal_loss(logits.bfloat16().float(), target)), rel=1e-5)
    assert float(got) == pytest.approx(float(expected), rel=0.05)


def test_focal_loss_hand_values() -> None:
    logits = torch.tensor([[[[2.0]], [[0.0]]]])  # p(class 0) = sigmoid(2)
    p0 = torch.sigmoid(torch.tensor(2.0))
    target0, target1 = torch.zeros(1, 1, 1), torch.ones(1, 1, 1)
    assert focal_loss(logits, target0) == pytest.approx(float(-((1 - p0) ** 2) * p0.log()), rel=1e-5)
    assert focal_loss(logits, target1) == pytest.approx(float(-(p0**2) * (1 - p0).log()), rel=1e-5)
    assert focal_loss(logits, target1, gamma=0) == pytest.approx(float(F.cross_entropy(logits, target1.long())))
    probs = torch.softmax(logits, 1)
    assert focal_loss(probs, target1, from_logits=False) == pytest.approx(float(focal_loss(logits, target1)), rel=1e-4)
    # binary version: one logit channel of value 2 vs target 0 equals the 2-class case with logits (0, 2)
    one = torch.full((1, 1, 1, 1), 2.0)
    two = torch.tensor([[[[0.0]], [[2.0]]]])
    assert binary_focal_loss(one, torch.zeros(1, 1, 1, 1)) == pytest.approx(float(focal_loss(two, target0)), rel=1e-5)


def test_pooled_max_score() -> None:
    maps = torch.zeros(2, 64, 64)
    maps[0, 10, 10] = 1.0  # a single hot pixel is mostly averaged away
    maps[1, 20:40, 20:40] = 0.5  # a blob keeps its level
    scores = mean_pool_max(maps, 9)
    assert scores[0] == pytest.approx(1 / 81, rel=1e-5) and scores[1] == pytest.approx(0.5, rel=1e-5)
    assert mean_pool_max(maps, 1).tolist() == [1.0, 0.5]
    assert pool_size_for(256) == 21 and pool_size_for(128) == 11 and pool_size_for(8) == 1


def test_onnx_export_matches_torch(tmp_path) -> None:
    bundle = pytest.importorskip("recon_core.bundle")
    export = pytest.importorskip("recon_core.export")
    model = tiny(image_size=40, sspcab=True)
    train_steps(model, stripes(4, np.random.default_rng(10), 40), 2)
    bundle.save_bundle(tmp_path / "m.pt", model, synth_config=SynthConfig())
    info = export.export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx")  # checks parity in onnxruntime itself
    assert info["parity"] == "ok" and info["max_abs_diff_map"] < 1e-4


def test_fused_inference_copy_follows_the_weights() -> None:
    images = stripes(4, np.random.default_rng(11))
    model = tiny()
    train_steps(model, images, 2)
    first = model.predict(images)
    train_steps(model, images, 2)  # the weights change: the cached inference copy must be rebuilt
    second = model.predict(images)
    module = model.onnx_module().eval()  # the plain (unfused, NCHW) networks
    with torch.no_grad():
        scores, maps = module(torch.from_numpy(images).permute(0, 3, 1, 2))
    np.testing.assert_allclose(second.maps, maps.numpy(), atol=1e-5)
    np.testing.assert_allclose(second.image_scores, scores.numpy(), atol=1e-5)
    assert not np.allclose(first.maps, second.maps)
    clone = tiny()
    clone.predict(images)
    clone.load_state_dict(model.state_dict())  # loading weights also invalidates the copy
    np.testing.assert_allclose(clone.predict(images).maps, second.maps, atol=1e-6)


def test_train_crop_trains_on_crops_and_scores_whole_images(monkeypatch):
    """cpu-hires: an iteration sees train_crop x train_crop windows; scoring keeps the full resolution."""
    cfg = DraemConfig(image_size=64, train_crop=32, recon_width=2, disc_width=2, recon_depth=2, disc_depth=2)
    model = Draem(cfg)
    goods = np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32)
    model.setup_training(goods, None, 0)
    seen = []
    real = model.synthesize
    monkeypatch.setattr(model, "synthesize", lambda images, rng: seen.append(tuple(images.shape)) or real(images, rng))
    model.stages()[0].step(torch.from_numpy(goods).permute(0, 3, 1, 2), np.random.default_rng(0))
    assert seen == [(4, 3, 32, 32)]
    assert model.predict(goods).maps.shape == (4, 64, 64)
    with pytest.raises(ConfigError, match="train_crop"):
        DraemConfig(image_size=64, train_crop=8)
    assert Draem.presets["cpu-hires"]["train_crop"] < Draem.presets["cpu-hires"]["image_size"]
