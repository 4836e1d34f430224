"""One declaration per knob: SynthConfig's field metadata is the only place a synth knob's range, default and help
are written; the CLI options, the validation and the designer's sliders (tests/test_app_pages.py) follow it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from recon_core.cli import build_parser
from recon_core.commands.train import build_spec
from recon_core.errors import ConfigError
from recon_core.knobs import _num, knobs_of, option_name
from recon_core.synth import SynthConfig


def _subparser(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[name]
    return parser


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_every_synth_field_is_declared_once() -> None:
    declared = knobs_of(SynthConfig)
    assert list(declared) == [f.name for f in dataclasses.fields(SynthConfig)]
    for name, k in declared.items():
        assert k.help, name
        if k.kind in (int, float):
            assert k.lo is not None and k.hi is not None and k.lo < k.hi, name
            assert k.lo <= getattr(SynthConfig(), name) <= k.hi, name


def test_synth_preview_options_equal_the_declaration() -> None:
    options = _options(_subparser(build_parser(), "synth", "preview"))
    defaults = SynthConfig()
    for name, k in knobs_of(SynthConfig).items():
        action = options[option_name(name)]
        assert action.dest == name
        if k.kind is bool:
            assert isinstance(action, argparse.BooleanOptionalAction)
        else:
            assert action.type is k.kind
            assert tuple(action.choices or ()) == tuple(k.choices or ())
        assert f"default {getattr(defaults, name)}" in action.help
        if k.lo is not None:
            assert f"({_num(k.lo)}–{_num(k.hi)}," in action.help


@pytest.mark.parametrize(
    ("field", "bad"),
    [("threshold", 1.5), ("perlin_scale_max", 8), ("texture_augmentations", 11), ("seed", -1), ("opacity_min", -0.1)],
)
def test_validation_uses_the_declared_range(field: str, bad: float) -> None:
    with pytest.raises(ConfigError, match=f"synth.{field}.*outside the allowed range"):
        SynthConfig(**{field: bad})


def test_ordered_pairs_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"perlin_scale_min .* must not exceed perlin_scale_max"):
        SynthConfig(perlin_scale_min=4, perlin_scale_max=2)


def test_train_and_jobs_submit_share_the_run_options(tmp_path: Path) -> None:
    """One build_spec and one option set: `--synth-config` everywhere, `--synth` kept as an alias."""
    (tmp_path / "synth.json").write_text(json.dumps({"threshold": 0.7}))
    parser = build_parser()
    common = ["--iterations", "3", "--seed", "2", "--set", "image_size=32"]
    a = parser.parse_args(["train", str(tmp_path), *common, "--synth-config", str(tmp_path / "synth.json")])
    b = parser.parse_args(["jobs", "submit", str(tmp_path), *common, "--synth", str(tmp_path / "synth.json")])
    c = parser.parse_args(["jobs", "submit", str(tmp_path), *common, "--synth-config", '{"threshold": 0.7}'])
    specs = [build_spec(x).to_dict() for x in (a, b, c)]
    assert specs[0] == specs[1] == specs[2]
    assert specs[0]["synth"]["threshold"] == 0.7 and specs[0]["iterations"] == 3
    assert specs[0]["model_overrides"] == {"image_size": 32}
    assert _subparser(parser, "jobs", "submit").get_default("handler").__name__ == "submit"
