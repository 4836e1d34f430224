"""Baselines (autoencoder, GANomaly, AAE + Hotelling's T²): each learns a clear synthetic defect, T² is the
textbook formula, labelled defects move outward, save/load keeps scores identical. Tiny images (32 px)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from recon_core.errors import ConfigError
from recon_core.models import get_model_class
from recon_core.models.aae import AdversarialAutoEncoder, hotelling_t2
from recon_core.models.autoencoder import AutoEncoder, gaussian_blur, map_scores
from recon_core.models.base import AnomalyModel
from recon_core.models.ganomaly import Ganomaly

SIZE = 32

TINY = {
    "autoencoder": {"image_size": SIZE, "base_width": 8, "max_width": 32, "depth": 3, "latent_dim": 16, "lr": 2e-3},
    "ganomaly": {"image_size": SIZE, "width": 8, "latent_dim": 16, "batch_size": 16},
    "aae": {"image_size": SIZE, "width": 8, "blocks": 3, "latent_dim": 6, "batch_size": 16, "lr": 1e-3},
}
ITERS = {"autoencoder": 300, "ganomaly": 300, "aae": 300}


def good_images(n: int, seed: int) -> np.ndarray:
    """A 'product': smooth horizontal gradient with soft stripes, small random brightness/phase changes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = np.empty((n, SIZE, SIZE, 3), np.float32)
    for i in range(n):
        phase = rng.uniform(0, 0.3)
        base = 0.45 + 0.25 * xx + 0.1 * np.sin(2 * np.pi * (3 * yy + phase)) + rng.uniform(-0.03, 0.03)
        out[i] = np.clip(base[..., None] * np.array([1.0, 0.9, 0.8]) + rng.normal(0, 0.01, (SIZE, SIZE, 3)), 0, 1)
    return out


def defect_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Good images with a dark 8x8 square at a random place (the clear defect), and its masks."""
    rng = np.random.default_rng(seed + 1000)
    images = good_images(n, seed)
    masks = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(n):
        y, x = rng.integers(2, SIZE - 10, size=2)
        images[i, y : y + 8, x : x + 8] = [0.05, 0.1, 0.6]
        masks[i, y : y + 8, x : x + 8] = 1
    return images, masks


def make(name: str, seed: int = 0, **overrides: object) -> AnomalyModel:
    torch.manual_seed(seed)
    cls = get_model_class(name)
    return cls(cls.config_from_preset("cpu", **{**TINY[name], **overrides}), device="cpu")


def train(model: AnomalyModel, images: np.ndarray, iterations: int, seed: int = 0) -> AnomalyModel:
    """What train.fit does, minus budgets/checkpoints: random batches through every stage, then the hook."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.setup_training(images, None, seed)
    for stage in model.stages():
        for _ in range(iterations):
            idx = rng.choice(len(images), size=min(len(images), model.config.batch_size), replace=False)
            batch = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).contiguous()
            losses = stage.step(batch, rng)
            assert np.isfinite(losses["total"])
    model.finish_training(images)
    return model


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


@pytest.fixture(scope="module")
def trained() -> dict[str, AnomalyModel]:
    train_images = good_images(24, seed=0)
    return {name: train(make(name), train_images, ITERS[name]) for name in TINY}


@pytest.fixture(scope="module")
def test_set() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    goods = good_images(16, seed=50)
    bads, masks = defect_images(16, seed=60)
    images = np.concatenate([goods, bads])
    labels = np.r_[np.zeros(16), np.ones(16)]
    all_masks = np.concatenate([np.zeros_like(masks), masks])
    return images, labels, all_masks


def test_registry_has_the_three_baselines() -> None:
    assert get_model_class("autoencoder") is AutoEncoder
    assert get_model_class("ganomaly") is Ganomaly
    assert get_model_class("aae") is AdversarialAutoEncoder
    for name in TINY:
        cls = get_model_class(name)
        assert {"cpu", "paper", "gpu"} <= set(cls.presets)
        for preset in cls.presets:
            cls.config_from_preset(preset)  # every preset is a valid config
    assert AdversarialAutoEncoder.uses_labelled_defects and not AutoEncoder.uses_labelled_defects


@pytest.mark.parametrize("name", list(TINY))
def test_learns_a_clear_synthetic_defect(name: str, trained: dict, test_set: tuple) -> None:
    images, labels, masks = test_set
    pred = trained[name].predict(images)
    assert pred.image_scores.shape == (len(images),)
    assert pred.maps.shape == (len(images), SIZE, SIZE)
    assert np.isfinite(pred.image_scores).all() and np.isfinite(pred.maps).all()
    assert auroc(labels, pred.image_scores) > 0.9, name
    # the secondary map points at the defect: defect pixels score higher than the rest of defect images
    bad = labels == 1
    assert auroc(masks[bad].ravel(), pred.maps[bad].ravel()) > 0.8, name


