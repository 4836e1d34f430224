"""recon_core.uploads, the one staging path for every upload (Project page, defects, textures, Inspect), and the
issue-13 bugs it fixes: same-name uploads overwrote each other (item 7), names without ASCII letters lost their
suffix (item 8), defects one at a time with their type lost (item 9)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_workspace import make_zip, png

from recon_core.errors import DataError
from recon_core.uploads import (
    ImportReport,
    clean_filename,
    mask_key,
    match_masks,
    stage_uploads,
    staging_dir,
)
from recon_core.workspace import add_defect, add_defects, create_project, import_folder, import_uploads

NON_ASCII = ["ü.png", "日本.png", "Ω.png", "café crème.jpg"]


def mask_png(size: int = 32, value: int = 255) -> bytes:
    import io

    arr = np.zeros((size, size), np.uint8)
    arr[: size // 2] = value
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ü.png", "u.png"),
        ("café crème.jpg", "cafe_creme.jpg"),
        ("../../x.jpg", "x.jpg"),
        ("a..png", "a.png"),
    ],
)
def test_clean_filename_keeps_the_suffix(name: str, expected: str) -> None:
    assert clean_filename(name) == expected


def test_names_without_ascii_letters_keep_their_suffix_and_stay_distinct() -> None:
    a, b = clean_filename("日本.png"), clean_filename("中国.png")
    assert a.endswith(".png") and b.endswith(".png") and a != b and a.startswith("image_")
    assert clean_filename("日本.png") == a  # stable


def test_upload_of_non_ascii_names_is_kept_and_used(tmp_path: Path) -> None:
    """Item 8: `ü.png` was refused as "not a supported image type"."""
    p = create_project(tmp_path, "p")
    report = import_uploads(p, [(n, png(i)) for i, n in enumerate(NON_ASCII)])
    assert [f.name for f in report.kept] == NON_ASCII, report.refused
    assert len(p.goods()) == len(NON_ASCII) and all(g.suffix in (".png", ".jpg") for g in p.goods())


def test_zip_of_non_ascii_names_is_used(tmp_path: Path) -> None:
    """Item 8: a zip member `ü.png` was reported kept but stored as `png` (no suffix) and never used."""
    p = create_project(tmp_path, "p")
    report = import_uploads(p, [("set.zip", make_zip([(n, png(i)) for i, n in enumerate(NON_ASCII)]))])
    assert len(report.kept) == len(NON_ASCII)
    assert sorted(f.name for f in report.kept) == sorted(f"set.zip/{n}" for n in NON_ASCII)
    assert len(p.goods()) == len(NON_ASCII)
    assert len(p.train_goods()) + len(p.test_goods()) == len(NON_ASCII)  # the split uses them


def test_folder_of_non_ascii_names_is_used(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, n in enumerate(NON_ASCII):
        (src / n).write_bytes(png(i))
    p = create_project(tmp_path, "p")
    report = import_folder(p, src)
    assert len(report.kept) == len(NON_ASCII)
    assert sorted(g.suffix for g in p.goods()) == sorted(Path(n).suffix for n in NON_ASCII)


def test_same_name_uploads_stay_two_files(tmp_path: Path) -> None:
    """Item 7: two different files with one name are two staged files with two display names (the Inspect page
    wrote both to one path: the second overwrote the first and both rows showed its score)."""
    report = ImportReport()
    with staging_dir(tmp_path) as tmp:
        staged = stage_uploads([("part.png", png(1)), ("part.png", png(2)), ("sub/part.png", png(3))], tmp, report)
        assert [s for s, _ in staged] == ["part.png", "part.png (2)", "part.png (3)"]
        paths = [p for _, p in staged]
        assert len(set(paths)) == 3
        assert [p.read_bytes() for p in paths] == [png(1), png(2), png(3)]
    assert not tmp.exists()  # the staging folder is removed afterwards


def test_staging_applies_the_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recon_core import uploads

    monkeypatch.setattr(uploads, "MAX_FILE_BYTES", 500)
    report = ImportReport()
    staged = stage_uploads([("big.png", png(1, 64)), ("notes.txt", b"hi")], tmp_path / "s", report)
    assert staged == []
    assert "above the limit" in report.files[0].reason and "not a supported image type" in report.files[1].reason
    monkeypatch.setattr(uploads, "MAX_FILES", 1)
    with pytest.raises(DataError, match="at most 1"):
        stage_uploads([("a.png", png(1)), ("b.png", png(2))], tmp_path / "s", ImportReport())


def test_masks_are_matched_by_name() -> None:
    assert mask_key("000_mask.png") == "000" and mask_key("mask_007.png") == "007" and mask_key("12-gt.bmp") == "12"
    pairs, unmatched = match_masks(["000.png", "001.png", "002.png"], ["001_mask.png", "000_mask.png", "zzz.png"])
    assert pairs == {"000.png": "000_mask.png", "001.png": "001_mask.png"} and unmatched == ["zzz.png"]
    assert match_masks(["dent.png"], ["whatever.png"]) == ({"dent.png": "whatever.png"}, [])


def test_several_defects_at_once_with_masks_and_type(tmp_path: Path) -> None:
    """Item 9: several defect images at once, masks matched by name, the type kept; an unmatched mask is reported."""
    p = create_project(tmp_path, "p")
    images = [("000.png", png(10)), ("001.png", png(11)), ("002.png", png(12))]
    masks = [("001_mask.png", mask_png()), ("000_mask.png", mask_png()), ("stray_mask.png", mask_png())]
    report = add_defects(p, images, masks, defect_type="scratch")
    assert [f.name for f in report.kept] == ["000.png", "001.png", "002.png"]
    assert [f.name for f in report.refused] == ["stray_mask.png"]
    with_mask = {img.name: mask is not None for img, mask in p.defects()}
    assert with_mask == {"000.png": True, "001.png": True, "002.png": False}
    assert p.defect_types() == {"000.png": "scratch", "001.png": "scratch", "002.png": "scratch"}
    add_defect(p, ("x.png", png(13)))
    assert p.defect_types()["x.png"] == "defect"  # no type given


def test_mvtec_import_keeps_each_defect_type(tmp_path: Path) -> None:
    """Item 9: broken_large/000.png and broken_small/000.png keep their types (they became 000.png, 000_1.png,
    type "defect")."""
    root = tmp_path / "cat"
    for sub in ("train/good", "test/good", "test/broken_large", "test/broken_small"):
        (root / sub).mkdir(parents=True)
    for i in range(4):
        (root / "train/good" / f"{i:03d}.png").write_bytes(png(i))
    (root / "test/good/000.png").write_bytes(png(20))
    for kind, seed in (("broken_large", 30), ("broken_small", 31)):
        (root / "test" / kind / "000.png").write_bytes(png(seed))
        (root / "ground_truth" / kind).mkdir(parents=True)
        (root / "ground_truth" / kind / "000_mask.png").write_bytes(mask_png())
    p = create_project(tmp_path, "p")
    report = import_folder(p, root)
    assert p.defect_types() == {"broken_large_000.png": "broken_large", "broken_small_000.png": "broken_small"}
    assert all(mask is not None for _, mask in p.defects())
    shown = {f.name: f.reason for f in report.kept if f.kind == "defect"}
    assert "type broken_large" in shown["broken_large/000.png"] and "type broken_small" in shown["broken_small/000.png"]
