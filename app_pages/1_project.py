"""Project & data: create/open a project, import good images (files, zip, folder, MVTec category), add real
defects with masks, see every file's validation result, the split and the warnings."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from app_pages._ui import current_project, guarded, switch_project, thumbs, ws
from recon_core.workspace import (
    MAX_FILE_BYTES,
    MAX_FILES,
    add_defects,
    create_project,
    import_folder,
    import_uploads,
    remove_defect,
    remove_image,
    split,
)


def _show_report(report) -> None:
    """Keep the import's report for the next run, then rerun so counts, warnings and thumbnails are fresh."""
    st.session_state["last_import"] = report
    st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1  # empties the uploaders
    st.rerun()


def _draw_report(report) -> None:
    kept, refused = len(report.kept), len(report.refused)
    (st.success if not refused else st.warning)(f"Imported {kept} file(s); refused {refused}.")
    for f in report.refused:
        st.error(f"{f.name}: {f.reason}")
    for note in report.notes:
        (st.warning if note.startswith("identical files") else st.info)(note)


def remover(kind: str, names: list[str], remove: Callable[[str], None]) -> None:
    """A picker + button that deletes one image from the project (goods: any split; defects: with their mask)."""
    if not names:
        return
    key = kind.split()[0]
    r1, r2 = st.columns([3, 1], vertical_alignment="bottom")
    doomed = r1.selectbox(f"Remove a {kind}", names, key=f"remove_{key}_name")
    if r2.button("Remove", key=f"remove_{key}"):
        remove(doomed)
        st.rerun()


def defect_roles(project, defects: list) -> None:
    """Which real defects train DRAEM / DSR (transplanted onto goods and shown as they are) and which are evaluated;
    a defect never does both."""
    if not defects:
        return
    st.markdown("##### Training or evaluation")
    training = {p.name for p in project.training_defects()}
    masked = [img.name for img, mask in defects if mask is not None]
    rows = [
        {
            "defect": img.name,
            "mask": "yes" if mask is not None else "no",
            "used for": "training (DRAEM, DSR, AAE)" if img.name in training else "evaluation",
        }
        for img, mask in defects
    ]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="defect_roles")
    st.caption(
        f"{len(training)} defect(s) teach the model what this product's real defects look like; the other "
        f"{len(defects) - len(training)} measure it. Only defects with a mask can train."
    )
    with st.form("training_defects_form"):
        chosen = st.multiselect("Defects to train with", masked, default=sorted(training), key="training_defects")
        if st.form_submit_button("Save choice"):
            project.set_training_defects(chosen)
            st.rerun()


def new_project_form() -> None:
    with st.form("new_project", clear_on_submit=True):
        name = st.text_input("New project name", placeholder="e.g. washer-line-3", key="new_project_name")
        if st.form_submit_button("Create project"):
            project = create_project(ws(), name)
            switch_project(project.name)
            # a new key = a new, closed box (an expander keeps the state the user left it in across reruns)
            st.session_state["new_project_round"] = st.session_state.get("new_project_round", 0) + 1
            st.rerun()


