"""Inspect & export: run a model on new images (upload or folder): verdict, score and heatmap per image, CSV;
export the bundle zip and ONNX."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages._ui import bundle, guarded, pick_run, require_project
from recon_core.export import export_bundle_zip, export_onnx
from recon_core.images import list_images
from recon_core.inference import overlay, predict_paths
from recon_core.workspace import MAX_FILES, safe_extract_zip

ONNX_NOTE = """```python
import numpy as np, onnxruntime as ort
from PIL import Image
sess = ort.InferenceSession("model.onnx")
size = sess.get_inputs()[0].shape[-1]
img = np.asarray(Image.open("part.png").convert("RGB").resize((size, size)), np.float32) / 255  # RGB in [0, 1]
score, amap = sess.run(["image_score", "anomaly_map"], {"image": img.transpose(2, 0, 1)[None]})
# reject when score[0] >= the threshold in threshold.json (bundle zip)
```"""


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
    alpha = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="inspect_alpha")
    if not st.button("Run inspection", type="primary", key="run_inspect", disabled=not (files or folder)):
        return
    with tempfile.TemporaryDirectory() as tmp:
        if files:
            paths = []
            for f in files[:MAX_FILES]:
                if f.name.lower().endswith(".zip"):
                    extracted, notes = safe_extract_zip(f.getvalue(), Path(tmp) / f"zip{len(paths)}")
                    paths += extracted
                    for note in notes:
                        st.info(note)
                else:
                    target = Path(tmp) / Path(f.name).name
                    target.write_bytes(f.getvalue())
                    paths.append(target)
        else:
            paths = list_images(Path(folder).expanduser())[:MAX_FILES]
        if not paths:
            st.warning("No images to inspect.")
            return
        with st.spinner(f"Scoring {len(paths)} image(s)…"):
            rows, maps, images = predict_paths(bundle(run_dir), paths)
    df = pd.DataFrame([{**r, "path": Path(r["path"]).name} for r in rows])
    st.dataframe(df, hide_index=True, width="stretch", key="inspect_table")
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    st.download_button("Download CSV", buf.getvalue(), file_name="inspection.csv", mime="text/csv", key="inspect_csv")
    cols = st.columns(4)
    for i, row in enumerate(r for r in rows if r["score"] is not None):
        with cols[i % 4]:
            st.image(
                overlay(images[row["path"]], maps[row["path"]], alpha),
                caption=f"{(row['verdict'] or 'no threshold').upper()} · {Path(row['path']).name} · {row['score']:.4f}",
                width="stretch",
            )


def export(run_dir: Path) -> None:
    out = run_dir / "export"
    c1, c2 = st.columns(2)
    if c1.button("Build bundle zip (model + ONNX + README)", key="build_zip"):
        with st.spinner("Exporting…"):
            info = export_bundle_zip(run_dir, out / f"{run_dir.name}.zip")
        st.success(f"Wrote {info['path']}" + ("" if info.get("onnx") else " (this model has no ONNX export)"))
    if c2.button("Export ONNX only", key="build_onnx"):
        with st.spinner("Exporting and checking against PyTorch…"):
            info = export_onnx(run_dir / "model.pt", out / "model.onnx")
        st.success(f"Wrote {out / 'model.onnx'}")
        st.json(info, expanded=False)
    for path in sorted(out.glob("*")) if out.is_dir() else []:
        st.download_button(
            f"Download {path.name} ({path.stat().st_size / 1e6:.1f} MB)",
            path.read_bytes(),
            file_name=path.name,
            key=f"dl_{path.name}",
        )
    st.markdown("**Running the ONNX model** (input: RGB float32 in [0, 1], no normalisation):")
    st.markdown(ONNX_NOTE)


def body() -> None:
    st.title("Inspect & export")
    project = require_project()
    run_dir = pick_run(project, key="inspect_run")
    if run_dir is None:
        return
    thr = bundle(run_dir).threshold
    st.caption(f"Threshold: {thr.value:.5f} ({thr.method})" if thr else "No threshold saved: verdicts are empty.")
    tab_i, tab_e = st.tabs(["Inspect new images", "Export"])
    with tab_i:
        inspect(run_dir)
    with tab_e:
        export(run_dir)


guarded(body)
