"""Benchmark runner: result files, append mode, summaries, failures; a real tiny run when the run pipeline exists."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from recon_core import bench
from recon_core.cli import main as cli_main
from recon_core.errors import ConfigError
from recon_core.models.draem import Draem

TINY = {"image_size": 32, "recon_width": 4, "disc_width": 4, "recon_depth": 3, "disc_depth": 3, "batch_size": 4}


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def make_mvtec(root: Path, n_train: int = 6, n_good: int = 3, n_bad: int = 3, size: int = 40) -> Path:
    """A tiny MVTec-layout data set: grey images with noise; defects are bright squares with masks."""
    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return np.clip(120 + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)

    for i in range(n_train):
        (root / "train" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), image())
    for i in range(n_good):
        (root / "test" / "good").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "test" / "good" / f"{i:03d}.png"), image())
    for i in range(n_bad):
        (root / "test" / "spot").mkdir(parents=True, exist_ok=True)
        (root / "ground_truth" / "spot").mkdir(parents=True, exist_ok=True)
        img, mask = image(), np.zeros((size, size), np.uint8)
        y, x = rng.integers(4, size - 14, 2)
        img[y : y + 10, x : x + 10] = 250
        mask[y : y + 10, x : x + 10] = 255
        cv2.imwrite(str(root / "test" / "spot" / f"{i:03d}.png"), img)
        cv2.imwrite(str(root / "ground_truth" / "spot" / f"{i:03d}_mask.png"), mask)
    return root


@dataclass
class FakeSpec:
    data: str
    model: str = "draem"
    preset: str | None = None
    model_overrides: dict | None = None
    shots: int | None = None
    synth: object = None
    iterations: int | None = None
    minutes: float | None = None
    stage_iterations: dict | None = None
    device: str = "auto"
    seed: int = 0
    labelled_defects: int = 0
    name: str | None = None


def fake_api(calls: list, fail_on: str | None = None):
    """Stands in for runs/bundle: 'trains' by reporting progress, returns seed-dependent metrics."""

    def execute(spec, run_dir, progress=None):
        calls.append(spec)
        if fail_on and fail_on in spec.data:
            raise RuntimeError("boom")
        progress(SimpleNamespace(iteration=10, elapsed_s=2.0, images_per_s=40.0))
        metrics = {"image_auroc": 0.9 + 0.01 * spec.seed, "pixel_auroc": 0.8, "aupro": float("nan"), "n_good": 3}
        return SimpleNamespace(bundle_path=Path(run_dir) / "model.pt", metrics=metrics)

    def load(path, device="auto"):
        return SimpleNamespace(model=Draem(Draem.config_from_preset("cpu", **TINY)))

    return lambda: (FakeSpec, execute, load)


def test_result_files_append_and_summarise(tmp_path, monkeypatch) -> None:
    data = make_mvtec(tmp_path / "data" / "set" / "cat")
    calls: list = []
    monkeypatch.setattr(bench, "_run_api", fake_api(calls))
    out = tmp_path / "results"
    cfg = bench.BenchConfig(models=["draem"], categories=["set/cat"], seeds=[0, 2], iterations=3,
                            data_root=str(tmp_path / "data"), out_dir=str(out), infer_repeats=1)  # fmt: skip
    rows = bench.run_bench(cfg, echo=lambda _: None)
    assert len(rows) == 2 and not any(r.get("error") for r in rows)
    assert [c.seed for c in calls] == [0, 2] and calls[0].data == str(data) and calls[0].shots == 20
    row = rows[0]
    assert row["iterations"] == 10 and row["train_s"] == 2.0 and row["s_per_iteration"] == pytest.approx(0.2)
    assert row["train_images_per_s"] == pytest.approx(10 * 4 / 2.0)  # from the model's batch size
    assert row["infer_ms_per_image"] > 0 and row["peak_rss_mb"] > 10 and row["aupro"] is None
    assert row["cores"] >= 1 and row["torch"] == torch.__version__ and row["cpu"]

    # a second benchmark (another model, say) appends to the same files
    cfg2 = bench.BenchConfig(models=["draem"], categories=["set/cat"], seeds=[1], minutes=0.1, preset="cpu-fast",
                             data_root=str(tmp_path / "data"), out_dir=str(out), infer_repeats=1)  # fmt: skip
    bench.run_bench(cfg2, echo=lambda _: None)
    saved = json.loads((out / "bench.json").read_text())
    assert len(saved) == 3
    with open(out / "bench.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 3 and table[0]["image_auroc"] == "0.9" and table[2]["preset"] == "cpu-fast"
    md = (out / "bench.md").read_text()
    assert "0.910 ± 0.014" in md  # mean ± std of seeds 0 and 2 (0.90, 0.92)
    assert "| 2.0 | 20.0 |" in md  # timings: medians (train_s, images/s), not mean ± std
    assert "cpu-fast" in md and md.count("| draem |") == 5  # 2 summary groups + 3 runs
    summary = bench.summarise(saved)
    assert {s["seeds"] for s in summary} == {1, 2}


def test_a_failing_run_is_recorded_and_the_rest_goes_on(tmp_path, monkeypatch) -> None:
    make_mvtec(tmp_path / "a")
    make_mvtec(tmp_path / "b")
    monkeypatch.setattr(bench, "_run_api", fake_api([], fail_on=str(tmp_path / "a")))
    cfg = bench.BenchConfig(models=["draem"], categories=[str(tmp_path / "a"), str(tmp_path / "b")],
                            iterations=2, out_dir=str(tmp_path / "out"), name="t", infer_repeats=1)  # fmt: skip
    rows = bench.run_bench(cfg, echo=lambda _: None)
    assert "RuntimeError: boom" in rows[0]["error"] and not rows[1].get("error")
    assert "boom" in (tmp_path / "out" / "t.md").read_text()
    missing = bench.BenchConfig(models=["draem"], categories=["nope"], iterations=2, data_root=str(tmp_path),
                                out_dir=str(tmp_path / "out"), name="t2")  # fmt: skip
    row = bench.run_bench(missing, echo=lambda _: None)[0]
    assert "not found" in row["error"]


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        bench.BenchConfig(models=["draem"], categories=["x"])
    with pytest.raises(ConfigError, match="exactly one"):
        bench.BenchConfig(models=["draem"], categories=["x"], minutes=1, iterations=3)
    with pytest.raises(ConfigError, match="at least one model"):
        bench.BenchConfig(models=[], categories=["x"], minutes=1)
    with pytest.raises(ConfigError, match="labelled defects"):
        bench.BenchConfig(models=["aae"], categories=["x"], minutes=1, labelled_defects=[-1])
    with pytest.raises(ConfigError, match="without minutes"):
        bench.BenchConfig(models=["dsr"], categories=["x"], minutes=1, stage_iterations={"vq": 3})
    replay = bench.BenchConfig(models=["dsr"], categories=["x"], stage_iterations={"vq": 3, "dsr": 2}, iterations=4)
    assert replay.budget_text() == "replay vq=3,dsr=2 stop 4"


def test_labelled_defects_reach_the_run_and_group_apart(tmp_path, monkeypatch) -> None:
    make_mvtec(tmp_path / "d" / "cat")
    calls: list = []
    monkeypatch.setattr(bench, "_run_api", fake_api(calls))
    out = tmp_path / "o"
    code = cli_main(["bench", "--models", "aae", "--categories", "cat", "--labelled-defects", "0", "2",
                     "--seeds", "0", "1", "--iterations", "2", "--data-root", str(tmp_path / "d"), "--out", str(out),
                     "--infer-repeats", "1"])  # fmt: skip
    assert code == 0
    assert [(c.labelled_defects, c.seed) for c in calls] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    rows = json.loads((out / "bench.json").read_text())
    assert [r["labelled_defects"] for r in rows] == [0, 0, 2, 2]
    # a row written before the column existed counts as 0 labelled defects
    legacy = {k: v for k, v in rows[0].items() if k != "labelled_defects"}
    summary = bench.summarise([*rows, legacy])
    assert sorted((s["labelled_defects"], s["seeds"]) for s in summary) == [("0", 3), ("2", 2)]
    with open(out / "bench.csv") as fh:
        assert [r["labelled_defects"] for r in csv.DictReader(fh)] == ["0", "0", "2", "2"]


def test_cli_parses_and_reports_errors(tmp_path, monkeypatch, capsys) -> None:
    make_mvtec(tmp_path / "d" / "cat")
    monkeypatch.setattr(bench, "_run_api", fake_api([]))
    code = cli_main(["bench", "--models", "draem", "--categories", "cat", "--shots", "5", "all", "--seeds", "0",
                     "--iterations", "2", "--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "o"),
                     "--set", '{"lr": 0.001}', "--infer-repeats", "1"])  # fmt: skip
    assert code == 0
    rows = json.loads((tmp_path / "o" / "bench.json").read_text())
    assert [r["shots"] for r in rows] == [5, "all"] and rows[0]["overrides"] == '{"lr": 0.001}'
    assert cli_main(["bench", "--models", "draem", "--categories", "cat", "--iterations", "1", "--set", "[1]"]) == 1
    assert "--set" in capsys.readouterr().err


def test_synth_config_reaches_every_run_with_its_own_seed(tmp_path, monkeypatch, capsys) -> None:
    make_mvtec(tmp_path / "d" / "cat")
    calls: list = []
    monkeypatch.setattr(bench, "_run_api", fake_api(calls))
    args = ["bench", "--models", "draem", "--categories", "cat", "--seeds", "0", "3", "--iterations", "2",
            "--data-root", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--infer-repeats", "1"]  # fmt: skip
    assert cli_main([*args, "--synth-config", '{"foreground": "off", "texture_source": "self"}']) == 0
    assert [(c.synth.foreground, c.synth.texture_source, c.synth.seed) for c in calls] == [
        ("off", "self", 0),
        ("off", "self", 3),
    ]
    rows = json.loads((tmp_path / "o" / "bench.json").read_text())
    assert json.loads(rows[0]["overrides"]) == {"synth": {"foreground": "off", "texture_source": "self"}}
    # the design is checked before any training: unknown settings, a seed of its own, not an object
    for bad, words in [('{"forground": "off"}', "forground"), ('{"seed": 1}', "--seeds"), ("[1]", "JSON object")]:
        assert cli_main([*args, "--synth-config", bad]) == 1
        assert words in capsys.readouterr().err
    assert len(calls) == 2


def test_real_tiny_bench_run(tmp_path) -> None:
    pytest.importorskip("recon_core.runs")
    pytest.importorskip("recon_core.bundle")
    make_mvtec(tmp_path / "data" / "cat")
    out = tmp_path / "results"
    cfg = bench.BenchConfig(models=["draem"], categories=["cat"], shots=[4], iterations=3, model_overrides=TINY,
                            data_root=str(tmp_path / "data"), out_dir=str(out), threads=1, infer_repeats=1)  # fmt: skip
    rows = bench.run_bench(cfg, echo=lambda _: None)
    assert not rows[0].get("error"), rows[0].get("error")
    row = rows[0]
    assert 0 <= row["image_auroc"] <= 1 and 0 <= row["pixel_auroc"] <= 1
    assert row["iterations"] == 3 and row["train_s"] > 0 and row["image_size"] == 32
    assert (row["n_good"], row["n_defect"], row["labelled_defects"]) == (3, 3, 0)
    assert row["normalisation"] in ("none", "global")  # recorded; never per-pixel from training goods
    assert row["precision"] == "fp32"  # what training ran in ("auto" resolves per machine)
    assert [(r["type"], r["n"]) for r in row["by_type"]] == [("spot", 3)]  # per defect type, in the JSON rows
    # AAE uses labelled defects: the one it trains on leaves the evaluation (3 defects in the test split -> 2)
    aae = bench.BenchConfig(models=["aae"], categories=["cat"], shots=[4], iterations=3, labelled_defects=[1],
                            model_overrides={"image_size": 16, "width": 4, "blocks": 2, "batch_size": 4},
                            data_root=str(tmp_path / "data"), out_dir=str(out), threads=1, infer_repeats=1)  # fmt: skip
    row = bench.run_bench(aae, echo=lambda _: None)[0]
    assert not row.get("error"), row.get("error")
    assert (row["n_good"], row["n_defect"], row["labelled_defects"]) == (3, 2, 1)
    for ext in ("csv", "json", "md"):
        assert (out / f"bench.{ext}").stat().st_size > 0


def test_a_row_records_its_stage_plan_and_a_replay_of_it_trains_the_same(tmp_path) -> None:
    """Every row records its iterations per stage; `--stage-iterations` with them replays the run: same schedule,
    same scores (a busy machine reproducing a quiet machine's minutes run)."""
    make_mvtec(tmp_path / "data" / "cat")
    out = tmp_path / "results"
    common = ["bench", "--models", "draem", "--categories", "cat", "--shots", "4", "--set", json.dumps(TINY),
              "--data-root", str(tmp_path / "data"), "--out", str(out), "--threads", "1",
              "--infer-repeats", "1"]  # fmt: skip
    assert cli_main([*common, "--iterations", "3"]) == 0
    row = json.loads((out / "bench.json").read_text())[0]
    assert row["stage_iterations"] == "draem=3" and row["budget"] == "3 it"
    assert cli_main([*common, "--stage-iterations", row["stage_iterations"]]) == 0
    replay = json.loads((out / "bench.json").read_text())[1]
    assert replay["budget"] == "replay draem=3" and replay["iterations"] == 3 and not replay.get("error")
    assert (replay["image_auroc"], replay["pixel_auroc"]) == (row["image_auroc"], row["pixel_auroc"])
    assert "replay draem=3" in (out / "bench.md").read_text()  # grouped apart from the "3 it" row


def test_rows_that_trained_in_another_precision_are_summarised_apart() -> None:
    base = {"model": "draem", "preset": "cpu", "category": "c", "shots": 20, "budget": "10 it", "image_auroc": 0.5}
    rows = [dict(base), {**base, "precision": "fp32", "image_auroc": 0.7}, {**base, "precision": "bf16"}]
    groups = {e["precision"]: e["seeds"] for e in bench.summarise(rows)}
    assert groups == {"fp32": 2, "bf16": 1}  # rows from before the column trained in float32