def test_hotelling_t2_matches_direct_numpy(trained: dict, test_set: tuple) -> None:
    model: AdversarialAutoEncoder = trained["aae"]
    images = test_set[0]
    z = model.latents(images)
    mu, cov = model.latent_mean, model.latent_cov
    direct = np.array([(v - mu) @ np.linalg.inv(cov) @ (v - mu) for v in z])
    np.testing.assert_allclose(model.predict(images).image_scores, direct, rtol=1e-3)  # float32 encoder
    np.testing.assert_allclose(hotelling_t2(z, mu, np.linalg.inv(cov)), direct, rtol=1e-10)
    # μ, Σ come from the TRAINING latents (shrinkage makes Σ a blend of the sample covariance and a scaled I)
    z_train = model.latents(good_images(24, seed=0))
    np.testing.assert_allclose(mu, z_train.mean(axis=0), rtol=1e-6, atol=1e-9)
    sample = np.cov(z_train, rowvar=False, bias=True)
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    assert np.linalg.norm(cov - sample) < np.linalg.norm(sample)


def test_ridge_covariance_is_invertible_with_fewer_images_than_dims() -> None:
    from recon_core.models.aae import regularised_covariance

    z = np.random.default_rng(0).normal(size=(4, 12))
    cov = regularised_covariance(z, "ridge", 0.05)
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_labelled_defects_move_their_latents_outward() -> None:
    train_images = good_images(24, seed=0)
    labelled, _ = defect_images(3, seed=7)
    plain = train(make("aae", seed=1), train_images, 200, seed=1)
    with_labels = make("aae", seed=1)
    with_labels.set_labelled_defects(labelled)
    train(with_labels, train_images, 200, seed=1)
    t2_plain = plain.predict(labelled).image_scores.mean()
    t2_labelled = with_labels.predict(labelled).image_scores.mean()
    assert t2_labelled > 2 * t2_plain, (t2_plain, t2_labelled)
    # and past the χ² radius in the prior's coordinates
    z = with_labels.latents(labelled)
    assert np.mean((z**2).sum(axis=1) > with_labels.labelled_radius2) == 1.0
    # the good images still sit near the centre
    assert with_labels.predict(train_images).image_scores.mean() < t2_labelled / 2


def test_models_without_labelled_defects_refuse_them() -> None:
    with pytest.raises(ConfigError, match="labelled"):
        make("autoencoder").set_labelled_defects(np.zeros((1, SIZE, SIZE, 3), np.float32))


def test_ganomaly_scores_use_training_statistics_not_the_batch(trained: dict, test_set: tuple) -> None:
    model: Ganomaly = trained["ganomaly"]
    images = test_set[0]
    train_scores = model.predict(good_images(24, seed=0)).image_scores
    assert abs(train_scores.mean()) < 1e-3 and abs(train_scores.std() - 1) < 1e-3
    # scoring one image alone or within a batch gives the same number (no per-batch normalisation)
    one = model.predict(images[-1:]).image_scores
    np.testing.assert_allclose(one, model.predict(images).image_scores[-1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(TINY))
def test_save_load_round_trip_gives_identical_scores(name: str, trained: dict, test_set: tuple, tmp_path) -> None:
    images = test_set[0]
    model = trained[name]
    before = model.predict(images)
    if importlib.util.find_spec("recon_core.bundle") is not None:
        from recon_core.bundle import load_bundle, save_bundle

        path = tmp_path / "model.pt"
        save_bundle(path, model, synth_config=None)
        loaded = load_bundle(path, device="cpu").model
    else:
        path = tmp_path / "state.pt"
        torch.save(model.state_dict(), path)
        loaded = make(name, seed=123)  # different init: everything must come from the file
        loaded.load_state_dict(torch.load(path, weights_only=True))
    after = loaded.predict(images)
    np.testing.assert_array_equal(before.image_scores, after.image_scores)
    np.testing.assert_array_equal(before.maps, after.maps)


def test_autoencoder_options() -> None:
    images = good_images(4, seed=3)
    for loss in ("mse", "mse_l1", "ssim"):
        model = make("autoencoder", loss=loss)
        model.setup_training(images, None, 0)
        losses = model.stages()[0].step(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), None)
        assert np.isfinite(losses["total"]) and (loss.split("_")[0] in losses)
    with pytest.raises(ConfigError):
        AutoEncoder.config_from_preset("cpu", loss="perceptual")
    with pytest.raises(ConfigError):
        AutoEncoder.config_from_preset("cpu", image_size=100, depth=5)
    maps = torch.zeros(2, 10, 10)
    maps[0, 5, 5] = 1.0
    assert map_scores(maps, "max", 0.01)[0] == 1.0
    assert map_scores(maps, "topk", 0.1)[0] == pytest.approx(0.1)  # 10 pixels, one of them 1
    blurred = gaussian_blur(maps, 1.0)
    assert blurred[0].sum() == pytest.approx(1.0, rel=1e-4) and blurred[0].max() < 1.0


@pytest.mark.parametrize("name", list(TINY))
def test_onnx_module_matches_predict(name: str, trained: dict, test_set: tuple) -> None:
    model = trained[name]
    images = test_set[0][:6]
    pred = model.predict(images)
    module = model.onnx_module().eval()
    with torch.no_grad():
        scores, maps = module(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    np.testing.assert_allclose(scores.numpy(), pred.image_scores, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(maps.numpy(), pred.maps, rtol=1e-4, atol=1e-6)
