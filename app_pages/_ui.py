"""Shared helpers for the pages: the workspace, the current project (sidebar), error handling, caches.

Pages stay thin: they read state from the workspace, call recon_core and draw. The current project is stored in
<workspace>/app_state.json (not in session_state), so a reload or an app restart lands on the same project.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from recon_core.errors import ReconError
from recon_core.workspace import Project, list_projects, open_project, workspace_root

STATE_FILE = "app_state.json"


def _warm_imports() -> None:
    """Import torch and the models once per server process, in the background. The Train page needs them (device
    list, presets) and importing torch took 4-10 s on a busy machine: paid by whoever opened Train first. Started
    when the first page loads (usually Project & data, which needs no torch), so Train finds them imported."""

    def work() -> None:
        with contextlib.suppress(Exception):  # a failure shows on the page that needs the module, not here
            import recon_core.models
            import recon_core.runs
            from recon_core.device import available_devices

            available_devices()
            recon_core.models.model_names()

    threading.Thread(target=work, name="recon-warm-imports", daemon=True).start()


_warm_imports()  # module level: runs once per process (Python caches the module)


def ws() -> Path:
    return workspace_root()


def _state() -> dict[str, Any]:
    try:
        return json.loads((ws() / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def remember(**values: Any) -> None:
    state = {**_state(), **values}
    (ws() / STATE_FILE).write_text(json.dumps(state))


def recall(key: str, default: Any = None) -> Any:
    return _state().get(key, default)


def current_project() -> Project | None:
    """The project picked in the sidebar (remembered in the workspace); None when the workspace has none."""
    names = list_projects(ws())
    if not names:
        st.sidebar.info("No project yet: create one on the Project & data page.")
        return None
    saved = recall("project")
    pending = st.session_state.pop("_switch_project", None)  # a page just created / chose a project
    if pending in names:
        st.session_state["project_select"] = pending
    index = names.index(saved) if saved in names else 0
    name = st.sidebar.selectbox("Project", names, index=index, key="project_select")
    if name != saved:
        remember(project=name)
    st.sidebar.caption(f"Workspace: `{ws()}`")
    return open_project(ws(), name)


def switch_project(name: str) -> None:
    """Make `name` the current project from a page (then st.rerun())."""
    remember(project=name)
    st.session_state["_switch_project"] = name


def require_project() -> Project:
    project = current_project()
    if project is None:
        st.warning("No project yet. Create one on the **Project & data** page.")
        st.stop()
    return project


def guarded(body: Callable[[], None]) -> None:
    """Run a page body: user errors (ReconError) become st.error, anything else a short message + details."""
    try:
        body()
    except ReconError as exc:
        st.error(str(exc))
    except sqlite3.OperationalError as exc:  # busy / locked: not damage
        st.error(f"The job database is busy ({exc}); try again in a moment.")
    except sqlite3.DatabaseError as exc:  # jobs.sqlite damaged while the app ran: rebuild it from the run folders
        st.warning(job_store(str(ws())).repair(str(exc)) + " Reload the page.")
    except Exception as exc:  # the page must never show a raw traceback
        if type(exc).__name__ in ("StopException", "RerunException"):  # Streamlit control flow
            raise
        st.error(f"Something went wrong: {type(exc).__name__}: {str(exc)[:300]}")
        with st.expander("Details"):
            st.code(traceback.format_exc())


@st.cache_resource(show_spinner=False)
def job_store(path: str) -> Any:
    from recon_core.jobs import JobStore

    return JobStore(path)


def store() -> Any:
    """The workspace's job store; when opening it found jobs.sqlite damaged and rebuilt it, say so (once a session)."""
    jobs = job_store(str(ws()))
    if jobs.repaired and st.session_state.get("_repair_seen") != jobs.repaired:
        st.session_state["_repair_seen"] = jobs.repaired
        st.warning(jobs.repaired)
    return jobs


@st.cache_resource(show_spinner="Loading model…", max_entries=4)
def _bundle(path: str, mtime: float) -> Any:
    from recon_core.bundle import load_bundle

    return load_bundle(path, "cpu")


