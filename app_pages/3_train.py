"""Train: pick model, preset, budget, device and where it runs (this machine or a Ray cluster); start a background
job; watch progress, ETA and losses; cancel / resume; the project's runs. All state is in the workspace's job
store (SQLite), so closing the tab or restarting the app loses nothing."""

from __future__ import annotations

import os
import time

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages._ui import guarded, recall, remember, require_project, run_label, store
from recon_core.auto import AUTO, CANDIDATES_FILE, AutoConfig, auto_presets, describe_plan
from recon_core.config import load_json
from recon_core.device import available_devices
from recon_core.errors import ReconError
from recon_core.jobs.cluster import CLUSTER_ENV, cluster_address, cluster_resources
from recon_core.memory import preset_summary
from recon_core.models import get_model_class, model_names
from recon_core.runs import RunSpec, replay_spec
from recon_core.stage_plan import parse_stage_plan, several_stages

POLL_S = 2.0


def preset_budget(model: str, preset: str) -> dict[str, float]:
    """The budget `preset` was chosen for ({} for AUTO, whose candidates each have their own)."""
    return {} if model == AUTO else get_model_class(model).suggested_budget(preset)


def suggest_budget(model: str) -> None:
    """A preset was chosen: the budget fields take its suggested budget (still editable)."""
    budget = preset_budget(model, st.session_state["train_preset"])
    if "minutes" in budget:
        st.session_state["budget_kind"] = "minutes"
        st.session_state["budget_minutes"] = float(budget["minutes"])
    elif "iterations" in budget:
        st.session_state["budget_kind"] = "iterations"
        st.session_state["budget_iterations"] = int(budget["iterations"])


def start_form(project) -> None:
    main = model_names(include_advanced=False)
    advanced = [m for m in model_names() if m not in main]
    c1, c2 = st.columns(2)
    with c1:
        model = st.selectbox("Model", [*main, AUTO], key="train_model", format_func=str.upper)
        with st.expander("Advanced: baselines"):
            use_baseline = st.checkbox("Train a baseline instead", key="use_baseline")
            baseline = st.selectbox("Baseline", advanced, key="train_baseline")
        if use_baseline:
            model = baseline
        if model == AUTO:
            trains_on_real = any(get_model_class(n).uses_labelled_defects for n in AutoConfig().candidates)
            k = len(project.training_defects()) if trains_on_real else 0
            st.caption(describe_plan(AutoConfig(), len(project.train_goods()), k))
            presets, default = auto_presets(), "cpu"
            uses_real = trains_on_real
        else:
            cls = get_model_class(model)
            uses_real = cls.uses_labelled_defects
            if cls.description:
                st.caption(cls.description)
            presets, default = list(cls.presets), cls.default_preset
        preset = st.selectbox(
            "Preset",
            presets,
            index=presets.index(default) if default in presets else 0,
            key="train_preset",
            on_change=suggest_budget,
            args=(model,),
        )
        note = "" if model == AUTO else get_model_class(model).describe_preset(preset)
        if note:
            st.caption(note)
    with c2:
        budget_kind = st.radio("Budget", ["minutes", "iterations"], horizontal=True, key="budget_kind")
        if budget_kind == "minutes":
            first = float(preset_budget(model, preset).get("minutes", 5.0))  # later values: suggest_budget
            amount = st.number_input("Training minutes", 0.5, 24 * 60.0, first, 0.5, key="budget_minutes")
        else:
            amount = st.number_input("Training iterations", 1, 1_000_000, 500, 50, key="budget_iterations")
        cluster = run_on()
        devices = ["auto", "cuda", "cpu"] if cluster else ["auto", *available_devices()]  # a node picks its own
        device = st.selectbox("Device", devices, key="train_device")
        needs = None if model == AUTO or cluster else preset_summary(model, preset, device)
        if needs is not None:
            (st.caption if needs[1] else st.warning)(needs[0])
        warm = [r for r in project.finished_runs() if (r / "spec.json").is_file()]
        init = st.selectbox(
            "Warm start from",
            [None, *warm],
            key="init_from",
            format_func=lambda r: "— (from scratch)" if r is None else run_label(r),
        )
        name = st.text_input("Run name (optional)", key="run_name")
    synth = project.load_synth()
    real = project.training_defects() if uses_real else []
    learns_from(project, synth, uses_real, real, auto=model == AUTO)
    if st.button("Start training", type="primary", key="start_training", disabled=not project.train_goods()):
        spec = RunSpec(
            data=str(project.data_dir),
            model=model,
            preset=preset,
            synth=synth,
            device=device,
            iterations=int(amount) if budget_kind == "iterations" else None,
            minutes=float(amount) if budget_kind == "minutes" else None,
            init_from=str(init / "model.pt") if init is not None else None,
            name=name or None,
            labelled_defect_files=[str(p) for p in real],
        )
        job_id = store().submit(spec, project=project.name, cluster=cluster or "local")
        remember(**{f"job:{project.name}": job_id})
        st.session_state["job_select"] = job_id  # follow the new job (the picker below is drawn after this)
        st.success(f"Queued job {job_id}. It runs in the background; you can close this tab.")


