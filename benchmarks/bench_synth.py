"""Time the synthetic-defect preview: 8 samples at 256x256 on ONE CPU core (median of repeats).

    flock /tmp/recon-bench.lock python benchmarks/bench_synth.py [--repeats 30] [--data PATH]

Writes benchmarks/results/synth.json. Uses real images from PATH (train/good of an MVTec-layout folder)
when given and present, random images otherwise; the bar (SPEC) is < 0.5 s, the project's own bar < 50 ms.
"""

from __future__ import annotations

import os

# one core: set before numpy / cv2 / torch load their thread pools
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from recon_core import synth  # noqa: E402
from recon_core.images import is_mvtec_layout, load_folder  # noqa: E402
from recon_core.synth import DefectGenerator, SynthConfig, preview, preview_grid  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "synth.json"


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def cold_start(size: int) -> None:
    """Build a generator with an empty texture cache (reads and resizes the bundled textures)."""
    synth._load_texture_pool.cache_clear()
    DefectGenerator(SynthConfig(), size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/mvtec3d_ad/tire"))
    args = parser.parse_args()

    cv2.setNumThreads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    with contextlib.suppress(AttributeError, OSError):  # pin to one core where the OS allows it
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    data = Path(args.data)
    if data.is_dir():
        folder = data / "train" / "good" if is_mvtec_layout(data) else data
        images = load_folder(folder, args.size, shots=args.n, seed=0).images
        source = str(data)
    else:
        images = np.random.default_rng(0).random((args.n, args.size, args.size, 3), dtype=np.float32)
        source = "random"

    rows = {}
    for label, cfg in [
        ("bundled textures (default)", SynthConfig()),
        ("noise textures", SynthConfig(texture_source="noise")),
        ("good-image rotation on", SynthConfig(rotate_good_probability=1.0)),
    ]:
        preview(images, cfg, n=args.n)  # warm-up: texture pool is built and cached once
        times = timed(lambda cfg=cfg: preview(images, cfg, n=args.n), args.repeats)
        rows[label] = {"median_ms": 1000 * float(np.median(times)), "p90_ms": 1000 * float(np.quantile(times, 0.9))}

    gen = DefectGenerator(SynthConfig(), args.size)
    rng = np.random.default_rng(0)
    parts = {
        "perlin_mask_ms_per_sample": 1000 * float(np.median(timed(lambda: gen.perlin_masks(1, rng), 100))),
        "texture_with_3_augs_ms_per_sample": 1000
        * float(np.median(timed(lambda: gen._texture(rng, args.size, args.size), 100))),
        "generator_cold_start_ms": 1000 * float(np.median(timed(lambda: cold_start(args.size), 5))),
    }
    augmented, masks = preview(images, SynthConfig(), n=args.n)
    parts["grid_ms"] = 1000 * float(np.median(timed(lambda: preview_grid(augmented, masks), 20)))

    result = {
        "what": f"synth.preview of {args.n} samples at {args.size}x{args.size}, one CPU core, median of {args.repeats}",
        "images": source,
        "preview": rows,
        "parts": parts,
        "bar_ms": 50.0,
        "spec_bar_ms": 500.0,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "note": "other test runs share the machine, so timings are noisy",
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    for label, row in rows.items():
        print(f"{label:<28} median {row['median_ms']:6.1f} ms   p90 {row['p90_ms']:6.1f} ms")
    for key, value in parts.items():
        print(f"{key:<36} {value:6.2f}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