def bundle(run_dir: Path) -> Any:
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise ReconError(f"{run_dir.name}: this run has no model yet (not finished)")
    return _bundle(str(path), path.stat().st_mtime)


def run_label(run_dir: Path) -> str:
    """'<run> · <model> · AUROC 0.750 (real 8/4) ⚠': the run's CURRENT evaluation and what it was made on."""
    from recon_core.evaluation import evaluation_summary
    from recon_core.workspace import run_summary

    row, summary = run_summary(run_dir), evaluation_summary(run_dir)
    auroc = summary.get("image_auroc")
    score = ""
    if isinstance(auroc, float):
        kind = "synthetic" if summary.get("synthetic") else "real"
        score = f" · AUROC {auroc:.3f} ({kind} {summary.get('n_good')}/{summary.get('n_defect')})"
        score += " ⚠" if summary.get("warnings") else ""
    return f"{run_dir.name} · {row.get('model') or '?'}{score}"


def show_run_warnings(run_dir: Path) -> None:
    """The current evaluation's warnings (weak model, leak, under-trained) wherever a page shows the run's figures."""
    from recon_core.evaluation import evaluation_summary

    for text in evaluation_summary(run_dir).get("warnings", []):
        st.warning(text, icon="⚠️")


def pick_run(project: Project, key: str) -> Path | None:
    """A select box of the project's finished runs (the last one picked is remembered)."""
    runs = project.finished_runs()
    if not runs:
        st.info("No finished run in this project yet. Train one on the **Train** page.")
        return None
    names = [r.name for r in runs]
    saved = recall(f"run:{project.name}")
    index = names.index(saved) if saved in names else 0
    name = st.selectbox("Run", names, index=index, key=key, format_func=lambda n: run_label(project.runs_dir / n))
    if name != saved:
        remember(**{f"run:{project.name}": name})
    show_run_warnings(project.runs_dir / name)
    return project.runs_dir / name


def thumbs(paths: list[Path], columns: int = 6, limit: int = 48, captions: bool = True) -> None:
    """A grid of image thumbnails (files shown as they are; the browser scales them)."""
    shown = paths[:limit]
    cols = st.columns(columns)
    for i, p in enumerate(shown):
        with cols[i % columns]:
            # zero-width spaces after "_" let long names wrap at their parts, not mid-word
            st.image(str(p), caption=p.name.replace("_", "_\u200b") if captions else None, width="stretch")
    if len(paths) > limit:
        st.caption(f"… and {len(paths) - limit} more")


def cached_eval(run_dir: Path):
    """The run's current (latest) evaluation and its stem (evaluation.current_evaluation)."""
    from recon_core.evaluation import current_evaluation

    return current_evaluation(run_dir)


# ---------------------------------------------------------------------------------------------------------------
# Figures shared by Evaluate and Threshold (drawing only; the numbers come from recon_core.metrics)

CHART_MARGIN = dict(l=10, r=10, t=40, b=10)


def roc_figure(
    labels: np.ndarray, scores: np.ndarray, point: tuple[float, float] | None = None, pickable: bool = False
) -> Any:
    """The ROC curve; `point` (fpr, tpr) marks the operating point; `pickable` draws every point as a marker with
    its threshold as customdata, for st.plotly_chart(on_select=...)."""
    import plotly.graph_objects as go

    from recon_core import metrics

    roc = metrics.roc_points(labels, scores)
    fig = go.Figure(
        go.Scatter(
            x=roc["fpr"],
            y=roc["tpr"],
            customdata=roc["thresholds"],
            mode="lines+markers" if pickable else "lines",
            name="ROC",
            hovertemplate="false alarms %{x:.0%} · detected %{y:.0%}<br>threshold %{customdata:.5f}<extra></extra>",
        )
    )
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="grey"), hoverinfo="skip"))
    if point is not None:
        fig.add_trace(
            go.Scatter(
                x=[point[0]], y=[point[1]], mode="markers", marker=dict(size=13, color="#d62728"), hoverinfo="skip"
            )
        )
    fig.update_layout(
        title="ROC" + (" (click a point)" if pickable else ""),
        xaxis_title="false-alarm rate",
        yaxis_title="detection rate",
        height=320,
        margin=CHART_MARGIN,
        showlegend=False,
    )
    return fig


