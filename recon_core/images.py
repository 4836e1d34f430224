"""Load and validate images: single files, plain folders and MVTec-layout data sets.

Conventions (see notes/foundation.md):
- images are float32 (H, W, 3) RGB in [0, 1]; masks float32 (H, W) in {0, 1};
- a bad file never aborts a folder load: it becomes an ImageProblem naming the file and the reason;
- the pixel count is checked from the header BEFORE decoding, so a decompression bomb costs nothing;
- transparency (RGBA, LA, palette with transparency) is composited onto BLACK;
- 16-bit / 32-bit data is scaled by the maximum of its storage type (I;16 -> /65535);
- EXIF orientation is applied; multi-frame files (animated GIF, multi-page TIFF) use their FIRST frame;
- images are resized (stretched) to size x size: INTER_AREA when shrinking, Lanczos when enlarging;
  masks use nearest neighbour.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from recon_core import preprocess
from recon_core.errors import ConfigError, DataError, ImageError

SUPPORTED_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
MAX_IMAGE_PIXELS: int = 40_000_000  # 40 MP: refuse larger images before decoding them
MIN_IMAGE_SIDE: int = 16  # refuse images whose short side is smaller (icons, 1x1 tracking pixels)
MASK_SUFFIX = "_mask"

# PIL must never hand back a half-decoded file as if it were whole.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# PIL's own bomb check (warning above, error above 2x); we check first and turn its warning into an error.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


@dataclass
class ImageProblem:
    path: str
    reason: str


@dataclass
class ImageSet:
    images: np.ndarray  # (N, H, W, 3) float32 in [0, 1]
    paths: list[str]
    problems: list[ImageProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class TestSet:
    __test__ = False  # not a pytest class

    images: np.ndarray  # (N, H, W, 3)
    labels: np.ndarray  # (N,) int, 0 = good, 1 = defect
    masks: np.ndarray  # (N, H, W) float32 {0, 1}; zeros for good images and for defects without a mask
    has_masks: bool
    paths: list[str]
    defect_types: list[str]  # "good" or the defect folder name (in a project: the type it was given)
    problems: list[ImageProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Dataset:
    root: str
    train: ImageSet
    test: TestSet | None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in [0, 1] -> uint8 (rounded, clipped); uint8 passes through unchanged."""
    image = np.asarray(image)
    return image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def display_path(path: str | os.PathLike) -> str:
    """A printable form of a path, even when its name is not valid UTF-8 (undecodable bytes become U+FFFD)."""
    raw = os.fsencode(os.fspath(path))
    return raw.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------------
# Single files


def _open_checked(path: Path, handle, min_side: int) -> Image.Image:
    """Open lazily, check the header's size, then decode fully (first frame). Raises ImageError."""
    shown = display_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(handle)
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"{shown}: image is {width}x{height} ({width * height / 1e6:.0f} MP), larger than the "
                    f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit; downscale it first"
                )
            if min(width, height) < min_side:
                raise ImageError(
                    f"{shown}: image is only {width}x{height} pixels; at least {min_side} px on the short side "
                    "is needed"
                )
            # animated GIF / multi-page TIFF: the first frame is used. Image.open is already there; asking for
            # n_frames would walk every page first (seconds for a 30000-page TIFF that fits the upload limit).
            img.load()  # force decoding now so truncation shows up here, not later
            img = ImageOps.exif_transpose(img)
            return img
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        kind = _sniff(handle)
        if kind:  # the signature is right, the rest is not: say so instead of "not an image"
            raise ImageError(
                f"{shown}: looks like a {kind} file but cannot be read (damaged, or a {kind} variant this loader "
                "does not support)"
            ) from exc
        raise ImageError(f"{shown}: not an image file (or an unsupported format)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{shown}: image is larger than the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            raise ImageError(f"{shown}: file is truncated or damaged ({text})") from exc
        raise ImageError(f"{shown}: could not decode ({text})") from exc
    except Exception as exc:  # PIL raises TypeError, IndexError, struct.error ... on malformed files: one bad file
        raise ImageError(f"{shown}: could not decode ({type(exc).__name__}: {exc})") from exc  # never aborts a folder


_SIGNATURES = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WEBP"),
)


def _sniff(handle) -> str | None:
    """The format a file's first bytes announce, or None."""
    try:
        handle.seek(0)
        head = handle.read(8)
    except (OSError, ValueError):
        return None
    return next((kind for magic, kind in _SIGNATURES if head.startswith(magic)), None)


def _read(path: str | os.PathLike, min_side: int = MIN_IMAGE_SIDE) -> Image.Image:
    path = Path(path)
    shown = display_path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ImageError(f"{shown}: file not found") from exc
    except OSError as exc:
        raise ImageError(f"{shown}: cannot read ({exc.strerror or exc})") from exc
    if path.is_dir():
        raise ImageError(f"{shown}: is a folder, not an image")
    if size == 0:
        raise ImageError(f"{shown}: empty file (0 bytes)")
    try:
        with open(path, "rb") as handle:
            img = _open_checked(path, handle, min_side)
            # detach from the file handle: after load() the pixel data lives in memory
            return img
    except PermissionError as exc:
        raise ImageError(f"{shown}: permission denied") from exc


