"""Every page renders in Streamlit's AppTest against a temp workspace with the demo project (and a tiny, untrained
autoencoder run so Evaluate / Threshold / Inspect have a model), without exceptions; one interaction per page."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "app_pages"
TIMEOUT = 120


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recon_core.bundle import save_bundle
    from recon_core.demo import ensure_demo
    from recon_core.evaluation import evaluate_bundle, save_eval
    from recon_core.metrics import threshold_manual
    from recon_core.models import get_model_class

    ws = tmp_path_factory.mktemp("ws")
    project, _ = ensure_demo(ws)
    cls = get_model_class("autoencoder")
    config = cls.config_from_preset("cpu", image_size=32, base_width=4, max_width=8, depth=2, latent_dim=8)
    model = cls(config, "cpu")
    run = project.runs_dir / "run-tiny"
    run.mkdir(parents=True)
    synth = project.load_synth()
    save_bundle(run / "model.pt", model, synth_config=synth, threshold=threshold_manual(0.5), metadata={})
    (run / "spec.json").write_text(json.dumps({"model": "autoencoder", "preset": "cpu", "name": "tiny"}))
    save_eval(evaluate_bundle(str(run / "model.pt"), str(project.data_dir)), run / "eval")
    return ws


@pytest.fixture(autouse=True)
def _env(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECON_WORKSPACE", str(workspace))
    monkeypatch.chdir(ROOT)


def run_page(name: str) -> AppTest:
    at = AppTest.from_file(str(PAGES / name), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [t.value for t in at.title] + [c.value for c in at.caption]
    parts += [s.value for s in at.subheader] + [w.value for w in at.warning] + [i.value for i in at.info]
    return "\n".join(str(p) for p in parts)


def test_app_entry_has_all_pages() -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert at.title[0].value == "Project & data"  # the default page


def test_project_page(workspace: Path) -> None:
    at = run_page("1_project.py")
    assert at.selectbox(key="project_select").value == "demo"
    assert [m.value for m in at.metric][:4] == ["30", "24", "6", "6"]
    # interaction: create a project from the form -> it becomes the current one
    at.text_input(key="new_project_name").input("second")
    at.button[0].click()  # the form's submit button
    at.run()
    assert not at.exception
    assert (workspace / "second" / "project.json").is_file()
    assert json.loads((workspace / "app_state.json").read_text())["project"] == "second"
    (workspace / "app_state.json").write_text(json.dumps({"project": "demo"}))


def test_designer_preview_follows_sliders(workspace: Path) -> None:
    at = run_page("2_designer.py")
    assert "Defect designer" in texts(at)

    def area() -> str:
        return next(c.value for c in at.caption if c.value.startswith("Mean defect area"))

    before = area()
    assert at.button(key="save_design").disabled  # nothing changed yet
    at.slider(key="synth_threshold").set_value(0.8)
    at.slider(key="synth_opacity").set_value((0.6, 0.9))
    at.run()
    assert not at.exception
    assert area() != before  # the preview was re-made with the new mask threshold
    assert not at.button(key="save_design").disabled
    at.button(key="save_design").click()
    at.run()
    saved = json.loads((workspace / "demo" / "synth.json").read_text())
    assert saved["opacity_min"] == 0.6 and saved["opacity_max"] == 0.9 and saved["threshold"] == 0.8
    (workspace / "demo" / "synth.json").write_text(
        json.dumps({**saved, "opacity_min": 0.2, "opacity_max": 1.0, "threshold": 0.5})
    )


def test_designer_widgets_equal_the_synth_declaration() -> None:
    """Each slider's range and each option list is SynthConfig's declared one (they used to disagree: mask threshold
    0.05-0.95 on the page vs -1-0.99 in the engine, Perlin scale 0-6 vs 0-7)."""
    from recon_core.knobs import knobs_of
    from recon_core.synth import SynthConfig

    at = run_page("2_designer.py")
    seen = set()
    for name, k in knobs_of(SynthConfig).items():
        key = "synth_" + name.removesuffix("_min")
        if k.widget == "none" or any(other.upper == name for other in knobs_of(SynthConfig).values()):
            continue
        if k.kind is bool:
            widget = at.checkbox(key=key)
        elif k.choices:
            widget = at.radio(key=key)
            assert len(widget.options) == len(k.choices) and widget.value in k.choices  # options show labels
        elif k.widget == "number":
            widget = at.number_input(key=key)
            assert (widget.min, widget.max) == (k.lo, k.hi)
        else:
            widget = at.slider(key=key)
            assert (widget.min, widget.max) == (k.lo, k.hi), name
        assert widget.help == k.help
        seen.add(name)
    pair_ends = {k.upper for k in knobs_of(SynthConfig).values() if k.upper}
    drawn_by_page = {n for n, k in knobs_of(SynthConfig).items() if k.widget == "none"}
    assert seen == set(knobs_of(SynthConfig)) - pair_ends - drawn_by_page


def test_designer_shows_and_switches_the_product_region() -> None:
    at = run_page("2_designer.py")

    def region() -> str:
        return next(c.value for c in at.caption if c.value.startswith("Product region:"))

    assert at.radio(key="synth_foreground").value == "auto"
    assert region().startswith("Product region: auto")
    at.radio(key="synth_foreground").set_value("on")
    at.run()
    assert not at.exception
    assert region().startswith("Product region: on:")
    at.radio(key="synth_foreground").set_value("off")
    at.run()
    assert region().startswith("Product region: off")
    at.radio(key="synth_texture_source").set_value("self")
    at.run()
    assert not at.exception and not at.error


def test_designer_outline_toggle_shows_the_defects_unhidden() -> None:
    """Issue 13: the magenta outlines hid small defects in the preview tiles; they can be switched off."""
    at = run_page("2_designer.py")
    assert at.toggle(key="outline_defects").value is True
    before = at.image[0].proto.imgs[0].url if hasattr(at.image[0], "proto") else None
    at.toggle(key="outline_defects").set_value(False)
    at.run()
    assert not at.exception
    if before is not None:
        assert at.image[0].proto.imgs[0].url != before  # a different picture: the same tiles without outlines


def test_train_page_renders_and_switches_budget() -> None:
    at = run_page("3_train.py")
    assert at.selectbox(key="train_model").options == ["DRAEM", "DSR", "AUTO"]
    assert "Runs" in texts(at)
    at.radio(key="budget_kind").set_value("iterations")
    at.run()
    assert not at.exception
    assert at.number_input(key="budget_iterations").value == 500
    assert any(c.value.startswith("Memory: needs about") for c in at.caption)  # what the preset needs (memory.py)


def test_train_page_says_what_the_preset_is_for_and_what_it_needs() -> None:
    at = run_page("3_train.py")
    assert at.number_input(key="budget_minutes").value == 10.0  # DRAEM cpu's suggested budget from the start
    at.selectbox(key="train_preset").set_value("cpu-hires")
    at.run()
    assert not at.exception
    assert "for thin defects" in texts(at) and "Suggested budget: 10 min." in texts(at)
    # the memory estimate is shown for crop-trained presets too (regression: the probe refused cpu-hires)
    assert any(c.value.startswith("Memory: needs about") and "128 px" in c.value for c in at.caption)
    # choosing a preset fills in its suggested budget (still editable)
    at.selectbox(key="train_preset").set_value("cpu-fast")
    at.run()
    assert at.radio(key="budget_kind").value == "minutes" and at.number_input(key="budget_minutes").value == 3.0
    at.selectbox(key="train_preset").set_value("gpu")
    at.run()
    assert not at.exception and not at.warning
    assert at.radio(key="budget_kind").value == "iterations"
    assert at.number_input(key="budget_iterations").value == 8000
    at.number_input(key="budget_iterations").set_value(1200)
    at.run()
    assert at.number_input(key="budget_iterations").value == 1200


def test_train_page_auto_plan_and_choice(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AUTO says what it trains and chooses on; a finished auto job shows the candidates' scores and the reason."""
    from recon_core.jobs import JobStore
    from recon_core.runs import RunSpec

    monkeypatch.setattr(JobStore, "kick", lambda self: [])
    at = run_page("3_train.py")
    at.selectbox(key="train_model").set_value("auto")
    at.run()
    assert not at.exception
    assert "held out to choose on" in texts(at) and "cpu" in at.selectbox(key="train_preset").options
    assert "AUTO keeps back the held-out goods" in texts(at)  # the "learns from" counts are the project's
    store = JobStore(workspace)
    job_id = store.submit(RunSpec(data=str(workspace / "demo" / "data"), model="auto", iterations=1), project="demo")
    candidate = {"iterations": 1, "train_seconds": 1.0, "test": {"image_auroc": 0.7, "synthetic": False}}
    record = {
        "winner": "draem",
        "reason": "draem: probe-defect image AUROC 0.910 vs autoencoder 0.640",
        "held_out_goods": ["a.png", "b.png"],
        "validation_defects": [],
        "n_probe_defects": 48,
        "candidates": [
            {**candidate, "model": "autoencoder", "validation": {"probe_image_auroc": 0.64}},
            {**candidate, "model": "draem", "validation": {"probe_image_auroc": 0.91}},
        ],
    }
    try:
        with store._write() as c:
            c.execute("UPDATE jobs SET state='succeeded' WHERE id=?", (job_id,))
        run_dir = store.get(job_id).run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "candidates.json").write_text(json.dumps(record))
        at = run_page("3_train.py")
        at.selectbox(key="job_select").set_value(job_id)
        at.run()
        assert not at.exception
        assert "Auto choice: DRAEM" in texts(at) and "48 probe defects" in texts(at)
        table = next(d.value for d in at.dataframe if "probe image AUROC" in d.value.columns)
        assert list(table["model"]) == ["autoencoder", "draem (kept)"]
        assert list(table["probe image AUROC"]) == [0.64, 0.91]
        # real defects that were too few to decide: the caption says the probes chose, the table shows the lead
        record["validation_defects"] = ["d1.png", "d2.png"]
        record["real_defects_not_decisive"] = True
        record["candidates"][0]["validation"].update(real_signal=0.86)
        record["candidates"][1]["validation"].update(real_signal=0.73, real_lead_share=0.71)
        record["reason"] += " (real defects not decisive: on the real defects autoencoder leads draem in 71% ...)"
        (run_dir / "candidates.json").write_text(json.dumps(record))
        at.run()
        assert not at.exception
        assert "48 probe defects" in texts(at) and "2 real defect image(s) were too few to decide" in texts(at)
        assert "autoencoder leads draem in 71%" in texts(at)
        table = next(d.value for d in at.dataframe if "probe image AUROC" in d.value.columns)
        assert list(table["real-defect score"]) == [0.86, 0.73]
        # the leader's lead share is not a column: on the other candidate's row it read as that model's own figure
        assert not [c for c in table.columns if "resample" in c]
    finally:
        store.delete(job_id)


