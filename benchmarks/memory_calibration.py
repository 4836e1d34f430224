"""Calibrate recon_core.memory.ACTIVATION_FACTOR: peak memory of real training steps vs the estimate.

CPU: each case runs in a fresh process; the peak RSS (VmHWM, reset through /proc/self/clear_refs after the model,
its optimizer state and the batch exist) over two training steps, minus the RSS before them, is what training
adds beyond the weights. Compared with the estimate's gradients + optimizer + activations. CUDA (--device cuda):
torch.cuda.max_memory_allocated over two steps from the start, vs the whole estimate minus its fixed overhead.

    python benchmarks/memory_calibration.py [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

CASES = [
    ("draem", "cpu", 64, 8),
    ("draem", "cpu", 128, 8),
    ("draem", "cpu", 128, 16),
    ("dsr", "cpu", 128, 8),
]


def _status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def measure(model: str, preset: str, size: int, batch: int, device: str) -> dict:
    import numpy as np
    import torch

    from recon_core import memory
    from recon_core.models import get_model_class
    from recon_core.synth import SynthConfig

    torch.set_num_threads(1)
    cls = get_model_class(model)
    config = cls.config_from_preset(preset, image_size=size, batch_size=batch)
    if device == "cuda":
        config = dataclasses.replace(config, precision="fp32")
    est = memory.estimate(model, config, device)
    m = cls(config, device)
    images = np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32)
    m.setup_training(images, SynthConfig(texture_source="noise"), 0)
    stages = m.stages()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    rng = np.random.default_rng(0)
    m.train_mode(True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for stage in stages:
            for _ in range(2):
                stage.step(x, rng)
        measured = torch.cuda.max_memory_allocated()
        predicted = est.total - est.overhead
    else:
        before = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        for stage in stages:
            for _ in range(2):
                stage.step(x, rng)
        measured = _status("VmHWM") - before
        predicted = est.gradients + est.optimizer + est.activations
    saved = est.activations / memory.ACTIVATION_FACTOR / (memory.AMP_ACTIVATION_SHARE if est.mixed_precision else 1)
    fixed = predicted - est.activations
    return {
        "model": model,
        "preset": preset,
        "image_size": size,
        "batch_size": batch,
        "device": device,
        "measured_mb": round(measured / 2**20, 1),
        "estimated_mb": round(predicted / 2**20, 1),
        "ratio": round(measured / predicted, 3),
        "implied_activation_factor": round((measured - fixed) / saved, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json")
    parser.add_argument("--quick", action="store_true", help="the first case only (script check)")
    parser.add_argument("--one", nargs=4, metavar=("MODEL", "PRESET", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        model, preset, size, batch = args.one
        print(json.dumps(measure(model, preset, int(size), int(batch), args.device)))
        return 0
    rows = []
    for model, preset, size, batch in CASES[:1] if args.quick else CASES:
        cmd = [sys.executable, __file__, "--device", args.device, "--one", model, preset, str(size), str(batch)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(out, flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
