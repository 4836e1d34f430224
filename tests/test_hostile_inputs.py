"""Hostile corpus, files: images, masks, uploads, models and configs that earlier tests did not cover.

Every case ends with a message naming the file and the reason, and nothing else is lost (the other images
load, the project and the bundle stay usable). notes/hostile.md maps each corpus case to its test.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_images import make_mvtec, noisy, png_header_only
from test_workspace import make_zip, png

from recon_core import uploads, workspace
from recon_core.bundle import load_bundle, read_bundle_dict, save_bundle
from recon_core.errors import CheckpointError, ConfigError, DataError, ImageError
from recon_core.images import load_dataset, load_folder, load_image, load_mask
from recon_core.synth import SynthConfig
from recon_core.workspace import add_defect, create_project, import_uploads, open_project, safe_extract_zip


def encoded(fmt: str, size: int = 64, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# images


@pytest.mark.parametrize("fmt,suffix", [("TIFF", ".tif"), ("GIF", ".gif"), ("BMP", ".bmp"), ("WEBP", ".webp")])
def test_truncated_other_formats(tmp_path, fmt, suffix):
    p = tmp_path / f"cut{suffix}"
    data = encoded(fmt)
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=rf"cut\{suffix}: .*(truncated|damaged|decode)"):
        load_image(p)


def test_damaged_png_says_damaged_not_not_an_image(tmp_path):
    data = bytearray(encoded("PNG"))
    data[20] ^= 0xFF  # inside IHDR: the chunk CRC no longer matches
    p = tmp_path / "crc.png"
    p.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"crc\.png: looks like a PNG file but cannot be read \(damaged"):
        load_image(p)


@pytest.mark.parametrize("suffix,channels", [(".png", 3), (".tif", 3), (".tif", 4)])
def test_sixteen_bit_colour(tmp_path, suffix, channels):
    # industrial cameras write 16-bit RGB(A); cv2 stores it as BGR(A)
    rgb = (np.random.default_rng(1).random((24, 24, 3)) * 65535).astype(np.uint16)
    bgr = rgb[..., ::-1]
    if channels == 4:
        bgr = np.concatenate([bgr, np.full((24, 24, 1), 65535, np.uint16)], axis=-1)
    p = tmp_path / f"deep{suffix}"
    assert cv2.imwrite(str(p), np.ascontiguousarray(bgr))
    img = load_image(p)
    assert img.shape == (24, 24, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, rgb / 65535, atol=1 / 255)  # 8-bit precision at least, right channel order


def test_float_colour_tiff_is_named_as_unsupported(tmp_path):
    p = tmp_path / "float.tif"
    assert cv2.imwrite(str(p), np.random.default_rng(0).random((24, 24, 3)).astype(np.float32))
    with pytest.raises(ImageError, match=r"float\.tif: looks like a TIFF file .* variant this loader does not"):
        load_image(p)


def test_tiff_with_a_dangling_page_list_loads_its_first_page(tmp_path):
    buf = io.BytesIO()
    Image.new("L", (32, 32), 200).save(buf, "TIFF")
    raw = bytearray(buf.getvalue())
    ifd = int.from_bytes(raw[4:8], "little")
    next_ifd = ifd + 2 + 12 * int.from_bytes(raw[ifd : ifd + 2], "little")
    raw[next_ifd : next_ifd + 4] = (10**6).to_bytes(4, "little")  # "next page" far beyond the end of the file
    (tmp_path / "pages.tif").write_bytes(bytes(raw))
    noisy(tmp_path / "other.png")
    # counting the pages raised TypeError ("Missing dimensions") straight out of load_folder
    loaded = load_folder(tmp_path, 16)
    assert [Path(p).name for p in loaded.paths] == ["other.png", "pages.tif"] and not loaded.problems
    np.testing.assert_allclose(loaded.images[1], 200 / 255, atol=1e-6)


def test_invalid_exif_orientation_is_ignored(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 20))
    exif = Image.Exif()
    exif[0x0112] = 99  # not an orientation
    p = tmp_path / "odd.jpg"
    im.save(p, exif=exif, quality=95)
    img = load_image(p)
    assert img.shape == (20, 40, 3) and img[10, 2].mean() > 0.8  # as stored


def test_fifo_and_folder_named_like_images_never_hang(tmp_path):
    noisy(tmp_path / "a.png")
    noisy(tmp_path / "b.png", seed=1)
    os.mkfifo(tmp_path / "pipe.png")  # reading it would block forever
    (tmp_path / "dir.png").mkdir()
    assert [Path(p).name for p in load_folder(tmp_path, 16).paths] == ["a.png", "b.png"]
    with pytest.raises(ImageError, match=r"pipe\.png: empty file"):
        load_image(tmp_path / "pipe.png")
    with pytest.raises(ImageError, match=r"dir\.png: is a folder"):
        load_image(tmp_path / "dir.png")


def test_whole_image_corpus_in_one_folder_good_ones_survive(tmp_path):
    """Every bad image kind side by side with good ones: each bad file is a problem naming it, the rest load."""
    goods = [noisy(tmp_path / f"good{i}.png", (40, 30), seed=i) for i in range(3)]
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image\n")
    (tmp_path / "cut.jpg").write_bytes(encoded("JPEG")[:300])
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    png_header_only(tmp_path / "bomb.png", 20000, 20000)
    crc = bytearray(encoded("PNG"))
    crc[20] ^= 0xFF
    (tmp_path / "crc.png").write_bytes(bytes(crc))
    bad_name = os.fsdecode(b"\xff\xfe.png")
    (tmp_path / bad_name).write_bytes(b"")
    result = load_folder(tmp_path, 16)
    assert result.paths == [str(p) for p in goods] and result.images.shape == (3, 16, 16, 3)
    reasons = {os.fsencode(Path(p.path).name): p.reason for p in result.problems}
    assert set(reasons) == {b"zero.png", b"text.png", b"cut.jpg", b"dot.png", b"bomb.png", b"crc.png", b"\xff\xfe.png"}
    for key, word in [(b"zero.png", "empty"), (b"cut.jpg", "truncated"), (b"bomb.png", "MP"), (b"crc.png", "PNG")]:
        assert word in reasons[key], reasons[key]


def test_duplicate_uploads_kept_and_reported(tmp_path):
    p = create_project(tmp_path, "p")
    report = import_uploads(p, [("a.png", png(1)), ("copy of a.png", png(1)), ("b.png", png(2))])
    assert len(report.kept) == 3  # decision: kept (harmless for training), reported so the user can remove one
    assert any(n.startswith("identical files: ") and "a.png" in n and "copy_of_a.png" in n for n in report.notes)


# ---------------------------------------------------------------------------------------------------------
# masks


def test_mask_without_image_is_reported(tmp_path):
    root = make_mvtec(tmp_path / "cat")
    Image.new("L", (40, 40), 255).save(root / "ground_truth" / "crack" / "777_mask.png")
    (root / "ground_truth" / "hole").mkdir()
    Image.new("L", (40, 40), 255).save(root / "ground_truth" / "hole" / "000_mask.png")  # no test/hole at all
    test = load_dataset(root, 20).test
    assert test is not None and len(test) == 4  # every image still there
    orphans = {Path(p.path).name: p.reason for p in test.problems if "without an image" in p.reason}
    assert set(orphans) == {"777_mask.png", "000_mask.png"}
    assert "test/crack/777" in orphans["777_mask.png"] and "test/hole/000" in orphans["000_mask.png"]


def test_defect_removed_from_project_leaves_a_reported_mask(tmp_path):
    p = create_project(tmp_path, "p")
    import_uploads(p, [(f"g{i}.png", png(i)) for i in range(4)])
    mask = np.zeros((32, 32), np.uint8)
    mask[4:9, 4:9] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    add_defect(p, ("dent.png", png(50)), ("dent_mask.png", buf.getvalue()))
    ((image, _mask),) = p.defects()
    image.unlink()  # removed by hand: its mask stays behind
    ds = load_dataset(p.data_dir, 32)
    assert ds.test is not None and int(ds.test.labels.sum()) == 0
    assert any("dent_mask.png" in pr.path and "without an image" in pr.reason for pr in ds.test.problems)


@pytest.mark.parametrize("mode", ["RGB", "I;16"])
def test_non_binary_colour_and_deep_masks(tmp_path, mode):
    grey = np.zeros((20, 20), np.uint16 if mode == "I;16" else np.uint8)
    top = 60000 if mode == "I;16" else 250
    grey[:10] = top
    grey[10:12] = top // 4  # soft edge below half of the max -> background
    im = Image.fromarray(grey) if mode == "I;16" else Image.fromarray(np.stack([grey * 0, grey, grey * 0], -1))
    im.save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png")
    assert set(np.unique(m)) == {0.0, 1.0} and m[:10].all() and not m[10:].any()


# ---------------------------------------------------------------------------------------------------------
# uploads


def _corrupt_member(data: bytes, how: str, name: bytes = b"bad.png") -> bytes:
    """Damage member `name` of a ZIP_STORED archive in one of three ways."""
    raw = bytearray(data)
    local = raw.rfind(b"PK\x03\x04", 0, raw.find(name))  # its local header (the name follows at offset 30)
    central = raw.rfind(b"PK\x01\x02", 0, raw.rfind(name))  # its central-directory entry (name at 46)
    if how == "bad crc":
        raw[raw.find(b"IDAT", local) + 8] ^= 0xFF  # flip a byte of its data
    elif how == "lying size":  # the headers say it is smaller than it is: zipfile stops early, the CRC fails
        size = int.from_bytes(raw[central + 24 : central + 28], "little")
        for at in (central + 24, local + 22):
            raw[at : at + 4] = (size // 2).to_bytes(4, "little")
    elif how == "encrypted":  # general purpose flag bit 0: zipfile wants a password
        raw[local + 6] |= 0x01
        raw[central + 8] |= 0x01
    return bytes(raw)


@pytest.mark.parametrize("how", ["bad crc", "lying size", "encrypted"])
def test_damaged_or_encrypted_zip_member_refused_cleanly(tmp_path, how):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("ok.png", png(1))  # unpacked first, then removed again when bad.png fails
        zf.writestr("bad.png", png(2))
    hostile = _corrupt_member(buf.getvalue(), how)
    with pytest.raises(DataError, match=r"zip entry 'bad\.png' .*archive refused"):
        safe_extract_zip(hostile, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # nothing half-unpacked stays
    p = create_project(tmp_path / "ws", "p")
    report = import_uploads(p, [("batch.zip", hostile), ("single.png", png(3))])
    assert [f.name for f in report.kept] == ["single.png"]
    assert report.refused[0].name == "batch.zip" and "bad.png" in report.refused[0].reason
    assert not (p.root / ".staging").exists()


def test_member_over_the_file_limit_skipped_others_kept(tmp_path):
    big = png(5, 128)
    paths, notes = safe_extract_zip(
        make_zip([("small.png", png(1)), ("big.png", big)]), tmp_path / "out", max_file_bytes=len(big) - 1
    )
    assert [p.name for p in paths] == ["small.png"]
    assert len(notes) == 1 and "big.png" in notes[0] and "above" in notes[0]


def test_single_upload_over_the_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_FILE_BYTES", 5000)
    p = create_project(tmp_path, "p")
    report = import_uploads(p, [("huge.png", png(1, 128)), ("a.png", png(2)), ("b.png", png(3))])
    assert [f.name for f in report.kept] == ["a.png", "b.png"]
    assert report.refused[0].name == "huge.png" and "above the limit" in report.refused[0].reason


def test_more_uploads_than_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(uploads, "MAX_FILES", 3)
    p = create_project(tmp_path, "p")
    with pytest.raises(DataError, match="4 files uploaded at once; at most 3"):
        import_uploads(p, [(f"g{i}.png", png(i)) for i in range(4)])
    assert p.goods() == []
    report = import_uploads(p, [("many.zip", make_zip([(f"g{i}.png", png(i)) for i in range(5)]))])
    assert len(report.kept) == 3 and any("only the first 3" in n for n in report.notes)


@pytest.mark.parametrize(
    "name",
    ["a" * 300 + ".png", "../../escape.png", "dir\\..\\win.png", "nul\x00byte.png"],
    ids=["300 chars", "dotdot", "backslashes", "nul byte"],
)
def test_hostile_upload_names_stay_inside_the_project(tmp_path, name):
    p = create_project(tmp_path / "ws", "p")
    report = import_uploads(p, [(name, png(1)), ("other.png", png(2))])
    assert len(report.kept) == 2, report.files  # a 300-char name used to abort the whole import (ENAMETOOLONG)
    assert all(len(f.name.encode()) <= 255 for f in p.goods())
    assert sorted(os.listdir(tmp_path / "ws")) == ["p"]  # nothing escaped the project


@pytest.mark.parametrize("test_entry", ["missing", "a file"])
def test_import_of_a_train_good_only_folder(tmp_path, test_entry):
    src = tmp_path / "src"
    (src / "train" / "good").mkdir(parents=True)
    for i in range(3):
        noisy(src / "train" / "good" / f"{i}.png", seed=i)
    if test_entry == "a file":
        (src / "test").write_text("not a folder")
    p = create_project(tmp_path / "ws", "p")
    report = workspace.import_folder(p, src)  # raised FileNotFoundError / NotADirectoryError after copying goods
    assert len(report.kept) == 3 and p.counts()["goods"] == 3 and p.counts()["held_out"] == 2  # split done


def test_long_names_in_zips_and_defects(tmp_path):
    paths, _ = safe_extract_zip(make_zip([("b" * 300 + ".png", png(3))]), tmp_path / "z")
    assert len(paths) == 1 and paths[0].suffix == ".png" and len(paths[0].name) <= 255
    p = create_project(tmp_path, "p")
    report = add_defect(p, ("d" * 300 + ".png", png(1)), ("m" * 300 + ".png", png(2)))
    assert len(report.kept) == 1
    ((image, mask),) = p.defects()
    assert mask is not None and len(image.name) <= 255


# ---------------------------------------------------------------------------------------------------------
# models and configs


@pytest.fixture
def bundle_path(tmp_path, monkeypatch):
    from tiny_model import TinyConfig, TinyModel, register_tiny

    register_tiny(monkeypatch)
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_bundle(path, TinyModel(TinyConfig(width=3)), synth_config=SynthConfig())
    return path


@pytest.mark.parametrize(
    "change,match",
    [
        ({"config": json.dumps({"width": "3"})}, "width"),
        ({"synth": json.dumps({"opacity_min": [0.1]})}, "opacity_min"),
        ({"synth": json.dumps({"shiny": True})}, "shiny"),
        ({"threshold": json.dumps({"value": "high", "method": "manual"})}, "value"),
        ({"format_version": "1"}, "format_version"),
        ({"state": None}, "weights do not fit"),
        ({"config": "{not json"}, "not valid JSON"),
    ],
    ids=["config type", "synth type", "synth key", "threshold type", "version type", "state None", "config JSON"],
)
def test_bundle_with_wrong_types_or_keys(bundle_path, change, match):
    raw = read_bundle_dict(bundle_path)
    raw.update(change)
    torch.save(raw, bundle_path)
    with pytest.raises(CheckpointError, match=match) as info:
        load_bundle(bundle_path, "cpu")
    assert str(bundle_path) in str(info.value)


def test_empty_and_renamed_files_as_models(bundle_path, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    shutil.copy(bundle_path, tmp_path / "ok.pt")
    (tmp_path / "photo.pt").write_bytes(png(1))
    (tmp_path / "archive.pt").write_bytes(make_zip([("a.png", png(1))]))
    (tmp_path / "cut.pt").write_bytes(b"\x80")  # a pickle that ends at once (EOFError without a message)
    cases = {
        "empty.pt": "empty file",
        "photo.pt": "not a torch checkpoint",
        "archive.pt": "corrupt",
        "cut.pt": "corrupt",
    }
    for name, reason in cases.items():
        with pytest.raises(CheckpointError, match=rf"{name}: .*{reason}"):
            load_bundle(tmp_path / name, "cpu")
    assert load_bundle(tmp_path / "ok.pt", "cpu").model.name == "tiny"


def test_corrupt_project_files_name_the_file_and_keep_the_images(tmp_path):
    p = create_project(tmp_path, "p")
    import_uploads(p, [(f"g{i}.png", png(i)) for i in range(5)])
    (p.root / "synth.json").write_text('{"threshold": "0.5", "colour": 1}')
    with pytest.raises(ConfigError, match=r"synth\.json"):
        p.load_synth()
    (p.root / "project.json").write_text("{half a file")
    with pytest.raises(ConfigError, match=r"project\.json: not valid JSON"):
        open_project(tmp_path, "p").meta()
    (p.root / "project.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"project\.json: expected a JSON object"):
        open_project(tmp_path, "p").counts()
    assert len(p.goods()) == 5 and len(load_dataset(p.data_dir, 16).train) == 3  # the images are intact


RESUME_DAMAGE = {
    "truncated": r"corrupt file",
    "no iteration": r"incomplete or damaged \(KeyError",
    "bad torch rng": r"incomplete or damaged",
    "no torch rng": r"incomplete or damaged \(KeyError",
    "other config": r"another configuration",
    "finished bundle": r"no training state",
    "other model": r"checkpoint of a 'draem' model, cannot resume a 'tiny' run",
}


@pytest.mark.parametrize("damage", sorted(RESUME_DAMAGE))
def test_resume_from_a_damaged_or_foreign_checkpoint(tmp_path, monkeypatch, damage):
    from tiny_model import TinyConfig, TinyModel, register_tiny, tiny_images

    from recon_core.models.base import Budget
    from recon_core.train import fit

    register_tiny(monkeypatch)
    ckpt = tmp_path / "checkpoint.pt"
    width = 6 if damage == "other config" else 4
    fit(TinyModel(TinyConfig(width=width)), tiny_images(), None, Budget(iterations=3), checkpoint_path=ckpt, seed=0)
    raw = read_bundle_dict(ckpt)
    ts = raw["training_state"]
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:-500])
    elif damage not in ("other config",):
        {"no iteration": lambda: ts.pop("iteration"), "bad torch rng": lambda: ts.update(torch_rng=torch.zeros(3)),
         "no torch rng": lambda: ts.pop("torch_rng"), "finished bundle": lambda: raw.update(training_state=None),
         "other model": lambda: raw.update(model="draem")}[damage]()  # fmt: skip
        torch.save(raw, ckpt)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: .*" + RESUME_DAMAGE[damage]):
        fit(TinyModel(TinyConfig()), tiny_images(), None, Budget(iterations=6), checkpoint_path=ckpt, resume=True)
    # nothing else is lost: the same run starts over when asked to
    summary = fit(TinyModel(TinyConfig()), tiny_images(), None, Budget(iterations=6), checkpoint_path=ckpt)
    assert summary.iterations == 6 and read_bundle_dict(ckpt)["training_state"]["iteration"] == 6


@pytest.mark.parametrize("damage", ["truncated npz", "empty npz", "json list"])
def test_damaged_saved_evaluation(tmp_path, damage):
    from recon_core.errors import ReconError
    from recon_core.evaluation import EvalResult, load_eval, save_eval

    result = EvalResult(
        np.array([0, 1]), np.array([0.1, 0.9]), np.zeros((2, 8, 8)), np.zeros((2, 8, 8)), False, ["a", "b"],
        ["good", "x"], {}, False,
    )  # fmt: skip
    save_eval(result, tmp_path / "eval")
    npz = tmp_path / "eval.npz"
    if damage == "truncated npz":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "empty npz":
        npz.write_bytes(b"")
    else:
        (tmp_path / "eval.json").write_text("[1, 2]")
    with pytest.raises(ReconError, match=r"saved evaluation is unreadable.*evaluate again"):
        load_eval(tmp_path / "eval")


def test_predict_on_non_utf8_names_writes_csv_and_heatmaps(bundle_path, tmp_path, capsys):
    from recon_core.bundle import set_threshold
    from recon_core.cli import main as cli_main
    from recon_core.metrics import Threshold

    set_threshold(bundle_path, Threshold(0.5, "manual"))
    folder = tmp_path / "imgs"
    folder.mkdir()
    names = [b"caf\xe9.png", b"ok.png"]
    for i, raw in enumerate(names):
        noisy(folder / os.fsdecode(raw), seed=i)
    (folder / os.fsdecode(b"bad\xfe.png")).write_bytes(b"")
    out = tmp_path / "out"
    assert cli_main(["predict", str(bundle_path), str(folder), "--out", str(out), "--device", "cpu"]) == 0
    csv_bytes = (out / "predictions.csv").read_bytes()  # used to raise UnicodeEncodeError, losing every result
    for raw in [*names, b"bad\xfe.png"]:
        assert raw in csv_bytes  # the original bytes: the row still names the file
    assert sorted(os.fsencode(p.name) for p in (out / "heatmaps").iterdir()) == [b"caf\xe9.png", b"ok.png"]
    assert "bad" in capsys.readouterr().err


@pytest.mark.parametrize(
    "model,setting,value",
    [("aae", "blocks", -2000), ("aae", "blocks", 2**70), ("autoencoder", "depth", 2**70)],
    ids=["aae blocks -2000", "aae blocks 2**70", "autoencoder depth 2**70"],
)
def test_extreme_model_settings_are_config_errors(model, setting, value):
    from recon_core.config import from_dict
    from recon_core.models import get_model_class

    # were ZeroDivisionError (2**-2000 == 0.0) and MemoryError / minutes of swapping (2**(2**70))
    with pytest.raises(ConfigError, match=setting):
        from_dict(get_model_class(model).config_class, {setting: value})


@pytest.mark.parametrize(
    "change,match",
    [
        ({"seed": -1}, "seed must be at least 0"),
        ({"checkpoint_every": -5}, "checkpoint_every must be at least 0"),
        ({"shots": 0}, "shots must be at least 1"),
        ({"iterations": None, "minutes": float("nan")}, "minutes must be a positive number"),
        ({"iterations": None, "minutes": float("inf")}, "minutes must be a positive number"),
    ],
    ids=["seed -1", "checkpoint_every -5", "shots 0", "minutes NaN", "minutes inf"],
)
def test_job_submit_refuses_hostile_run_settings(tmp_path, change, match):
    from recon_core.jobs import JobStore

    # accepted before: the worker then failed with "unexpected error: ValueError" (seed), overflowed (inf) or
    # calibrated a NaN deadline
    noisy(tmp_path / "a.png")
    store = JobStore(tmp_path / "ws", autostart=False)
    spec = {"data": str(tmp_path), "model": "draem", "iterations": 5, "device": "cpu", **change}
    with pytest.raises(ConfigError, match=match):
        store.submit(spec)
    assert store.list_jobs() == []


@pytest.mark.parametrize("model", ["draem", "dsr", "autoencoder", "ganomaly", "aae"])
def test_every_model_trains_on_identical_images(model):
    """A folder of copies of one photo (duplicates, a frozen camera): training ends and scores are finite."""
    from test_baselines import TINY as BASELINES
    from test_dsr import TINY as DSR
    from test_jobs import TINY as DRAEM

    from recon_core.models import get_model_class
    from recon_core.models.base import Budget
    from recon_core.train import fit

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cls = get_model_class(model)
        overrides = {"draem": DRAEM, "dsr": DSR, **BASELINES}[model]
        net = cls(cls.config_from_preset("cpu", **overrides), torch.device("cpu"))
        size = net.config.image_size
        images = np.repeat(np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32), 6, axis=0)
        fit(net, images, SynthConfig(texture_source="noise"), Budget(iterations=5))  # aae: singular covariance
        scores = net.predict(images[:2]).image_scores
    finally:
        torch.set_num_threads(threads)
    assert np.isfinite(scores).all()
