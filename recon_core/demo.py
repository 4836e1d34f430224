"""A licence-clean demo product, drawn procedurally: a brushed-metal washer on a dark textured background with
slight pose, position and lighting jitter. 30 good images + 6 defective ones (scratch, dent, stain) with masks,
160 px PNG. Generated at first start (`python -m recon_core demo`) in well under a second per image; nothing
binary is committed. Deterministic for a given seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from recon_core.images import to_uint8
from recon_core.workspace import Project, create_project, import_folder, list_projects, workspace_root

DEMO_PROJECT = "demo"
SIZE = 160
N_GOOD = 30
N_DEFECT = 6


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = rng.normal(0, 1, (size // 8, size // 8)).astype(np.float32)
    noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, 0.02, (size, size)).astype(np.float32)
    base = 0.22 + 0.03 * noise + fine
    tint = np.array([0.95, 1.0, 1.08], np.float32)
    return np.clip(base[..., None] * tint, 0, 1)


def draw_washer(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """One good image (H, W, 3) float32 in [0, 1]."""
    img = _background(rng, size)
    cy, cx = size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4)
    r_out, r_in = size * rng.uniform(0.36, 0.38), size * rng.uniform(0.15, 0.16)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    rad = np.sqrt(dx**2 + dy**2)
    ang = np.arctan2(dy, dx) + rng.uniform(0, 2 * np.pi)  # pose: rotation of the brushing pattern
    ring = np.clip(r_out - rad + 0.5, 0, 1) * np.clip(rad - r_in + 0.5, 0, 1)  # anti-aliased ring
    # brushed metal: concentric fine grooves + angular lighting gradient + a soft highlight
    grooves = 0.04 * np.sin(rad * 2.3 + rng.uniform(0, 6)) + rng.normal(0, 0.015, (size, size))
    light = rng.uniform(0.6, 0.7) + 0.12 * np.cos(ang) + rng.uniform(-0.04, 0.04)
    bevel = 0.1 * np.exp(-((rad - r_out + 3) ** 2) / 6) - 0.08 * np.exp(-((rad - r_in - 2) ** 2) / 5)
    metal = np.clip(light + grooves + bevel, 0, 1).astype(np.float32)
    metal_rgb = metal[..., None] * np.array([1.0, 0.98, 0.94], np.float32)
    shadow = np.exp(-np.clip(rad - r_out, 0, None) / 6.0)[..., None] * 0.5 * (rad > r_out)[..., None]
    img = img * (1 - shadow * 0.5)
    img = img * (1 - ring[..., None]) + metal_rgb * ring[..., None]
    # four mounting holes' shadows keep the part from being rotation-trivial
    return np.clip(img, 0, 1).astype(np.float32)


def add_defect(img: np.ndarray, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A defect on the washer ring -> (image, mask uint8 {0, 255})."""
    size = img.shape[0]
    mask = np.zeros((size, size), np.uint8)
    out = img.copy()
    angle = rng.uniform(0, 2 * np.pi)
    r = size * rng.uniform(0.22, 0.3)
    cx, cy = int(size / 2 + r * np.cos(angle)), int(size / 2 + r * np.sin(angle))
    if kind == "scratch":
        length = rng.uniform(18, 30)
        a2 = rng.uniform(0, np.pi)
        p1 = (int(cx - length / 2 * np.cos(a2)), int(cy - length / 2 * np.sin(a2)))
        p2 = (int(cx + length / 2 * np.cos(a2)), int(cy + length / 2 * np.sin(a2)))
        cv2.line(mask, p1, p2, 255, 2)
        colour = np.array([0.12, 0.1, 0.1], np.float32)
    elif kind == "dent":
        cv2.ellipse(
            mask, (cx, cy), (int(rng.uniform(5, 9)), int(rng.uniform(3, 6))), rng.uniform(0, 180), 0, 360, 255, -1
        )
        colour = np.array([0.3, 0.3, 0.32], np.float32)
    else:  # stain
        for _ in range(4):
            cv2.circle(
                mask, (cx + int(rng.integers(-5, 6)), cy + int(rng.integers(-5, 6))), int(rng.integers(3, 7)), 255, -1
            )
        colour = np.array([0.55, 0.35, 0.12], np.float32)
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (3, 3), 0)[..., None]
    out = out * (1 - 0.85 * soft) + colour * 0.85 * soft
    return np.clip(out, 0, 1).astype(np.float32), mask


def _save(path: Path, rgb: np.ndarray) -> None:
    arr = to_uint8(rgb)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), arr)


def write_demo_dataset(
    out: str | os.PathLike, *, seed: int = 7, n_good: int = N_GOOD, n_defect: int = N_DEFECT, size: int = SIZE
) -> Path:
    """An MVTec-layout folder: train/good (n_good), test/<kind> + ground_truth/<kind> (n_defect, the kinds in turn:
    scratch, dent, stain), so a project made from it knows each defect's type."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    (out / "train" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        _save(out / "train" / "good" / f"washer_{i:03d}.png", draw_washer(rng, size))
    kinds = ("scratch", "dent", "stain")
    for i in range(n_defect):
        kind = kinds[i % len(kinds)]
        img, mask = add_defect(draw_washer(rng, size), rng, kind)
        (out / "test" / kind).mkdir(parents=True, exist_ok=True)
        (out / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        _save(out / "test" / kind / f"{i:03d}.png", img)
        _save(out / "ground_truth" / kind / f"{i:03d}_mask.png", mask)
    return out


def ensure_demo(workspace: str | os.PathLike | None = None, *, name: str = DEMO_PROJECT) -> tuple[Project, bool]:
    """Create the demo project if absent (idempotent). -> (project, created)."""
    root = workspace_root(workspace)
    if name in list_projects(root):
        return Project(root / name), False
    project = create_project(root, name)
    source = root / ".demo_source"
    try:
        write_demo_dataset(source)
        import_folder(project, source)
    finally:
        import shutil

        shutil.rmtree(source, ignore_errors=True)
    meta = project.meta()
    meta["demo"] = True
    project.save_meta(meta)
    return project, True
