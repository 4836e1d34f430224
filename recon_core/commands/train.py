"""`python -m recon_core train | eval | predict | export | threshold`: train a model in the foreground, evaluate it,
score new images, export it, and set its decision threshold."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recon_core.errors import CheckpointError, ConfigError, DataError, ReconError
from recon_core.stage_plan import several_stages, stage_plan_option

DEFAULT_RUNS_DIR = "runs"


# ---------------------------------------------------------------------------------------------------------
# helpers


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """--set KEY=VALUE pairs -> model config overrides (VALUE parsed as JSON when it is JSON, else a string)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set image_size=128")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _synth_from_arg(text: str | None) -> Any:
    """--synth-config: a JSON file or inline JSON -> SynthConfig (strict: unknown keys are errors)."""
    from recon_core.config import from_dict, json_option
    from recon_core.synth import SynthConfig

    if not text:
        return SynthConfig()
    return from_dict(SynthConfig, json_option(text, "--synth-config"), where="synth")


def bundle_path_of(run_or_bundle: str | Path) -> Path:
    """A run folder (-> its model.pt) or a bundle file."""
    path = Path(run_or_bundle)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise CheckpointError(f"{run_or_bundle}: no trained model found (expected a run folder with model.pt or a .pt)")
    return path


def _print_json(data: Any, out: str | None = None) -> None:
    text = json.dumps(data, indent=2, default=str)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
        print(f"wrote {out}")
    else:
        print(text)


