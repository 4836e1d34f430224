"""recon_core.pipeline and the GPU paths of train.fit, exercised on the CPU: batches made ahead by a worker process
give the same training as batches made in the loop; bf16 autocast, gradient scaling and channels_last run."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from tiny_model import TinyConfig, TinyModel, tiny_images

from recon_core import precision
from recon_core.errors import ConfigError, TrainingCancelled
from recon_core.models.base import Budget
from recon_core.models.draem import Draem, DraemSynth
from recon_core.pipeline import BatchMaker, BatchPipeline, default_workers, iteration_rngs
from recon_core.synth import DefectGenerator, SynthConfig
from recon_core.train import fit

TINY = {"image_size": 32, "batch_size": 2, "recon_width": 4, "disc_width": 4, "recon_depth": 3, "disc_depth": 3}
SYNTH = SynthConfig(texture_source="noise")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def weights(model) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.clone() for n, net in model.networks().items() for k, v in net.state_dict().items()}


def draem(**changes) -> Draem:
    torch.manual_seed(0)
    return Draem(Draem.config_from_preset("cpu", **{**TINY, **changes}))


def test_iteration_rngs_depend_on_seed_and_iteration_only():
    a_batch, a_step = iteration_rngs(7, 12)
    b_batch, b_step = iteration_rngs(7, 12)
    assert a_batch.random() == b_batch.random() and a_step.random() == b_step.random()
    assert iteration_rngs(7, 12)[0].random() != iteration_rngs(7, 13)[0].random()
    assert iteration_rngs(7, 12)[0].random() != iteration_rngs(8, 12)[0].random()
    assert iteration_rngs(7, 12)[0].random() != iteration_rngs(7, 12)[1].random()  # batch and step streams differ


def test_defect_generator_and_draem_synthesis_survive_pickling():
    images = tiny_images(4)
    synth = DraemSynth(DefectGenerator(SYNTH, 32))
    clone = pickle.loads(pickle.dumps(synth))
    a, b = synth(images, np.random.default_rng(1)), clone(images, np.random.default_rng(1))
    assert a.keys() == b.keys() == {"images", "augmented", "masks"}
    assert a["augmented"].shape == (4, 3, 32, 32) and a["masks"].shape == (4, 32, 32)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_a_worker_makes_the_same_batches_in_order_across_a_stage_change():
    maker = BatchMaker(tiny_images(5), 3, seed=4, synths=[None, DraemSynth(DefectGenerator(SYNTH, 32))])
    keys = [(0, 0), (0, 1), (0, 2), (1, 3), (1, 4), (1, 9), (0, 2)]  # a stage change, a jump, a step back
    inline = BatchPipeline(maker, torch.device("cpu"), workers=0)
    ahead = BatchPipeline(maker, torch.device("cpu"), workers=1)
    try:
        for key in keys:
            a, b = inline.get(*key), ahead.get(*key)
            assert a.keys() == b.keys()
            assert ("augmented" in a) == (key[0] == 1)
            for name in a:
                assert torch.equal(a[name], b[name]), (key, name)
    finally:
        ahead.close()
    assert ahead.wait_s > 0 and ahead.batches == len(keys)


def test_training_with_a_data_worker_equals_training_in_the_loop():
    images = tiny_images(6)
    inline, ahead = draem(), draem()
    s0 = fit(inline, images, SYNTH, Budget(iterations=6), seed=5, data_workers=0)
    s1 = fit(ahead, images, SYNTH, Budget(iterations=6), seed=5, data_workers=1)
    assert s0.final_losses == s1.final_losses and (s0.data_workers, s1.data_workers) == (0, 1)
    for k, v in weights(inline).items():
        assert torch.equal(v, weights(ahead)[k]), k
    assert s1.data_wait_s > 0


def test_resume_with_a_data_worker_is_exact(tmp_path):
    """Two stages (the worker restarts its stream at the stage change and on resume), cancelled mid-run."""
    images, ckpt = tiny_images(), tmp_path / "c.pt"
    torch.manual_seed(0)
    straight = TinyModel(TinyConfig(two_stages=True))
    fit(straight, images, None, Budget(iterations=20), seed=3, data_workers=0)
    torch.manual_seed(0)
    first = TinyModel(TinyConfig(two_stages=True))
    with pytest.raises(TrainingCancelled):
        fit(first, images, None, Budget(iterations=20), seed=3, checkpoint_path=ckpt, data_workers=1,
            should_stop=lambda: first.calls >= 9)  # fmt: skip
    second = TinyModel(TinyConfig(two_stages=True))
    fit(second, images, None, Budget(iterations=20), seed=3, checkpoint_path=ckpt, resume=True, data_workers=1)
    for k, v in weights(straight).items():
        assert torch.equal(v, weights(second)[k]), k


def test_default_workers_are_zero_on_cpu_and_overridable(monkeypatch):
    monkeypatch.delenv("RECON_DATA_WORKERS", raising=False)
    assert default_workers(torch.device("cpu")) == 0
    monkeypatch.setenv("RECON_DATA_WORKERS", "2")
    assert default_workers(torch.device("cpu")) == 2


def test_precision_choices(monkeypatch):
    cpu = torch.device("cpu")
    cfg = Draem.config_from_preset("gpu")
    assert cfg.precision == "auto" and cfg.channels_last and cfg.cudnn_benchmark
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    assert precision.autocast_dtype(cfg, cpu) is None  # "auto" is fp32 on a CPU without AMX
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: True)
    assert precision.autocast_dtype(cfg, cpu) is torch.bfloat16  # and bf16 where AMX runs it natively
    assert precision.autocast_dtype(cfg, torch.device("meta")) is None  # other devices: fp32
    assert precision.autocast_dtype(Draem.config_from_preset("cpu", precision="bf16"), cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        precision.autocast_dtype(Draem.config_from_preset("cpu", precision="fp16"), cpu)
    with pytest.raises(ConfigError):
        Draem.config_from_preset("cpu", precision="fp8")


def test_bf16_autocast_runs_the_draem_step_in_bf16_with_finite_float_losses():
    model = draem(precision="bf16", channels_last=True)
    seen: list[torch.dtype] = []
    model.nets.discriminative.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    summary = fit(model, tiny_images(6), SYNTH, Budget(iterations=3), seed=1, data_workers=1)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(np.isfinite(v) for v in summary.final_losses.values())
    assert next(model.nets.parameters()).dtype == torch.float32  # weights stay float32 (autocast, not .half())
    conv = next(m for m in model.nets.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    pred = model.predict(tiny_images(2))
    assert np.isfinite(pred.maps).all()


def test_optimizer_step_goes_through_the_gradient_scaler():
    model = draem()
    model.setup_training(tiny_images(2), SYNTH, 0)
    model.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    before = weights(model)
    batch = torch.from_numpy(tiny_images(2)).permute(0, 3, 1, 2).contiguous()
    losses = model._step(batch, np.random.default_rng(0))
    assert np.isfinite(losses["total"]) and model.grad_scaler.get_scale() == 2.0**10  # finite grads: scale kept
    assert any(not torch.equal(v, weights(model)[k]) for k, v in before.items())


@pytest.mark.gpu
def test_gpu_training_with_workers_mixed_precision_and_onnx_export(tmp_path):
    from recon_core.bundle import save_bundle
    from recon_core.export import export_onnx

    torch.manual_seed(0)
    model = Draem(Draem.config_from_preset("gpu", image_size=64, batch_size=4, recon_width=8, disc_width=8), "cuda")
    summary = fit(model, tiny_images(8, size=64), SYNTH, Budget(iterations=20), seed=0, data_workers=2)
    assert summary.iterations == 20 and all(np.isfinite(v) for v in summary.final_losses.values())
    assert summary.data_workers == 2
    path = tmp_path / "gpu.pt"
    save_bundle(path, model, synth_config=SYNTH)
    info = export_onnx(path, tmp_path / "gpu.onnx")
    assert (tmp_path / "gpu.onnx").is_file() and info["opset"]


def test_draem_synthesis_makes_the_training_crops():
    made = DraemSynth(DefectGenerator(SYNTH, 32), train_crop=16)(tiny_images(3), np.random.default_rng(0))
    assert made["images"].shape == made["augmented"].shape == (3, 3, 16, 16) and made["masks"].shape == (3, 16, 16)
    whole = DraemSynth(DefectGenerator(SYNTH, 32))(tiny_images(3), np.random.default_rng(0))
    np.testing.assert_array_equal(whole["images"], tiny_images(3).transpose(0, 3, 1, 2))