# the model-input preprocessing lives in preprocess.py (also shipped with every export): one implementation
_to_float = preprocess.to_float
_resize = preprocess.resize


def load_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """One image as float32 (H, W, 3) RGB in [0, 1], resized to size x size if given. Raises ImageError."""
    if size is not None and size < 1:
        raise ConfigError(f"image size must be positive, got {size}")
    return preprocess.prepare(_to_float(_read(path)), size)


def load_mask(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """A ground-truth mask as float32 (H, W) in {0, 1}. Non-binary masks are thresholded at half their own
    maximum (so 0/1, 0/255 and anti-aliased masks all work); colour masks count any channel."""
    arr = _to_float(_read(path, min_side=1))  # masks are only resized, so any size is usable
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    peak = float(arr.max(initial=0.0))
    binary = (arr >= 0.5 * peak).astype(np.float32) if peak > 0 else np.zeros_like(arr, dtype=np.float32)
    return np.ascontiguousarray(_resize(binary, size, nearest=True), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
# Folders


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly in `folder` (no recursion), sorted by name; hidden files (e.g. macOS ._x) skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{display_path(folder)}: folder not found")
    found = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".") and p.is_file()
    ]
    return sorted(found, key=lambda p: os.fsencode(p.name))


def _shot_order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n)


def sample_shots(paths: list[Path] | list[str], shots: int | None, seed: int) -> list[Path]:
    """A seeded sample of `shots` paths (None or >= len = all), returned sorted by name."""
    paths = [Path(p) for p in paths]
    if shots is None or shots >= len(paths):
        return sorted(paths, key=lambda p: os.fsencode(p.name))
    if shots < 1:
        raise ConfigError(f"shots must be at least 1 (or empty for all images), got {shots}")
    order = _shot_order(len(paths), seed)[:shots]
    return sorted((paths[i] for i in order), key=lambda p: os.fsencode(p.name))


def load_images(paths: list[Path] | list[str], size: int | None) -> ImageSet:
    """Load many files; bad ones become problems, the rest load. With size=None every image must share the first
    usable image's size (others become problems)."""
    images: list[np.ndarray] = []
    good_paths: list[str] = []
    problems: list[ImageProblem] = []
    for p in paths:
        try:
            arr = load_image(p, size)
        except ImageError as exc:
            problems.append(ImageProblem(str(p), _reason(exc, p)))
            continue
        if images and arr.shape != images[0].shape:
            problems.append(
                ImageProblem(str(p), f"size {arr.shape[1]}x{arr.shape[0]} differs from the first image's; give a size")
            )
            continue
        images.append(arr)
        good_paths.append(str(p))
    stacked = np.stack(images) if images else np.zeros((0, size or 0, size or 0, 3), np.float32)
    return ImageSet(stacked, good_paths, problems)


def _reason(exc: ImageError, path: str | os.PathLike) -> str:
    """The reason part of an ImageError message (without the leading '<path>: ')."""
    text = str(exc)
    prefix = display_path(path) + ": "
    return text[len(prefix) :] if text.startswith(prefix) else text


def load_folder(
    folder: str | os.PathLike, size: int | None, *, shots: int | None = None, seed: int = 0, min_images: int = 2
) -> ImageSet:
    """Load a folder's images (optionally a seeded few-shot sample). Bad files in the sample are replaced by
    the next files of the same seeded order, so `shots` usable images are returned when the folder has them."""
    paths = list_images(folder)
    if shots is not None and shots < 1:
        raise ConfigError(f"shots must be at least 1 (or empty for all images), got {shots}")
    if shots is None or shots >= len(paths):
        result = load_images(paths, size)
    else:
        order = [paths[i] for i in _shot_order(len(paths), seed)]
        chosen: list[Path] = []
        problems: list[ImageProblem] = []
        start = 0
        while len(chosen) < shots and start < len(order):
            batch = order[start : start + shots - len(chosen)]
            start += len(batch)
            part = load_images(batch, size)
            problems.extend(part.problems)
            chosen.extend(Path(p) for p in part.paths)
        chosen = sorted(chosen, key=lambda p: os.fsencode(p.name))
        result = load_images(chosen, size)
        result.problems = problems + result.problems
    if len(result.paths) < min_images:
        detail = (
            f" ({len(result.problems)} unusable file(s), e.g. {result.problems[0].reason})" if result.problems else ""
        )
        raise DataError(
            f"{display_path(folder)}: {len(result.paths)} usable image(s), at least {min_images} needed{detail}"
        )
    return result


def find_duplicates(paths: list[Path] | list[str]) -> list[list[str]]:
    """Groups of byte-identical files (kept by the loaders, reported by `data check` and imports)."""
    from recon_core.leakage import duplicate_groups  # one rule for "the same image" (notes/evaluation.md)

    return duplicate_groups(paths)


