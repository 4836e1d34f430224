"""Map normalisation: a structure that scores high on every good is suppressed; the choice is stored in the bundle
and the ONNX export gives the same scores as torch."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from recon_core.errors import CheckpointError
from recon_core.metrics import image_auroc
from recon_core.models.base import AnomalyModel, ModelConfig, Prediction
from recon_core.normalisation import MapNormaliser, calibrate
from recon_core.synth import SynthConfig

SIZE = 32
STRIPE = slice(12, 15)  # rows of the bright fixed structure on every good
GREY = 0.3


@dataclass
class StripeConfig(ModelConfig):
    image_size: int = SIZE
    batch_size: int = 8


class _Scorer(nn.Module):
    """Map = how far each pixel is from the goods' grey: defects score, and so does the bright stripe on every
    good."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = (x - GREY).abs().mean(dim=1)
        return maps.flatten(1).amax(dim=1), maps


class StripeModel(AnomalyModel):
    """A fixed scoring rule standing in for a trained model (no training needed)."""

    name: ClassVar[str] = "stripe"
    config_class: ClassVar[type[ModelConfig]] = StripeConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {}}

    def networks(self) -> dict[str, nn.Module]:
        return {}

    def setup_training(self, train_images: np.ndarray, synth_config: Any, seed: int) -> None:
        pass

    def stages(self) -> list:
        return []

    def onnx_module(self) -> nn.Module:
        return _Scorer().eval()

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 8) -> Prediction:
        s, m = _Scorer()(torch.from_numpy(np.ascontiguousarray(images, np.float32)).permute(0, 3, 1, 2))
        return Prediction(s.numpy(), m.numpy())


@pytest.fixture
def stripe_registered(monkeypatch):
    from recon_core import models

    monkeypatch.setitem(models.MODEL_MODULES, "stripe", ("test_normalisation", "StripeModel", False))


