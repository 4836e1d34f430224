"""Shared helpers for the pages: the workspace, the current project (sidebar), error handling, caches.

Pages stay thin: they read state from the workspace, call recon_core and draw. The current project is stored in
<workspace>/app_state.json (not in session_state), so a reload or an app restart lands on the same project.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from recon_core.errors import ReconError
from recon_core.workspace import Project, list_projects, open_project, workspace_root

STATE_FILE = "app_state.json"


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
    return job_store(str(ws()))


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
    from recon_core.workspace import run_summary

    row = run_summary(run_dir)
    auroc = row.get("image_auroc")
    score = f" · AUROC {auroc:.3f}" if isinstance(auroc, float) else ""
    return f"{run_dir.name} · {row.get('model') or '?'}{score}"


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
    return project.runs_dir / name


def thumbs(paths: list[Path], columns: int = 8, limit: int = 48, captions: bool = True) -> None:
    """A grid of image thumbnails (files shown as they are; the browser scales them)."""
    shown = paths[:limit]
    cols = st.columns(columns)
    for i, p in enumerate(shown):
        with cols[i % columns]:
            st.image(str(p), caption=p.name if captions else None, width="stretch")
    if len(paths) > limit:
        st.caption(f"… and {len(paths) - limit} more")


def to_uint8(img: np.ndarray) -> np.ndarray:
    return img if img.dtype == np.uint8 else (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def cached_eval(run_dir: Path):
    """The app's evaluation on current test images if made, else the one the run wrote when it finished."""
    from recon_core.evaluation import load_eval
    from recon_core.workspace import eval_cache

    for stem in (eval_cache(run_dir), run_dir / "eval"):
        if stem.with_suffix(".npz").is_file() or Path(str(stem) + ".npz").is_file():
            return load_eval(stem), stem
    return None, None
