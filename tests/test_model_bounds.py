"""Issue 13 item 13: every model setting is bounded at submit (`--set image_size=1000000` was accepted and failed in
the worker trying to allocate 12 TB). The ranges are declared once (models.base.SETTING_BOUNDS or a field's own
knob) and checked in one place (check_settings, called by config_from_preset)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recon_core.cli import main
from recon_core.errors import ConfigError
from recon_core.models import get_model_class, model_names
from recon_core.models.base import setting_bounds

MODELS = [m for m in model_names() if m != "tiny"]


@pytest.mark.parametrize("model", MODELS)
def test_every_numeric_setting_has_a_range(model: str) -> None:
    cls = get_model_class(model)
    hints = typing.get_type_hints(cls.config_class)
    numeric = {f.name for f in dataclasses.fields(cls.config_class) if hints[f.name] in (int, float)}
    assert numeric - set(setting_bounds(cls.config_class)) == set()


@pytest.mark.parametrize("model", MODELS)
def test_every_preset_is_within_the_ranges_and_each_bound_is_enforced(model: str) -> None:
    cls = get_model_class(model)
    for preset in cls.presets:
        cls.config_from_preset(preset)
    for name, k in setting_bounds(cls.config_class).items():
        too_big = k.hi * 2 + 1
        too_big = int(too_big) if isinstance(k.hi, int) else float(too_big)
        with pytest.raises(ConfigError, match=name):  # check_settings, or the model's own stricter check
            cls.config_from_preset(None, **{name: too_big})


@pytest.fixture
def goods(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_submit_refuses_a_huge_image_size_at_once(goods: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ws = tmp_path / "ws"
    code = main(["jobs", "submit", str(goods), "--workspace", str(ws), "--set", "image_size=1000000"])
    err = capsys.readouterr().err
    assert code == 1 and "image_size: 1000000 is outside the allowed range 8–2048" in err
    from recon_core.jobs import JobStore

    assert JobStore(ws, autostart=False).list_jobs() == []  # nothing was queued
    code = main(["train", str(goods), "--out", str(tmp_path / "run"), "--set", "batch_size=100000", "-q"])
    assert code == 1 and "batch_size: 100000 is outside the allowed range" in capsys.readouterr().err


def test_every_preset_says_what_it_is_for():
    """One declaration per preset: its settings and a note (Train page caption, `presets` command)."""
    for name in model_names():
        cls = get_model_class(name)
        assert set(cls.preset_notes) == set(cls.presets), name
        for preset in cls.presets:
            assert len(cls.describe_preset(preset)) > 20, (name, preset)


def test_presets_command_lists_presets_with_their_notes(capsys):
    assert main(["presets", "--model", "draem"]) == 0
    out = capsys.readouterr().out
    assert "cpu (default):" in out and "cpu-hires: 256 px trained on 128 px crops, for thin defects" in out
    assert main(["presets", "--model", "nope"]) == 1
    assert "unknown model 'nope'" in capsys.readouterr().err
