"""`data check` and `synth preview` on a tiny generated MVTec-layout folder, through cli.main and a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from recon_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def noisy(path: Path, size: int = 40, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)


def make_dataset(root: Path) -> Path:
    for i in range(4):
        noisy(root / "train" / "good" / f"{i:03d}.png", seed=i)
    (root / "train" / "good" / "broken.png").write_bytes(b"")
    noisy(root / "test" / "good" / "000.png", seed=10)
    noisy(root / "test" / "scratch" / "000.png", seed=11)
    noisy(root / "test" / "scratch" / "001.png", seed=12)
    (root / "ground_truth" / "scratch").mkdir(parents=True)
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 10:20] = 255
    Image.fromarray(mask).save(root / "ground_truth" / "scratch" / "000_mask.png")
    return root


def test_data_check_text(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    assert main(["data", "check", str(root), "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "train good 4" in out and "test good  1" in out and "scratch" in out
    assert "broken.png: empty file" in out
    assert "001.png: no ground-truth mask" in out
    assert "40x40" in out


def test_data_check_json(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    assert main(["data", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_good"] == 4 and report["test_good"] == 1 and report["test_defects"] == {"scratch": 2}
    assert report["masks"] == 1 and report["has_masks"] is True
    assert len(report["problems"]) == 2


def test_data_check_unusable_exits_1(tmp_path, capsys):
    (tmp_path / "ds" / "train" / "good").mkdir(parents=True)
    noisy(tmp_path / "ds" / "train" / "good" / "only.png")
    assert main(["data", "check", str(tmp_path / "ds")]) == 1
    assert "at least 2 needed" in capsys.readouterr().err
    assert main(["data", "check", str(tmp_path / "missing")]) == 1


def test_synth_preview_writes_grid(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    out = tmp_path / "grid.png"
    code = main(
        [
            "synth", "preview", str(root), "--out", str(out), "--n", "6", "--size", "32", "--columns", "3",
            "--threshold", "0.3", "--no-rotate-noise", "--opacity-min", "0.5", "--texture-source", "noise",
            "--seed", "3",
        ]
    )  # fmt: skip
    assert code == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 32 + 2, 3 * 32 + 4, 3)
    text = capsys.readouterr().out
    assert "threshold=0.3" in text and "rotate_noise=False" in text and "texture_source='noise'" in text


def test_synth_preview_config_file_and_override(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    config = tmp_path / "synth.json"
    config.write_text(json.dumps({"threshold": 0.6, "opacity_max": 0.9, "texture_source": "noise"}))
    assert main(["synth", "preview", str(root), "--out", str(tmp_path / "g.png"), "--config", str(config),
                 "--opacity-max", "0.8", "--size", "32"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "threshold=0.6" in text and "opacity_max=0.8" in text
    config.write_text(json.dumps({"treshold": 0.6}))
    assert main(["synth", "preview", str(root), "--out", str(tmp_path / "g.png"), "--config", str(config)]) == 1
    assert "unknown" in capsys.readouterr().err
    assert main(["synth", "preview", str(root), "--out", str(tmp_path / "g.png"), "--opacity-min", "2"]) == 1


def test_subprocess_entry_point(tmp_path):
    root = make_dataset(tmp_path / "ds")
    done = subprocess.run(
        [sys.executable, "-m", "recon_core", "data", "check", str(root), "--size", "32"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "train good 4" in done.stdout


def test_texture_dir_alone_means_folder(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    noisy(tmp_path / "tex" / "deep" / "t.png", seed=5)
    out = str(tmp_path / "g.png")
    tex = str(tmp_path / "tex")
    assert main(["synth", "preview", str(root), "--out", out, "--texture-dir", tex, "--size", "32"]) == 0
    assert "texture_source='folder'" in capsys.readouterr().out
