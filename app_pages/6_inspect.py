"""Inspect & export: run a model on new images (upload or folder): verdict, score and heatmap per image, CSV;
export the bundle zip and ONNX."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app_pages._ui import bundle, guarded, pick_run, require_project
from recon_core.export import export_bundle_zip, export_onnx
from recon_core.images import list_images
from recon_core.inference import overlay, predict_paths
from recon_core.uploads import MAX_FILES, ImportReport, stage_uploads, staging_dir
from recon_core.workspace import load_inspection, save_inspection

ONNX_NOTE = """The bundle zip holds `model.onnx`, `threshold.json`, `predict_onnx.py` and `preprocess.py` (this
app's own preprocessing: the same resize, so the same scores and verdicts). Unzip it, then:

```bash
pip install numpy pillow opencv-python-headless onnxruntime
python predict_onnx.py part1.png part2.jpg   # CSV: path, score, verdict
```

```python
from predict_onnx import OnnxModel  # in the unzipped folder
model = OnnxModel("model.onnx", "threshold.json")
print(model.predict(["part.png"]))  # [{"path", "score", "verdict", "problem"}]
```

Feeding `model.onnx` yourself: use `preprocess.model_input(path, size)`; another resize (PIL's default,
bilinear) changes the scores enough to flip verdicts near the threshold."""


def inspect(run_dir: Path) -> None:
    src = st.radio(
        "Images",
        ["upload", "folder"],
        horizontal=True,
        key="inspect_source",
        format_func={"upload": "Upload", "folder": "Folder on disk"}.get,
    )
    if src == "upload":
        files = st.file_uploader(
            "Images to check (or a zip)",
            accept_multiple_files=True,
            key="inspect_upload",
            type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "zip"],
        )
        folder = None
    else:
        folder = st.text_input("Folder path", key="inspect_folder")
        files = None
    if st.button("Run inspection", type="primary", key="run_inspect", disabled=not (files or folder)):
        run_inspection(run_dir, files, folder)
    show_last(run_dir)


def run_inspection(run_dir: Path, files, folder: str | None) -> None:
    """Score the images and keep the result in the run folder (shown until the next inspection). Uploads go through
    recon_core.uploads (the import page's staging: clean unique names, size caps), so two files with the same name
    are two rows."""
    report = ImportReport()
    with staging_dir() as tmp:
        if files:
            staged = stage_uploads([(f.name, f.getvalue()) for f in files], tmp, report)
        else:
            base = Path(folder).expanduser()
            staged = [(p.relative_to(base).as_posix(), p) for p in list_images(base)[:MAX_FILES]]
        for f in report.refused:
            st.warning(f"{f.name}: {f.reason}")
        for note in report.notes:
            st.info(note)
        if not staged:
            st.warning("No images to inspect.")
            return
        shown = {str(path): name for name, path in staged}
        with st.spinner(f"Scoring {len(staged)} image(s)…"):
            rows, maps, images = predict_paths(bundle(run_dir), [path for _, path in staged])
    save_inspection(
        run_dir,
        [{**r, "path": shown.get(r["path"], r["path"])} for r in rows],
        {shown.get(k, k): v for k, v in maps.items()},
        {shown.get(k, k): v for k, v in images.items()},
    )


def show_last(run_dir: Path) -> None:
    last = load_inspection(run_dir)
    if last is None:
        st.caption("No inspection yet with this run: upload images or give a folder, then **Run inspection**.")
        return
    when, rows, maps, images = last
    df = pd.DataFrame(rows).rename(columns={"path": "image"})
    counts = df["verdict"].fillna("no verdict").value_counts()
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    st.markdown(
        f"**Last inspection** ({time.strftime('%Y-%m-%d %H:%M', time.localtime(when))}, {len(rows)} images: {summary})"
    )
    st.dataframe(
        df.fillna({"problem": "", "verdict": ""}),
        hide_index=True,
        width="stretch",
        key="inspect_table",
        height=min(36 + 35 * len(df), 300),
        column_config={"score": st.column_config.NumberColumn(format="%.5f")},
    )
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    st.download_button("Download CSV", buf.getvalue(), file_name="inspection.csv", mime="text/csv", key="inspect_csv")
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="inspect_alpha")
    shown = [r for r in rows if r["path"] in maps]
    if not shown:
        return
    vmin = min(float(np.min(maps[r["path"]])) for r in shown)  # one colour scale for the whole inspection
    vmax = max(float(np.max(maps[r["path"]])) for r in shown)
    st.caption(
        "Each image beside its heat map: blue = normal, red = the most anomalous spot of this inspection "
        "(one scale for all)."
    )
    cols = st.columns(4)
    for i, row in enumerate(shown):
        name = row["path"]
        verdict = (row["verdict"] or "no threshold").upper()
        photo, heat = cols[(2 * i) % 4], cols[(2 * i + 1) % 4]
        photo.image(images[name], caption=f"photo · {name}", width="stretch")
        heat.image(
            overlay(images[name], maps[name], alpha, vmin, vmax),
            caption=f"{verdict} · {name} · {row['score']:.5f}",
            width="stretch",
        )
    if len(shown) < sum(r["score"] is not None for r in rows):
        st.caption(f"Heat maps of the first {len(shown)} images are kept; all scores are in the table and the CSV.")


def export(run_dir: Path) -> None:
    out = run_dir / "export"
    c1, c2, _ = st.columns([2, 1, 2])
    if c1.button("Build bundle zip (model + ONNX + README)", key="build_zip"):
        with st.spinner("Exporting…"):
            info = export_bundle_zip(run_dir, out / f"{run_dir.name}.zip")
        st.success(f"Wrote {info['path']}" + ("" if info.get("onnx") else " (this model has no ONNX export)"))
    if c2.button("Export ONNX only", key="build_onnx"):
        with st.spinner("Exporting and checking against PyTorch…"):
            info = export_onnx(run_dir / "model.pt", out / "model.onnx")
        st.success(f"Wrote {out / 'model.onnx'} (checked against PyTorch)")
        with st.expander("Export details (inputs, outputs, parity check)"):
            st.json(info)
    for path in sorted(out.glob("*")) if out.is_dir() else []:
        st.download_button(
            f"Download {path.name} ({path.stat().st_size / 1e6:.1f} MB)",
            path.read_bytes(),
            file_name=path.name,
            key=f"dl_{path.name}",
        )
    st.markdown("**Running the exported model outside Recon Studio**")
    st.markdown(ONNX_NOTE)


def body() -> None:
    st.title("Inspect & export")
    project = require_project()
    run_dir = pick_run(project, key="inspect_run")
    if run_dir is None:
        return
    thr = bundle(run_dir).threshold
    st.caption(
        f"Threshold: {thr.value:.5f} ({thr.method}): a score at or above it is rejected"
        + (f", from {thr.review_below:.5f} it goes to review" if thr.review_below is not None else "")
        + ". Change it on the **Threshold** page."
        if thr
        else "No threshold saved: verdicts stay empty until one is saved on the **Threshold** page."
    )
    if thr is not None and thr.params.get("provisional"):
        st.info(thr.params["provisional"])
    tab_i, tab_e = st.tabs(["Inspect new images", "Export"])
    with tab_i:
        inspect(run_dir)
    with tab_e:
        export(run_dir)


guarded(body)