def run_on() -> str | None:
    """Where a new run trains: this machine, or a Ray cluster (its address; default $RECON_CLUSTER). Shows the
    cluster's nodes and free resources, or why it cannot be reached."""
    default = os.environ.get(CLUSTER_ENV, "")
    where = st.radio(
        "Run on", ["This machine", "Cluster"], index=1 if default else 0, horizontal=True, key="train_where"
    )
    if where == "This machine":
        return None
    address = st.text_input(
        "Cluster address",
        value=default or "127.0.0.1:6379",
        key="train_cluster",
        help="A Ray cluster: ray://head:10001 (Ray Client) or head:6379 when this machine is a node. The job's images "
        "go with it; the model comes back into this project's runs.",
    )
    address = cluster_address(address)
    try:
        info = cluster_resources(address)
    except ReconError as exc:
        st.warning(f"{exc}. To start one on this machine: `bash run.sh cluster start` (README, cluster section).")
        return address
    st.caption(
        f"{info['workers']} worker node(s) · CPUs {info['free_cpus']:g} free of {info['cpus']:g} · "
        f"GPUs {info['free_gpus']:g} free of {info['gpus']:g}"
    )
    return address


def learns_from(project, synth, uses_real: bool, real: list, auto: bool = False) -> None:
    """What the model will learn from: the goods, the project's real defects for training, the synthetic design."""
    n_defects = len(project.defects())
    lines = [
        f"**{len(project.train_goods())} training goods** (the held-out goods are only evaluated)",
        f"**synthetic defects** from the design in synth.json (opacity {synth.opacity_min}–{synth.opacity_max}, "
        f"textures {synth.texture_source}, on {synth.defect_probability:.0%} of the samples)",
    ]
    if real:
        names = ", ".join(p.name for p in real[:6]) + (" …" if len(real) > 6 else "")
        lines.append(
            f"**{len(real)} real defect(s)** ({names}): cut out and transplanted onto goods for "
            f"{synth.real_defect_share:.0%} of the defects, and shown as they are in {synth.real_image_share:.0%} "
            f"of the samples; the other {n_defects - len(real)} real defect(s) are evaluated"
        )
    elif n_defects:
        why = "this model does not use them" if not uses_real else "none chosen for training"
        lines.append(f"no real defects ({why}: all {n_defects} are evaluated; choose them on Project & data)")
    if auto:  # the counts above are the project's; AUTO's plan (above) says how many of them choose instead
        lines.append("AUTO keeps back the held-out goods and the choosing defects of its plan: they never train")
    st.markdown("The model learns from:\n" + "\n".join(f"- {line}" for line in lines))


def loss_chart(rows: list[dict]) -> go.Figure | None:
    points = [(r["iteration"], k, v) for r in rows if r.get("iteration") for k, v in (r.get("losses") or {}).items()]
    if not points:
        return None
    df = pd.DataFrame(points, columns=["iteration", "loss", "value"])
    fig = go.Figure()
    for name, part in df.groupby("loss"):
        fig.add_trace(go.Scatter(x=part["iteration"], y=part["value"], name=str(name), mode="lines"))
    fig.update_layout(
        height=300,
        margin=dict(l=10, r=10, t=30, b=10),
        title="Training losses",
        xaxis_title="iteration",
        yaxis_type="log",
        yaxis_tickformat=".2g",  # 0.5, 0.2, 0.1 rather than plotly's bare minor digits (5, 2)
    )
    return fig


