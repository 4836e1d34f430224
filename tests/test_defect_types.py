"""Per-defect-type evaluation: which kinds of real defect a run finds. A project's defect types (kept in
project.json, the defects share one folder) reach the evaluation; runs, `eval`, `train` and saved evaluations
carry one row per type. Tiny model, 32 px, seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_model import make_mvtec

from recon_core.cli import main
from recon_core.evaluation import current_evaluation, defect_type_rows, describe_type_row, type_findings
from recon_core.images import load_dataset
from recon_core.metrics import Threshold
from recon_core.runs import RunSpec, execute_run
from recon_core.workspace import create_project, import_folder

pytestmark = pytest.mark.usefixtures("tiny_model_env")


def two_kinds(root: Path) -> Path:
    """make_mvtec's 4 'crack' defects, 2 of them moved to a second kind, 'stain'."""
    make_mvtec(root)
    for sub in ("test", "ground_truth"):
        (root / sub / "stain").mkdir()
    for name in ("002", "003"):
        shutil.move(root / "test" / "crack" / f"{name}.png", root / "test" / "stain" / f"{name}.png")
        shutil.move(
            root / "ground_truth" / "crack" / f"{name}_mask.png", root / "ground_truth" / "stain" / f"{name}_mask.png"
        )
    return root


def test_a_projects_defect_types_reach_its_run_and_evaluation(tmp_path: Path) -> None:
    """Before, a project's defects all sat in data/test/defect and every evaluation called them 'defect', although
    the project knew their types (MVTec import, uploads with a type)."""
    project = create_project(tmp_path / "ws", "p")
    import_folder(project, two_kinds(tmp_path / "src"))
    assert sorted(set(project.defect_types().values())) == ["crack", "stain"]
    test = load_dataset(project.data_dir, 32).test
    assert sorted(set(test.defect_types)) == ["crack", "good", "stain"]
    run = tmp_path / "run"
    execute_run(RunSpec(data=str(project.data_dir), model="tiny", iterations=4, checkpoint_every=0), run)
    rows = json.loads((run / "metrics.json").read_text())["by_type"]
    assert [(r["type"], r["n"]) for r in rows] == [("crack", 2), ("stain", 2)]
    assert all(r["image_auroc"] is not None and r["pixel_auroc"] is not None for r in rows)
    # a plain MVTec folder: the folder names the type, and a folder called data without a project is left alone
    assert sorted(set(load_dataset(tmp_path / "src", 32).test.defect_types)) == ["crack", "good", "stain"]


def test_saved_evaluations_give_rows_with_or_without_them_stored(tmp_path: Path) -> None:
    run = tmp_path / "run"
    execute_run(RunSpec(data=str(two_kinds(tmp_path / "d")), model="tiny", iterations=4, checkpoint_every=0), run)
    result, _ = current_evaluation(run)
    stored = defect_type_rows(result)
    assert [r["type"] for r in stored] == ["crack", "stain"] and "caught" not in stored[0]
    # an evaluation saved before the rows existed: recomputed from its stored (32 px, full-size) maps, same figures
    data = json.loads((run / "eval.json").read_text())
    del data["metrics"]["by_type"]
    (run / "eval.json").write_text(json.dumps(data))
    old, _ = current_evaluation(run)
    assert "by_type" not in old.metrics
    assert defect_type_rows(old) == stored
    # with a threshold: the share of each type it rejects
    middle = float(np.median(result.scores))
    caught = defect_type_rows(result, Threshold(middle, "manual"))
    for row in caught:
        mine = [s for s, t in zip(result.scores, result.defect_types, strict=True) if t == row["type"]]
        assert row["caught"] == pytest.approx(np.mean(np.asarray(mine) >= middle))
    assert describe_type_row(caught[0]).startswith("crack (2 images): image AUROC ")
    # an evaluation saved without its types gives no rows rather than a crash
    old.defect_types = []
    assert defect_type_rows(old) == []