def test_evaluate_page(workspace: Path) -> None:
    at = run_page("4_evaluate.py")
    labels = [m.label for m in at.metric]
    assert "Image AUROC" in labels and "AUPRO" in labels
    assert at.selectbox(key="eval_run").value == "run-tiny"
    at.slider(key="heat_alpha").set_value(0.9)
    at.run()
    assert not at.exception
    # per defect type: the demo's three kinds, each against every good image, and the share its threshold catches
    assert "Per defect type" in texts(at)
    table = next(d.value for d in at.dataframe if "image AUROC" in d.value.columns)
    assert list(table["type"]) == ["dent", "scratch", "stain"] and list(table["images"]) == [2, 2, 2]
    assert table["caught at the saved threshold"].between(0, 100).all()
    assert table["share of defect pixels"].sum() == pytest.approx(100)
    # what the rows mean, in words above the chart: one sentence for each condition the rows meet
    info = " ".join(i.value for i in at.info)
    assert ("Near chance on" in info or "The maps find" in info) == bool((table["image AUROC"] <= 0.6).any())
    big = table[table["share of defect pixels"] >= 50]["pixel AUROC"]
    hides = bool(len(big)) and bool(((table["pixel AUROC"] - big.iloc[0]).abs() >= 0.1).any())
    assert ("of all defect pixels" in info) == hides
    at.button(key="run_eval").click()  # re-evaluate on the current test images: cached next to the run
    at.run()
    assert not at.exception and not at.error
    assert (workspace / "demo" / "runs" / "run-tiny" / "eval_app.npz").is_file()
    assert any("eval_app.npz" in c.value for c in at.caption)
    # the run picker shows the new evaluation and what it was made on (issue 13.5)
    summary = json.loads((workspace / "demo" / "runs" / "run-tiny" / "metrics.json").read_text())
    assert summary["evaluation"] == "eval_app" and summary["evaluated_on"]