def auto_choice(record: dict) -> None:
    """The candidates of an auto run, their validation scores and why the winner was kept."""
    st.markdown(f"**Auto choice: {record['winner'].upper()}.** {record['reason']}.")
    rows = []
    for c in record["candidates"]:
        v, t = c.get("validation", {}), c.get("test", {})
        rows.append(
            {
                "model": c["model"] + (" (kept)" if c["model"] == record["winner"] else ""),
                "iterations": c.get("iterations"),
                "train s": c.get("train_seconds"),
                "real-defect score": v.get("real_signal"),
                "probe image AUROC": v.get("probe_image_auroc"),
                "probe pixel AUROC": v.get("probe_pixel_auroc"),
                "probes caught, no false alarm": v.get("probe_detected_without_false_alarm"),
                "test image AUROC (not used)": None if t.get("synthetic") else t.get("image_auroc"),
            }
        )
    st.dataframe(pd.DataFrame(rows).dropna(axis=1, how="all"), hide_index=True, key="auto_candidates")
    n_real = len(record["validation_defects"])
    if n_real and not record.get("real_defects_not_decisive"):
        chose_on = f"{n_real} real defect image(s) no candidate trained on"
    else:
        chose_on = f"{record.get('n_probe_defects', 0)} probe defects of kinds no candidate trained on"
        if n_real:
            chose_on += f" ({n_real} real defect image(s) were too few to decide)"
    st.caption(
        f"Chosen on {len(record['held_out_goods'])} held-out training goods and {chose_on}; "
        "the test images never took part in the choice."
    )


def replay(project_name: str, job) -> None:
    """A finished run of several stages: its iterations per stage, and a button that trains exactly them again (a
    minutes budget trains fewer on a busier machine; the same plan replays the same schedule on any machine)."""
    path = job.run_dir / "metrics.json"
    metrics = load_json(path) if path.is_file() else {}
    recorded = metrics.get("stage_iterations")
    if not several_stages(recorded):  # one stage (or none recorded): the iteration count replays it
        return
    plan = parse_stage_plan(recorded)
    st.caption(
        "Iterations per stage: "
        + " · ".join(f"{name} {n}" for name, n in plan.items())
        + f" (CLI: `--stage-iterations {recorded}`)"
    )
    if st.button("Replay this schedule", key="replay_job", help="Train this run again with the same iterations per "
                 "stage, whatever the machine's speed (same data, settings and seed)"):  # fmt: skip
        spec = replay_spec(RunSpec.from_dict(job.spec), metrics)
        new_id = store().submit(spec, project=project_name, cluster=job.launcher)
        remember(**{f"job:{project_name}": new_id})
        st.success(f"Queued job {new_id}: the replay of {job.id}.")


def job_panel(project_name: str) -> None:
    jobs = store().list_jobs(project_name)
    if not jobs:
        st.info("No runs yet in this project.")
        return
    table = pd.DataFrame(
        [
            {
                "job": j.id,
                "name": j.spec.get("name") or "",
                "model": j.model,
                "state": j.state,
                "where": j.where,
                "progress": round(100 * j.fraction),
                "status": j.progress_text(with_state=False),
                "error": (j.error or "")[:80],
                "created": time.strftime("%H:%M:%S", time.localtime(j.created_at)),
            }
            for j in jobs
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="jobs_table",
        column_config={"progress": st.column_config.ProgressColumn("progress", min_value=0, max_value=100)},
    )
    ids = [j.id for j in jobs]
    saved = recall(f"job:{project_name}")
    job_id = st.selectbox(
        "Job",
        ids,
        index=ids.index(saved) if saved in ids else 0,
        key="job_select",
        format_func=lambda i: f"{i} · {next(j for j in jobs if j.id == i).state}",
    )
    job = store().get(job_id)
    st.progress(job.fraction, text=job.progress_text())
    st.caption(f"Runs on {job.where}" + (f" · attempt {job.attempts}" if job.on_cluster and job.attempts > 1 else ""))
    if job.on_cluster and store().cluster_problem:
        st.warning(f"Cannot follow the cluster right now: {store().cluster_problem}")
    if job.error:
        st.error(job.error)
    b1, b2, _ = st.columns([1, 1, 4])
    if b1.button("Cancel", key="cancel_job", disabled=not job.is_active):
        store().cancel(job.id)
        st.rerun()
    if b2.button("Resume", key="resume_job", disabled=not job.can_resume):
        store().resume(job.id)
        st.rerun()
    fig = loss_chart(store().progress_rows(job.id))
    if fig is not None:
        st.plotly_chart(fig, key=f"loss_{job.id}")
    if job.state == "succeeded" and (job.run_dir / CANDIDATES_FILE).is_file():
        auto_choice(load_json(job.run_dir / CANDIDATES_FILE))
    if job.state == "succeeded":
        replay(project_name, job)
    if job.result:
        with st.expander("Result (metrics)"):
            st.json(job.result)
    with st.expander("Log"):
        st.code(store().logs(job.id, tail=40) or "(empty)")


def body() -> None:
    st.title("Train")
    project = require_project()
    with st.expander("Start a new run", expanded=True):
        start_form(project)
    st.subheader("Runs")
    # poll only while something is queued or running; a finished job stops the polling at the next full rerun
    active = any(j.is_active for j in store().list_jobs(project.name))
    st.fragment(run_every=POLL_S if active else None)(job_panel)(project.name)


guarded(body)
