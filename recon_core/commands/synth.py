"""`python -m recon_core synth preview PATH --out grid.png [knobs]`: a grid of synthetic defects."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import cv2

from recon_core.config import from_dict, load_json, to_dict
from recon_core.errors import ConfigError, ReconError
from recon_core.images import is_mvtec_layout, load_folder
from recon_core.knobs import add_cli_options, cli_values
from recon_core.synth import SynthConfig, preview, preview_grid


def build_config(args: argparse.Namespace) -> SynthConfig:
    """Defaults, then --config JSON, then any knob given on the command line."""
    values = to_dict(SynthConfig())
    if args.config:
        values.update(to_dict(from_dict(SynthConfig, load_json(args.config), where=str(args.config))))
    values.update(cli_values(args, SynthConfig))
    if args.texture_dir and args.texture_source is None:
        values["texture_source"] = "folder"  # --texture-dir alone means "use that folder"
    return from_dict(SynthConfig, values, where="synth")


def preview_command(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if args.size < 16:
        raise ConfigError(f"--size must be at least 16, got {args.size}")
    config = build_config(args)
    root = Path(args.path)
    folder = root / "train" / "good" if is_mvtec_layout(root) else root
    good = load_folder(folder, args.size, shots=args.n, seed=config.seed, min_images=1)
    start = time.perf_counter()
    augmented, masks = preview(good.images, config, n=args.n)
    grid = preview_grid(augmented, masks, columns=args.columns)
    elapsed = time.perf_counter() - start
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok = cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    except cv2.error as exc:
        raise ReconError(f"{out}: could not write the grid ({exc})") from exc
    if not ok:
        raise ReconError(f"{out}: could not write the grid (use a .png or .jpg name in a writable folder)")
    coverage = float(masks.mean())
    print(f"wrote {out} ({args.n} samples at {args.size}px, {elapsed * 1000:.0f} ms, mask coverage {coverage:.1%})")
    print("config " + ", ".join(f"{f.name}={getattr(config, f.name)!r}" for f in dataclasses.fields(config)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="synthetic defects")
    sub = parser.add_subparsers(dest="synth_command", metavar="ACTION")
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)
    prv = sub.add_parser("preview", help="write a grid of synthetic defects on images from PATH")
    prv.add_argument("path", help="an MVTec-layout folder (uses train/good) or a folder of good images")
    prv.add_argument("--out", required=True, help="output image (.png/.jpg)")
    prv.add_argument("--config", help="SynthConfig JSON (knobs given here override it)")
    prv.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    prv.add_argument("--size", type=int, default=256, help="image size (default 256)")
    prv.add_argument("--columns", type=int, default=4, help="grid columns (default 4)")
    add_cli_options(prv, SynthConfig)  # one option per declared SynthConfig knob
    prv.set_defaults(handler=preview_command)
