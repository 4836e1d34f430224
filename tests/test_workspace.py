"""Projects: create/open, imports (uploads, zips, folders, MVTec), split, defects, hostile archives, demo."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon_core.errors import ConfigError, DataError
from recon_core.images import is_mvtec_layout, load_dataset
from recon_core.synth import SynthConfig
from recon_core.workspace import (
    add_defect,
    create_project,
    import_folder,
    import_uploads,
    list_projects,
    open_project,
    remove_image,
    safe_extract_zip,
    split,
    split_counts,
)


def png(seed: int, size: int = 32) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(entries: list[tuple[str, bytes]], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_create_open_list(tmp_path: Path) -> None:
    p = create_project(tmp_path, "part-1")
    assert list_projects(tmp_path) == ["part-1"]
    assert open_project(tmp_path, "part-1").root == p.root
    with pytest.raises(ConfigError):
        create_project(tmp_path, "part-1")
    with pytest.raises(ConfigError):
        create_project(tmp_path, "../evil")
    with pytest.raises(DataError):
        open_project(tmp_path, "missing")
    assert p.load_synth() == SynthConfig()
    p.save_synth(SynthConfig(opacity_min=0.5))
    assert open_project(tmp_path, "part-1").load_synth().opacity_min == 0.5


def test_upload_report_split_and_dataset(tmp_path: Path) -> None:
    p = create_project(tmp_path, "p")
    files = [(f"g{i}.png", png(i)) for i in range(10)] + [("broken.png", b"not an image"), ("notes.txt", b"x")]
    report = import_uploads(p, files)
    assert len(report.kept) == 10
    refused = {f.name: f.reason for f in report.refused}
    assert "broken.png" in refused and "notes.txt" in refused
    assert p.counts() == {"goods": 10, "train": 8, "held_out": 2, "defects": 0, "refused": 2}
    assert is_mvtec_layout(p.data_dir)
    ds = load_dataset(p.data_dir, 32)
    assert len(ds.train) == 8 and ds.test is not None and len(ds.test) == 2
    # the split is seeded: same seed, same held-out set; another seed, another set
    first = [x.name for x in p.test_goods()]
    split(p, seed=0)
    assert [x.name for x in p.test_goods()] == first
    split(p, seed=5)
    assert [x.name for x in p.test_goods()] != first or len(first) == 0


def test_remove_image_resplits(tmp_path: Path) -> None:
    p = create_project(tmp_path, "p")
    import_uploads(p, [(f"g{i}.png", png(i)) for i in range(5)])
    remove_image(p, "g0.png")
    assert p.counts()["goods"] == 4 and p.counts()["train"] + p.counts()["held_out"] == 4
    with pytest.raises(DataError):
        remove_image(p, "../project.json")


def test_split_counts() -> None:
    assert split_counts(30) == 6
    assert split_counts(5) == 2  # min 2
    assert split_counts(2) == 1  # leaves one to train on
    assert split_counts(1) == 0


def test_warnings_few_and_mixed_sizes(tmp_path: Path) -> None:
    p = create_project(tmp_path, "p")
    import_uploads(p, [("a.png", png(1, 32)), ("b.png", png(2, 48)), ("c.png", png(3, 32))])
    text = " ".join(p.warnings())
    assert "Only 3" in text and "Mixed image sizes" in text


def test_zip_upload_and_defect_with_mask(tmp_path: Path) -> None:
    p = create_project(tmp_path, "p")
    data = make_zip([(f"imgs/g{i}.png", png(i)) for i in range(4)] + [("inner.zip", b"PK"), ("readme.md", b"hi")])
    report = import_uploads(p, [("batch.zip", data)])
    assert len(report.kept) == 4
    assert any("nested archive" in n for n in report.notes)
    mask = np.zeros((32, 32), np.uint8)
    mask[5:10, 5:10] = 255
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    r = add_defect(p, ("scratch.png", png(99)), ("scratch_mask.png", buf.getvalue()))
    assert len(r.kept) == 1
    ((_img, m),) = p.defects()
    assert m is not None and m.name == "scratch_mask.png"
    bad = add_defect(p, ("dent.png", png(98)), ("dent_mask.png", png(97, 16)))
    assert bad.refused and "mask is 16x16" in bad.refused[0].reason
    ds = load_dataset(p.data_dir, 32)
    assert ds.test is not None and int(ds.test.labels.sum()) == 1 and ds.test.has_masks


@pytest.mark.parametrize(
    "entries,symlink,match",
    [
        ([("../evil.png", b"x")], None, "absolute path or '..'"),
        ([("/abs/evil.png", b"x")], None, "absolute path"),
        ([("ok.png", b"x")], "link.png", "symbolic link"),
        ([("bomb.png", b"\0" * 2_000_000)], None, "zip bomb"),
    ],
)
def test_hostile_zips_refused(tmp_path: Path, entries, symlink, match) -> None:
    with pytest.raises(DataError, match=match):
        safe_extract_zip(make_zip(entries, symlink), tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_zip_limits_and_garbage(tmp_path: Path) -> None:
    many = make_zip([(f"{i}.png", b"x") for i in range(20)])
    with pytest.raises(DataError, match="entries"):
        safe_extract_zip(many, tmp_path / "a", max_members=10)
    with pytest.raises(DataError, match="unpacks to"):
        safe_extract_zip(make_zip([("a.png", png(1))]), tmp_path / "b", max_total_bytes=100)
    with pytest.raises(DataError, match="not a valid zip"):
        safe_extract_zip(b"garbage", tmp_path / "c")
    # a refused archive in an upload is reported, not raised
    p = create_project(tmp_path, "p")
    report = import_uploads(p, [("evil.zip", make_zip([("../x.png", png(1))])), ("g.png", png(2))])
    assert [f.name for f in report.kept] == ["g.png"]
    assert report.refused[0].kind == "archive"


def test_import_folder_and_mvtec(tmp_path: Path) -> None:
    from recon_core.demo import write_demo_dataset

    src = write_demo_dataset(tmp_path / "src", n_good=6, n_defect=3, size=64)
    p = create_project(tmp_path / "ws", "m")
    import_folder(p, src)
    assert p.counts()["goods"] == 6 and p.counts()["defects"] == 3
    assert all(m is not None for _, m in p.defects())
    q = create_project(tmp_path / "ws", "plain")
    import_folder(q, src / "train" / "good")
    assert q.counts()["goods"] == 6
    with pytest.raises(DataError):
        import_folder(q, tmp_path / "nope")


def test_demo_is_idempotent(tmp_path: Path) -> None:
    from recon_core.cli import main
    from recon_core.demo import ensure_demo

    assert main(["demo", "--workspace", str(tmp_path), "--quiet"]) == 0
    project, created = ensure_demo(tmp_path)
    assert not created
    counts = project.counts()
    assert counts["goods"] == 30 and counts["defects"] == 6 and counts["held_out"] == 6
    assert main(["demo", "--workspace", str(tmp_path), "--quiet"]) == 0
    assert list_projects(tmp_path) == ["demo"]


def test_demo_queues_one_short_run_and_never_a_second(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recon_core.cli import main
    from recon_core.jobs import JobStore

    monkeypatch.setattr(JobStore, "kick", lambda self: [])  # queue only: no worker process in a unit test
    # a cluster set for the user's runs does not take the demo run off this machine (it was refused as a
    # background job on a cluster, which broke `run.sh app` with RECON_CLUSTER set)
    monkeypatch.setenv("RECON_CLUSTER", "127.0.0.1:1")
    args = ["demo", "--workspace", str(tmp_path), "--quiet", "--train", "5", "--preset", "cpu-fast"]
    assert main(args) == 0
    assert main(args) == 0  # `run.sh app` again (a restarted app): the queued run is enough
    jobs = JobStore(tmp_path, autostart=False).list_jobs(project="demo")
    assert [j.state for j in jobs] == ["queued"] and not jobs[0].on_cluster
    assert (jobs[0].spec["model"], jobs[0].spec["preset"], jobs[0].spec["iterations"]) == ("draem", "cpu-fast", 5)