def test_threshold_page_methods() -> None:
    at = run_page("5_threshold.py")
    assert "Good accepted" in [m.label for m in at.metric]
    assert len(at.get("plotly_chart")) == 2  # score histogram with the threshold line + ROC with the point
    # a 1 % target on a handful of held-out goods: the resolution, and how many goods it needs (issue 13.3)
    shown = " ".join(w.value for w in at.warning)
    assert "moves in steps of" in shown and "needs about 300 good images" in shown
    assert "Provisional threshold" in texts(at)  # few goods, synthetic defects (issue 13.2)
    for method in ("f1", "quantile", "roc", "manual"):
        at.radio(key="thr_method").set_value(method)
        at.run()
        assert not at.exception, method
    at.radio(key="thr_method").set_value("roc")
    at.run()
    assert any("Click a point of the ROC curve" in c.value for c in at.caption)  # best F1 until a click
    at.checkbox(key="thr_review").check()
    at.run()
    assert not at.exception
    assert "review band" in texts(at)
    assert list(at.table[0].value.columns) == ["accepted", "review", "rejected"]


def test_inspect_page(workspace: Path) -> None:
    at = run_page("6_inspect.py")
    assert "predict_onnx.py" in texts(at) and "preprocess.py" in texts(at)  # the export's own preprocessing
    at.radio(key="inspect_source").set_value("folder")
    at.run()
    at.text_input(key="inspect_folder").input(str(workspace / "demo" / "data" / "test" / "defect"))
    at.run()
    at.button(key="run_inspect").click()
    at.run()
    assert not at.exception
    n_defects = len(list((workspace / "demo" / "data" / "test" / "defect").glob("*.png")))
    assert len(at.dataframe[0].value) == n_defects
    at.slider(key="inspect_alpha").set_value(0.8)  # any rerun: the last result stays
    at.run()
    # each image is shown beside its heat map (issue 13: the overlay alone hid the photo)
    assert not at.exception and len(at.dataframe) == 1 and len(at.image) == 2 * n_defects
    fresh = run_page("6_inspect.py")  # a new session (tab closed, app restarted): still there, from the run folder
    assert len(fresh.dataframe) == 1 and len(fresh.dataframe[0].value) == n_defects
    assert "Last inspection" in texts(fresh)


