"""Restate the cost columns of `auto` rows written before bench.training_cost counted every candidate (2026-12-07):
those rows carried the winner's iterations and training seconds alone, so a run that kept its 250-iteration
autoencoder read 250 iterations and ~20 s after ~800 s of training. Each auto row is matched to its kept run folder
(category, K, seed, and the same test image AUROC), and iterations / train_s / s_per_iteration /
train_images_per_s are recomputed from the run's metrics.json (its `auto` record of the candidates). Accuracy
columns are not touched.

    python benchmarks/auto_row_costs.py TABLE_NAME RUNS_DIR [RUNS_DIR ...]     (tables in benchmarks/results)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_core.bench import append_rows, training_cost

RESULTS = Path(__file__).resolve().parent / "results"


def kept_runs(dirs: list[str]) -> list[dict]:
    runs = []
    for d in dirs:
        for metrics_file in sorted(Path(d).glob("auto-*/metrics.json")):
            spec = json.loads((metrics_file.parent / "spec.json").read_text())
            runs.append(
                {"folder": metrics_file.parent.name, "metrics": json.loads(metrics_file.read_text()), "spec": spec}
            )
    return runs


def matches(row: dict, run: dict) -> bool:
    """The run's own spec says what it trained on (rather than parsing the folder name bench gave it)."""
    spec, metrics = run["spec"], run["metrics"]
    return (
        Path(spec["data"]).as_posix().endswith("/" + row["category"])
        and int(spec["labelled_defects"]) == int(row["labelled_defects"])
        and int(spec["seed"]) == int(row["seed"])
        and abs(float(metrics.get("image_auroc") or -1) - float(row.get("image_auroc") or -2)) < 1e-9
    )


def main(name: str, dirs: list[str]) -> None:
    path = RESULTS / f"{name}.json"
    rows = json.loads(path.read_text())
    runs = kept_runs(dirs)
    for row in rows:
        if row.get("model") != "auto":
            continue
        found = [r for r in runs if matches(row, r)]
        if len(found) != 1:
            print(f"{row['timestamp']} {row['category']} K={row['labelled_defects']} seed={row['seed']}: "
                  f"{len(found)} kept runs match, left as it is")  # fmt: skip
            continue
        iterations, seconds, _ = training_cost(found[0]["metrics"], 8, {})
        before = (row.get("iterations"), row.get("train_s"))
        row.update(iterations=iterations, train_s=seconds, s_per_iteration=None, train_images_per_s=None)
        print(f"{found[0]['folder']}: iterations, train_s {before} -> {(iterations, seconds)}")
    path.write_text(json.dumps(rows, indent=1, default=str))
    append_rows(RESULTS, name, [])  # rewrites the csv and md from the json


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
