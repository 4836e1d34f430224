"""Threshold: choose the operating point (target false-alarm rate, best F1, quantile of good scores, by hand),
an optional review band, see the confusion matrix and the images on each side; save into the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app_pages._ui import bundle, cached_eval, guarded, pick_run, require_project, thumbs
from recon_core import metrics
from recon_core.bundle import set_threshold

METHODS = {
    "fpr": "Target false-alarm rate",
    "f1": "Best F1",
    "quantile": "Quantile of good scores",
    "manual": "By hand",
}


def _load(run_dir: Path):
    return cached_eval(run_dir)[0]


def choose(result) -> metrics.Threshold:
    labels, scores = result.labels, result.scores
    method = st.radio("Method", list(METHODS), format_func=METHODS.get, horizontal=True, key="thr_method")
    if method == "fpr":
        target = st.slider("Target false-alarm rate (%)", 0.0, 20.0, 1.0, 0.5, key="thr_fpr")
        thr = metrics.threshold_at_fpr(labels, scores, target / 100)
    elif method == "f1":
        thr = metrics.threshold_f1(labels, scores)
    elif method == "quantile":
        q = st.slider("Quantile of good scores", 0.80, 1.0, 0.99, 0.005, key="thr_quantile")
        thr = metrics.threshold_quantile(scores[labels == 0], q)
    else:
        lo, hi = float(np.min(scores)), float(np.max(scores))
        value = st.slider("Threshold", lo, hi, (lo + hi) / 2, (hi - lo) / 200 or 1e-6, format="%.5f", key="thr_manual")
        thr = metrics.threshold_manual(value)
    if st.checkbox("Review band (accept / review / reject)", key="thr_review"):
        width = st.slider("Review band width (% of the threshold)", 1, 50, 10, key="thr_band")
        thr = thr.with_review(
            thr.value * (1 - width / 100) if thr.value > 0 else thr.value - abs(thr.value) * width / 100
        )
    return thr


def body() -> None:
    st.title("Threshold")
    project = require_project()
    run_dir = pick_run(project, key="thr_run")
    if run_dir is None:
        return
    result = _load(run_dir)
    if result is None:
        st.info("Evaluate this run first (Evaluate page).")
        return
    current = bundle(run_dir).threshold
    if current is not None:
        st.caption(
            f"Saved threshold: {current.value:.5f} ({current.method})"
            + (f", review from {current.review_below:.5f}" if current.review_below is not None else "")
        )
    thr = choose(result)
    st.markdown(
        f"**Threshold {thr.value:.5f}** ({METHODS.get(thr.method, thr.method)})"
        + (f" · review band from {thr.review_below:.5f}" if thr.review_below is not None else "")
    )
    conf = metrics.confusion(result.labels, result.scores, thr)
    c = st.columns(4)
    c[0].metric("Good accepted", conf.get("tn"))
    c[1].metric("Good rejected (false alarms)", conf.get("fp"))
    c[2].metric("Defects caught", conf.get("tp"))
    c[3].metric("Defects missed", conf.get("fn"))
    matrix = pd.DataFrame(
        [[conf.get("tn"), conf.get("fp")], [conf.get("fn"), conf.get("tp")]],
        index=["actual good", "actual defect"],
        columns=["accepted", "rejected"],
    )
    st.table(matrix)
    verdict = metrics.verdicts(result.scores, thr)
    df = pd.DataFrame(
        {
            "image": [Path(p.split("#")[0]).name + (" (synthetic)" if "#" in p else "") for p in result.paths],
            "label": np.where(result.labels == 1, "defect", "good"),
            "score": result.scores,
            "verdict": verdict,
        }
    ).sort_values("score", ascending=False)
    tabs = st.tabs(["Rejected", "Review", "Accepted"])
    for tab, name in zip(tabs, ["reject", "review", "accept"], strict=True):
        with tab:
            part = df[df["verdict"] == name]
            st.dataframe(part, hide_index=True, width="stretch", key=f"thr_table_{name}")
            files = [result.paths[i] for i in part.index if "#" not in result.paths[i]][:12]
            files = [f for f in files if Path(f).is_file()]
            if files:  # synthetic test images exist only in memory: those are listed, not shown
                thumbs([Path(f) for f in files], columns=6, limit=12)
    if st.button("Save threshold into the model bundle", type="primary", key="save_threshold"):
        set_threshold(run_dir / "model.pt", thr)
        st.success(f"Saved {thr.value:.5f} into {run_dir.name}/model.pt; Inspect and exports use it.")


guarded(body)
