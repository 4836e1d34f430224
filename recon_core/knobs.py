"""One declaration per setting: range, default and help live next to the dataclass field, and the validation,
the CLI options and the app's widgets are generated from it (so the copies cannot disagree).

    @dataclass
    class SynthConfig:
        threshold: float = knob(0.5, "noise threshold for the mask", lo=-1.0, hi=0.99, step=0.01)

    check(config, "synth")              # in __post_init__: type, range, choices, ordered pairs
    add_cli_options(parser, SynthConfig) # --threshold FLOAT (help says range and default)
    cli_values(args, SynthConfig)        # the options actually given, by field name

No Streamlit here: app_pages/_ui.py draws the widgets from `knobs_of`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from recon_core.errors import ConfigError

META_KEY = "knob"


@dataclass(frozen=True)
class Knob:
    """What a user may set on one config field. `lo`/`hi` bound numbers (inclusive); `choices` bound text."""

    help: str
    lo: float | None = None
    hi: float | None = None
    step: float | None = None  # widget step for floats (ints step by 1)
    choices: tuple[str, ...] | None = None
    label: str | None = None  # the widget's label (default: the help text)
    group: str | None = None  # widget section heading
    upper: str | None = None  # this field is the lower end of a range whose upper end is field `upper`
    widget: str = "auto"  # "auto" (slider/checkbox/radio), "number" (a number box), "none" (drawn by the page)
    kind: type = object  # filled in by knobs_of from the field's annotation: int, float, bool or str

    @property
    def text(self) -> str:
        return self.label or self.help


def knob(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its Knob (range, help, widget hints) in the field metadata."""
    return dataclasses.field(default=default, metadata={META_KEY: Knob(help, **kwargs)})


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(int|float|bool|str, optional?) of a field annotation like `int`, `str | None`."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else object
    return (annotation if annotation in (int, float, bool, str) else object), optional


def knobs_of(cls: Any) -> dict[str, Knob]:
    """The declared knobs of a dataclass (or instance), in field order, with `kind` resolved."""
    cls = cls if isinstance(cls, type) else type(cls)
    hints = typing.get_type_hints(cls)
    out: dict[str, Knob] = {}
    for f in dataclasses.fields(cls):
        k = f.metadata.get(META_KEY)
        if k is not None:
            out[f.name] = dataclasses.replace(k, kind=_base_type(hints[f.name])[0])
    return out


def defaults_of(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.metadata.get(META_KEY) is not None}


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_text(k: Knob) -> str:
    if k.choices:
        return " | ".join(k.choices)
    if k.lo is not None and k.hi is not None:
        return f"{_num(k.lo)}–{_num(k.hi)}"
    if k.lo is not None:
        return f">= {_num(k.lo)}"
    if k.hi is not None:
        return f"<= {_num(k.hi)}"
    return ""


def check(config: Any, prefix: str) -> None:
    """Validate every knob of a dataclass instance against its declaration; ConfigError names the field."""
    hints = typing.get_type_hints(type(config))
    for name, k in knobs_of(config).items():
        value = getattr(config, name)
        where = f"{prefix}.{name}"
        _, optional = _base_type(hints[name])
        if value is None and optional:
            continue
        if k.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true/false, got {value!r}")
            continue
        if k.kind is str:
            if not isinstance(value, str):
                raise ConfigError(f"{where}: expected text, got {value!r}")
            if k.choices and value not in k.choices:
                raise ConfigError(f"{where}: {value!r} is not one of {list(k.choices)}")
            continue
        integer = k.kind is int
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}, got {value!r}")
        if not integer and not math.isfinite(value):
            raise ConfigError(f"{where}: {value!r} is not a finite number")
        if (k.lo is not None and value < k.lo) or (k.hi is not None and value > k.hi):
            raise ConfigError(f"{where}: {value!r} is outside the allowed range {_range_text(k)}")
    for name, k in knobs_of(config).items():
        if k.upper:
            lo, hi = getattr(config, name), getattr(config, k.upper)
            if lo is not None and hi is not None and lo > hi:
                raise ConfigError(f"{prefix}.{name} ({lo}) must not exceed {k.upper} ({hi})")


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_help(k: Knob, default: Any) -> str:
    bounds = _range_text(k)
    return f"{k.help} ({bounds + ', ' if bounds else ''}default {default})"


def add_cli_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One --option per knob (default None = "not given"; the dataclass default applies)."""
    defaults = defaults_of(cls)
    for name, k in knobs_of(cls).items():
        if name in skip:
            continue
        text = cli_help(k, defaults[name])
        if k.kind is bool:
            parser.add_argument(
                option_name(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            kind = k.kind if k.kind in (int, float, str) else str
            parser.add_argument(
                option_name(name), dest=name, type=kind, default=None, choices=k.choices, metavar=None, help=text
            )


def cli_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The knob options given on the command line, by field name."""
    return {name: getattr(args, name) for name in knobs_of(cls) if getattr(args, name, None) is not None}


__all__ = ["Knob", "add_cli_options", "check", "cli_help", "cli_values", "defaults_of", "knob", "knobs_of"]
