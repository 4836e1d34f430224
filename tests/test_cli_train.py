"""CLI: train / eval / predict / export / threshold with the tiny model, in process."""

from __future__ import annotations

import csv
import json
import zipfile

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tiny_model import TinyConfig, TinyModel, make_mvtec, tiny_images

from recon_core.bundle import load_bundle, save_bundle
from recon_core.cli import main
from recon_core.errors import ConfigError
from recon_core.export import export_bundle_zip, export_onnx
from recon_core.stage_plan import parse_stage_plan

pytestmark = pytest.mark.usefixtures("tiny_model_env")


@pytest.fixture
def trained(tmp_path):
    data = make_mvtec(tmp_path / "data")
    run = tmp_path / "run"
    code = main(
        [
            "train",
            str(data),
            "--model",
            "tiny",
            "--iterations",
            "6",
            "--shots",
            "5",
            "--out",
            str(run),
            "--set",
            "width=6",
            "--synth-config",
            '{"opacity_min": 0.3}',
            "-q",
        ]
    )
    assert code == 0
    return data, run


def test_train_writes_a_run(trained, capsys):
    data, run = trained
    assert (run / "model.pt").is_file()
    spec = json.loads((run / "spec.json").read_text())
    assert spec["model_overrides"] == {"width": 6} and spec["synth"]["opacity_min"] == 0.3 and spec["shots"] == 5
    assert load_bundle(run / "model.pt", "cpu").model.config.width == 6
    # the same --out again is refused, --resume continues (here: already finished, nothing to redo)
    assert main(["train", str(data), "--model", "tiny", "--iterations", "6", "--out", str(run), "-q"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(run), "-q"]) == 0


def test_resume_of_a_finished_run_keeps_a_hand_set_threshold(trained, capsys):
    """Issue 13 item 10: `train --resume` on a finished run replaced a hand-set threshold (0.123) with the default
    one and rewrote the evaluation. Now it says the run is finished and changes nothing."""
    _, run = trained
    assert main(["threshold", str(run), "--method", "manual", "--value", "0.123"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "-q"]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "threshold 0.123 (manual)" in out and "--init-from" in out
    assert load_bundle(run / "model.pt", "cpu").threshold.value == pytest.approx(0.123)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.is_file()} == before  # nothing rewritten


def test_execute_run_resume_of_a_finished_run_changes_nothing(trained):
    from recon_core.runs import RunSpec, execute_run

    _, run = trained
    assert main(["threshold", str(run), "--method", "manual", "--value", "0.123"]) == 0
    spec = RunSpec.from_dict(json.loads((run / "spec.json").read_text()))
    result = execute_run(spec, run, resume=True)
    assert result.metrics == json.loads((run / "metrics.json").read_text())
    assert load_bundle(run / "model.pt", "cpu").threshold.value == pytest.approx(0.123)


def test_train_refuses_bad_settings(tmp_path, capsys):
    data = make_mvtec(tmp_path / "data")
    args = ["train", str(data), "--model", "tiny", "--iterations", "2", "--out", str(tmp_path / "r"), "-q"]
    assert main([*args, "--synth-config", '{"opacity": 2}']) == 1
    assert "unknown setting" in capsys.readouterr().err
    assert main([*args, "--set", "nonsense=1"]) == 1
    assert "nonsense" in capsys.readouterr().err


def test_eval_prints_metrics_and_curves(trained, tmp_path):
    data, run = trained
    out = tmp_path / "eval.json"
    assert main(["eval", str(run), "--data", str(data), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["metrics"]["n_defect"] == 4 and not result["synthetic"]
    assert len(result["roc"]["fpr"]) == len(result["roc"]["tpr"]) >= 2 and "precision" in result["pr"]
    assert set(result["confusion"]) >= {"tp", "fp", "tn", "fn"}


def test_predict_csv_with_one_corrupt_file(trained, tmp_path, capsys):
    data, run = trained
    bad = tmp_path / "in" / "corrupt.png"
    bad.parent.mkdir()
    bad.write_bytes(b"definitely not a png")
    good = sorted((data / "test" / "good").glob("*.png"))
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(good[0]), str(bad), str(good[1]), "--out", str(out)]) == 0
    with open(out / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows] == [str(good[0]), str(bad), str(good[1])]
    assert rows[1]["score"] == "" and rows[1]["problem"] and rows[1]["verdict"] == ""
    assert all(r["verdict"] in ("accept", "review", "reject") for r in (rows[0], rows[2]))
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["000.png", "001.png"]
    assert "corrupt.png" in capsys.readouterr().err


