"""Defect designer: every SynthConfig knob with a live preview grid; save the design to the project."""

from __future__ import annotations

import dataclasses

import numpy as np
import streamlit as st

from app_pages._ui import guarded, require_project
from recon_core.defect_bank import DefectBank, bank_from_files, transplant_preview
from recon_core.errors import ReconError
from recon_core.images import load_images
from recon_core.synth import SynthConfig, bundled_textures_dir, preview, preview_grid
from recon_core.workspace import save_textures

PREVIEW_SIZE = 128
PREVIEW_N = 8


@st.cache_data(show_spinner=False, max_entries=8)
def _goods(paths: tuple[str, ...], size: int) -> np.ndarray:
    return load_images(list(paths), size).images


def knobs(saved: SynthConfig, project) -> SynthConfig:
    st.markdown("**Defect shape** (Perlin noise)")
    lo, hi = st.slider(
        "Perlin scale range (2^k blobs per axis)",
        0,
        6,
        (saved.perlin_scale_min, saved.perlin_scale_max),
        key="perlin_scale",
    )
    threshold = st.slider(
        "Mask threshold (higher = smaller defects)", 0.05, 0.95, float(saved.threshold), 0.05, key="mask_threshold"
    )
    rotate_noise = st.checkbox("Rotate the noise", saved.rotate_noise, key="rotate_noise")
    st.markdown("**Appearance**")
    op_lo, op_hi = st.slider(
        "Opacity range", 0.0, 1.0, (float(saved.opacity_min), float(saved.opacity_max)), 0.05, key="opacity"
    )
    sources = ["bundled", "folder", "noise"]
    labels = {"bundled": "shipped texture set", "folder": "a folder / uploaded textures", "noise": "random noise"}
    source = st.radio(
        "Texture source",
        sources,
        index=sources.index(saved.texture_source),
        format_func=labels.get,
        key="texture_source",
        horizontal=True,
    )
    texture_dir = saved.texture_dir
    if source == "folder":
        texture_dir = st.text_input("Texture folder", saved.texture_dir or str(project.textures_dir), key="texture_dir")
        uploads = st.file_uploader(
            "…or upload textures (images or a zip)",
            accept_multiple_files=True,
            type=["png", "jpg", "jpeg", "zip"],
            key="upload_textures",
        )
        if uploads and st.button("Add textures to the project", key="add_textures"):
            report = save_textures(project, [(f.name, f.getvalue()) for f in uploads])
            st.success(f"{len(report.kept)} texture(s) added to {project.textures_dir}")
            texture_dir = str(project.textures_dir)
    else:
        st.caption(f"Shipped textures: `{bundled_textures_dir()}`" if source == "bundled" else "")
    augs = st.slider("Texture augmentations", 0, 5, int(saved.texture_augmentations), key="texture_augs")
    st.markdown("**Training mix**")
    prob = st.slider("Defect probability", 0.0, 1.0, float(saved.defect_probability), 0.05, key="defect_probability")
    rot_p = st.slider(
        "Rotate good images: probability", 0.0, 1.0, float(saved.rotate_good_probability), 0.05, key="rotate_good_p"
    )
    rot_deg = st.slider(
        "Rotate good images: ± degrees", 0.0, 180.0, float(saved.rotate_good_degrees), 5.0, key="rotate_good_deg"
    )
    seed = st.number_input("Seed", 0, 1_000_000, int(saved.seed), key="synth_seed")
    return SynthConfig(
        perlin_scale_min=int(lo),
        perlin_scale_max=int(hi),
        threshold=float(threshold),
        rotate_noise=bool(rotate_noise),
        opacity_min=float(op_lo),
        opacity_max=float(op_hi),
        defect_probability=float(prob),
        texture_source=source,
        texture_dir=texture_dir if source == "folder" else None,
        texture_augmentations=int(augs),
        rotate_good_probability=float(rot_p),
        rotate_good_degrees=float(rot_deg),
        seed=int(seed),
    )


@st.cache_resource(show_spinner=False, max_entries=4)
def _bank(pairs: tuple[tuple[str, str], ...], size: int) -> DefectBank:
    return bank_from_files(list(pairs), size)


def real_defects_preview(project, images: np.ndarray, config: SynthConfig) -> None:
    """The project's training defects transplanted onto goods, as DRAEM / DSR training makes them."""
    masks = dict(project.defects())
    pairs = tuple((str(p), str(masks[p])) for p in project.training_defects())
    if not pairs:
        st.caption("No real defects chosen for training (Project & data): training uses synthetic defects only.")
        return
    try:
        augmented, pasted = transplant_preview(images, _bank(pairs, PREVIEW_SIZE), PREVIEW_N, config.seed)
    except ReconError as exc:
        st.error(f"No preview of the real defects: {exc}")
        return
    st.image(
        preview_grid(augmented, pasted, columns=4),
        caption=f"{len(pairs)} real defect(s) transplanted onto goods (outlined in magenta): "
        f"{config.real_defect_share:.0%} of the training defects look like these",
        width="stretch",
    )


def body() -> None:
    st.title("Defect designer")
    project = require_project()
    st.caption("Synthetic defects teach the model what 'not good' looks like. Move a slider: the preview follows.")
    saved = project.load_synth()
    left, right = st.columns([1, 2])
    with left:
        config = knobs(saved, project)
    with right:
        goods = project.train_goods()
        if not goods:
            st.warning("No training goods yet: import images on the Project & data page.")
            return
        bump = st.session_state.get("preview_bump", 0)  # "new samples" = another seed for the preview only
        if st.button("New samples", key="new_samples"):
            bump += 1
            st.session_state["preview_bump"] = bump
        images = _goods(tuple(str(p) for p in goods[:32]), PREVIEW_SIZE)
        try:  # an unusable knob combination (e.g. an empty texture folder) is shown here, the knobs stay usable
            shown = dataclasses.replace(config, seed=config.seed + 1000 * bump)
            augmented, masks = preview(images, shown, n=PREVIEW_N)
        except ReconError as exc:
            st.error(f"No preview: {exc}")
            return
        st.image(
            preview_grid(augmented, masks, columns=4),
            caption="Synthetic defects (outlined in magenta)",
            width="stretch",
        )
        coverage = float(masks.mean()) * 100
        st.caption(f"Mean defect area: {coverage:.1f} % of the image")
        real_defects_preview(project, images, shown)
        changed = config != saved
        if st.button("Save design to project", key="save_design", type="primary", disabled=not changed):
            project.save_synth(config)
            st.success(f"Saved to {project.root / 'synth.json'}; new runs use it.")
        elif not changed:
            st.caption("The saved design is shown (synth.json).")


guarded(body)
