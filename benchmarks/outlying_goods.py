"""Good test images that a kept run scores far above all the other goods (`metrics.outlying_goods`), and what they
cost: the run's image AUROC, and as a diagnostic only (not an evaluation figure: it drops test images after
seeing their scores) the image AUROC without them. One JSON line per run.

    python benchmarks/outlying_goods.py KEPT/*fabric01* > benchmarks/results/outlying_goods.jsonl

`--variant TEXT` also counts the run's training goods whose file name contains TEXT (AITEX fabric01's scan-start
tiles: `_t01`), to tie the outliers to what the 20 sampled training goods held. README "Issue 12" (fabric01).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_core import metrics
from recon_core.evaluation import load_eval


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="kept bench run folders (eval.npz + eval.json, spec.json, data.json)")
    ap.add_argument("--variant", help="count training goods whose file name contains this text")
    args = ap.parse_args()
    for run in map(Path, args.runs):
        spec = json.loads((run / "spec.json").read_text())
        result = load_eval(run / "eval")
        out = metrics.outlying_goods(result.labels, result.scores)
        keep = np.setdiff1d(np.arange(len(result.labels)), out)
        row = {
            "run": run.name,
            "model": spec["model"],
            "seed": spec.get("seed"),
            "labelled_defects": spec.get("labelled_defects", 0),
            "n_good": int((result.labels == 0).sum()),
            "image_auroc": metrics.image_auroc(result.labels, result.scores),
            "outlying_goods": [Path(result.paths[i]).name for i in out],
            "image_auroc_without_them_diagnostic": metrics.image_auroc(result.labels[keep], result.scores[keep]),
        }
        if args.variant:
            train = json.loads((run / "data.json").read_text())["train"]
            row["training_goods_with_variant"] = [Path(p).name for p in train if args.variant in Path(p).name]
        print(json.dumps(row))


if __name__ == "__main__":
    main()
