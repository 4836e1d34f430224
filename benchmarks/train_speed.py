"""Training speed of a model preset through the real loop (train.fit): steps/s, images/s, ms per image, and the
share of the loop's time spent waiting for batches (data synthesis + copy), for a number of data workers.

    python benchmarks/train_speed.py --model draem --preset cpu --iterations 20 --workers 0 1 2 [--json out.jsonl]
    python benchmarks/train_speed.py --presets cpu --set '{}' '{"precision": "bf16", "channels_last": true}'

`--set`: config overrides to compare (JSON, one measurement each), e.g. precision and memory layout.

Each measurement: a fresh model, a 2-iteration warm-up fit (allocator, kernel choice, worker start-up), then a timed
fit of --iterations. Images are 32 smooth random pictures at the preset's size (speed does not depend on content).
Run timed measurements under `flock /tmp/recon-bench.lock` on a shared machine; the load average is recorded.
Works with older train.fit versions too (no data_workers argument: reported as workers "inline").
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

# this checkout's recon_core, unless PYTHONPATH names another (run_pipeline_cpu.sh times older worktrees)
sys.path.append(str(Path(__file__).resolve().parents[1]))


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        f = rng.uniform(1, 6, 3)
        out[i] = 0.5 + 0.3 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy))[..., None] * rng.uniform(0.5, 1, 3)
    return np.clip(out + rng.normal(0, 0.02, out.shape), 0, 1).astype(np.float32)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(
    model_name: str,
    preset: str,
    batch: int | None,
    iterations: int,
    workers: int | None,
    device: str,
    overrides: dict | None = None,
) -> dict:
    from recon_core.models import get_model_class
    from recon_core.models.base import Budget
    from recon_core.synth import SynthConfig
    from recon_core.train import fit

    cls = get_model_class(model_name)
    config = cls.config_from_preset(preset, batch_size=batch, **(overrides or {}))
    data = images(32, config.image_size)
    kwargs = {}
    has_workers = "data_workers" in inspect.signature(fit).parameters
    if has_workers:
        kwargs["data_workers"] = workers
    torch.manual_seed(0)
    model = cls(config, device)
    fit(model, data, SynthConfig(), Budget(iterations=2), seed=0, **kwargs)  # warm-up
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    summary = fit(model, data, SynthConfig(), Budget(iterations=iterations), seed=1, **kwargs)
    wall = time.perf_counter() - t0
    seconds = summary.seconds
    b = int(config.batch_size)
    return {
        "model": model_name,
        "preset": preset,
        "image_size": int(config.image_size),
        "batch_size": b,
        "precision": getattr(config, "precision", "fp32"),
        "channels_last": bool(getattr(config, "channels_last", False)),
        "overrides": overrides or {},
        "device": str(device) if device != "cuda" else f"cuda ({torch.cuda.get_device_name()})",
        "workers": getattr(summary, "data_workers", "inline") if has_workers else "inline",
        "iterations": summary.iterations,
        "seconds": round(seconds, 3),
        "wall_s": round(wall, 3),
        "steps_per_s": round(summary.iterations / seconds, 4),
        "images_per_s": round(summary.iterations * b / seconds, 3),
        "ms_per_image": round(1000 * seconds / (summary.iterations * b), 3),
        "data_wait_share": round(getattr(summary, "data_wait_s", float("nan")) / seconds, 4),
        "threads": torch.get_num_threads(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpu": cpu_name(),
        # as recon_core.precision.cpu_has_amx, which older checkouts timed by this script lack
        "cpu_amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()),
        "torch": torch.__version__,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="draem")
    p.add_argument("--presets", nargs="+", default=["cpu"])
    p.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--workers", nargs="+", type=int, default=[-1], help="data workers to compare (-1: the default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    p.add_argument("--set", nargs="+", default=["{}"], help="config overrides to compare, JSON each")
    p.add_argument("--tag", default="")
    p.add_argument("--json", help="append one JSON line per measurement here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for preset in args.presets:
        for overrides in [json.loads(text) for text in args.set]:
            for workers in args.workers:
                chosen = None if workers < 0 else workers
                row = measure(args.model, preset, args.batch, args.iterations, chosen, args.device, overrides)
                line = json.dumps({**row, "tag": args.tag})
                print(line, flush=True)
                if args.json:
                    with open(args.json, "a") as fh:
                        fh.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