def body() -> None:
    st.title("Project & data")
    project = current_project()
    box = f"new_project_box_{st.session_state.get('new_project_round', 0)}"
    with st.expander("New project", expanded=project is None, key=box):
        new_project_form()
    if project is None:
        st.info(
            "**Start here.** A project holds one product: create it above, then upload 10-50 photos of good parts. "
            "Next: shape the synthetic defects (**Defect designer**), **Train** a model in the background, "
            "**Evaluate** it, pick the **Threshold**, and **Inspect & export**."
        )
        return
    counts = project.counts()
    st.subheader(f"Project `{project.name}`")
    if "last_import" in st.session_state:
        _draw_report(st.session_state.pop("last_import"))
    c = st.columns(5)
    c[0].metric("Good images", counts["goods"])
    c[1].metric("Training goods", counts["train"])
    c[2].metric("Held-out goods", counts["held_out"])
    c[3].metric("Real defects", counts["defects"])
    c[4].metric("Refused files", counts["refused"])
    for warning in project.warnings():
        st.warning(warning)

    st.markdown("#### Add good images")
    st.caption("Imports **copy** the files into the project folder; the originals are not referenced afterwards.")
    tab_up, tab_folder = st.tabs(["Upload files or a zip", "Folder on disk / MVTec category"])
    with tab_up:
        files = st.file_uploader(
            "Good images (PNG/JPG/…, or a .zip of them)",
            help=f"At most {MAX_FILE_BYTES // 2**20} MB per image and {MAX_FILES} images per import; "
            "a zip is unpacked safely (no paths outside the project, no zip bombs).",
            type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "zip"],
            accept_multiple_files=True,
            key=f"upload_goods_{st.session_state.get('upload_round', 0)}",
        )
        if st.button("Import uploaded files", key="import_uploads", disabled=not files):
            with st.spinner("Checking and copying images…"):
                _show_report(import_uploads(project, [(f.name, f.getvalue()) for f in files]))
    with tab_folder:
        folder = st.text_input(
            "Folder path (plain folder of images, or an MVTec-layout category with train/good)", key="import_folder"
        )
        if st.button("Import folder", key="import_folder_button", disabled=not folder):
            with st.spinner("Checking and copying images…"):
                _show_report(import_folder(project, folder))

    st.markdown("#### Real defect images (optional)")
    st.caption("A few real defects with binary masks (white = defect, same size as the image) make evaluation honest.")
    round_ = st.session_state.get("upload_round", 0)  # a new round empties the uploaders after an import
    d1, d2, d3 = st.columns([2, 2, 1])
    defect_files = d1.file_uploader(
        "Defect images",
        type=["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"],
        accept_multiple_files=True,
        key=f"upload_defect_{round_}",
    )
    mask_files = d2.file_uploader(
        "Their masks (optional; matched by name: 000.png ← 000_mask.png)",
        type=["png", "bmp", "tif", "tiff"],
        accept_multiple_files=True,
        key=f"upload_mask_{round_}",
    )
    defect_type = d3.text_input("Defect type", placeholder="e.g. scratch", key=f"defect_type_{round_}")
    if st.button("Add defects", key="add_defect", disabled=not defect_files):
        images = [(f.name, f.getvalue()) for f in defect_files]
        masks = [(f.name, f.getvalue()) for f in mask_files or []]
        _show_report(add_defects(project, images, masks or None, defect_type))

    st.markdown("#### Split")
    meta = project.meta()
    s1, s2, s3 = st.columns([1, 1, 1], vertical_alignment="bottom")
    share = s1.slider("Held-out share of goods", 0.1, 0.5, float(meta.get("holdout", 0.2)), 0.05, key="holdout_share")
    seed = s2.number_input("Split seed", 0, 10_000, int(meta.get("seed", 0)), key="split_seed")
    if s3.button("Re-split", key="resplit"):
        result = split(project, seed=int(seed), share=float(share))
        st.success(f"{result['train']} training goods, {result['held_out']} held out (at least 2).")

    st.markdown("#### Images")
    t_train, t_test, t_def, t_report = st.tabs(
        [
            f"Training goods ({counts['train']})",
            f"Held-out goods ({counts['held_out']})",
            f"Defects ({counts['defects']})",
            "Validation report",
        ]
    )
    with t_train:
        thumbs(project.train_goods())
        remover("good image", [g.name for g in project.goods()], lambda name: remove_image(project, name))
    with t_test:
        thumbs(project.test_goods())
    with t_def:
        defects = project.defects()
        if not defects:
            st.caption("No real defects yet: add some above (optional; without them evaluation uses synthetic ones).")
        types = project.defect_types()
        if defects:
            kinds = pd.Series(list(types.values())).value_counts()
            st.caption("Types: " + ", ".join(f"{k} ({n})" for k, n in kinds.items()))
        for img, mask in defects[:24]:
            a, b, c = st.columns([1, 1, 4])
            a.image(str(img), caption=img.name, width=140)
            if mask is not None:
                b.image(str(mask), caption="mask", width=140)
            else:
                b.caption("no mask")
            c.markdown(f"type **{types.get(img.name, 'defect')}**")
        remover("defect", [img.name for img, _ in defects], lambda name: remove_defect(project, name))
        defect_roles(project, defects)
    with t_report:
        rows = project.report()
        if rows:
            df = pd.DataFrame(rows)[["name", "kind", "status", "reason", "size"]]
            df = df.sort_values("status", key=lambda c: c != "refused", kind="stable")  # refused files first
            st.caption(f"{(df['status'] == 'kept').sum()} kept, {(df['status'] == 'refused').sum()} refused.")
            df["size"] = df["size"].map(lambda s: f"{s[0]}x{s[1]}" if s else "")
            st.dataframe(df, hide_index=True, width="stretch", key="report_table")
        else:
            st.caption("Nothing imported yet.")


guarded(body)