def score_histogram(labels: np.ndarray, scores: np.ndarray, thr: Any = None, bins: int = 20) -> Any:
    """Scores of good vs defective images on the same bins; `thr` (metrics.Threshold) draws the threshold line and
    the review band."""
    import plotly.graph_objects as go

    edges = np.histogram_bin_edges(scores, bins=bins)
    size = float(edges[1] - edges[0]) or 1e-6
    fig = go.Figure()
    for label, name, colour in ((0, "good", "#2ca02c"), (1, "defective", "#d62728")):
        fig.add_trace(
            go.Histogram(
                x=scores[labels == label],
                name=name,
                opacity=0.6,
                marker_color=colour,
                xbins=dict(start=float(edges[0]), end=float(edges[-1]) + size, size=size),
            )
        )
    if thr is not None:
        if thr.review_below is not None:
            fig.add_vrect(x0=thr.review_below, x1=thr.value, fillcolor="orange", opacity=0.2, line_width=0)
        fig.add_vline(x=thr.value, line_dash="dash", line_color="black", annotation_text="threshold")
    fig.update_layout(
        barmode="overlay",
        title="Scores",
        xaxis_title="anomaly score",
        yaxis_title="images",
        height=320,
        margin=CHART_MARGIN,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
    )
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Widgets generated from a config's declared knobs (recon_core.knobs): the range, default and help are the
# declaration's, so a slider cannot disagree with the CLI or the validation.


def knob_key(prefix: str, name: str) -> str:
    """Widget key of a knob; a min/max pair is one range widget keyed by its name without "_min"."""
    return prefix + name.removesuffix("_min")


def knob_widget(name: str, k: Any, value: Any, key: str, upper_value: Any = None, labels: Any = None) -> Any:
    """One widget for one knob: checkbox (bool), radio (choices), number box, or slider (a range slider when the
    knob is the lower end of a pair). Returns the value, or (lo, hi) for a pair."""
    if k.kind is bool:
        return st.checkbox(k.text, bool(value), key=key, help=k.help)
    if k.choices:
        return st.radio(
            k.text,
            list(k.choices),
            index=list(k.choices).index(value) if value in k.choices else 0,
            format_func=(labels or {}).get if labels else str,
            key=key,
            horizontal=True,
            help=k.help,
        )
    cast = int if k.kind is int else float
    lo, hi = cast(k.lo), cast(k.hi)

    def clamp(v: Any) -> Any:
        return min(max(cast(v), lo), hi)

    if k.widget == "number":
        return st.number_input(k.text, lo, hi, clamp(value), key=key, help=k.help)
    step = 1 if cast is int else float(k.step or (hi - lo) / 100)
    current = (clamp(value), clamp(upper_value)) if k.upper else clamp(value)
    return st.slider(k.text, lo, hi, current, step, key=key, help=k.help)


def knob_widgets(
    saved: Any, prefix: str, after: Callable[[str, dict[str, Any]], None] | None = None, labels: Any = None
) -> dict[str, Any]:
    """Widgets for every declared knob of the dataclass instance `saved`, in sections by the knobs' group.
    Knobs with widget="none" keep their saved value (the page may draw them in `after(name, values)`, which runs
    after each widget). Returns {field name: value}."""
    from recon_core.knobs import knobs_of

    declared = knobs_of(saved)
    values = {name: getattr(saved, name) for name in declared}
    uppers = {k.upper for k in declared.values() if k.upper}
    groups: dict[str | None, list[str]] = {}
    for name, k in declared.items():
        if k.widget != "none" and name not in uppers:
            groups.setdefault(k.group, []).append(name)
    for group, names in groups.items():
        if group:
            st.markdown(f"**{group}**")
        for name in names:
            k = declared[name]
            got = knob_widget(
                name, k, values[name], knob_key(prefix, name), values.get(k.upper or ""), (labels or {}).get(name)
            )
            if k.upper:
                values[name], values[k.upper] = got
            else:
                values[name] = got
            if after:
                after(name, values)
    return values