class _Bar:
    """tqdm progress bar driven by fit's progress callback (total known after calibration for minutes)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, p: Any) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=p.total_iterations, unit="it", dynamic_ncols=True, file=sys.stderr)
        if self.bar.total != p.total_iterations:
            self.bar.total = p.total_iterations
        self.bar.update(max(0, p.iteration - self.bar.n))
        terms = {k: f"{v:.4g}" for k, v in list(p.losses.items())[:4]}
        self.bar.set_postfix(stage=p.stage, lr=f"{p.lr:.2g}", ips=f"{p.images_per_s:.1f}", **terms)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------------------------------------
# train


SPEC_FROM_OPTIONS_SKIP = ("data", "model_overrides", "synth")  # built from PATH, --set and --synth-config


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The run-spec options, declared once for `train` and `jobs submit` (defaults: RunSpec's, when not given)."""
    p.add_argument(
        "--model",
        default=None,
        help="draem, dsr, autoencoder, ganomaly, aae, auto (trains several, keeps the best); default draem",
    )
    p.add_argument(
        "--preset", default=None, help="model preset (default: the model's default, e.g. cpu; `presets` lists them)"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model setting override (repeatable)")
    p.add_argument("--shots", type=int, default=None, help="train on this many good images (seeded sample)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--iterations", type=int, default=None, help="training iterations (default: the preset's suggested budget)"
    )
    budget.add_argument("--minutes", type=float, default=None, help="wall-clock budget in minutes")
    p.add_argument(
        "--stage-iterations",
        type=stage_plan_option,
        default=None,
        metavar="PLAN",
        help="replay a run's schedule: its iterations per stage, e.g. vq=490,dsr=350,upsampling=175 (printed by "
        "train, in metrics.json); with --iterations N the replay stops after N, as that run did",
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, mps (default auto)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument(
        "--synth-config",
        "--synth",  # the old `jobs submit` spelling, kept as an alias
        dest="synth_config",
        default=None,
        metavar="JSON",
        help="defect design (SynthConfig): a JSON file or inline JSON; --synth is an alias",
    )
    p.add_argument("--init-from", default=None, metavar="BUNDLE", help="warm start from a model.pt of the same model")
    p.add_argument("--checkpoint-every", type=int, default=None, help="iterations between checkpoints (default 50)")
    p.add_argument(
        "--labelled-defects",
        type=int,
        default=None,
        metavar="K",
        help="train with K real defect images (seeded choice from the test split; draem and dsr need their masks); "
        "they leave the evaluation (draem, dsr, aae)",
    )
    p.add_argument(
        "--labelled-defect-file",
        dest="labelled_defect_files",
        action="append",
        default=None,
        metavar="PATH",
        help="a defect image of the test split to train with instead of a seeded choice (repeatable; absolute or "
        "relative to the data folder); it leaves the evaluation",
    )
    p.add_argument("--name", default=None, help="a label for the run")


def build_spec(args: argparse.Namespace) -> Any:
    """A RunSpec from the options of add_run_options + PATH (the one builder for `train` and `jobs submit`);
    validated strictly by from_dict: unknown settings and wrong types are errors."""
    import dataclasses

    from recon_core.config import from_dict, to_dict
    from recon_core.runs import RunSpec

    if getattr(args, "path", None) is None:
        raise ConfigError("train: give the training data PATH (or --resume with --out of an existing run)")
    path = Path(args.path).expanduser()
    # an existing folder is stored absolute (a worker or a resume may run elsewhere); a category name stays as given
    values: dict[str, Any] = {"data": str(path.resolve()) if path.exists() else args.path}
    for f in dataclasses.fields(RunSpec):
        given = getattr(args, f.name, None)
        if f.name not in SPEC_FROM_OPTIONS_SKIP and given is not None:
            values[f.name] = given
    if args.set:
        values["model_overrides"] = parse_overrides(args.set)
    if args.synth_config:
        values["synth"] = to_dict(_synth_from_arg(args.synth_config))
    return from_dict(RunSpec, values, where="run spec")


def _already_finished(out: Path) -> int:
    """`train --resume` on a finished run: say so and change nothing (it used to retrain zero iterations, then
    replace a hand-set threshold with the default one and rewrite the evaluation)."""
    from recon_core.bundle import load_bundle

    thr = load_bundle(out / "model.pt", "cpu").threshold
    kept = f"threshold {thr.value:.6g} ({thr.method})" if thr is not None else "no threshold"
    print(
        f"{out}: this run already finished; nothing to resume. Its model, {kept} and evaluation are unchanged.\n"
        f"To train longer, start a new run from it: python -m recon_core train DATA --init-from {out / 'model.pt'} "
        "--out NEW_FOLDER"
    )
    return 0


def train(args: argparse.Namespace) -> int:
    from recon_core.config import load_json
    from recon_core.errors import TrainingCancelled
    from recon_core.runs import RunSpec, execute_run, finished_run

    out = Path(args.out) if args.out else None
    if args.resume:
        if out is None or not (out / "spec.json").is_file():
            raise ConfigError("--resume needs --out pointing at an existing run folder (with spec.json)")
        spec = RunSpec.from_dict(load_json(out / "spec.json"))
        if finished_run(out):
            return _already_finished(out)
    else:
        spec = build_spec(args)
        if out is None:
            out = Path(DEFAULT_RUNS_DIR) / f"{spec.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (out / "model.pt").exists() or (out / "checkpoint.pt").exists():
            raise ConfigError(f"{out}: already holds a run; use --resume to continue it or another --out")
    bar = _Bar(not args.quiet)
    try:
        result = execute_run(spec, out, progress=bar, resume=args.resume)
    except TrainingCancelled as exc:
        bar.close()
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        bar.close()
        print(f"interrupted; resume with: python -m recon_core train --resume --out {out}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    m = result.metrics
    summary = {
        k: m.get(k)
        for k in (
            "image_auroc",
            "image_ap",
            "f1_max",
            "pixel_auroc",
            "aupro",
            "synthetic",
            "iterations",
            "train_seconds",
        )
    }
    print(f"run folder: {out}")
    print(f"model: {result.bundle_path}")
    print(json.dumps(summary, indent=2))
    by_type = m.get("by_type") or []
    if len(by_type) > 1:
        from recon_core.evaluation import describe_type_row, type_findings

        print("per defect type:\n" + "\n".join("  " + describe_type_row(row) for row in by_type))
        for finding in type_findings(by_type, m.get("pixel_auroc")):
            print(f"  - {finding}")
    if several_stages(m.get("stage_iterations")):
        print(f"iterations per stage (replay with --stage-iterations): {m['stage_iterations']}")
    if m.get("synthetic"):
        print("note: no real defect images: metrics are on held-out good images + synthetic defects (optimistic)")
    _print_caveats(m.get("warnings"), m.get("threshold"))
    return 0


def _print_caveats(warnings: list[str] | None, threshold: Any = None) -> None:
    """The evaluation's warnings and the threshold (provisional or not), on stderr so JSON output stays clean."""
    from recon_core.config import from_dict
    from recon_core.metrics import Threshold, describe_threshold

    for text in warnings or []:
        print(f"warning: {text}", file=sys.stderr)
    if isinstance(threshold, dict):
        threshold = from_dict(Threshold, threshold, where="threshold")
    if threshold is not None:
        print(f"threshold: {describe_threshold(threshold)}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# eval / predict / export / threshold


def evaluate(args: argparse.Namespace) -> int:
    from recon_core import metrics as metrics_mod
    from recon_core.bundle import load_bundle
    from recon_core.evaluation import (
        defect_type_rows,
        evaluate_bundle,
        evaluated_on,
        record_evaluation,
        save_eval,
        type_findings,
    )
    from recon_core.runs import resolve_data_path

    bundle = load_bundle(bundle_path_of(args.run), args.device)
    # a run's own training images are left out (by content, from its data.json)
    result = evaluate_bundle(bundle, resolve_data_path(args.data), synthetic_fallback=not args.no_synthetic)
    by_type = defect_type_rows(result, bundle.threshold)  # per defect type; `caught` at the saved threshold
    out: dict[str, Any] = {
        "metrics": {k: v for k, v in result.metrics.items() if k != "by_type"},
        "by_type": by_type,
        "type_findings": type_findings(by_type, result.metrics.get("pixel_auroc")),
        "synthetic": result.synthetic,
        "evaluated_on": evaluated_on(result.metrics),
        "warnings": result.metrics["warnings"],
    }
    if len(set(result.labels.tolist())) == 2:
        out["roc"] = metrics_mod.roc_points(result.labels, result.scores)
        out["pr"] = metrics_mod.pr_points(result.labels, result.scores)
    if bundle.threshold is not None:
        out["confusion"] = metrics_mod.confusion(result.labels, result.scores, bundle.threshold)
    if args.save_eval:
        save_eval(result, args.save_eval)
    if Path(args.run).is_dir():  # the run's current evaluation from now on (picker, metrics.json, exports)
        record_evaluation(args.run, result)
    _print_json(out, args.out)
    _print_caveats(result.metrics["warnings"], bundle.threshold)
    return 0


def _expand_paths(items: list[str]) -> list[str]:
    from recon_core.images import list_images

    paths: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(str(x) for x in list_images(p))
        else:
            paths.append(item)  # missing/unreadable files become per-file problems
    if not paths:
        raise DataError("predict: no images given (folders were empty)")
    return paths


def predict(args: argparse.Namespace) -> int:
    from recon_core.bundle import load_bundle
    from recon_core.images import display_path
    from recon_core.inference import overlay, predict_paths, save_png, write_csv

    bundle = load_bundle(bundle_path_of(args.run), args.device)
    paths = _expand_paths(args.paths)
    rows, maps, images = predict_paths(bundle, paths)
    out = Path(args.out)
    write_csv(rows, out / "predictions.csv")
    if not args.no_heatmaps and maps:
        scale = np.concatenate([m.ravel() for m in maps.values()])
        vmin, vmax = float(np.min(scale)), float(np.max(scale))  # one colour scale for the whole batch
        used: set[str] = set()
        for p, amap in maps.items():
            stem = Path(p).stem
            name, k = stem, 1
            while name in used:
                k += 1
                name = f"{stem}_{k}"
            used.add(name)
            save_png(out / "heatmaps" / f"{name}.png", overlay(images[p], amap, args.alpha, vmin, vmax))
    counts: dict[str, int] = {}
    for r in rows:
        key = r["verdict"] or ("problem" if r["problem"] else "scored")
        counts[key] = counts.get(key, 0) + 1
    print(f"wrote {out / 'predictions.csv'} ({len(rows)} file(s): {counts})")
    for r in rows:
        if r["problem"]:
            print(f"problem: {display_path(r['path'])}: {r['problem']}", file=sys.stderr)
    if bundle.threshold is None:
        print("note: the model has no threshold yet, so no verdicts (set one with the threshold command)")
    elif bundle.threshold.params.get("provisional"):
        _print_caveats([], bundle.threshold)
    return 0


def export(args: argparse.Namespace) -> int:
    from recon_core.export import export_bundle_zip, export_onnx

    if not args.onnx and not args.zip:
        raise ConfigError("export: give --onnx FILE and/or --zip FILE")
    bundle = bundle_path_of(args.run)
    if args.onnx:
        info = export_onnx(bundle, args.onnx)
        print(f"wrote {args.onnx} (max |onnx - torch| on the map: {info.get('max_abs_diff_map', float('nan')):.2g})")
    if args.zip:
        info = export_bundle_zip(bundle.parent if Path(args.run).is_dir() else bundle, args.zip)
        print(f"wrote {args.zip} ({', '.join(info['files'])})")
    return 0


def compute_threshold(result: Any, method: str, value: float | None, review_below: float | None) -> Any:
    from recon_core import metrics as m

    if method == "f1":
        thr = m.threshold_f1(result.labels, result.scores)
    elif method == "fpr":
        thr = m.threshold_at_fpr(result.labels, result.scores, 0.01 if value is None else value)
    elif method == "quantile":
        thr = m.threshold_quantile(result.scores[result.labels == 0], 0.99 if value is None else value)
    elif method == "manual":
        if value is None:
            raise ConfigError("threshold --method manual needs --value")
        thr = m.threshold_manual(value)
    else:
        raise ConfigError(f"unknown threshold method {method!r}: f1, fpr, quantile or manual")
    seen = bool(result.metrics.get("evaluation_goods_seen_in_training"))
    thr = m.annotate(thr, result.labels, result.synthetic, seen)  # counts, synthetic or real, provisional
    return thr.with_review(review_below) if review_below is not None else thr


def threshold(args: argparse.Namespace) -> int:
    from recon_core import metrics as m
    from recon_core.config import to_dict
    from recon_core.evaluation import current_evaluation, evaluated_on, record_threshold

    run = Path(args.run)
    if not run.is_dir():
        raise ConfigError(f"{run}: not a run folder")
    bundle_path_of(run)
    result, _ = current_evaluation(run)  # the latest evaluation (never on the run's training images)
    if result is None:
        raise ConfigError(f"{run}: no saved evaluation (run eval first)")
    thr = compute_threshold(result, args.method, args.value, args.review_below)
    record_threshold(run, thr)
    out = {
        "threshold": to_dict(thr),
        "confusion": m.confusion(result.labels, result.scores, thr),
        "evaluated_on": evaluated_on(result.metrics),
        "warnings": list(thr.params.get("warnings", [])) + list(result.metrics.get("warnings", [])),
    }
    if result.synthetic:
        out["note"] = "computed on synthetic defects (no real defect images in the evaluation)"
    _print_json(out)
    _print_caveats(out["warnings"], thr)
    return 0


# ---------------------------------------------------------------------------------------------------------
# parsers


def list_presets(args: argparse.Namespace) -> int:
    from recon_core.models import get_model_class, model_names

    names = [args.model] if args.model else model_names()
    for name in names:
        cls = get_model_class(name)
        print(f"{name}:")
        for preset in cls.presets:
            default = " (default)" if preset == cls.default_preset else ""
            print(f"  {preset}{default}: {cls.describe_preset(preset)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model in the foreground (a run folder with model.pt)")
    p.add_argument("path", nargs="?", help="training data: MVTec-layout folder, folder of good images, or a category")
    add_run_options(p)
    p.add_argument("--out", default=None, help=f"run folder (default {DEFAULT_RUNS_DIR}/<model>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=train)

    p = subparsers.add_parser("presets", help="list each model's presets: what they are for, suggested budgets")
    p.add_argument("--model", default=None, help="only this model")
    p.set_defaults(handler=list_presets)

    p = subparsers.add_parser("eval", help="evaluate a trained model on a data set (metrics + ROC/PR points, JSON)")
    p.add_argument("run", metavar="RUN_OR_BUNDLE")
    p.add_argument("--data", required=True, help="MVTec-layout folder (test/), folder of good images, or category")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="write the JSON here instead of printing it")
    p.add_argument("--save-eval", default=None, metavar="PATH", help="also save scores/maps (PATH.npz + PATH.json)")
    p.add_argument("--no-synthetic", action="store_true", help="fail instead of using synthetic defects")
    p.set_defaults(handler=evaluate)

    p = subparsers.add_parser("predict", help="score images: CSV of scores and verdicts + heatmap overlays")
    p.add_argument("run", metavar="RUN_OR_BUNDLE")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder (predictions.csv, heatmaps/)")
    p.add_argument("--device", default="auto")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity (default 0.5)")
    p.add_argument("--no-heatmaps", action="store_true")
    p.set_defaults(handler=predict)

    p = subparsers.add_parser("export", help="export a trained model (ONNX and/or a zip with everything)")
    p.add_argument("run", metavar="RUN_OR_BUNDLE")
    p.add_argument("--onnx", default=None, metavar="FILE")
    p.add_argument("--zip", default=None, metavar="FILE")
    p.set_defaults(handler=export)

    p = subparsers.add_parser("threshold", help="set a run's decision threshold from its saved evaluation")
    p.add_argument("run", metavar="RUN")
    p.add_argument("--method", choices=["f1", "fpr", "quantile", "manual"], required=True)
    p.add_argument(
        "--value", type=float, default=None, help="fpr: target FPR (0.01); quantile: quantile (0.99); manual: value"
    )
    p.add_argument("--review-below", type=float, default=None, help="scores from here up to the threshold: review")
    p.set_defaults(handler=threshold)


__all__ = ["ReconError", "bundle_path_of", "compute_threshold", "register"]
