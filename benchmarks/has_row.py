"""Exit 0 when a benchmark result file already holds an error-free row for one configuration.

Lets a long benchmark queue be restarted without repeating finished runs:
    python benchmarks/has_row.py benchmarks/results/issue12.json draem mvtec3d_ad/tire 5 0 1330
    python benchmarks/has_row.py benchmarks/results/issue12.json dsr mvtec3d_ad/tire 0 0 10min
    python benchmarks/has_row.py benchmarks/results/issue12.json draem mvtec3d_ad/tire 0 0 1330 \\
        --overrides '{"synth": {"foreground": "off"}}' --preset cpu-hires
BUDGET is an iteration count ("1330") or minutes ("10min"); --overrides is the row's "overrides" JSON (default
none); --preset the row's preset (default: any).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _same_budget(row: dict, budget: str) -> bool:
    if budget.endswith("min"):
        return row.get("budget") == f"{float(budget[:-3])} min"
    return int(row.get("iterations") or 0) == int(budget) and str(row.get("budget", "")).endswith(" it")


def _overrides(text: str | None) -> dict:
    return json.loads(text) if text else {}


def has_row(
    path: Path,
    model: str,
    category: str,
    k: int,
    seed: int,
    budget: str,
    overrides: str = "",
    preset: str | None = None,
) -> bool:
    if not path.exists():
        return False
    rows = json.loads(path.read_text())
    return any(
        r.get("model") == model
        and r.get("category") == category
        and int(r.get("labelled_defects") or 0) == k
        and int(r.get("seed", -1)) == seed
        and _same_budget(r, budget)
        and _overrides(r.get("overrides")) == _overrides(overrides)
        and (not preset or r.get("preset") == preset)
        and not r.get("error")
        for r in rows
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    for name in ("file", "model", "category", "k", "seed", "budget"):
        ap.add_argument(name)
    ap.add_argument("--overrides", default="")
    ap.add_argument("--preset", default=None)
    a = ap.parse_args()
    found = has_row(Path(a.file), a.model, a.category, int(a.k), int(a.seed), a.budget, a.overrides, a.preset)
    sys.exit(0 if found else 1)
