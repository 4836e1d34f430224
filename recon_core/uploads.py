"""Untrusted uploads, one implementation for every page and import: file-name cleaning, size and count caps,
defensive zip unpacking, and staging to a temporary folder with de-duplicated names.

    with staging_dir(project.root) as tmp:
        staged = stage_uploads([(name, data), ...], tmp, report)   # [(shown name, staged path)], refusals in report

`shown` is the name the user gave (zip members: "archive.zip/member.png"), made unique within one staging
("a.png", "a.png (2)"), so two different files with the same name never overwrite or stand for each other.
No Streamlit here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from recon_core.errors import DataError
from recon_core.images import SUPPORTED_SUFFIXES

MAX_FILE_BYTES = 25 * 1024 * 1024  # one uploaded image
MAX_FILES = 500  # images in one import
MAX_ZIP_MEMBERS = 2000  # entries in one archive (directories included)
MAX_ZIP_TOTAL_BYTES = 512 * 1024 * 1024  # declared AND actually written uncompressed bytes
MAX_NAME_CHARS = 120  # stored file names are cut to this (ASCII after cleaning; room for _unique's suffix)
MAX_ZIP_RATIO = 200.0  # uncompressed / compressed per member: higher is a bomb


@dataclass
class FileReport:
    """What happened to one imported file."""

    name: str
    kind: str  # "good" | "defect" | "mask" | "texture"
    status: str  # "kept" | "refused" | "ignored"
    reason: str = ""
    size: tuple[int, int] | None = None  # (width, height) of kept images


@dataclass
class ImportReport:
    files: list[FileReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def kept(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "kept"]

    @property
    def refused(self) -> list[FileReport]:
        return [f for f in self.files if f.status != "kept"]


# ---------------------------------------------------------------------------------------------------------
# Names


def clean_filename(name: str) -> str:
    """A safe ASCII file name that keeps the suffix: folders dropped, accents folded (`ü.png` -> `u.png`), other
    characters replaced; a stem with no usable character becomes `image_<hash of the name>` (`日本.png` ->
    `image_1c3f9a.png`), so the suffix survives and different names stay different."""
    base = PurePosixPath(name.replace("\\", "/")).name
    stem, suffix = os.path.splitext(base)
    if not stem and suffix:  # ".png" alone: a hidden file's name, not a suffix
        stem, suffix = suffix, ""

    def ascii_part(text: str) -> str:
        folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
        return re.sub(r"[^A-Za-z0-9._-]+", "_", folded)

    suffix = "." + re.sub(r"[^A-Za-z0-9]", "", ascii_part(suffix)) if suffix else ""
    suffix = "" if suffix == "." or len(suffix) > 16 else suffix
    stem = ascii_part(stem).strip("._")
    if not re.search(r"[A-Za-z0-9]", stem):
        stem = "image_" + hashlib.sha1(base.encode("utf-8", "surrogatepass")).hexdigest()[:6]
    return stem[: MAX_NAME_CHARS - len(suffix)] + suffix  # file systems refuse names over 255 bytes


def unique_path(path: Path) -> Path:
    """`path`, or `stem_1.suffix`, `stem_2.suffix`, ... : the first that does not exist yet."""
    if not path.exists():
        return path
    for i in range(1, 100_000):
        candidate = path.with_name(f"{path.stem}_{i}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise DataError(f"{path}: too many files with this name")


def unique_label(label: str, used: set[str]) -> str:
    """`label`, or `label (2)`, `label (3)`, ...: a display name not in `used` (which it is added to)."""
    out, k = label, 1
    while out in used:
        k += 1
        out = f"{label} ({k})"
    used.add(out)
    return out


# ---------------------------------------------------------------------------------------------------------
# Staging


@contextlib.contextmanager
def staging_dir(parent: str | os.PathLike | None = None) -> Iterator[Path]:
    """A fresh temporary folder (inside `parent` when given, so moves stay on one file system), removed after."""
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=".staging-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stage_uploads(
    files: list[tuple[str, bytes]], staging: Path, report: ImportReport, kind: str = "image"
) -> list[tuple[str, Path]]:
    """Write uploaded (name, bytes) files to `staging` (zips unpacked with safe_extract_zip), with the size and count
    caps; refusals go to `report`. Returns (shown name, staged path) pairs; shown names are unique, staged file
    names are clean (suffix kept) and unique."""
    if not files:
        raise DataError("no files given")
    if len(files) > MAX_FILES:
        raise DataError(f"{len(files)} files uploaded at once; at most {MAX_FILES}")
    staging.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    used: set[str] = set()
    for i, (name, data) in enumerate(files):
        shown = PurePosixPath(name.replace("\\", "/")).name or "upload"
        if name.lower().endswith(".zip"):
            try:
                members, notes = unpack_zip(data, staging / f"zip_{i}")
            except DataError as exc:
                report.files.append(FileReport(shown, "archive", "refused", str(exc)))
                continue
            report.notes.extend(f"{shown}: {n}" for n in notes)
            staged.extend((unique_label(f"{shown}/{member}", used), p) for member, p in members)
            continue
        if len(data) > MAX_FILE_BYTES:
            reason = f"{len(data) / 2**20:.1f} MB is above the limit ({MAX_FILE_BYTES / 2**20:g} MB per file)"
            report.files.append(FileReport(shown, kind, "refused", reason))
            continue
        target = unique_path(staging / clean_filename(shown))
        if target.suffix.lower() not in SUPPORTED_SUFFIXES:
            reason = f"not a supported image type ({', '.join(SUPPORTED_SUFFIXES)})"
            report.files.append(FileReport(shown, kind, "refused", reason))
            continue
        target.write_bytes(data)
        staged.append((unique_label(shown, used), target))
    if len(staged) > MAX_FILES:
        report.notes.append(f"{len(staged)} images given; only the first {MAX_FILES} were used")
        staged = staged[:MAX_FILES]
    return staged


# ---------------------------------------------------------------------------------------------------------
# Masks matched to images by name

MASK_MARKERS = ("_mask", "-mask", ".mask", "_gt", "-gt", "_label")


def mask_key(name: str) -> str:
    """The image stem a mask belongs to: `000_mask.png`, `mask_000.png`, `000-gt.png` -> `000` (cleaned, lower)."""
    stem = Path(clean_filename(name)).stem.lower()
    for marker in MASK_MARKERS:
        if stem.endswith(marker) and len(stem) > len(marker):
            return stem[: -len(marker)]
    if stem.startswith("mask_") and len(stem) > 5:
        return stem[5:]
    return stem


def match_masks(images: list[str], masks: list[str]) -> tuple[dict[str, str], list[str]]:
    """{image name: mask name} by name (mask_key of the mask == the image's cleaned stem), and the masks that match no
    image. A single image with a single mask is a pair whatever their names."""
    if len(images) == 1 and len(masks) == 1:
        return {images[0]: masks[0]}, []
    by_stem = {Path(clean_filename(i)).stem.lower(): i for i in images}
    pairs: dict[str, str] = {}
    unmatched: list[str] = []
    for m in masks:
        image = by_stem.get(mask_key(m))
        if image is None or image in pairs:
            unmatched.append(m)
        else:
            pairs[image] = m
    return pairs, unmatched


# ---------------------------------------------------------------------------------------------------------
# Zip archives


def _member_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _safe_member_name(name: str) -> str | None:
    """The member's relative path, or None when it is absolute or climbs out (../)."""
    if not name or "\x00" in name:
        return None
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return None
    parts = PurePosixPath(norm).parts
    if any(part == ".." for part in parts):
        return None
    return "/".join(p for p in parts if p not in ("", "."))


def safe_extract_zip(
    data: bytes | str | os.PathLike, dest: str | os.PathLike, **limits: int | float
) -> tuple[list[Path], list[str]]:
    """unpack_zip, returning only the extracted paths (and the notes)."""
    members, notes = unpack_zip(data, dest, **limits)  # type: ignore[arg-type]
    return [p for _, p in members], notes


def unpack_zip(
    data: bytes | str | os.PathLike,
    dest: str | os.PathLike,
    *,
    max_members: int = MAX_ZIP_MEMBERS,
    max_total_bytes: int = MAX_ZIP_TOTAL_BYTES,
    max_ratio: float = MAX_ZIP_RATIO,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> tuple[list[tuple[str, Path]], list[str]]:
    """Unpack the image files of a zip archive into `dest` (flat: folder names are dropped, clashes renamed).

    Refuses the whole archive (DataError) when it has too many entries, an entry with an absolute path or '..',
    a symlink, a declared or actual uncompressed total above the limit, or an entry compressed more than
    `max_ratio` times (zip bomb). Nested archives and non-image files are skipped with a note.
    Returns ((member path in the archive, extracted path) pairs, notes)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"not a valid zip archive ({exc})") from exc
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    with archive:
        infos = archive.infolist()
        if len(infos) > max_members:
            raise DataError(f"zip has {len(infos)} entries; at most {max_members} are accepted")
        declared = 0
        for info in infos:
            if _safe_member_name(info.filename) is None:
                raise DataError(f"zip entry {info.filename!r}: absolute path or '..' — archive refused")
            if _member_is_symlink(info):
                raise DataError(f"zip entry {info.filename!r} is a symbolic link — archive refused")
            declared += info.file_size
            if info.file_size > 1024 and info.file_size > max_ratio * max(info.compress_size, 1):
                ratio = info.file_size / max(info.compress_size, 1)
                raise DataError(f"zip entry {info.filename!r} is compressed {ratio:.0f}x: zip bomb?")
        if declared > max_total_bytes:
            raise DataError(f"zip unpacks to {declared / 1e6:.0f} MB; at most {max_total_bytes / 1e6:.0f} MB accepted")
        out: list[tuple[str, Path]] = []
        try:
            _extract_members(archive, infos, dest, out, notes, max_total_bytes, max_file_bytes)
        except DataError:
            for _, path in out:  # the archive is refused as a whole: nothing half-unpacked stays behind
                path.unlink(missing_ok=True)
            raise
    return out, notes


def _extract_members(
    archive: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    dest: Path,
    out: list[tuple[str, Path]],
    notes: list[str],
    max_total_bytes: int,
    max_file_bytes: int,
) -> None:
    """Stream the image members to `dest`, appending each written path to `out` (even a partial one, so the
    caller can clean up). A damaged, encrypted or lying member raises DataError naming it."""
    written_total = 0
    for info in infos:
        if info.is_dir():
            continue
        rel = _safe_member_name(info.filename) or ""
        base = PurePosixPath(rel).name
        if base.startswith(".") or "__MACOSX" in rel:
            continue
        suffix = PurePosixPath(base).suffix.lower()
        if suffix in (".zip", ".tar", ".gz", ".tgz", ".7z", ".rar"):
            notes.append(f"{rel}: nested archive ignored (unpack it first)")
            continue
        if suffix not in SUPPORTED_SUFFIXES:
            notes.append(f"{rel}: not an image file ({suffix or 'no suffix'}), ignored")
            continue
        if info.file_size > max_file_bytes:
            notes.append(f"{rel}: {info.file_size / 1e6:.1f} MB is above the {max_file_bytes / 1e6:.0f} MB limit")
            continue
        target = unique_path(dest / clean_filename(base))
        out.append((rel, target))
        written = 0
        try:
            # stream with a hard cap: the header's sizes may lie
            with archive.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 16):
                    written += len(chunk)
                    written_total += len(chunk)
                    if written > max_file_bytes or written_total > max_total_bytes:
                        raise DataError(f"zip entry {rel!r} unpacks to more than its declared size — archive refused")
                    dst.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise DataError(f"zip entry {rel!r} is damaged ({exc}) — archive refused") from exc
        except RuntimeError as exc:  # zipfile: encrypted member, password required
            raise DataError(f"zip entry {rel!r} cannot be read ({exc}) — archive refused") from exc
