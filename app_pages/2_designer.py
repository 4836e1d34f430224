"""Defect designer: every SynthConfig knob with a live preview grid; save the design to the project."""

from __future__ import annotations

import dataclasses

import numpy as np
import streamlit as st

from app_pages._ui import guarded, knob_widgets, require_project
from recon_core.defect_bank import DefectBank, bank_from_files, transplant_preview
from recon_core.errors import ReconError
from recon_core.foreground import estimate_foreground
from recon_core.images import load_images
from recon_core.synth import SynthConfig, bundled_textures_dir, preview, preview_grid
from recon_core.workspace import save_textures

PREVIEW_SIZE = 128
PREVIEW_N = 8
KNOB_PREFIX = "synth_"  # widget keys: synth_threshold, synth_opacity (a min/max pair), ...


@st.cache_data(show_spinner=False, max_entries=8)
def _goods(paths: tuple[str, ...], size: int) -> np.ndarray:
    return load_images(list(paths), size).images


TEXTURE_LABELS = {
    "bundled": "shipped texture set",
    "folder": "a folder / uploaded textures",
    "noise": "random noise",
    "self": "patches of the product's own goods",
}
FOREGROUND_LABELS = {
    "auto": "auto (decide from the goods)",
    "on": "on the product only",
    "off": "anywhere in the image",
}


def knobs(saved: SynthConfig, project) -> SynthConfig:
    """The sliders come from SynthConfig's declared knobs (recon_core.knobs); only the texture folder is drawn here."""

    def texture_folder(name: str, values: dict) -> None:
        if name != "texture_source":
            return
        if values["texture_source"] != "folder":
            values["texture_dir"] = None
            st.caption(f"Shipped textures: `{bundled_textures_dir()}`" if values["texture_source"] == "bundled" else "")
            return
        values["texture_dir"] = st.text_input(
            "Texture folder", saved.texture_dir or str(project.textures_dir), key="texture_dir"
        )
        uploads = st.file_uploader(
            "…or upload textures (images or a zip)",
            accept_multiple_files=True,
            type=["png", "jpg", "jpeg", "zip"],
            key="upload_textures",
        )
        if uploads and st.button("Add textures to the project", key="add_textures"):
            report = save_textures(project, [(f.name, f.getvalue()) for f in uploads])
            st.success(f"{len(report.kept)} texture(s) added to {project.textures_dir}")
            values["texture_dir"] = str(project.textures_dir)

    values = knob_widgets(
        saved,
        KNOB_PREFIX,
        after=texture_folder,
        labels={"texture_source": TEXTURE_LABELS, "foreground": FOREGROUND_LABELS},
    )
    return SynthConfig(**values)


@st.cache_resource(show_spinner=False, max_entries=4)
def _bank(pairs: tuple[tuple[str, str], ...], size: int) -> DefectBank:
    return bank_from_files(list(pairs), size)


def real_defects_preview(project, images: np.ndarray, config: SynthConfig, fg) -> None:
    """The project's training defects transplanted onto goods, as DRAEM / DSR training makes them."""
    masks = dict(project.defects())
    pairs = tuple((str(p), str(masks[p])) for p in project.training_defects())
    if not pairs:
        st.caption("No real defects chosen for training (Project & data): training uses synthetic defects only.")
        return
    try:
        augmented, pasted = transplant_preview(images, _bank(pairs, PREVIEW_SIZE), PREVIEW_N, config.seed, fg)
    except ReconError as exc:
        st.error(f"No preview of the real defects: {exc}")
        return
    st.image(
        preview_grid(augmented, pasted, columns=4, foregrounds=fg.masks(augmented) if fg.enabled else None),
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
            fg = estimate_foreground(images, config.foreground)
            augmented, masks = preview(images, shown, n=PREVIEW_N, foreground=fg)
        except ReconError as exc:
            st.error(f"No preview: {exc}")
            return
        outline = st.toggle("Outline the defects", True, key="outline_defects", help="off: see small defects unhidden")
        drawn = masks if outline else np.zeros_like(masks)  # no outline: the tiles show the defects as trained
        st.image(
            preview_grid(augmented, drawn, columns=4, foregrounds=fg.masks(augmented) if fg.enabled else None),
            caption=("Synthetic defects (outlined in magenta)" if outline else "Synthetic defects (no outlines)")
            + ("; the product (outlined in cyan), background darkened" if fg.enabled else ""),
            width="stretch",
        )
        coverage = float(masks.mean()) * 100
        st.caption(f"Product region: {fg.reason}")
        st.caption(f"Mean defect area: {coverage:.1f} % of the image")
        real_defects_preview(project, images, shown, fg)
        changed = config != saved
        if st.button("Save design to project", key="save_design", type="primary", disabled=not changed):
            project.save_synth(config)
            st.success(f"Saved to {project.root / 'synth.json'}; new runs use it.")
        elif not changed:
            st.caption("The saved design is shown (synth.json).")


guarded(body)
