"""execute_run end to end with the tiny model on a tiny MVTec-layout folder; evaluation and inference helpers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_model import make_mvtec

from recon_core.bundle import load_bundle
from recon_core.errors import CheckpointError, ConfigError, DataError, TrainingCancelled
from recon_core.evaluation import evaluate_bundle, load_eval, save_eval
from recon_core.inference import overlay, predict_paths, write_csv
from recon_core.runs import RunSpec, execute_run, replay_spec, resolve_data_path
from recon_core.synth import SynthConfig

pytestmark = pytest.mark.usefixtures("tiny_model_env")


@pytest.fixture
def mvtec(tmp_path) -> Path:
    return make_mvtec(tmp_path / "data")


def spec_for(data: Path, **kw) -> RunSpec:
    values = {"data": str(data), "model": "tiny", "iterations": 6, "checkpoint_every": 3, "synth": SynthConfig()}
    values.update(kw)
    return RunSpec(**values)


def test_runspec_json_round_trip_and_strictness():
    spec = RunSpec(data="x", model="tiny", model_overrides={"width": 8}, synth=SynthConfig(opacity_min=0.4), shots=5)
    assert RunSpec.from_json(spec.to_json()) == spec
    assert RunSpec.from_dict(json.loads(spec.to_json())).synth.opacity_min == 0.4
    with pytest.raises(ConfigError, match="bogus"):
        RunSpec.from_dict({"data": "x", "bogus": 1})
    with pytest.raises(ConfigError):
        RunSpec.from_dict({"data": "x", "synth": {"opacity_min": "high"}})


def test_execute_run_writes_the_run_folder(mvtec, tmp_path):
    run = tmp_path / "run"
    progress = []
    result = execute_run(spec_for(mvtec, shots=5), run, progress=progress.append)
    for name in ("spec.json", "data.json", "checkpoint.pt", "model.pt", "losses.csv", "metrics.json", "run.log"):
        assert (run / name).is_file(), name
    assert (run / "eval.npz").is_file() and (run / "eval.json").is_file()
    heatmaps = list((run / "heatmaps").glob("*.png"))
    assert 1 <= len(heatmaps) <= 6
    panel = np.asarray(Image.open(heatmaps[0]))
    assert panel.shape == (32, 32 * 3 + 4, 3)  # image | overlay | mask
    data = json.loads((run / "data.json").read_text())
    assert len(data["train"]) == 5
    m = result.metrics
    assert m["n_good"] == 4 and m["n_defect"] == 4 and m["synthetic"] is False
    assert m["iterations"] == 6 and m["pixel_auroc"] is not None
    assert progress[-1].iteration == 6
    loaded = load_bundle(result.bundle_path, "cpu")
    assert loaded.threshold is not None and loaded.threshold.params["default"]
    assert loaded.metadata["shots"] == 5
    ev = load_eval(run / "eval")
    assert ev.labels.tolist() == [0] * 4 + [1] * 4 or sorted(ev.labels.tolist()) == [0] * 4 + [1] * 4


def test_same_seed_same_shots(mvtec, tmp_path):
    execute_run(spec_for(mvtec, shots=3, seed=5), tmp_path / "a")
    execute_run(spec_for(mvtec, shots=3, seed=5), tmp_path / "b")
    a, b = (json.loads((tmp_path / r / "data.json").read_text())["train"] for r in "ab")
    assert a == b and len(a) == 3


def test_plain_folder_gets_a_synthetic_evaluation(tmp_path):
    data = make_mvtec(tmp_path / "d", n_train=10) / "train" / "good"
    result = execute_run(spec_for(data), tmp_path / "run")
    assert result.metrics["synthetic"] is True
    info = json.loads((tmp_path / "run" / "data.json").read_text())
    assert len(info["train"]) == 8 and len(info["held_out_goods"]) == 2  # 20 % held out for evaluation
    ev = load_eval(tmp_path / "run" / "eval")
    assert {"synthetic-faint", "synthetic-medium"} <= set(ev.defect_types)
    assert ev.synthetic and ev.has_masks


def test_labelled_defects_are_removed_from_evaluation(mvtec, tmp_path, monkeypatch):
    seen = {}
    import tiny_model

    real = tiny_model.TinyModel.set_labelled_defects

    def spy(self, images, masks=None):
        seen["n"] = len(images)
        seen["masks"] = None if masks is None else masks.shape
        real(self, images, masks)

    monkeypatch.setattr(tiny_model.TinyModel, "set_labelled_defects", spy)
    result = execute_run(spec_for(mvtec, labelled_defects=2), tmp_path / "run")
    assert seen == {"n": 2, "masks": (2, 32, 32)}
    assert result.metrics["n_defect"] == 2
    taken = json.loads((tmp_path / "run" / "data.json").read_text())["labelled_defects"]
    assert len(taken) == 2 and not set(taken) & set(load_eval(tmp_path / "run" / "eval").paths)
    with pytest.raises(DataError, match="asked for 9"):
        execute_run(spec_for(mvtec, labelled_defects=9), tmp_path / "run2")


def test_init_from_loads_the_other_runs_weights(mvtec, tmp_path):
    first = execute_run(spec_for(mvtec), tmp_path / "a")
    # lr 0: training does not move the weights, so the result must equal the warm start exactly
    second = execute_run(spec_for(mvtec, init_from=first.bundle_path, model_overrides={"lr": 0.0}), tmp_path / "b")
    a, b = load_bundle(first.bundle_path, "cpu").model, load_bundle(second.bundle_path, "cpu").model
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k])
    with pytest.raises(CheckpointError):
        execute_run(spec_for(mvtec, init_from=str(tmp_path / "nope.pt")), tmp_path / "c")


def test_cancel_then_resume_finishes_the_same_schedule(mvtec, tmp_path):
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 4

    spec = spec_for(mvtec, iterations=10, checkpoint_every=100)
    with pytest.raises(TrainingCancelled):
        execute_run(spec, tmp_path / "run", should_stop=stop)
    assert not (tmp_path / "run" / "model.pt").exists()
    result = execute_run(spec, tmp_path / "run", resume=True)
    assert result.metrics["iterations"] == 10 == result.metrics["total_iterations"]


def test_data_and_budget_errors(tmp_path, mvtec):
    with pytest.raises(DataError, match="no such folder"):
        execute_run(spec_for(tmp_path / "missing"), tmp_path / "r1")
    with pytest.raises(ConfigError, match="iterations or minutes"):
        execute_run(spec_for(mvtec, iterations=None), tmp_path / "r2")
    with pytest.raises(ConfigError, match="unknown model"):
        execute_run(spec_for(mvtec, model="nope"), tmp_path / "r3")
    assert resolve_data_path(str(mvtec)) == mvtec


def test_evaluate_bundle_and_save_load(mvtec, tmp_path):
    result = execute_run(spec_for(mvtec), tmp_path / "run")
    ev = evaluate_bundle(result.bundle_path, mvtec)
    assert not ev.synthetic and len(ev.scores) == 8 and ev.maps.shape == (8, 32, 32)
    save_eval(ev, tmp_path / "e.npz")
    back = load_eval(tmp_path / "e.json")
    np.testing.assert_allclose(back.scores, ev.scores)
    numbers = {k: v for k, v in ev.metrics.items() if k not in ("warnings", "by_type", "outlying_goods")}
    assert {k: back.metrics[k] for k in numbers} == pytest.approx(numbers) and back.paths == ev.paths
    assert back.metrics["warnings"] == ev.metrics["warnings"] and back.metrics["by_type"] == ev.metrics["by_type"]
    assert back.metrics["outlying_goods"] == ev.metrics["outlying_goods"]
    assert (tmp_path / "e.npz").is_file() and (tmp_path / "e.json").is_file()


def test_predict_paths_with_a_corrupt_file(mvtec, tmp_path):
    result = execute_run(spec_for(mvtec), tmp_path / "run")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    good = sorted((mvtec / "test" / "crack").glob("*.png"))[:2]
    rows, maps, _ = predict_paths(result.bundle_path, [good[0], bad, good[1], tmp_path / "missing.png"])
    assert [r["problem"] is None for r in rows] == [True, False, True, False]
    assert rows[1]["score"] is None and rows[1]["verdict"] is None and rows[1]["problem"]
    assert rows[0]["verdict"] in ("accept", "review", "reject") and len(maps) == 2
    write_csv(rows, tmp_path / "p.csv")
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "path,score,verdict,problem" and len(lines) == 5


def test_overlay_is_uint8_and_blends():
    img = np.zeros((16, 16, 3), np.float32)
    amap = np.zeros((8, 8), np.float32)
    amap[0, 0] = 1.0
    out = overlay(img, amap, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    assert overlay(img, amap, alpha=0.0).max() == 0  # alpha 0: the image unchanged
    assert not np.array_equal(out[0, 0], out[15, 15])  # hot corner differs from cold corner


def test_synthetic_test_set_from_one_good_image():
    from tiny_model import tiny_images

    from recon_core.evaluation import synthetic_test_set

    ts = synthetic_test_set(tiny_images(1), ["a.png"], SynthConfig(texture_source="noise"), 32)
    assert ts.labels.tolist() == [0, 1, 1] and ts.defect_types == ["good", "synthetic-faint", "synthetic-medium"]
    assert ts.masks[0].sum() == 0 and ts.masks[1].sum() > 0 and ts.masks[2].sum() > 0
    again = synthetic_test_set(tiny_images(1), ["a.png"], SynthConfig(texture_source="noise"), 32)
    np.testing.assert_array_equal(ts.images, again.images)  # seeded: every run judged on the same defects


def test_a_dsr_run_without_a_budget_gets_the_minutes_its_preset_was_measured_with():
    # regression: DSR declared no suggested budget, so `train --model dsr` without --minutes/--iterations failed
    from recon_core.models import get_model_class
    from recon_core.runs import budget_for

    dsr = get_model_class("dsr")
    budget = budget_for(RunSpec(data="unused", model="dsr"), dsr, "cpu")
    assert budget.minutes == 10.0 and budget.iterations is None


def test_replay_spec_trains_the_recorded_plan_and_refuses_what_it_cannot_replay():
    spec = RunSpec(data="x", model="dsr", minutes=10, seed=2, name="quiet")
    plan = {"vq": 490, "dsr": 350, "upsampling": 175}
    replay = replay_spec(spec, {"stage_iterations": "vq=490,dsr=350,upsampling=175", "iterations": 1015})
    assert (replay.minutes, replay.iterations, replay.stage_iterations) == (None, None, plan)
    assert (replay.seed, replay.model, replay.name) == (2, "dsr", "quiet (replay)")
    assert RunSpec.from_json(replay.to_json()) == replay  # travels to job workers and cluster nodes as JSON
    cut = {"stage_iterations": "vq=490,dsr=350,upsampling=175", "iterations": 900}
    assert replay_spec(spec, cut).iterations == 900  # cut short: stop there
    with pytest.raises(ConfigError, match="no iterations per stage"):
        replay_spec(spec, {"iterations": 1015})
    with pytest.raises(ConfigError, match="several models"):  # auto's metrics carry its winner's plan
        replay_spec(RunSpec(data="x", model="auto", minutes=10), {"stage_iterations": "draem=1330", "auto": {}})
    with pytest.raises(ConfigError, match="without minutes"):
        RunSpec(data="x", minutes=1, stage_iterations={"vq": 3})
    with pytest.raises(ConfigError, match="whole number"):
        RunSpec.from_dict({"data": "x", "stage_iterations": {"vq": "many"}})
    with pytest.raises(ConfigError, match="several models"):
        from recon_core.auto import AutoConfig, total_budget

        total_budget(RunSpec(data="x", model="auto", stage_iterations={"vq": 3}), AutoConfig())
