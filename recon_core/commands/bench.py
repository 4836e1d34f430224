"""`python -m recon_core bench --models draem --categories mvtec_ad/bottle --shots 20 --seeds 0 1 2 --minutes 10`.

Trains and evaluates every model x category x shots x seed through the normal run pipeline and appends the
measurements to <out>/<name>.csv/.json/.md (see recon_core/bench.py and benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from recon_core.bench import BenchConfig, default_data_root, run_bench
from recon_core.errors import ConfigError
from recon_core.stage_plan import stage_plan_option


def _shots(text: str) -> int | None:
    if text.lower() in ("all", "none"):
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shots must be a whole number or 'all', got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"shots must be at least 1, got {value}")
    return value


def _synth_overrides(text: str | None) -> dict:
    """--synth-config: inline JSON or a JSON file of SynthConfig settings (checked by BenchConfig)."""
    from recon_core.config import json_option

    if not text:
        return {}
    data = json_option(text, "--synth-config")
    if not isinstance(data, dict):
        raise ConfigError('--synth-config: expected a JSON object of design settings, e.g. {"foreground": "off"}')
    return data


def bench_command(args: argparse.Namespace) -> int:
    try:
        overrides = json.loads(args.set) if args.set else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--set: not valid JSON ({exc})") from exc
    if not isinstance(overrides, dict):
        raise ConfigError("--set: expected a JSON object of model config values, e.g. '{\"lr\": 0.001}'")
    synth = _synth_overrides(args.synth_config)
    # every option named like a BenchConfig field maps onto it; --set, --synth-config and --out are spelt differently
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    cfg = BenchConfig(**given, model_overrides=overrides, synth_overrides=synth, out_dir=args.out)
    rows = run_bench(cfg)
    failed = [r for r in rows if r.get("error")]
    print(f"{len(rows) - len(failed)} of {len(rows)} runs done; results in {args.out}/{args.name}.{{csv,json,md}}")
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark models on data sets (train + evaluate + time)", description=__doc__
    )
    p.add_argument("--models", nargs="+", required=True, help="model names, e.g. draem dsr autoencoder")
    p.add_argument(
        "--categories", nargs="+", required=True, help="MVTec-layout folders relative to --data-root (or absolute)"
    )
    p.add_argument("--shots", nargs="+", type=_shots, default=[20], help="training images per run ('all' = every)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument(
        "--labelled-defects",
        nargs="+",
        type=int,
        default=[0],
        metavar="K",
        help="K real defect images of the test split go to training and leave the evaluation (default 0)",
    )
    budget = p.add_mutually_exclusive_group()  # one of them, or --stage-iterations: BenchConfig says so
    budget.add_argument("--minutes", type=float, help="training wall-clock budget per run")
    budget.add_argument("--iterations", type=int, help="training iterations per run (with --stage-iterations: stop)")
    p.add_argument(
        "--stage-iterations",
        type=stage_plan_option,
        metavar="PLAN",
        help="replay a row's schedule (its stage_iterations column, e.g. vq=490,dsr=350,upsampling=175): the same "
        "iterations per stage on any machine, where a minutes budget trains fewer on a busy one",
    )
    p.add_argument("--preset", help="model preset (default: each model's default)")
    p.add_argument("--set", help="model config overrides as JSON, e.g. '{\"lr\": 0.001}'")
    p.add_argument(
        "--synth-config",
        help='synthetic-defect design (SynthConfig) as inline JSON or a JSON file, e.g. \'{"foreground": "off"}\'',
    )
    p.add_argument("--data-root", help=f"data root (default {default_data_root()})")
    p.add_argument("--out", default="benchmarks/results", help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="bench", help="file name stem of the result tables (default bench)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores given to the process)")
    p.add_argument("--infer-repeats", type=int, default=5, help="timed inference repeats (median)")
    p.add_argument("--keep-runs", help="keep each run's folder (bundle, metrics, heatmaps) under this folder")
    p.add_argument("--tag", default="", help="free text stored with every row")
    p.set_defaults(handler=bench_command)
