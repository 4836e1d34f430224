"""Image loading: every kind of bad file, odd modes, MVTec layout, few-shot sampling."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon_core.errors import DataError, ImageError
from recon_core.images import (
    MAX_IMAGE_PIXELS,
    display_path,
    find_duplicates,
    is_mvtec_layout,
    list_images,
    load_dataset,
    load_folder,
    load_image,
    load_images,
    load_mask,
    sample_shots,
)


def save_rgb(path: Path, colour=(200, 100, 50), size=(32, 32), fmt: str | None = None, **kw) -> Path:
    Image.new("RGB", size, colour).save(path, format=fmt, **kw)
    return path


def noisy(path: Path, size=(32, 32), seed=0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height with a tiny (invalid) body: decoding it would be fatal."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grey
    body = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------------------
# bad files


def test_zero_byte(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        load_image(p)


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated(tmp_path, fmt, suffix, keep):
    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format=fmt)
    data = buf.getvalue()
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match="truncated"):
        load_image(p)


def test_text_renamed_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n" * 10)
    with pytest.raises(ImageError, match="not an image"):
        load_image(p)


@pytest.mark.parametrize("size", [(1, 1), (10, 100), (15, 15)])
def test_tiny_refused(tmp_path, size):
    p = save_rgb(tmp_path / "tiny.png", size=size)
    with pytest.raises(ImageError, match="16 px"):
        load_image(p)


def test_sixteen_px_accepted(tmp_path):
    assert load_image(save_rgb(tmp_path / "ok.png", size=(16, 16))).shape == (16, 16, 3)


def test_huge_refused_before_decoding(tmp_path):
    p = png_header_only(tmp_path / "huge.png", 20000, 20000)
    assert MAX_IMAGE_PIXELS < 20000 * 20000
    with pytest.raises(ImageError, match="MP"):
        load_image(p)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")


def test_bad_files_become_problems_rest_loads(tmp_path):
    save_rgb(tmp_path / "a.png")
    noisy(tmp_path / "b.jpg")
    (tmp_path / "c.png").write_bytes(b"")
    (tmp_path / "d.png").write_text("hello")
    save_rgb(tmp_path / "e.png", size=(1, 1))
    (tmp_path / "readme.txt").write_text("ignored: not an image suffix")
    result = load_folder(tmp_path, 24)
    assert [Path(p).name for p in result.paths] == ["a.png", "b.jpg"]
    assert result.images.shape == (2, 24, 24, 3)
    reasons = {Path(p.path).name: p.reason for p in result.problems}
    assert set(reasons) == {"c.png", "d.png", "e.png"}
    assert "empty" in reasons["c.png"] and "not an image" in reasons["d.png"] and "1x1" in reasons["e.png"]


def test_fewer_than_two_usable_is_data_error(tmp_path):
    save_rgb(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(DataError, match="1 usable"):
        load_folder(tmp_path, 32)
    assert len(load_folder(tmp_path, 32, min_images=1)) == 1


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_folder(tmp_path / "nothing", 32)


# ---------------------------------------------------------------------------------------------------------
# modes and formats


def test_rgb_values_and_range(tmp_path):
    img = load_image(save_rgb(tmp_path / "a.png", (255, 0, 51)))
    assert img.dtype == np.float32 and img.shape == (32, 32, 3)
    np.testing.assert_allclose(img[0, 0], [1.0, 0.0, 0.2], atol=1e-6)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_grey(tmp_path, suffix):
    arr = np.full((20, 20), 32768, np.uint16)
    arr[0, 0] = 65535
    p = tmp_path / f"deep{suffix}"
    Image.fromarray(arr).save(p)
    img = load_image(p)
    assert img.shape == (20, 20, 3)
    np.testing.assert_allclose(img[5, 5], 32768 / 65535, atol=1e-4)
    np.testing.assert_allclose(img[0, 0], 1.0, atol=1e-6)


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    img = load_image(p)
    assert img.shape == (32, 32, 3)
    assert img[16, 16, 0] > 0.9 and img[16, 16, 1] < 0.1 and img[16, 16, 2] < 0.1


def test_palette_with_transparency_composited_on_black(tmp_path):
    im = Image.new("P", (32, 32), 1)
    im.putpalette([0, 255, 0] + [255, 255, 255] + [0, 0, 0] * 254)
    im.paste(0, (0, 0, 16, 32))  # left half index 0 (green) = transparent
    p = tmp_path / "pal.png"
    im.save(p, transparency=0)
    img = load_image(p)
    np.testing.assert_allclose(img[5, 5], [0, 0, 0])  # transparent -> black
    np.testing.assert_allclose(img[5, 25], [1, 1, 1])


def test_rgba_composited_on_black(tmp_path):
    arr = np.zeros((32, 32, 4), np.uint8)
    arr[..., :3] = 200
    arr[..., 3] = 255
    arr[:, :16, 3] = 0
    arr[:, 16:24, 3] = 128
    p = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(p)
    img = load_image(p)
    assert img[0, 0].max() == 0
    np.testing.assert_allclose(img[0, 30], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(img[0, 20], 200 / 255 * 128 / 255, atol=1e-3)


@pytest.mark.parametrize("mode", ["L", "1", "LA"])
def test_grey_modes_become_three_channels(tmp_path, mode):
    p = tmp_path / f"g_{mode}.png"
    Image.new(mode, (20, 20), 255 if mode != "LA" else (255, 255)).save(p)
    img = load_image(p)
    assert img.shape == (20, 20, 3)
    np.testing.assert_allclose(img, 1.0)


def test_animated_gif_uses_first_frame(tmp_path):
    frames = [Image.new("RGB", (24, 24), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(p).n_frames == 3
    img = load_image(p)
    assert img[12, 12, 0] > 0.9 and img[12, 12, 2] < 0.1


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    img = load_image(p)
    assert img.shape == (40, 20, 3)  # portrait after applying the orientation
    assert img[2, 10].mean() > 0.8 and img[-2, 10].mean() < 0.2  # the white band is now on top


@pytest.mark.parametrize("fmt,suffix", [("BMP", ".bmp"), ("WEBP", ".webp"), ("TIFF", ".tiff"), ("JPEG", ".jpeg")])
def test_other_formats(tmp_path, fmt, suffix):
    p = save_rgb(tmp_path / f"x{suffix}", (10, 200, 30), fmt=fmt)
    img = load_image(p, 16)
    assert img.shape == (16, 16, 3)
    assert abs(img[8, 8, 1] - 200 / 255) < 0.05


def test_resize_and_mixed_sizes(tmp_path):
    noisy(tmp_path / "a.png", (64, 48))
    noisy(tmp_path / "b.png", (20, 30), seed=1)
    loaded = load_folder(tmp_path, 32)
    assert loaded.images.shape == (2, 32, 32, 3) and not loaded.problems
    assert loaded.images.min() >= 0 and loaded.images.max() <= 1
    native = load_images(list_images(tmp_path), None)  # no size: the second, different one is a problem
    assert len(native.paths) == 1 and "differs" in native.problems[0].reason


def test_duplicates_kept_and_reported(tmp_path):
    noisy(tmp_path / "a.png")
    (tmp_path / "copy.png").write_bytes((tmp_path / "a.png").read_bytes())
    noisy(tmp_path / "b.png", seed=3)
    loaded = load_folder(tmp_path, 32)
    assert len(loaded.paths) == 3
    groups = find_duplicates(list_images(tmp_path))
    assert len(groups) == 1 and {Path(p).name for p in groups[0]} == {"a.png", "copy.png"}


def test_non_utf8_file_names(tmp_path):
    name = os.fsdecode(b"caf\xe9 \xff.png")  # latin-1 bytes: not valid UTF-8
    p = tmp_path / name
    noisy(p)
    noisy(tmp_path / "b.png", seed=2)
    loaded = load_folder(tmp_path, 32)
    assert len(loaded.paths) == 2
    assert "\ufffd" in display_path(loaded.paths[1]) or "\ufffd" in display_path(loaded.paths[0])
    (tmp_path / os.fsdecode(b"bad\xff.png")).write_bytes(b"")
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / os.fsdecode(b"bad\xff.png"))
    str(info.value).encode("utf-8")  # the message is printable


def test_list_images_sorted_no_recursion_no_hidden(tmp_path):
    for name in ["b.png", "a.JPG", "._a.png", "c.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png"]


# ---------------------------------------------------------------------------------------------------------
# masks


def test_mask_threshold_half_of_own_max(tmp_path):
    arr = np.zeros((20, 20), np.uint8)
    arr[:5] = 1  # a 0/1 mask stored in 8 bits must still work
    Image.fromarray(arr).save(tmp_path / "m01.png")
    m = load_mask(tmp_path / "m01.png")
    assert m.dtype == np.float32 and set(np.unique(m)) == {0.0, 1.0} and m[:5].all() and not m[5:].any()
    arr = np.zeros((20, 20), np.uint8)
    arr[:, :10] = 200
    arr[:, 10:12] = 60  # anti-aliased edge below half of the max -> 0
    Image.fromarray(arr).save(tmp_path / "soft.png")
    m = load_mask(tmp_path / "soft.png", 10)
    assert m.shape == (10, 10) and m[:, :5].all() and not m[:, 6:].any()


def test_empty_mask_is_zeros(tmp_path):
    Image.new("L", (20, 20), 0).save(tmp_path / "z.png")
    assert load_mask(tmp_path / "z.png").sum() == 0


# ---------------------------------------------------------------------------------------------------------
# MVTec layout


def make_mvtec(root: Path, with_gt: bool = True, size=(40, 40)) -> Path:
    (root / "train" / "good").mkdir(parents=True)
    for i in range(4):
        noisy(root / "train" / "good" / f"{i:03d}.png", size, seed=i)
    (root / "test" / "good").mkdir(parents=True)
    (root / "test" / "crack").mkdir(parents=True)
    noisy(root / "test" / "good" / "000.png", size, seed=10)
    noisy(root / "test" / "crack" / "000.png", size, seed=11)
    noisy(root / "test" / "crack" / "001.png", size, seed=12)
    noisy(root / "test" / "crack" / "002.png", size, seed=13)
    if with_gt:
        gt = root / "ground_truth" / "crack"
        gt.mkdir(parents=True)
        arr = np.zeros((size[1], size[0]), np.uint8)
        arr[5:15, 5:15] = 255
        Image.fromarray(arr).save(gt / "000_mask.png")
        small = np.zeros((10, 10), np.uint8)
        small[:5, :5] = 1  # wrong size and 0/1 values
        Image.fromarray(small).save(gt / "001_mask.png")
        # 002 has no mask
    return root


def test_mvtec_layout_with_masks(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    assert is_mvtec_layout(root)
    ds = load_dataset(root, 20)
    assert ds.train.images.shape == (4, 20, 20, 3)
    t = ds.test
    assert t is not None and t.has_masks
    assert t.labels.tolist() == [0, 1, 1, 1]
    assert t.defect_types == ["good", "crack", "crack", "crack"]
    assert t.masks.shape == (4, 20, 20) and t.masks.dtype == np.float32
    assert t.masks[0].sum() == 0
    assert t.masks[1, 2:7, 2:7].all() and t.masks[1].sum() == 25
    assert t.masks[2, :10, :10].all() and t.masks[2].sum() == 100  # 10x10 mask resized (nearest) to 20x20
    assert t.masks[3].sum() == 0
    assert len(t.problems) == 1 and t.problems[0].path.endswith("002.png") and "mask" in t.problems[0].reason


def test_mvtec_without_ground_truth(tmp_path):
    ds = load_dataset(make_mvtec(tmp_path / "cat", with_gt=False), 16)
    assert ds.test is not None and not ds.test.has_masks and not ds.test.problems
    assert ds.test.masks.sum() == 0 and ds.test.labels.sum() == 3


def test_plain_folder_dataset(tmp_path):
    for i in range(3):
        noisy(tmp_path / f"{i}.png", seed=i)
    ds = load_dataset(tmp_path, 16)
    assert ds.test is None and len(ds.train) == 3
    (tmp_path / "empty_sub").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(tmp_path / "empty_sub", 16)


def test_sample_shots_seeded():
    paths = [Path(f"{i:03d}.png") for i in range(50)]
    a = sample_shots(paths, 5, seed=1)
    assert a == sample_shots(paths, 5, seed=1)
    assert a == sorted(a) and len(set(a)) == 5
    assert any(sample_shots(paths, 5, seed=s) != a for s in range(2, 6))
    assert sample_shots(paths, None, 0) == paths
    assert sample_shots(paths, 500, 0) == paths


def test_shots_replace_bad_files(tmp_path):
    for i in range(8):
        noisy(tmp_path / f"{i}.png", seed=i)
    for i in range(8, 12):
        (tmp_path / f"{i}.png").write_bytes(b"")
    loaded = load_folder(tmp_path, 16, shots=6, seed=0)
    assert len(loaded.paths) == 6
    again = load_folder(tmp_path, 16, shots=6, seed=0)
    assert again.paths == loaded.paths
    np.testing.assert_array_equal(again.images, loaded.images)


def test_load_dataset_shots(tmp_path):
    ds = load_dataset(make_mvtec(tmp_path / "cat"), 16, shots=2, seed=3)
    assert len(ds.train) == 2 and ds.test is not None and len(ds.test) == 4


@pytest.mark.shared_data
def test_shared_tire_ten_shots(shared_data):
    root = shared_data / "mvtec3d_ad" / "tire"
    if not root.is_dir():
        pytest.skip("tire data set not present")
    ds = load_dataset(root, 64, shots=10, seed=0)
    assert ds.train.images.shape == (10, 64, 64, 3)
    assert ds.test is not None and ds.test.has_masks
    assert (ds.test.labels == 0).sum() == 25 and (ds.test.labels == 1).sum() == 87
    defect_masks = ds.test.masks[ds.test.labels == 1].reshape(87, -1).max(axis=1)
    assert defect_masks.min() == 1  # every defect has a non-empty mask
    assert not ds.test.problems
