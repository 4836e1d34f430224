"""Scoring speed of each model's `predict` at its preset, without training (weights do not change the work):
bench.inference_ms_per_image (batch 8 random 256² images, median of REPEATS after a warm-up, resize included), run
ROUNDS times per model; appends a row per model to benchmarks/results/inference_speed.jsonl with the commit and the
machine. Run it under the bench lock on a quiet machine:

    flock /tmp/recon-bench.lock python benchmarks/inference_speed.py draem dsr [--preset cpu] [--threads 2]
    flock /tmp/recon-bench.lock python benchmarks/inference_speed.py --bundle RUN/model.pt   (a trained model)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recon_core.bench import inference_ms_per_image, machine_info  # noqa: E402
from recon_core.bundle import load_bundle  # noqa: E402
from recon_core.device import configure_cpu_threads  # noqa: E402
from recon_core.models import get_model_class  # noqa: E402


def commit() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--", "recon_core"]).returncode != 0
    return out.stdout.strip() + ("+changes" if dirty else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="model names, timed at --preset with random weights")
    ap.add_argument("--bundle", action="append", default=[], help="a trained model.pt to time (repeatable)")
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/inference_speed.jsonl"))
    args = ap.parse_args()
    configure_cpu_threads(args.threads)
    torch.manual_seed(0)
    models = []
    for name in args.models:
        cls = get_model_class(name)
        model = cls(cls.config_from_preset(args.preset), "cpu")
        if hasattr(model, "steps"):  # DSR: score through every stage, as a finished run does
            model.steps = dict.fromkeys(model.steps, 1)
        models.append((name, args.preset, model))
    for path in args.bundle:
        bundle = load_bundle(path)
        models.append((bundle.model.name, f"bundle {path}", bundle.model))
    for name, preset, model in models:
        rounds = [inference_ms_per_image(model, args.repeats) for _ in range(args.rounds)]
        row = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model": name,
            "preset": preset,
            "commit": commit(),
            "ms_per_image_median": round(statistics.median(rounds), 2),
            "ms_per_image_rounds": [round(r, 2) for r in rounds],
            "batch": 8,
            "threads": args.threads,
            **machine_info(),
        }
        print(json.dumps(row))
        with open(args.out, "a") as fh:
            fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
