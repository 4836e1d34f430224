"""Per-stage iteration plans: what a run trained in each of its model's stages ({"vq": 490, "dsr": 350,
"upsampling": 175}). A minutes budget plans every stage on time, so only this plan, not the total, replays such a run
iteration for iteration on another (or a busier) machine: RunSpec.stage_iterations, `train --stage-iterations`,
`bench --stage-iterations`. Kept free of torch: the run spec and the CLI check plans before any model is built.
"""

from __future__ import annotations

import argparse
from typing import Any

from recon_core.errors import ConfigError


def check_stage_plan(plan: Any) -> dict[str, int]:
    """A per-stage iteration plan ({"vq": 490, "dsr": 350, ...}): stage names to whole numbers >= 0, at least one
    iteration in all. Returns it; a clear ConfigError otherwise."""
    if not isinstance(plan, dict) or not plan:
        raise ConfigError("stage iterations: expected stage names with iteration counts, e.g. vq=490,dsr=350")
    for name, n in plan.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"stage iterations: {name!r} is not a stage name")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"stage iterations: {name} must be a whole number >= 0, got {n!r}")
    if sum(plan.values()) < 1:
        raise ConfigError("stage iterations: the plan has no iterations")
    return plan


def check_replay(plan: Any, iterations: int | None, minutes: float | None, where: str) -> None:
    """A replay budget: a per-stage plan, no minutes, and `iterations` (where the recorded run stopped) inside it."""
    check_stage_plan(plan)
    if minutes is not None:
        raise ConfigError(f"{where}: stage iterations replay a run's iterations; give them without minutes")
    planned = sum(plan.values())
    if iterations is not None and not 1 <= iterations <= planned:
        raise ConfigError(f"{where}: iterations ({iterations}) is where a replay stops: 1 to the plan's {planned}")


def parse_stage_plan(text: str) -> dict[str, int]:
    """'vq=490,dsr=350,upsampling=175' (commas or spaces) -> {"vq": 490, ...}, checked by check_stage_plan."""
    plan: dict[str, int] = {}
    for part in text.replace(",", " ").split():
        name, sep, count = part.partition("=")
        if not sep or not count.strip().isdigit():
            raise ConfigError(f"stage iterations: expected NAME=COUNT, e.g. vq=490,dsr=350; got {part!r}")
        if name in plan:
            raise ConfigError(f"stage iterations: stage {name} is given twice")
        plan[name] = int(count)
    return check_stage_plan(plan)


def format_stage_plan(plan: dict[str, int]) -> str:
    """{"vq": 490, "dsr": 350} -> 'vq=490,dsr=350' (what parse_stage_plan and --stage-iterations read)."""
    return ",".join(f"{name}={n}" for name, n in plan.items())


def several_stages(recorded: str | None) -> bool:
    """Whether a recorded plan ("vq=481,dsr=317,...") has more than one stage: then its total alone does not replay
    the run, and the CLI and the Train page show the plan."""
    return len(parse_stage_plan(recorded)) > 1 if recorded else False


def stage_plan_option(text: str) -> dict[str, int]:
    """The argparse type of --stage-iterations (train, jobs submit, bench)."""
    try:
        return parse_stage_plan(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
