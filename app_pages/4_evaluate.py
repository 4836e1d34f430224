"""Evaluate: a run on the project's test images (held-out goods + real defects, else synthetic defects):
metrics, ROC / PR curves, score histogram, per-image table and heatmap overlays. Cached in the run folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app_pages._ui import (
    CHART_MARGIN,
    bundle,
    cached_eval,
    guarded,
    pick_run,
    require_project,
    roc_figure,
    score_histogram,
)
from recon_core import metrics
from recon_core.evaluation import (
    defect_type_rows,
    evaluate_bundle,
    evaluated_on,
    record_evaluation,
    synthetic_test_set,
    type_findings,
)
from recon_core.images import load_image, load_images, to_uint8
from recon_core.inference import overlay


@st.cache_data(show_spinner="Loading images…", max_entries=4)
def eval_images(run_dir: str, stamp: float) -> np.ndarray:
    """The evaluated images, rebuilt from the files (synthetic defects are re-made with the same seed)."""
    loaded = bundle(Path(run_dir))
    result, _ = cached_eval(Path(run_dir))
    size = loaded.model.config.image_size
    if not result.synthetic:
        return np.stack([load_image(p, size) for p in result.paths])
    good_paths = [p for p, y in zip(result.paths, result.labels, strict=True) if y == 0]
    goods = load_images(good_paths, size).images
    return synthetic_test_set(goods, good_paths, loaded.synth_config, size).images


def curves(result) -> None:
    c1, c2, c3 = st.columns(3)
    if len(set(result.labels.tolist())) == 2:
        c1.plotly_chart(roc_figure(result.labels, result.scores), key="roc_chart")
        pr = metrics.pr_points(result.labels, result.scores)
        fig = go.Figure(go.Scatter(x=pr["recall"], y=pr["precision"], mode="lines"))
        fig.update_layout(
            title="Precision-recall", xaxis_title="recall", yaxis_title="precision", height=320, margin=CHART_MARGIN
        )
        c2.plotly_chart(fig, key="pr_chart")
    c3.plotly_chart(score_histogram(result.labels, result.scores), key="hist_chart")


def per_type(result, run_dir: Path) -> None:
    """Which kinds of defect the model finds and which it misses (a headline AUROC can hide a kind at chance)."""
    threshold = bundle(run_dir).threshold
    rows = defect_type_rows(result, threshold)
    if len(rows) < 2:
        return
    st.subheader("Per defect type")
    findings = type_findings(rows, result.metrics.get("pixel_auroc"))
    if findings:
        st.info("\n".join(f"- {finding}" for finding in findings))
    table = pd.DataFrame(rows)
    fig = go.Figure()
    fig.add_bar(y=table["type"], x=table["image_auroc"], orientation="h", name="image AUROC")
    if table["pixel_auroc"].notna().any():
        fig.add_bar(y=table["type"], x=table["pixel_auroc"], orientation="h", name="pixel AUROC")
    fig.add_vline(
        x=0.5,
        line_dash="dash",
        line_color="gray",
        layer="below",
        annotation_text="chance",
        annotation_position="bottom",
    )
    fig.update_layout(
        title="AUROC per defect type",
        barmode="group",
        xaxis={"range": [0, 1], "title": "AUROC (this type against every good image)"},
        yaxis={"autorange": "reversed"},
        height=120 + 45 * len(rows),
        margin=CHART_MARGIN,
    )
    st.plotly_chart(fig, key="per_type_chart")
    columns = {
        "type": "type",
        "n": "images",
        "image_auroc": "image AUROC",
        "pixel_auroc": "pixel AUROC",
        "pixel_share": "share of defect pixels",
        "caught": "caught at the saved threshold",
    }
    present = [c for c in columns if c in table and (c in ("type", "n") or table[c].notna().any())]
    shown = table[present].rename(columns=columns)
    formats = {name: st.column_config.NumberColumn(format="%.3f") for name in ("image AUROC", "pixel AUROC")}
    for share in ("pixel_share", "caught"):
        if share in present:
            shown[columns[share]] = pd.to_numeric(shown[columns[share]]) * 100
            formats[columns[share]] = st.column_config.NumberColumn(format="%.0f%%")
    st.dataframe(shown, hide_index=True, width="stretch", key="per_type_table", column_config=formats)
    if threshold is None:
        st.caption("Save a threshold on the Threshold page to see how many of each type it catches.")


def body() -> None:
    st.title("Evaluate")
    project = require_project()
    run_dir = pick_run(project, key="eval_run")
    if run_dir is None:
        return
    result, stem = cached_eval(run_dir)
    if st.button("Evaluate on the project's current test images", key="run_eval"):
        with st.spinner("Scoring test images…"):
            # leaves out the run's own training images (by content); becomes the run's current evaluation
            record_evaluation(run_dir, evaluate_bundle(bundle(run_dir), str(project.data_dir)))
        st.rerun()  # the run picker and its warnings above show the new evaluation
    if result is None:
        st.info("This run has no evaluation yet: press the button above.")
        return
    excluded = result.metrics.get("excluded_training_images") or 0
    st.caption(
        f"Evaluated on {evaluated_on(result.metrics)}"
        + (f"; {excluded} image(s) identical to this run's training images left out" if excluded else "")
        + f" (saved as `{stem.name}.npz`)."
    )
    if result.synthetic:
        st.warning("No real defects in the test set: numbers come from faint synthetic defects, a rough guide only.")
    m = result.metrics
    cols = st.columns(4)
    for col, (key, label) in zip(
        cols,
        [("image_auroc", "Image AUROC"), ("pixel_auroc", "Pixel AUROC"), ("aupro", "AUPRO"), ("f1_max", "Best F1")],
        strict=True,
    ):
        value = m.get(key)
        col.metric(label, "—" if value is None else f"{value:.3f}")
    curves(result)
    per_type(result, run_dir)

    st.subheader("Per image")
    table = (
        pd.DataFrame(
            {
                "image": [
                    Path(p.split("#")[0]).name + ("#" + p.split("#")[1] if "#" in p else "") for p in result.paths
                ],
                "type": result.defect_types,
                "label": np.where(result.labels == 1, "defect", "good"),
                "score": result.scores,
            }
        )
        .reset_index(names="index")
        .sort_values("score", ascending=False)
    )
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        key="per_image_table",
        height=min(36 + 35 * len(table), 260),
        column_order=["image", "type", "label", "score"],
        column_config={"score": st.column_config.NumberColumn(format="%.5f")},
    )
    choices = table["index"].tolist()
    idx = st.selectbox(
        "Image",
        choices,
        key="eval_image",
        format_func=lambda i: f"{table.set_index('index').loc[i, 'image']} · score {result.scores[i]:.5f}",
    )
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="heat_alpha")
    images = eval_images(str(run_dir), (Path(str(stem) + ".npz")).stat().st_mtime)
    img = images[idx]
    amap = result.maps[idx]
    vmin, vmax = float(np.min(result.maps)), float(np.max(result.maps))  # one colour scale for all images
    a, b, c = st.columns(3)
    a.image(to_uint8(img), caption="image", width="stretch")
    b.image(
        overlay(img, amap, alpha, vmin, vmax),
        caption="anomaly heatmap (blue = normal, red = anomalous; one scale for all images)",
        width="stretch",
    )
    if result.has_masks and result.labels[idx] == 1:
        c.image(
            to_uint8(np.repeat(result.masks[idx][..., None], 3, axis=2)), caption="ground-truth mask", width="stretch"
        )
    else:
        c.caption("no mask (good image)" if result.labels[idx] == 0 else "no mask given")


guarded(body)
