"""Make the bundled, licence-clean texture set in assets/textures/ (procedural, seeded, reproducible).

    python scripts/make_textures.py [--out assets/textures] [--size 256] [--seed 0]

24 textures: noise (Perlin, fractal), stripes, cellular (Voronoi), scratches, checker, gradients, blotches,
weave, each with random colours. JPEG quality 90, total well under 1.5 MB. Everything is generated here,
so the set carries no third-party licence.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from recon_core.synth import perlin_noise


def _norm(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return (a - a.min()) / max(float(a.max() - a.min()), 1e-6)


def _colourise(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map a [0, 1] field between two or three random colours."""
    stops = rng.random((int(rng.integers(2, 4)), 3)).astype(np.float32)
    pos = gray * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    t = (pos - lo)[..., None]
    return stops[lo] * (1 - t) + stops[lo + 1] * t


def fractal(size: int, rng: np.random.Generator, octaves: int = 5, base: int = 2) -> np.ndarray:
    out = np.zeros((size, size), np.float32)
    amp = 1.0
    for o in range(octaves):
        res = min(size, base * 2**o)
        out += amp * perlin_noise(size, (res, res), rng)
        amp *= 0.5
    return _norm(out)


def stripes(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(4, 24) * 2 * np.pi / size
    warp = perlin_noise(size, (4, 4), rng) * rng.uniform(0, 3)
    return _norm(np.sin((x * np.cos(angle) + y * np.sin(angle)) * freq + warp))


def voronoi(size: int, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(12, 60))
    pts = rng.random((n, 2)) * size
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    d = np.sqrt((x[None] - pts[:, 0, None, None]) ** 2 + (y[None] - pts[:, 1, None, None]) ** 2)
    d.sort(axis=0)
    return _norm(d[1] - d[0]) if rng.random() < 0.5 else _norm(d[0])


def scratches(size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(20, 80))):
        p0 = rng.integers(0, size, 2)
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(size * 0.1, size * 0.8)
        p1 = (p0 + length * np.array([np.cos(angle), np.sin(angle)])).astype(int)
        cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), int(rng.integers(80, 256)), 1, cv2.LINE_AA)
    base = fractal(size, rng, 3, 4) * 0.4
    return _norm(base + img.astype(np.float32) / 255.0)


def checker(size: int, rng: np.random.Generator) -> np.ndarray:
    cells = int(rng.choice([4, 8, 16, 32]))
    y, x = np.mgrid[0:size, 0:size] * cells // size
    board = ((x + y) % 2).astype(np.float32)
    return _norm(board + 0.3 * fractal(size, rng, 3, 8))


def gradient(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    return _norm(x * np.cos(angle) + y * np.sin(angle) + 0.25 * fractal(size, rng, 4, 2))


def blotches(size: int, rng: np.random.Generator) -> np.ndarray:
    field = fractal(size, rng, 4, 4)
    return (field > rng.uniform(0.4, 0.6)).astype(np.float32) * 0.7 + 0.3 * field


def weave(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    f = 2 * np.pi * rng.uniform(8, 20) / size
    return _norm(np.sin(x * f) * np.sin(y * f) + 0.3 * perlin_noise(size, (16, 16), rng))


KINDS = [
    ("perlin", lambda s, r: fractal(s, r, 1, int(r.choice([4, 8, 16])))),
    ("fractal", fractal),
    ("stripes", stripes),
    ("voronoi", voronoi),
    ("scratches", scratches),
    ("checker", checker),
    ("gradient", gradient),
    ("blotches", blotches),
    ("weave", weave),
]


def make(out: Path, size: int = 256, seed: int = 0, count: int = 24) -> list[Path]:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.jpg"):
        old.unlink()
    written = []
    for i in range(count):
        name, fn = KINDS[i % len(KINDS)]
        rgb = _colourise(fn(size, rng), rng)
        bgr = cv2.cvtColor(np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        path = out / f"{i:02d}_{name}.jpg"
        cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "assets" / "textures")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=24)
    args = parser.parse_args()
    files = make(args.out, args.size, args.seed, args.count)
    total = sum(p.stat().st_size for p in files)
    print(f"wrote {len(files)} textures to {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
