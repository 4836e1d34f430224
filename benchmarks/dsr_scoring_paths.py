"""DSR scoring through its training networks (`score_maps`: what `predict` ran before bf7651b, and what the ONNX
scorer runs) against `predict`'s frozen CPU copy (batch norm folded, channels_last), each with flush-denormal off and
on; interleaved rounds on one trained bundle, batch 8 random 256² images. Numbers: notes/dsr.md. Under the lock:

    flock /tmp/recon-bench.lock python benchmarks/dsr_scoring_paths.py RUN/model.pt [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recon_core.bundle import load_bundle
from recon_core.device import configure_cpu_threads
from recon_core.models.layers import images_to_tensor

BATCH = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    configure_cpu_threads(2)
    model = load_bundle(args.bundle).model
    images = np.random.default_rng(0).random((BATCH, 256, 256, 3), dtype=np.float32)

    def training_networks() -> None:
        with torch.no_grad():
            model.score_maps(images_to_tensor(images, model.config.image_size, model.device))

    def frozen_copy() -> None:
        model.predict(images, batch_size=BATCH)

    paths = {"training networks": training_networks, "frozen copy (predict)": frozen_copy}
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        times: dict[str, list[float]] = {name: [] for name in paths}
        for fn in paths.values():
            fn()  # warm-up (builds the copy)
        for _ in range(args.rounds):
            for name, fn in paths.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000 / BATCH)
        for name, values in times.items():
            print(f"flush-denormal {flush}, {name}: {statistics.median(values):.1f} ms/image (median of {args.rounds})")


if __name__ == "__main__":
    main()