def goods(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = GREY + rng.normal(0, 0.01, (n, SIZE, SIZE, 3)).astype(np.float32)
    out[:, STRIPE] = 0.95  # the fixed structure: far from grey, on every good
    return np.clip(out, 0, 1).astype(np.float32)


SYNTH = SynthConfig(texture_source="noise", foreground="off", perlin_scale_min=2, perlin_scale_max=3)


def test_a_fixed_bright_structure_on_every_good_is_suppressed():
    from recon_core.evaluation import synthetic_test_set

    model = StripeModel(StripeConfig())
    norm, figures = calibrate(model, goods(12, seed=0), SYNTH, goods_trained_on=False)
    assert norm is not None, figures
    assert norm.mode.startswith("pixel"), figures
    assert figures[norm.mode] > figures["none"]
    # on goods and defects it never saw, the stripe no longer outscores the defects
    fresh = synthetic_test_set(goods(10, seed=1), [str(i) for i in range(10)], SYNTH, SIZE)
    raw = model.predict(fresh.images)
    model.normaliser = norm
    normed = model.score(fresh.images)
    assert image_auroc(fresh.labels, raw.image_scores) < 0.75  # the stripe dominates every raw score
    assert image_auroc(fresh.labels, normed.image_scores) > 0.9
    good_maps = normed.maps[fresh.labels == 0]
    assert good_maps[:, STRIPE].mean() < 1.0  # within the goods' spread, not a hot spot


def test_without_a_structure_the_raw_scores_stay():
    """Plain goods: nothing to remove, so calibrate keeps the model's own scores (or a candidate that is no worse)."""
    rng = np.random.default_rng(0)
    plain = np.clip(GREY + rng.normal(0, 0.01, (12, SIZE, SIZE, 3)), 0, 1).astype(np.float32)
    norm, figures = calibrate(StripeModel(StripeConfig()), plain, SYNTH, goods_trained_on=False)
    assert set(figures) == {"none", "global", "pixel-mean", "pixel-z"}
    if norm is not None:
        assert figures[norm.mode] >= figures["none"]


def test_goods_the_model_trained_on_never_choose_a_per_pixel_mode():
    """Regression: per-pixel statistics from a model's own training goods won their validation and then lost on new
    goods (bottle DRAEM, pixel AUROC 0.850 -> 0.829 on unseen goods); from training goods only global may be chosen."""
    norm, figures = calibrate(StripeModel(StripeConfig()), goods(12, seed=0), SYNTH)  # default: trained on them
    assert max(figures, key=figures.get).startswith("pixel"), figures  # they would have won the validation
    assert norm is None or norm.mode == "global", (norm, figures)


def test_too_few_goods_give_no_normalisation():
    assert calibrate(StripeModel(StripeConfig()), goods(2, seed=0), SYNTH) == (None, {})


def test_bundle_keeps_the_normalisation_and_onnx_matches_torch(tmp_path, stripe_registered):
    import onnxruntime as ort

    from recon_core.bundle import load_bundle, save_bundle
    from recon_core.export import export_onnx

    model = StripeModel(StripeConfig())
    model.normaliser, _ = calibrate(model, goods(12, seed=0), SYNTH, goods_trained_on=False)
    assert model.normaliser is not None
    save_bundle(tmp_path / "model.pt", model, synth_config=SYNTH)
    loaded = load_bundle(tmp_path / "model.pt", "cpu")
    assert loaded.model.normaliser.mode == model.normaliser.mode
    assert np.array_equal(loaded.model.normaliser.mean, model.normaliser.mean)
    images = goods(5, seed=3)
    images[0, 2:8, 2:8] = 0.0  # one defect
    torch_pred = loaded.model.score(images)
    assert np.allclose(torch_pred.image_scores, model.score(images).image_scores)
    export_onnx(tmp_path / "model.pt", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    scores, maps = session.run(None, {"image": images.transpose(0, 3, 1, 2).copy()})
    assert np.allclose(scores, torch_pred.image_scores, atol=1e-4)
    assert np.allclose(maps, torch_pred.maps, atol=1e-4)
    raw_scores, _ = _Scorer()(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert not np.allclose(scores, raw_scores.numpy(), atol=1e-3)  # the export really holds the normalisation


def test_draem_scoring_module_with_normalisation_exports(tmp_path):
    """The wrapper works around a real model's scorer, inside one ONNX graph."""
    import onnxruntime as ort

    from recon_core.models.draem import Draem, DraemConfig

    torch.manual_seed(0)
    model = Draem(DraemConfig(image_size=SIZE, recon_width=2, disc_width=2, recon_depth=2, disc_depth=2))
    model.train_mode(False)
    rng = np.random.default_rng(0)
    model.normaliser = MapNormaliser("pixel-z", rng.random((SIZE, SIZE)) * 0.1, 0.05 + rng.random((SIZE, SIZE)), 3)
    images = rng.random((2, SIZE, SIZE, 3), dtype=np.float32)
    expected = model.score(images)
    module = model.scoring_module().eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer notes
        warnings.simplefilter("ignore")
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        torch.onnx.export(module, (x,), str(tmp_path / "d.onnx"), dynamo=False, opset_version=17)
    session = ort.InferenceSession(str(tmp_path / "d.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    scores, maps = session.run(None, {name: images.transpose(0, 3, 1, 2).copy()})
    assert np.allclose(scores, expected.image_scores, atol=1e-4)
    assert np.allclose(maps, expected.maps, atol=1e-4)


def test_a_damaged_normalisation_field_is_refused(tmp_path, stripe_registered):
    from recon_core.bundle import atomic_torch_save, load_bundle, read_bundle_dict, save_bundle

    model = StripeModel(StripeConfig())
    model.normaliser = MapNormaliser("global", np.zeros((SIZE, SIZE)), np.ones((SIZE, SIZE)), 1)
    save_bundle(tmp_path / "m.pt", model, synth_config=None)
    raw = read_bundle_dict(tmp_path / "m.pt")
    raw["normalisation"]["scale"] = torch.zeros(SIZE, SIZE)
    atomic_torch_save(raw, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="normalisation"):
        load_bundle(tmp_path / "m.pt", "cpu")


def test_a_bundle_with_normalisation_is_refused_by_an_older_reader(tmp_path, stripe_registered, monkeypatch):
    """An older Recon Studio would ignore the normalisation and give other scores: it must refuse the file."""
    from recon_core import bundle
    from recon_core.bundle import load_bundle, read_bundle_dict, save_bundle

    model = StripeModel(StripeConfig())
    model.normaliser = MapNormaliser("global", np.zeros((SIZE, SIZE)), np.ones((SIZE, SIZE)), 1)
    save_bundle(tmp_path / "m.pt", model, synth_config=None)
    assert read_bundle_dict(tmp_path / "m.pt")["format_version"] == bundle.FORMAT_VERSION == 2
    monkeypatch.setattr(bundle, "FORMAT_VERSION", 1)
    with pytest.raises(CheckpointError, match="newer"):
        load_bundle(tmp_path / "m.pt", "cpu")
