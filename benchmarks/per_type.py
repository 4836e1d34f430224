"""Per-defect-type figures of kept bench runs: which kinds of real defect a model finds and which it misses.
Reads each run's saved evaluation (eval.npz + eval.json; the rows stored with it, else recomputed from its stored
maps, `evaluation.defect_type_rows`) and prints one JSON line per (run, type) on stdout, then a markdown table of
mean ± std per (model, preset, category, K, type) over the runs given on stderr.

    python -m recon_core bench --models draem --categories magnetic_tile/magnetic_tile --shots 20 --seeds 0 \\
        --iterations 1330 --out /tmp/q --name q --keep-runs KEPT
    python benchmarks/per_type.py KEPT/* > benchmarks/results/per_type.jsonl 2> benchmarks/results/per_type.md

Results: `results/per_type.jsonl`, README "Issue 12" (per defect type).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_core.evaluation import defect_type_rows, load_eval


def run_facts(run: Path) -> dict[str, object]:
    """What the run was: model, preset, data category, seed and iterations (from its spec and metrics)."""
    spec = json.loads((run / "spec.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    data = Path(spec["data"])
    return {
        "model": spec["model"],
        "preset": metrics.get("preset") or spec.get("preset"),
        "category": f"{data.parent.name}/{data.name}",
        "seed": spec.get("seed"),
        "labelled_defects": spec.get("labelled_defects", 0),
        "iterations": metrics.get("iterations"),
        "overrides": spec.get("model_overrides") or {},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="kept bench run folders")
    args = ap.parse_args()
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for run in map(Path, args.runs):
        facts = run_facts(run)
        result = load_eval(run / "eval")
        for row in defect_type_rows(result):
            line = {"run": run.name, **facts, **row}
            print(json.dumps(line))
            key = (facts["model"], facts["preset"], facts["category"], facts["labelled_defects"], row["type"])
            groups[key].append(row)
    columns = ["model", "preset", "category", "K", "type", "images", "runs", "image AUROC", "pixel AUROC",
               "share of defect pixels"]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns), file=sys.stderr)
    for key, rows in sorted(groups.items()):
        cells = []
        for metric in ("image_auroc", "pixel_auroc", "pixel_share"):
            values = [r[metric] for r in rows if r[metric] is not None]
            cells.append(f"{np.mean(values):.3f} ± {np.std(values):.3f}" if values else "–")
        print("| " + " | ".join(map(str, key)) + f" | {rows[0]['n']} | {len(rows)} | " + " | ".join(cells) + " |",
              file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