# ---------------------------------------------------------------------------------------------------------
# MVTec layout


def is_mvtec_layout(path: str | os.PathLike) -> bool:
    return (Path(path) / "train" / "good").is_dir()


def _find_mask(gt_dir: Path, image_path: Path) -> Path | None:
    stem = image_path.stem
    for name in (stem + MASK_SUFFIX, stem):
        for suffix in (".png", *[s for s in SUPPORTED_SUFFIXES if s != ".png"]):
            for candidate in (gt_dir / (name + suffix), gt_dir / (name + suffix.upper())):
                if candidate.is_file():
                    return candidate
    return None


def _orphan_masks(root: Path) -> list[ImageProblem]:
    """Masks in ground_truth/<type>/ with no test/<type>/ image of that name: reported, never silently dropped."""
    gt_root = root / "ground_truth"
    if not gt_root.is_dir():
        return []
    problems = []
    for gt_dir in sorted((d for d in gt_root.iterdir() if d.is_dir()), key=lambda d: d.name):
        image_dir = root / "test" / gt_dir.name
        stems = {p.stem for p in list_images(image_dir)} if image_dir.is_dir() else set()
        for mask in list_images(gt_dir):
            stem = mask.stem[: -len(MASK_SUFFIX)] if mask.stem.endswith(MASK_SUFFIX) else mask.stem
            if stem not in stems:
                reason = f"mask without an image (no test/{gt_dir.name}/{display_path(stem)}.*); ignored"
                problems.append(ImageProblem(str(mask), reason))
    return problems


def load_test_set(root: str | os.PathLike, size: int | None) -> TestSet | None:
    """test/<type>/ images with labels (good = 0), masks from ground_truth/<type>/<name>_mask.png."""
    root = Path(root)
    test_dir = root / "test"
    if not test_dir.is_dir():
        return None
    gt_root = root / "ground_truth"
    types = sorted((d for d in test_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)
    types = sorted(types, key=lambda d: d.name != "good")  # good first, then defects by name
    any_masks = gt_root.is_dir() and any(
        p.suffix.lower() in SUPPORTED_SUFFIXES for d in gt_root.iterdir() if d.is_dir() for p in d.iterdir()
    )
    images: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    kinds: list[str] = []
    problems: list[ImageProblem] = []
    for type_dir in types:
        is_good = type_dir.name == "good"
        for p in list_images(type_dir):
            try:
                img = load_image(p, size)
            except ImageError as exc:
                problems.append(ImageProblem(str(p), _reason(exc, p)))
                continue
            if images and img.shape != images[0].shape:
                problems.append(ImageProblem(str(p), "size differs from the first test image's; give a size"))
                continue
            mask = np.zeros(img.shape[:2], np.float32)
            if not is_good and any_masks:
                mask_path = _find_mask(gt_root / type_dir.name, p)
                if mask_path is None:
                    problems.append(
                        ImageProblem(
                            str(p), f"no ground-truth mask in ground_truth/{type_dir.name}/; used without mask"
                        )
                    )
                else:
                    try:
                        mask = load_mask(mask_path, img.shape[:2])  # wrong-size masks are resized (nearest)
                    except ImageError as exc:
                        problems.append(
                            ImageProblem(str(mask_path), _reason(exc, mask_path) + "; image used without mask")
                        )
            images.append(img)
            masks.append(mask)
            labels.append(0 if is_good else 1)
            paths.append(str(p))
            kinds.append("good" if is_good else type_dir.name)
    problems.extend(_orphan_masks(root))
    if not images:
        return None
    return TestSet(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        masks=np.stack(masks).astype(np.float32),
        has_masks=bool(any_masks),
        paths=paths,
        defect_types=kinds,
        problems=problems,
    )


def load_dataset(path: str | os.PathLike, size: int | None, *, shots: int | None = None, seed: int = 0) -> Dataset:
    """MVTec layout (train/good [+ test/, ground_truth/]) or a plain folder of good images (test = None)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{display_path(root)}: folder not found")
    if is_mvtec_layout(root):
        train = load_folder(root / "train" / "good", size, shots=shots, seed=seed)
        test_size = size if size is not None else train.images.shape[1]
        test = load_test_set(root, test_size)
        if test is not None:
            from recon_core.workspace import project_defect_types  # lazy: workspace imports this module

            named = project_defect_types(root)  # a project keeps each defect's type apart from its one folder
            test.defect_types = [
                named.get(Path(p).name, kind) if kind != "good" else kind
                for p, kind in zip(test.paths, test.defect_types, strict=True)
            ]
        return Dataset(str(root), train, test)
    if not list_images(root):
        raise DataError(
            f"{display_path(root)}: no images found; expected images directly in the folder or an MVTec layout "
            "(train/good, test/<type>, ground_truth/<type>)"
        )
    return Dataset(str(root), load_folder(root, size, shots=shots, seed=seed), None)
