"""Tabulate the choices of kept `auto` run folders: per run, each candidate's validation signal (what chose) next to
its test image AUROC (never used to choose), and whether the pick was the test-best candidate.

    python benchmarks/auto_choices.py RUNS_FOLDER OUT.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def fmt(value: object) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def main(runs: Path, out: Path) -> None:
    lines = [
        "| run | winner | signal | candidate | iterations | probe image AUROC | probe pixel AUROC | real-defect score |"
        " test image AUROC | test pixel AUROC |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    picks = []
    for path in sorted(runs.glob("auto-*/candidates.json")):
        record = json.loads(path.read_text())
        tests = {c["model"]: c["test"].get("image_auroc") or 0.0 for c in record["candidates"]}
        picks.append(tests[record["winner"]] >= max(tests.values()))
        for c in record["candidates"]:
            v, t = c["validation"], c["test"]
            lines.append(
                f"| {path.parent.name} | {record['winner']} | {record['signal']} | {c['model']} | {c['iterations']} | "
                f"{fmt(v.get('probe_image_auroc'))} | {fmt(v.get('probe_pixel_auroc'))} | "
                f"{fmt(v.get('real_signal'))} | "
                f"{fmt(t.get('image_auroc'))} | {fmt(t.get('pixel_auroc'))} |"
            )
    lines.append("")
    lines.append(f"auto picked the test-best candidate in {sum(picks)} of {len(picks)} runs.")
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
