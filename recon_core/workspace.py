"""Projects in a workspace folder: imported images, the train / held-out split, the defect design, runs.

A project folder is an MVTec-layout data set, so `images.load_dataset` and `runs.execute_run` read it directly:

    <ws>/<project>/project.json            name, split settings, the validation report of every imported file
    <ws>/<project>/goods/                   every accepted good image (copied in; the pool the split draws from)
    <ws>/<project>/data/train/good/         training goods   (copies of goods/, re-made by `split`)
    <ws>/<project>/data/test/good/          held-out goods   (seeded, 20 %, at least 2)
    <ws>/<project>/data/test/defect/        real defect images (optional)
    <ws>/<project>/data/ground_truth/defect/<stem>_mask.png
    <ws>/<project>/synth.json               the defect design (SynthConfig)
    <ws>/<project>/textures/                uploaded textures (texture_source "folder")
    <ws>/<project>/runs/<job_id>/           runs, written by the job workers
    <ws>/jobs.sqlite                        the job store (recon_core.jobs)

Imports always COPY files into the project (never reference), so a project survives its sources moving.
Uploads are untrusted: size and count limits per file, and zip archives are unpacked defensively
(`safe_extract_zip`). No Streamlit here: the pages call these functions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recon_core.config import from_dict, load_json, save_json, to_dict
from recon_core.errors import ConfigError, DataError, ImageError
from recon_core.images import SUPPORTED_SUFFIXES, is_mvtec_layout, list_images, to_uint8
from recon_core.synth import SynthConfig
from recon_core.uploads import (  # noqa: F401  (MAX_FILE_BYTES, safe_extract_zip: re-exported for callers)
    MAX_FILE_BYTES,
    MAX_FILES,
    FileReport,
    ImportReport,
    clean_filename,
    match_masks,
    safe_extract_zip,
    stage_uploads,
    staging_dir,
    unique_path,
)

PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # same rule as the job store's project names
HOLDOUT_SHARE = 0.2
DEFAULT_DEFECT_TYPE = "defect"
HOLDOUT_MIN = 2
TRAINING_DEFECTS_MAX = 5  # default: up to this many masked defects train (DRAEM/DSR), at most half of them
MIN_GOODS = 10  # fewer: a warning (training still works, evaluation is thin)
MAX_GOODS_ADVICE = 50


def project_defect_types(data_dir: str | os.PathLike) -> dict[str, str]:
    """{defect file name: type} when `data_dir` is a project's data folder (its defects share one folder, so their
    types live in project.json), else {} (a plain MVTec folder names the type by its folder)."""
    data_dir = Path(data_dir)
    if data_dir.name != "data" or not (data_dir.parent / "project.json").is_file():
        return {}
    try:
        return Project(data_dir.parent).defect_types()
    except ConfigError:
        return {}  # a hand-damaged project.json: the folder name still labels every defect


def workspace_root(path: str | os.PathLike | None = None) -> Path:
    """The given folder, else $RECON_WORKSPACE, else ./workspace (created)."""
    root = Path(path or os.environ.get("RECON_WORKSPACE") or "workspace").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass
class Project:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def goods_dir(self) -> Path:
        return self.root / "goods"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def train_dir(self) -> Path:
        return self.data_dir / "train" / "good"

    @property
    def test_good_dir(self) -> Path:
        return self.data_dir / "test" / "good"

    @property
    def defect_dir(self) -> Path:
        return self.data_dir / "test" / "defect"

    @property
    def mask_dir(self) -> Path:
        return self.data_dir / "ground_truth" / "defect"

    @property
    def textures_dir(self) -> Path:
        return self.root / "textures"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def workspace(self) -> Path:
        return self.root.parent

    # ---- state ------------------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        path = self.root / "project.json"
        meta = load_json(path) if path.is_file() else {}
        if not isinstance(meta, dict):  # hand-edited: every caller would fail with an AttributeError
            raise ConfigError(f"{path}: expected a JSON object, got {type(meta).__name__}")
        return meta

    def save_meta(self, meta: dict[str, Any]) -> None:
        save_json(self.root / "project.json", meta)

    def goods(self) -> list[Path]:
        return list_images(self.goods_dir) if self.goods_dir.is_dir() else []

    def train_goods(self) -> list[Path]:
        return list_images(self.train_dir) if self.train_dir.is_dir() else []

    def test_goods(self) -> list[Path]:
        return list_images(self.test_good_dir) if self.test_good_dir.is_dir() else []

    def defects(self) -> list[tuple[Path, Path | None]]:
        """Real defect images with their mask (None when none was given)."""
        if not self.defect_dir.is_dir():
            return []
        out = []
        for img in list_images(self.defect_dir):
            mask = self.mask_dir / f"{img.stem}_mask.png"
            out.append((img, mask if mask.is_file() else None))
        return out

    def training_defects(self) -> list[Path]:
        """The real defect images training uses (masked ones only; all others are evaluated): the names saved by
        set_training_defects, else a seeded choice of half the masked defects, at most TRAINING_DEFECTS_MAX."""
        masked = [img for img, mask in self.defects() if mask is not None]
        meta = self.meta()
        if "training_defects" in meta:
            names = set(meta["training_defects"])
            return [p for p in masked if p.name in names]
        count = min(TRAINING_DEFECTS_MAX, len(masked) // 2)
        picked = np.random.default_rng(int(meta.get("seed", 0))).choice(len(masked), size=count, replace=False)
        return [masked[i] for i in sorted(picked)]

    def set_training_defects(self, names: list[str]) -> None:
        masked = {img.name for img, mask in self.defects() if mask is not None}
        unknown = [n for n in names if n not in masked]
        if unknown:
            raise DataError(f"{', '.join(unknown)}: not a defect image with a mask in project {self.name}")
        self.save_meta({**self.meta(), "training_defects": sorted(set(names))})

    def defect_types(self) -> dict[str, str]:
        """{defect image file name: its type} ("defect" when none was given; MVTec imports: the folder name)."""
        saved = self.meta().get("defect_types", {})
        return {img.name: saved.get(img.name, DEFAULT_DEFECT_TYPE) for img, _ in self.defects()}

    def report(self) -> list[dict[str, Any]]:
        return list(self.meta().get("report", []))

    def load_synth(self) -> SynthConfig:
        path = self.root / "synth.json"
        if not path.is_file():
            return SynthConfig()
        return from_dict(SynthConfig, load_json(path), where=str(path))

    def save_synth(self, config: SynthConfig) -> None:
        save_json(self.root / "synth.json", config)

    def warnings(self) -> list[str]:
        """Things the user should know before training (too few images, mixed sizes, no held-out goods)."""
        out = []
        n = len(self.goods())
        if n == 0:
            out.append("No good images yet: upload 10-50 images of the product without defects.")
        elif n < MIN_GOODS:
            out.append(f"Only {n} good images: {MIN_GOODS}-{MAX_GOODS_ADVICE} are recommended.")
        sizes = {tuple(r["size"]) for r in self.report() if r.get("status") == "kept" and r.get("size")}
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:5])
            out.append(f"Mixed image sizes ({shown}): all images are stretched to the model's square size.")
        if n and len(self.test_goods()) < HOLDOUT_MIN:
            out.append("Fewer than 2 held-out good images: evaluation numbers will be unreliable.")
        missing = [p.name for p, m in self.defects() if m is None]
        if missing:
            out.append(f"{len(missing)} defect image(s) without a mask: pixel metrics use only masked ones.")
        return out

    def counts(self) -> dict[str, int]:
        report = self.report()
        return {
            "goods": len(self.goods()),
            "train": len(self.train_goods()),
            "held_out": len(self.test_goods()),
            "defects": len(self.defects()),
            "refused": sum(1 for r in report if r.get("status") == "refused"),
        }

    def run_dirs(self) -> list[Path]:
        """Run folders, newest first (including runs started from the CLI into this folder)."""
        if not self.runs_dir.is_dir():
            return []
        dirs = [p for p in self.runs_dir.iterdir() if p.is_dir()]
        return sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)

    def finished_runs(self) -> list[Path]:
        return [p for p in self.run_dirs() if (p / "model.pt").is_file()]


# ---------------------------------------------------------------------------------------------------------
# Projects


def check_name(name: str) -> str:
    name = (name or "").strip()
    if not PROJECT_RE.match(name):
        raise ConfigError(
            f"project name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def list_projects(workspace: str | os.PathLike | None = None) -> list[str]:
    root = workspace_root(workspace)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "project.json").is_file())


def create_project(workspace: str | os.PathLike | None, name: str, *, exist_ok: bool = False) -> Project:
    root = workspace_root(workspace) / check_name(name)
    if (root / "project.json").is_file():
        if not exist_ok:
            raise ConfigError(f"project {name!r} already exists in {root.parent}")
        return Project(root)
    for sub in ("goods", "data/train/good", "data/test/good"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    project = Project(root)
    project.save_meta({"name": name, "created": time.time(), "seed": 0, "holdout": HOLDOUT_SHARE, "report": []})
    project.save_synth(SynthConfig())
    return project


def open_project(workspace: str | os.PathLike | None, name: str) -> Project:
    root = workspace_root(workspace) / check_name(name)
    if not (root / "project.json").is_file():
        raise DataError(f"project {name!r} not found in {root.parent}")
    return Project(root)


def delete_project(project: Project) -> None:
    shutil.rmtree(project.root)


# ---------------------------------------------------------------------------------------------------------
# Split


def split_counts(n: int, share: float = HOLDOUT_SHARE, minimum: int = HOLDOUT_MIN) -> int:
    """How many of n goods are held out: round(share * n), at least `minimum`, leaving at least 1 to train on."""
    if n <= 1:
        return 0
    return int(min(n - 1, max(minimum, round(share * n))))


def split(project: Project, *, seed: int | None = None, share: float | None = None) -> dict[str, int]:
    """(Re)make data/train/good and data/test/good from goods/. Deterministic (seeded) and STABLE: an image keeps
    its side when images are added or removed, so a finished run's training images never become held-out ones
    (its evaluation would otherwise judge it on images it learnt). New images fill the held-out quota first
    (seeded order); a byte-identical copy of an image goes to that image's side. Only a new seed or share
    reshuffles everything (runs then leave their own training files out of their evaluation, see leakage.py)."""
    from recon_core.leakage import file_digest

    meta = project.meta()
    old_seed, old_share = int(meta.get("seed", 0)), float(meta.get("holdout", HOLDOUT_SHARE))
    seed = old_seed if seed is None else int(seed)
    share = old_share if share is None else float(share)
    if not 0.0 <= share < 1.0:
        raise ConfigError(f"held-out share must be in [0, 1), got {share}")
    goods = project.goods()
    n_test = split_counts(len(goods), share)
    side: dict[str, str] = {}
    if (seed, share) == (old_seed, old_share):  # keep the current split (the folders are its record)
        side.update((p.name, "train") for p in project.train_goods())
        side.update((p.name, "test") for p in project.test_goods())
    digest = {p.name: file_digest(p) for p in goods}
    side_of_digest = {digest[n]: v for n, v in side.items() if n in digest and digest[n] is not None}
    kept = {p.name: side[p.name] for p in goods if p.name in side}
    new = [p.name for p in goods if p.name not in side]
    order = np.random.default_rng(seed).permutation(len(new))
    quota = n_test - sum(v == "test" for v in kept.values())
    for i in order:
        name = new[i]
        twin = side_of_digest.get(digest[name]) if digest[name] is not None else None
        kept[name] = twin or ("test" if quota > 0 else "train")
        quota -= kept[name] == "test"
        if digest[name] is not None:
            side_of_digest.setdefault(digest[name], kept[name])
    if len(goods) > 1 and all(v == "test" for v in kept.values()):  # never leave nothing to train on
        kept[goods[0].name] = "train"
    for folder in (project.train_dir, project.test_good_dir):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for path in goods:
        shutil.copy2(path, (project.test_good_dir if kept[path.name] == "test" else project.train_dir) / path.name)
    meta.update(seed=seed, holdout=share)
    project.save_meta(meta)
    n_held = sum(v == "test" for v in kept.values())
    return {"train": len(goods) - n_held, "held_out": n_held}


# ---------------------------------------------------------------------------------------------------------
# Imports


def _validate(path: Path) -> tuple[int, int]:
    """(width, height) of a readable image; ImageError otherwise (the same checks the loaders apply)."""
    from recon_core.images import _read  # one implementation of "is this a usable image"

    img = _read(path)
    return img.size


def _record(project: Project, report: ImportReport) -> None:
    meta = project.meta()
    rows = [r for r in meta.get("report", [])]
    rows.extend(
        {"name": f.name, "kind": f.kind, "status": f.status, "reason": f.reason, "size": f.size} for f in report.files
    )
    meta["report"] = rows[-2000:]  # bounded: the report is shown, not an archive
    project.save_meta(meta)


def _add_goods(project: Project, sources: list[tuple[str, Path]], report: ImportReport, move: bool) -> None:
    if len(sources) > MAX_FILES:
        report.notes.append(f"{len(sources)} files given; only the first {MAX_FILES} were imported")
        sources = sources[:MAX_FILES]
    project.goods_dir.mkdir(parents=True, exist_ok=True)
    for shown, src in sources:
        try:
            size = _validate(src)
        except ImageError as exc:
            reason = str(exc).split(": ", 1)[-1]
            report.files.append(FileReport(shown, "good", "refused", reason))
            continue
        target = unique_path(project.goods_dir / clean_filename(src.name))
        (shutil.move if move else shutil.copy2)(src, target)
        report.files.append(FileReport(shown, "good", "kept", f"as {target.name}", tuple(int(v) for v in size)))


def import_uploads(project: Project, files: list[tuple[str, bytes]]) -> ImportReport:
    """Good images uploaded as (file name, bytes): single images and/or zip archives. Re-splits the project."""
    report = ImportReport()
    with staging_dir(project.root) as staging:
        staged = stage_uploads(files, staging, report)
        _add_goods(project, staged, report, move=True)
    _finish_import(project, report)
    return report


def import_folder(project: Project, folder: str | os.PathLike, *, max_defects: int = 20) -> ImportReport:
    """Copy the images of a folder on disk, or of an MVTec-layout category (train/good + test/good as goods,
    up to `max_defects` test defects with their masks, each keeping its defect type = its folder name)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    report = ImportReport()
    if is_mvtec_layout(folder):
        sources = list_images(folder / "train" / "good")
        if (folder / "test" / "good").is_dir():
            sources += list_images(folder / "test" / "good")
        _add_goods(project, [(str(p.relative_to(folder)), p) for p in sources], report, move=False)
        defects = []
        test_dirs = (folder / "test").iterdir() if (folder / "test").is_dir() else []  # train/good alone is fine
        for sub in sorted(p for p in test_dirs if p.is_dir() and p.name != "good"):
            for img in list_images(sub):
                defects.append((sub.name, img))
        step = max(1, len(defects) // max_defects) if defects else 1
        types: dict[str, str] = {}
        for kind, img in defects[::step][:max_defects]:
            mask = folder / "ground_truth" / kind / f"{img.stem}_mask.png"
            stored = _add_defect_file(
                project,
                img,
                mask if mask.is_file() else None,
                report,
                prefix=f"{kind}_",
                shown=f"{kind}/{img.name}",
                defect_type=kind,
            )
            if stored:
                types[stored] = kind
        _save_defect_types(project, types)
    else:
        sources = list_images(folder)
        if not sources:
            raise DataError(f"{folder}: no images ({', '.join(SUPPORTED_SUFFIXES)}) in this folder")
        _add_goods(project, [(p.name, p) for p in sources], report, move=False)
    _finish_import(project, report)
    return report


def _finish_import(project: Project, report: ImportReport) -> None:
    from recon_core.images import find_duplicates

    dups = find_duplicates(project.goods() + [img for img, _ in project.defects()])
    for group in dups:
        report.notes.append(
            "identical files: "
            + ", ".join(Path(p).name for p in group)
            + " (byte-identical: the same image under several names). Copies are kept on the same side of the "
            "split and runs leave their training images out of their evaluation; remove the extra copies."
        )
    _record(project, report)
    split(project)


def _add_defect_file(
    project: Project,
    image: Path,
    mask: Path | None,
    report: ImportReport,
    prefix: str = "",
    shown: str = "",
    defect_type: str = DEFAULT_DEFECT_TYPE,
) -> str | None:
    """Copy one defect image (+ its mask, binarised) into the project; returns the stored name, None if refused."""
    from recon_core.images import load_mask

    shown = shown or image.name
    try:
        width, height = _validate(image)
    except ImageError as exc:
        report.files.append(FileReport(shown, "defect", "refused", str(exc).split(": ", 1)[-1]))
        return None
    mask_arr = None
    if mask is not None:
        try:
            mw, mh = _validate(mask)
            if (mw, mh) != (width, height):
                raise ImageError(f"{mask.name}: mask is {mw}x{mh}, image is {width}x{height}")
            mask_arr = load_mask(mask)
        except ImageError as exc:
            report.files.append(FileReport(shown, "defect", "refused", str(exc).split(": ", 1)[-1]))
            return None
    project.defect_dir.mkdir(parents=True, exist_ok=True)
    project.mask_dir.mkdir(parents=True, exist_ok=True)
    target = unique_path(project.defect_dir / clean_filename(prefix + image.name))
    shutil.copy2(image, target)
    if mask_arr is not None:
        from PIL import Image

        Image.fromarray((mask_arr > 0.5).astype(np.uint8) * 255).save(project.mask_dir / f"{target.stem}_mask.png")
    note = f"type {defect_type}, " + ("with mask" if mask_arr is not None else "no mask")
    report.files.append(FileReport(shown, "defect", "kept", f"as {target.name} ({note})", (width, height)))
    return target.name


def _save_defect_types(project: Project, types: dict[str, str]) -> None:
    if types:
        meta = project.meta()
        meta["defect_types"] = {**meta.get("defect_types", {}), **types}
        project.save_meta(meta)


def clean_defect_type(text: str | None) -> str:
    """A defect type label (free text from the user): trimmed, at most 40 characters; empty -> "defect"."""
    text = re.sub(r"\s+", " ", (text or "").strip())[:40]
    return text or DEFAULT_DEFECT_TYPE


def add_defects(
    project: Project,
    images: list[tuple[str, bytes]],
    masks: list[tuple[str, bytes]] | None = None,
    defect_type: str | None = None,
) -> ImportReport:
    """Real defect images uploaded as (name, bytes), several at once, with optional binary masks matched to the
    images by name (`000.png` <- `000_mask.png`, `mask_000.png`, `000_gt.png`; one image + one mask always pair).
    Every image gets `defect_type` (default "defect"); a mask that matches no image is reported, not dropped
    silently."""
    report = ImportReport()
    kind = clean_defect_type(defect_type)
    with staging_dir(project.root) as staging:
        staged = stage_uploads(images, staging / "images", report, kind="defect")
        staged_masks = stage_uploads(masks, staging / "masks", report, kind="mask") if masks else []
        pairs, unmatched = match_masks([s for s, _ in staged], [m for m, _ in staged_masks])
        mask_paths = dict(staged_masks)
        for m in unmatched:
            report.files.append(
                FileReport(m, "mask", "refused", "no defect image of the same name (e.g. 000_mask.png for 000.png)")
            )
        types: dict[str, str] = {}
        for shown, path in staged:
            mask = mask_paths.get(pairs.get(shown, ""))
            stored = _add_defect_file(project, path, mask, report, shown=shown, defect_type=kind)
            if stored:
                types[stored] = kind
        _save_defect_types(project, types)
    _record(project, report)
    return report


def add_defect(project: Project, image: tuple[str, bytes], mask: tuple[str, bytes] | None = None) -> ImportReport:
    """One real defect image (and optionally its binary mask, same size) uploaded as (name, bytes)."""
    return add_defects(project, [image], [mask] if mask else None)


def remove_image(project: Project, name: str) -> None:
    """Remove one good image (by file name) and re-split."""
    target = project.goods_dir / clean_filename(name)
    if not target.is_file():
        raise DataError(f"{name}: not an image of project {project.name}")
    target.unlink()
    split(project)


def remove_defect(project: Project, name: str) -> None:
    """Remove one real defect image (by file name) and its mask."""
    target = project.defect_dir / clean_filename(name)
    if not target.is_file():
        raise DataError(f"{name}: not a defect image of project {project.name}")
    target.unlink()
    (project.mask_dir / f"{target.stem}_mask.png").unlink(missing_ok=True)
    meta = project.meta()
    if target.name in meta.get("defect_types", {}):
        del meta["defect_types"][target.name]
        project.save_meta(meta)


def save_textures(project: Project, files: list[tuple[str, bytes]]) -> ImportReport:
    """Uploaded texture images (or a zip of them) into <project>/textures for texture_source 'folder'."""
    report = ImportReport()
    with staging_dir(project.root) as staging:
        for shown, src in stage_uploads(files, staging, report, kind="texture"):
            try:
                size = _validate(src)
            except ImageError as exc:
                report.files.append(FileReport(shown, "texture", "refused", str(exc).split(": ", 1)[-1]))
                continue
            project.textures_dir.mkdir(parents=True, exist_ok=True)
            shutil.move(src, unique_path(project.textures_dir / clean_filename(src.name)))
            report.files.append(FileReport(shown, "texture", "kept", "", tuple(int(v) for v in size)))
    return report


# ---------------------------------------------------------------------------------------------------------
# Runs


def run_summary(run_dir: Path) -> dict[str, Any]:
    """A row for the runs table from the files a run leaves (spec.json, metrics.json)."""
    row: dict[str, Any] = {"run": run_dir.name, "finished": (run_dir / "model.pt").is_file()}
    try:
        spec = json.loads((run_dir / "spec.json").read_text())
        row.update(model=spec.get("model"), preset=spec.get("preset"), name=spec.get("name"))
    except (OSError, ValueError):
        pass
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        for key in ("image_auroc", "pixel_auroc", "aupro", "iterations", "train_seconds"):
            row[key] = metrics.get(key)
    except (OSError, ValueError):
        pass
    return row


INSPECT_KEEP = 48  # images whose heat maps are kept with a run's last inspection (all rows are kept)


def save_inspection(
    run_dir: Path, rows: list[dict[str, Any]], maps: dict[str, np.ndarray], images: dict[str, np.ndarray]
) -> None:
    """Keep a run's last inspection (`inference.predict_paths` output) so the page can redraw it after a rerun or
    a restart: rows in inspect_last.json, the first INSPECT_KEEP images (uint8) and maps in an npz."""
    keep = [r["path"] for r in rows if r["path"] in maps][:INSPECT_KEEP]
    stem = Path(run_dir) / "inspect_last"
    if keep:
        np.savez_compressed(
            stem.with_suffix(".npz"),
            paths=np.array(keep),
            images=np.stack([to_uint8(images[p]) for p in keep]),
            maps=np.stack([maps[p].astype(np.float32) for p in keep]),
        )
    else:
        stem.with_suffix(".npz").unlink(missing_ok=True)
    stem.with_suffix(".json").write_text(json.dumps({"time": time.time(), "rows": rows}))


def load_inspection(
    run_dir: Path,
) -> tuple[float, list[dict[str, Any]], dict[str, np.ndarray], dict[str, np.ndarray]] | None:
    """-> (time, rows, maps, images) of the last `save_inspection`, or None when there is none (or it is damaged)."""
    stem = Path(run_dir) / "inspect_last"
    try:
        saved = json.loads(stem.with_suffix(".json").read_text())
        maps: dict[str, np.ndarray] = {}
        images: dict[str, np.ndarray] = {}
        if stem.with_suffix(".npz").is_file():
            with np.load(stem.with_suffix(".npz")) as npz:
                for p, img, amap in zip(npz["paths"].tolist(), npz["images"], npz["maps"], strict=True):
                    images[p], maps[p] = img, amap
        return float(saved["time"]), list(saved["rows"]), maps, images
    except (OSError, ValueError, KeyError, TypeError):
        return None


def synth_to_dict(config: SynthConfig) -> dict[str, Any]:
    return to_dict(config)
