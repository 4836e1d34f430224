"""SynthConfig <-> JSON through recon_core.config: round trip, strict keys and types."""

from __future__ import annotations

import json

import pytest

from recon_core.config import from_dict, load_json, save_json, to_dict
from recon_core.errors import ConfigError
from recon_core.synth import SynthConfig


def test_round_trip(tmp_path):
    cfg = SynthConfig(
        perlin_scale_min=1,
        perlin_scale_max=4,
        threshold=0.6,
        rotate_noise=False,
        opacity_min=0.1,
        opacity_max=0.7,
        defect_probability=0.8,
        texture_source="folder",
        texture_dir="/some/where",
        texture_augmentations=2,
        rotate_good_probability=0.3,
        rotate_good_degrees=45.0,
        seed=9,
    )
    path = tmp_path / "synth.json"
    save_json(path, cfg)
    assert from_dict(SynthConfig, load_json(path)) == cfg
    assert json.loads(path.read_text())["texture_dir"] == "/some/where"
    assert from_dict(SynthConfig, to_dict(SynthConfig())) == SynthConfig()


def test_partial_dict_uses_defaults():
    cfg = from_dict(SynthConfig, {"threshold": 0.7})
    assert cfg.threshold == 0.7 and cfg.perlin_scale_max == 5


def test_int_accepted_for_float():
    assert from_dict(SynthConfig, {"opacity_min": 0}).opacity_min == 0.0


def test_unknown_key():
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(SynthConfig, {"treshold": 0.5})


@pytest.mark.parametrize(
    "data",
    [
        {"threshold": "0.5"},
        {"perlin_scale_min": 1.5},
        {"perlin_scale_max": True},
        {"rotate_noise": 1},
        {"texture_source": 3},
        {"texture_dir": 5},
        {"seed": "0"},
    ],
)
def test_wrong_types(data):
    with pytest.raises(ConfigError):
        from_dict(SynthConfig, data)


@pytest.mark.parametrize("data", [{"threshold": 2.0}, {"opacity_min": 0.9, "opacity_max": 0.1}, {"seed": -3}])
def test_out_of_range_values(data):
    with pytest.raises(ConfigError, match="synth"):
        from_dict(SynthConfig, data)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError):
        from_dict(SynthConfig, [1, 2])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_json(bad)
