"""Replay the choice of kept `auto` run folders with the current rule (recon_core.auto.choose_trained): the same
split, probes and choosing defects (all seeded by the run's spec), the candidates' saved bundles, today's code.
Prints per run the recorded winner, the replayed winner and reason, and the candidates' test AUROCs (recorded at
training time, never read by the choice), and appends one JSON line per run to OUT.

    python benchmarks/auto_rechoose.py OUT.jsonl RUN_FOLDER [RUN_FOLDER ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_core import auto
from recon_core.config import load_json
from recon_core.runs import RunSpec


def replay(run: Path) -> dict:
    spec = RunSpec.from_dict(load_json(run / "spec.json"))
    cfg = auto.auto_config(spec)
    split = auto._split(spec, cfg)
    choice = auto.choose_trained(run, spec, cfg, split, cfg.candidates)
    recorded = load_json(run / "candidates.json")
    return {
        "run": run.name,
        "recorded_winner": recorded["winner"],
        "winner": choice.winner,
        "signal": "real defects" if choice.real_decided else "probe defects",
        "reason": choice.reason,
        "real_lead_share": {n: s.get("real_lead_share") for n, s in choice.signals.items() if "real_lead_share" in s},
        "test": {
            c["model"]: {k: c["test"].get(k) for k in ("image_auroc", "pixel_auroc")} for c in recorded["candidates"]
        },
    }


def main(out: Path, runs: list[Path]) -> None:
    for run in runs:
        row = replay(run)
        print(json.dumps(row, indent=1))
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]])