def test_remove_defect_with_its_mask(workspace: Path, tmp_path: Path) -> None:
    from PIL import Image

    from recon_core.workspace import add_defect, create_project

    project = create_project(workspace, "defects")
    for name, mode in (("scratch.png", "RGB"), ("mask.png", "L")):
        Image.new(mode, (32, 32), 200).save(tmp_path / name)
    add_defect(
        project,
        ("scratch.png", (tmp_path / "scratch.png").read_bytes()),
        ("m.png", (tmp_path / "mask.png").read_bytes()),
    )
    assert len(project.defects()) == 1 and project.defects()[0][1] is not None
    (workspace / "app_state.json").write_text(json.dumps({"project": "defects"}))
    try:
        at = run_page("1_project.py")
        assert at.selectbox(key="remove_defect_name").value == "scratch.png"
        at.button(key="remove_defect").click()
        at.run()
        assert not at.exception
        assert project.defects() == [] and not list(project.mask_dir.glob("*.png"))
        assert [m.value for m in at.metric][3] == "0"
        assert "remove_defect" not in [b.key for b in at.button]  # nothing left to remove
    finally:
        (workspace / "app_state.json").write_text(json.dumps({"project": "demo"}))


def test_empty_workspace_shows_guidance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECON_WORKSPACE", str(tmp_path / "empty"))
    for page in ("1_project.py", "2_designer.py", "4_evaluate.py"):
        at = AppTest.from_file(str(PAGES / page), default_timeout=TIMEOUT)
        at.run()
        assert not at.exception, page
    assert os.path.isdir(tmp_path / "empty")


def test_designer_bad_texture_folder_is_an_error_not_a_crash() -> None:
    at = run_page("2_designer.py")
    at.radio(key="synth_texture_source").set_value("folder")
    at.run()
    at.text_input(key="texture_dir").input("/nonexistent/textures")
    at.run()
    assert not at.exception
    assert any("No preview" in e.value for e in at.error)
    assert at.slider(key="synth_opacity")  # the knobs stay usable


