"""Threshold: choose the operating point (target false-alarm rate, best F1, quantile of good scores, by hand),
an optional review band, see the confusion matrix and the images on each side; save into the bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app_pages._ui import bundle, cached_eval, guarded, pick_run, require_project, roc_figure, score_histogram, thumbs
from recon_core import metrics
from recon_core.evaluation import evaluated_on, record_threshold

METHODS = {
    "fpr": "Target false-alarm rate",
    "f1": "Best F1",
    "quantile": "Quantile of good scores",
    "roc": "On the ROC curve",
    "manual": "By hand",
}
ROC_KEY = "thr_roc_chart"  # the clickable ROC chart (st.plotly_chart on_select)
PICKS = "thr_roc_picks"  # session_state: run name -> the ROC point clicked last {"value", "fpr", "tpr"}


def _load(run_dir: Path):
    return cached_eval(run_dir)[0]


def _remember_pick(run: str) -> None:
    """on_select callback: keep the clicked point ourselves, because the chart's own selection is dropped whenever
    its figure changes (the operating-point marker moves with every pick)."""
    points = (st.session_state.get(ROC_KEY) or {}).get("selection", {}).get("points", [])
    points = [p for p in points if p.get("curve_number") == 0 and p.get("customdata") is not None]
    if points:
        p = points[-1]
        st.session_state.setdefault(PICKS, {})[run] = {"value": float(p["customdata"]), "fpr": p["x"], "tpr": p["y"]}


def _picked_on_roc(labels: np.ndarray, scores: np.ndarray, run: str) -> metrics.Threshold:
    """The threshold of the ROC point clicked last for this run (the chart is below); best F1 until then."""
    pick = st.session_state.get(PICKS, {}).get(run)
    if pick is None:
        st.caption("Click a point of the ROC curve below (until then: the best-F1 threshold).")
        return metrics.threshold_f1(labels, scores)
    st.caption("Click another point of the ROC curve below to move the threshold.")
    return metrics.Threshold(pick["value"], "roc", params={"fpr": pick["fpr"], "tpr": pick["tpr"]})


def charts(result, thr: metrics.Threshold, conf: dict, run: str) -> None:
    """Histogram with the threshold line | ROC with the operating point (clickable for the ROC method)."""
    h, r = st.columns(2)
    h.plotly_chart(score_histogram(result.labels, result.scores, thr), key="thr_hist")
    if len(set(result.labels.tolist())) < 2:
        r.caption("No ROC: the test set has only one kind of image.")
        return
    point = (conf["fpr"] or 0.0, conf["recall"] or 0.0)
    if st.session_state.get("thr_method") == "roc":
        fig = roc_figure(result.labels, result.scores, point, pickable=True)
        r.plotly_chart(fig, key=ROC_KEY, on_select=lambda: _remember_pick(run), selection_mode="points")
    else:
        r.plotly_chart(roc_figure(result.labels, result.scores, point), key="thr_roc")


def choose(result, run: str) -> metrics.Threshold:
    labels, scores = result.labels, result.scores
    method = st.radio("Method", list(METHODS), format_func=METHODS.get, horizontal=True, key="thr_method")
    if method == "fpr":
        target = st.slider("Target false-alarm rate (%)", 0.0, 20.0, 1.0, 0.5, key="thr_fpr")
        thr = metrics.threshold_at_fpr(labels, scores, target / 100)
    elif method == "f1":
        thr = metrics.threshold_f1(labels, scores)
    elif method == "roc":
        thr = _picked_on_roc(labels, scores, run)
    elif method == "quantile":
        q = st.slider("Quantile of good scores", 0.80, 1.0, 0.99, 0.005, key="thr_quantile")
        thr = metrics.threshold_quantile(scores[labels == 0], q)
    else:
        lo, hi = float(np.min(scores)), float(np.max(scores))
        value = st.slider("Threshold", lo, hi, (lo + hi) / 2, (hi - lo) / 200 or 1e-6, format="%.5f", key="thr_manual")
        thr = metrics.threshold_manual(value)
    if st.checkbox("Review band (accept / review / reject)", key="thr_review"):
        lo = float(np.min(scores))
        if lo < thr.value:
            start = st.slider(
                "Review the images scoring from … up to the threshold",
                lo,
                thr.value,
                thr.value - (thr.value - lo) / 4,
                format="%.5f",
                key="thr_band",
            )
            thr = thr.with_review(start)
        else:
            st.caption("No score lies below the threshold: nothing to review.")
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
        st.caption(f"Saved threshold: {metrics.describe_threshold(current)}")
    n_good = int((result.labels == 0).sum())
    st.caption(
        f"Set on {evaluated_on(result.metrics)}. With {n_good} good images the false-alarm rate moves in steps of "
        f"{1 / max(n_good, 1):.1%}; a target of p needs about 3/p of them (e.g. 300 for 1 %)."
    )
    seen = bool(result.metrics.get("evaluation_goods_seen_in_training"))
    thr = metrics.annotate(choose(result, run_dir.name), result.labels, result.synthetic, seen)
    for text in thr.params.get("warnings", []):
        st.warning(text)
    st.markdown(
        f"**Threshold {thr.value:.5f}** ({METHODS.get(thr.method, thr.method)})"
        + (f" · review band from {thr.review_below:.5f}" if thr.review_below is not None else "")
    )
    if thr.params.get("provisional"):
        st.info(thr.params["provisional"])
    conf = metrics.confusion(result.labels, result.scores, thr)
    c = st.columns(4)
    c[0].metric("Good accepted", conf.get("tn"))
    c[1].metric("Good rejected (false alarms)", conf.get("fp"))
    c[2].metric("Defects caught", conf.get("tp"))
    c[3].metric("Defects missed", conf.get("fn"))
    charts(result, thr, conf, run_dir.name)
    matrix = pd.DataFrame(
        [[conf["tn"], conf["fp"]], [conf["fn"], conf["tp"]]],
        index=["actual good", "actual defect"],
        columns=["accepted", "rejected"],
    )
    if thr.review_below is not None:  # the review band takes its images out of "accepted"
        matrix["accepted"] -= [conf["review_good"], conf["review_defect"]]
        matrix.insert(1, "review", [conf["review_good"], conf["review_defect"]])
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
    names = {"reject": "Rejected", "review": "Review", "accept": "Accepted"}
    tabs = st.tabs([f"{label} ({verdict.count(name)})" for name, label in names.items()])
    for tab, name in zip(tabs, names, strict=True):
        with tab:
            part = df[df["verdict"] == name]
            if part.empty:
                hint = " Turn on the review band above to use it." if name == "review" and not thr.review_below else ""
                st.caption("No image here." + hint)
                continue
            st.dataframe(
                part,
                hide_index=True,
                width="stretch",
                key=f"thr_table_{name}",
                height=min(36 + 35 * len(part), 300),
                column_config={"score": st.column_config.NumberColumn(format="%.5f")},
            )
            files = [result.paths[i] for i in part.index if "#" not in result.paths[i]][:12]
            files = [f for f in files if Path(f).is_file()]
            if files:  # synthetic test images exist only in memory: those are listed, not shown
                thumbs([Path(f) for f in files], columns=6, limit=12)
    if st.button("Save threshold into the model bundle", type="primary", key="save_threshold"):
        record_threshold(run_dir, thr)
        st.success(f"Saved {thr.value:.5f} into {run_dir.name}/model.pt; Inspect and exports use it.")


guarded(body)