def test_cli_train_and_eval_show_each_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = two_kinds(tmp_path / "d")
    run = tmp_path / "run"
    assert main(["train", str(data), "--model", "tiny", "--iterations", "4", "--out", str(run), "-q"]) == 0
    out = capsys.readouterr().out
    assert "per defect type:" in out and "crack (2 images): image AUROC" in out and "stain (2 images)" in out
    assert main(["eval", str(run), "--data", str(data)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["type"] for r in report["by_type"]] == ["crack", "stain"]
    assert all(0.0 <= r["caught"] <= 1.0 for r in report["by_type"])  # the run's default threshold
    assert "by_type" not in report["metrics"]  # once in the report, not twice
    assert report["type_findings"] == type_findings(report["by_type"], report["metrics"]["pixel_auroc"])


def test_type_findings_say_what_the_rows_mean() -> None:
    """Magnetic tile's DRAEM figures (README, Issue 12) and tire's: a kind at chance, kinds the maps find but the
    image score misses, and one kind whose area sets the pooled pixel AUROC."""
    row = lambda t, img, px, share: {"type": t, "n": 10, "image_auroc": img, "pixel_auroc": px, "pixel_share": share}  # noqa: E731
    tile = [row("blowhole", 0.637, 0.941, 0.007), row("crack", 0.514, 0.861, 0.012), row("uneven", 0.564, 0.562, 0.711)]
    near, dominant = type_findings(tile, pixel_auroc=0.562)
    assert near.startswith("Near chance on crack (0.51), uneven (0.56)") and "blowhole" not in near
    assert dominant.startswith("uneven holds 71 % of all defect pixels") and "(0.562)" in dominant
    tire = [row("cut", 0.510, 0.916, 0.20), row("hole", 0.529, 0.951, 0.37), row("combined", 0.70, 0.94, 0.43)]
    (maps_find,) = type_findings(tire, pixel_auroc=0.936)
    assert maps_find.startswith("The maps find cut (pixel 0.92, image 0.51), hole (pixel 0.95, image 0.53)")
    assert "combined" not in maps_find  # its image score is above chance
    # a dominant kind is named only when it hides another kind's map figure (the demo's stain holds 52 % with every
    # kind at 0.999: nothing to say); every kind found and none dominant: nothing; one kind: the headline says it
    hiding = [row("a", 0.95, 0.80, 0.4), row("b", 0.9, 0.96, 0.6)]
    assert type_findings(hiding, pixel_auroc=0.93)[0].startswith("b holds 60 %")
    assert type_findings([row("a", 0.95, 0.97, 0.4), row("b", 0.9, 0.96, 0.6)], pixel_auroc=0.96) == []
    assert type_findings([row("a", 0.95, 0.97, 0.4), row("b", 0.9, 0.96, 0.45)], pixel_auroc=0.96) == []
    assert type_findings([row("a", 0.5, 0.5, 1.0)], pixel_auroc=0.5) == []
    # no masks: no pixel figures, no pixel sentences
    bare = [{"type": "a", "n": 3, "image_auroc": 0.55}, {"type": "b", "n": 3, "image_auroc": 0.9}]
    assert type_findings(bare) == [type_findings(bare)[0]] and "a (0.55)" in type_findings(bare)[0]


def test_outlying_goods_rule() -> None:
    from recon_core.metrics import OUTLIER_GOODS_MIN, outlying_goods

    rng = np.random.default_rng(0)
    goods = list(rng.normal(1.0, 0.05, 40))
    labels = [0] * 42 + [1, 1]
    scores = [*goods, 40.0, 55.0, 1.3, 1.5]  # two goods far out; the defects do not count
    assert outlying_goods(labels, scores) == [40, 41]
    # heavy but ordinary tails are not outliers: 500 log-normal good scores (max ~9 robust SDs)
    tail = list(rng.lognormal(0.0, 0.5, 500))
    assert outlying_goods([0] * 500, tail) == []
    assert outlying_goods([0] * (OUTLIER_GOODS_MIN - 1) + [1], [1.0] * (OUTLIER_GOODS_MIN - 2) + [99.0, 2.0]) == []
    assert outlying_goods([0] * 10, [1.0] * 9 + [5.0]) == []  # no spread among the goods: nothing to measure by


def test_a_good_variant_training_lacked_is_named(tmp_path: Path) -> None:
    """AITEX fabric01's scan-start tiles (mostly white) scored 240-14 000 robust SDs above the other goods for every
    model whose 20 training goods held none of them, capping image AUROC at 56/60 = 0.933 with no word why."""
    data = make_mvtec(tmp_path / "d", n_good=12)
    variant = np.asarray(Image.open(data / "test" / "good" / "000.png")).copy()
    variant[:, :20] = 255  # half white: a view of the part the training goods never show
    Image.fromarray(variant).save(data / "test" / "good" / "011.png")
    run = tmp_path / "run"
    execute_run(RunSpec(data=str(data), model="tiny", iterations=4, checkpoint_every=0), run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["outlying_goods"] == ["011.png"]
    assert any(w.startswith("1 good image(s) score far above") and "011.png" in w for w in metrics["warnings"])
