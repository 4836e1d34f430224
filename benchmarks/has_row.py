"""Exit 0 when a benchmark result file already holds an error-free row for model/category/K/seed/iterations.

Lets a long benchmark queue be restarted without repeating finished runs:
    python benchmarks/has_row.py benchmarks/results/issue12.json draem mvtec3d_ad/tire 5 0 1330
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def has_row(path: Path, model: str, category: str, k: int, seed: int, iterations: int) -> bool:
    if not path.exists():
        return False
    rows = json.loads(path.read_text())
    return any(
        r.get("model") == model
        and r.get("category") == category
        and int(r.get("labelled_defects") or 0) == k
        and int(r.get("seed", -1)) == seed
        and int(r.get("iterations") or 0) == iterations
        and not r.get("error")
        for r in rows
    )


if __name__ == "__main__":
    file, model, category, k, seed, iterations = sys.argv[1:7]
    sys.exit(0 if has_row(Path(file), model, category, int(k), int(seed), int(iterations)) else 1)