def test_train_start_follows_the_new_job(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Start training: the job picker switches to the new job (it used to keep showing the previous one). Workers
    are not started (kick is a no-op), so both jobs stay queued and are cancelled at the end."""
    from recon_core.jobs import JobStore
    from recon_core.runs import RunSpec

    monkeypatch.setattr(JobStore, "kick", lambda self: [])
    store = JobStore(workspace)
    first = store.submit(RunSpec(data=str(workspace / "demo" / "data"), iterations=1), project="demo")
    try:
        at = run_page("3_train.py")
        assert at.selectbox(key="job_select").value == first
        at.radio(key="budget_kind").set_value("iterations")
        at.run()
        at.number_input(key="budget_iterations").set_value(1)
        at.button(key="start_training").click()
        at.run()
        assert not at.exception
        second = next(j.id for j in store.list_jobs("demo") if j.id != first)
        assert at.selectbox(key="job_select").value == second
        assert "Queued job" in at.success[0].value
    finally:
        for job in store.list_jobs("demo"):
            if job.is_active:
                store.cancel(job.id)


def test_a_finished_run_shows_its_stage_plan_and_replays_it(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished minutes run of several stages: the Train page shows its iterations per stage, and "Replay this
    schedule" queues the same run with exactly those iterations (no minutes: a busy machine trains the same)."""
    from recon_core.jobs import JobStore
    from recon_core.runs import RunSpec

    monkeypatch.setattr(JobStore, "kick", lambda self: [])
    store = JobStore(workspace)
    spec = RunSpec(data=str(workspace / "demo" / "data"), model="dsr", minutes=10, seed=3, name="quiet")
    job_id = store.submit(spec, project="demo")
    plan = {"vq": 490, "dsr": 350, "upsampling": 175}
    try:
        with store._write() as c:
            c.execute("UPDATE jobs SET state='succeeded' WHERE id=?", (job_id,))
        run_dir = store.get(job_id).run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "metrics.json").write_text(json.dumps({"stage_iterations": "vq=490,dsr=350,upsampling=175"}))
        at = run_page("3_train.py")
        at.selectbox(key="job_select").set_value(job_id)
        at.run()
        assert "Iterations per stage: vq 490 · dsr 350 · upsampling 175" in texts(at)
        assert "--stage-iterations vq=490,dsr=350,upsampling=175" in texts(at)
        at.button(key="replay_job").click()
        at.run()
        assert not at.exception and any("the replay of" in m.value for m in at.success)
        replay = next(j for j in store.list_jobs("demo") if j.spec.get("name") == "quiet (replay)")
        assert replay.spec["stage_iterations"] == plan and replay.spec["minutes"] is None
        assert replay.spec["seed"] == 3 and replay.spec["model"] == "dsr"
    finally:
        for job in store.list_jobs("demo"):
            if job.is_active:
                store.cancel(job.id)


def test_real_defects_for_training_shown_and_chosen(workspace: Path) -> None:
    """Project page: which real defects train and which are evaluated (and the choice saved); Train page: what the
    model learns from; designer: the training defects transplanted onto goods."""
    from recon_core.workspace import open_project

    project = open_project(workspace, "demo")
    training = [p.name for p in project.training_defects()]
    assert len(training) == 3  # default: half of the 6 masked demo defects
    at = run_page("1_project.py")
    roles = next(d.value for d in at.dataframe if "used for" in d.value.columns)
    assert sorted(roles.loc[roles["used for"].str.startswith("training"), "defect"]) == sorted(training)
    assert (roles["used for"] == "evaluation").sum() == 3
    at = run_page("3_train.py")
    assert "3 real defect(s)" in texts(at) and all(name in texts(at) for name in training)
    at = run_page("2_designer.py")
    assert not any("No real defects chosen" in c.value for c in at.caption)
    at = run_page("1_project.py")
    at.multiselect(key="training_defects").set_value([training[0]])
    next(b for b in at.button if b.label == "Save choice").click()
    at.run()
    assert not at.exception
    try:
        assert [p.name for p in project.training_defects()] == [training[0]]
        assert "1 real defect(s)" in texts(run_page("3_train.py"))
    finally:
        meta = project.meta()
        meta.pop("training_defects", None)
        project.save_meta(meta)


def test_train_page_cluster_that_cannot_be_reached_is_a_warning(workspace: Path) -> None:
    """Run on: Cluster with an address where nothing listens says so at once (no hang, no traceback); the device
    choice becomes the node's (auto / cuda / cpu)."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    at = run_page("3_train.py")
    at.radio(key="train_where").set_value("Cluster")
    at.run()
    at.text_input(key="train_cluster").set_value(f"ray://127.0.0.1:{port}")
    at.run()
    assert not at.exception
    assert any("cannot reach the cluster" in w.value for w in at.warning)
    assert at.selectbox(key="train_device").options == ["auto", "cuda", "cpu"]