def test_threshold_methods_update_the_bundle(trained, capsys):
    _, run = trained
    assert main(["threshold", str(run), "--method", "manual", "--value", "0.123", "--review-below", "0.1"]) == 0
    thr = load_bundle(run / "model.pt", "cpu").threshold
    assert (thr.value, thr.method, thr.review_below) == (0.123, "manual", 0.1)
    capsys.readouterr()
    assert main(["threshold", str(run), "--method", "fpr", "--value", "0.25"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["threshold"]["method"] == "fpr" and printed["confusion"]["fpr"] <= 0.25
    assert main(["threshold", str(run), "--method", "quantile", "--value", "0.9"]) == 0
    assert load_bundle(run / "model.pt", "cpu").threshold.method == "quantile"
    assert main(["threshold", str(run), "--method", "manual"]) == 1  # needs --value


def test_export_onnx_and_zip(trained, tmp_path):
    _, run = trained
    onnx_path, zip_path = tmp_path / "m.onnx", tmp_path / "m.zip"
    assert main(["export", str(run), "--onnx", str(onnx_path), "--zip", str(zip_path)]) == 0
    names = set(zipfile.ZipFile(zip_path).namelist())
    assert {"model.pt", "model.onnx", "README.txt", "threshold.json", "metrics.json", "config.json"} <= names
    readme = zipfile.ZipFile(zip_path).read("README.txt").decode()
    assert '"image"' in readme and "(batch, 3, 32, 32)" in readme and "NO mean/std normalisation" in readme
    # the ONNX file scores real images like the bundle does
    bundle = load_bundle(run / "model.pt", "cpu")
    images = tiny_images(3)
    ref = bundle.model.score(images)  # with the map normalisation chosen after training
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scores, maps = session.run(None, {"image": images.transpose(0, 3, 1, 2).copy()})
    np.testing.assert_allclose(scores, ref.image_scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps, ref.maps, rtol=1e-4, atol=1e-6)


def test_export_refused_for_models_without_onnx(tmp_path, monkeypatch):
    model = TinyModel(TinyConfig())
    path = tmp_path / "m.pt"
    save_bundle(path, model, synth_config=None)

    def no_export(self):
        raise ConfigError(f"model {self.name!r}: export not supported")

    monkeypatch.setattr(TinyModel, "onnx_module", no_export)
    with pytest.raises(ConfigError, match="export not supported"):
        export_onnx(path, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    # the zip still works, without the ONNX file, and says why
    info = export_bundle_zip(path, tmp_path / "m.zip")
    assert not info["onnx"] and "model.onnx" not in info["files"]
    assert (
        "not included: model 'tiny': export not supported"
        in zipfile.ZipFile(tmp_path / "m.zip").read("README.txt").decode()
    )


def test_export_parity_failure_is_refused(tmp_path, monkeypatch):
    from recon_core import export as export_mod

    model = TinyModel(TinyConfig())
    path = tmp_path / "m.pt"
    save_bundle(path, model, synth_config=None)
    real = ort.InferenceSession

    class Skewed:
        def __init__(self, *a, **k):
            self.s = real(*a, **k)

        def run(self, names, feeds):
            return [o + 1.0 for o in self.s.run(names, feeds)]

    monkeypatch.setattr(ort, "InferenceSession", Skewed)
    with pytest.raises(export_mod.ReconError, match="differs from torch"):
        export_onnx(path, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_a_minutes_run_is_replayed_by_its_stage_iterations(tmp_path, capsys):
    """`train --minutes` prints and records its iterations per stage; `train --stage-iterations` with them trains the
    same weights (what a busy machine does to reproduce a quiet machine's run); bad plans are refused clearly."""
    data = make_mvtec(tmp_path / "data")
    args = ["train", str(data), "--model", "tiny", "--set", "two_stages=true", "--shots", "5", "--seed", "4", "-q"]
    assert main([*args, "--minutes", "0.02", "--out", str(tmp_path / "timed")]) == 0
    timed = json.loads((tmp_path / "timed" / "metrics.json").read_text())
    plan = parse_stage_plan(timed["stage_iterations"])
    assert list(plan) == ["main", "head"] and min(plan.values()) >= 1  # in the model's stage order
    assert f"(replay with --stage-iterations): {timed['stage_iterations']}" in capsys.readouterr().out
    stop = ["--iterations", str(timed["iterations"])] if timed["stopped_by_time"] else []
    replay = ["--stage-iterations", timed["stage_iterations"], *stop, "--out", str(tmp_path / "replay")]
    assert main([*args, *replay]) == 0
    again = json.loads((tmp_path / "replay" / "metrics.json").read_text())
    assert again["stage_iterations"] == timed["stage_iterations"] and again["iterations"] == timed["iterations"]
    assert json.loads((tmp_path / "replay" / "spec.json").read_text())["stage_iterations"] == plan
    first, second = (load_bundle(tmp_path / r / "model.pt", "cpu").model for r in ("timed", "replay"))
    for k, v in first.net.state_dict().items():
        assert torch.equal(v, second.net.state_dict()[k]), k
    assert main([*args, "--minutes", "1", "--stage-iterations", "main=3,head=1", "--out", str(tmp_path / "x")]) == 1
    assert "without minutes" in capsys.readouterr().err
    assert main([*args, "--stage-iterations", "vq=3", "--out", str(tmp_path / "y")]) == 1
    assert "tiny trains main, head" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--stage-iterations", "main=x", "--out", str(tmp_path / "z")])
    assert "NAME=COUNT" in capsys.readouterr().err
