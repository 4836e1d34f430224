"""recon_core.memory: the device-memory estimate and the refusal of runs that cannot fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recon_core import memory
from recon_core.errors import ConfigError
from recon_core.models.draem import Draem, DraemConfig

TINY = {"image_size": 32, "batch_size": 2, "recon_width": 4, "disc_width": 4, "recon_depth": 3, "disc_depth": 3}


def _cfg(**changes) -> DraemConfig:
    return Draem.config_from_preset("cpu", **{**TINY, **changes})


def test_saved_bytes_counts_what_autograd_keeps_once_and_skips_excluded_storages():
    w = torch.ones(1000, requires_grad=True)
    x = torch.ones(1000, requires_grad=True)
    # mul saves both inputs (4 kB each); exp saves its output; w is excluded like a weight
    n = memory._saved_bytes(lambda: (x * w).exp().sum(), {w.untyped_storage().data_ptr()})
    assert n == 2 * 4000


def test_activations_scale_with_batch_and_pixels_weights_do_not():
    base = memory.estimate("draem", _cfg())
    double_batch = memory.estimate("draem", _cfg(batch_size=4))
    double_side = memory.estimate("draem", _cfg(image_size=64))
    assert double_batch.activations == pytest.approx(2 * base.activations, rel=0.01)
    assert double_side.activations == pytest.approx(
        4 * base.activations, rel=0.05
    )  # probed at 64 px: the bottleneck differs a little
    assert double_batch.weights == base.weights == double_side.weights
    assert base.weights == 4 * Draem(_cfg()).parameter_count()
    assert base.optimizer == pytest.approx(2 * base.weights, rel=0.01)  # Adam: two moments per weight


def test_wider_networks_need_more():
    assert memory.estimate("draem", _cfg(disc_width=8)).total > memory.estimate("draem", _cfg()).total


def test_mixed_precision_is_counted_where_it_applies(monkeypatch):
    from recon_core import precision

    cfg = _cfg(precision="bf16")
    assert memory.estimate("draem", cfg, "cpu").mixed_precision
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    assert not memory.estimate("draem", _cfg(precision="auto"), "cpu").mixed_precision  # auto = fp32 without AMX
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    assert memory.estimate("draem", _cfg(precision="auto"), "cpu").mixed_precision  # and bf16 with it
    assert memory.estimate("draem", cfg).activations < memory.estimate("draem", _cfg()).activations


def test_a_run_that_cannot_fit_is_refused_with_a_batch_that_would(monkeypatch):
    est = memory.estimate("draem", _cfg(batch_size=64))
    fixed = est.weights + est.gradients + est.optimizer + est.overhead
    monkeypatch.setattr(memory, "available_bytes", lambda device: int((fixed + est.activations / 4) / memory.SAFETY))
    with pytest.raises(ConfigError, match=r"batch size (15|16) would fit"):
        memory.check_fits("draem", _cfg(batch_size=64), "cpu")
    assert memory.check_fits("draem", _cfg(batch_size=8), "cpu") is not None
    monkeypatch.setattr(memory, "available_bytes", lambda device: fixed // 2)
    with pytest.raises(ConfigError, match="even batch size 1 does not fit"):
        memory.check_fits("draem", _cfg(batch_size=64), "cpu")


def test_unknown_free_memory_never_refuses(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)
    assert memory.check_fits("draem", _cfg(batch_size=1024), "cpu") is not None


def test_describe_names_the_parts():
    text = memory.estimate("draem", _cfg()).describe()
    assert "GB at batch 2, 32 px" in text and "activations" in text


def test_every_model_can_be_estimated():
    from recon_core.models import get_model_class, model_names

    for name in model_names():
        cls = get_model_class(name)
        small = {"image_size": 32, "batch_size": 2}
        if name == "dsr":
            small.update({"codebook_size": 16, "hidden": 16, "embedding_dim": 16, "res_hidden": 8})
        cfg = dataclasses.replace(cls.config_from_preset(None), **small)
        est = memory.estimate(name, cfg)
        assert est.activations > 0 and est.weights > 0, name


def test_training_on_crops_is_estimated_at_the_crop_size():
    # regression: the probe shrank image_size below cpu-hires' train_crop (128 > 64 px), the config was refused and
    # the Train page, `jobs submit` and `bench` ran without any estimate
    hires = Draem.config_from_preset("cpu-hires")
    assert hires.train_crop == 128 and hires.image_size == 256
    est = memory.estimate("draem", hires)
    whole = memory.estimate("draem", dataclasses.replace(hires, train_crop=0, image_size=128))
    assert est.image_size == 128 and est.activations == whole.activations and est.weights == whole.weights
    assert memory.estimate("draem", dataclasses.replace(hires, train_crop=0)).activations > 3 * est.activations


@pytest.mark.gpu
def test_estimate_covers_the_real_peak_on_cuda():
    cfg = Draem.config_from_preset("gpu", batch_size=4, image_size=128)
    est = memory.estimate("draem", cfg, "cuda")
    import numpy as np

    from recon_core.synth import SynthConfig

    model = Draem(cfg, "cuda")
    images = np.random.default_rng(0).random((4, 128, 128, 3), dtype=np.float32)
    model.setup_training(images, SynthConfig(texture_source="noise"), 0)
    torch.cuda.reset_peak_memory_stats()
    from recon_core.models.base import Budget
    from recon_core.train import fit

    fit(model, images, SynthConfig(texture_source="noise"), Budget(iterations=3))
    peak = torch.cuda.max_memory_allocated()
    assert peak <= est.total - est.overhead, (peak, est)
    assert peak >= 0.3 * (est.total - est.overhead), (peak, est)  # and not wildly pessimistic


def test_jobs_submit_refuses_a_run_that_cannot_fit(tmp_path, monkeypatch):
    from recon_core.jobs import JobStore
    from recon_core.runs import RunSpec

    data = tmp_path / "good"
    data.mkdir()
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    store = JobStore(tmp_path / "ws", autostart=False)
    spec = RunSpec(data=str(data), model="draem", preset="cpu", model_overrides=TINY, iterations=2, device="cpu")
    with pytest.raises(ConfigError, match=r"has 0\.0 GB free"):
        store.submit(spec, project="p")
    assert store.list_jobs() == []


def test_train_refuses_a_run_that_cannot_fit_before_loading_data(tmp_path, monkeypatch):
    from recon_core.runs import RunSpec, execute_run

    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    spec = RunSpec(data=str(tmp_path / "empty"), model="draem", model_overrides=TINY, iterations=2, device="cpu")
    with pytest.raises(ConfigError, match=r"has 0\.0 GB free"):  # not the DataError of the missing folder
        execute_run(spec, tmp_path / "run")


def test_preset_summary_says_what_a_preset_needs_and_warns_when_it_cannot_fit(monkeypatch):
    text, fits = memory.preset_summary("draem", "cpu-fast", "cpu")
    assert fits and text.startswith("Memory: needs about") and "GB free now" in text
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1000)
    text, fits = memory.preset_summary("draem", "cpu-fast", "cpu")
    assert not fits and "will not fit" in text
    assert memory.preset_summary("draem", "no-such-preset", "cpu") is None
