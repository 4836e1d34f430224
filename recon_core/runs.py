"""One training run from a spec, end to end: data -> model -> fit -> bundle -> evaluation -> heatmaps. Used by
the CLI `train`, by job workers and by the benchmark, so all of them produce the same run folder:

    run_dir/spec.json      the RunSpec
    run_dir/data.json      chosen training files (few-shot sample), unusable files, test split summary
    run_dir/checkpoint.pt  resumable checkpoint (bundle + optimizer / rng state)
    run_dir/model.pt       the trained bundle (with a default threshold, see below)
    run_dir/losses.csv     loss log (long format)
    run_dir/eval.npz/.json the evaluation (scores, maps, labels) for the Evaluate/Threshold pages
    run_dir/metrics.json   headline metrics + run facts (iterations, seconds, device, synthetic or real test)
    run_dir/heatmaps/*.png image | heatmap overlay | mask
    run_dir/run.log        the run's log
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recon_core.config import from_dict, load_json, save_json, to_dict
from recon_core.errors import ConfigError, DataError, ReconError, TrainingCancelled
from recon_core.stage_plan import check_replay, format_stage_plan, parse_stage_plan
from recon_core.synth import SynthConfig

log = logging.getLogger(__name__)

MAX_HEATMAPS = 6
HOLDOUT_MIN_TRAIN = 10  # a plain folder with at least this many images gives 20 % to the synthetic evaluation
HOLDOUT_SHARE = 0.2


@dataclass
class RunSpec:
    data: str
    model: str = "draem"
    preset: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    shots: int | None = None
    synth: SynthConfig = field(default_factory=SynthConfig)
    iterations: int | None = None
    minutes: float | None = None
    # a replay: the per-stage plan a run recorded (metrics.json "stage_iterations"); `iterations`, if given, is where
    # that run stopped. The same schedule, iteration for iteration, on any machine (Budget)
    stage_iterations: dict[str, int] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    init_from: str | None = None
    checkpoint_every: int = 50
    name: str | None = None
    labelled_defects: int = 0
    # named defect images of the data's test split to train with instead of a seeded choice of `labelled_defects`
    # (paths, absolute or relative to the data folder); like those, they leave the evaluation
    labelled_defect_files: list[str] = field(default_factory=list)
    # files left out of training and evaluation (model "auto" holds them out to choose the model on)
    exclude_paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # refused here (so `jobs submit` refuses at once) rather than as a ValueError deep inside the worker
        limits = {"seed": 0, "checkpoint_every": 0, "labelled_defects": 0, "shots": 1}
        for name, low in limits.items():
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool) and value < low:
                raise ConfigError(f"run spec: {name} must be at least {low}, got {value}")
        if self.stage_iterations:
            check_replay(self.stage_iterations, self.iterations, self.minutes, "run spec")
        if self.labelled_defect_files and self.labelled_defects not in (0, len(self.labelled_defect_files)):
            raise ConfigError(
                f"run spec: labelled_defects ({self.labelled_defects}) and labelled_defect_files "
                f"({len(self.labelled_defect_files)} files) disagree; give one of them"
            )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return from_dict(cls, data, where="run spec")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"run spec: not valid JSON ({exc})") from exc


@dataclass
class RunResult:
    bundle_path: str
    metrics: dict[str, Any]


def shared_data_root() -> Path:
    return Path(os.environ.get("RECON_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def resolve_data_path(data: str) -> Path:
    """A folder path, or a category under the shared data folder: 'mvtec_ad/bottle' or just 'bottle'."""
    path = Path(data).expanduser()
    if path.is_dir():
        return path
    root = shared_data_root()
    if not path.is_absolute() and root.is_dir():
        if (root / data).is_dir():
            return root / data
        matches = sorted(p for p in root.glob(f"*/{data}") if p.is_dir()) if os.sep not in data else []
        if len(matches) == 1:
            return matches[0]
    raise DataError(f"{data}: no such folder (and no MVTec category of that name in {shared_data_root()})")


def replay_spec(spec: RunSpec, metrics: dict[str, Any]) -> RunSpec:
    """`spec` again with the schedule its run recorded (metrics.json): the same iterations per stage, also when it
    had a minutes budget (a busy machine then trains fewer), stopping where it stopped."""
    recorded = metrics.get("stage_iterations")
    if spec.model == "auto" or metrics.get("auto"):  # its metrics are the winner's: that plan is one candidate's
        raise ConfigError("an auto run trained several models: it has no one schedule to replay")
    if not recorded:
        raise ConfigError("this run recorded no iterations per stage (an auto run, or one from before they were kept)")
    plan = parse_stage_plan(recorded)
    done = int(metrics.get("iterations") or 0)
    stop = done if 0 < done < sum(plan.values()) else None
    name = f"{spec.name} (replay)" if spec.name else None
    return dataclasses.replace(spec, minutes=None, iterations=stop, stage_iterations=dict(plan), name=name)


def budget_for(spec: RunSpec, model_cls: Any, preset: str) -> Any:
    from recon_core.models.base import Budget

    if spec.stage_iterations:
        return Budget(iterations=spec.iterations, stage_iterations=dict(spec.stage_iterations))
    if spec.iterations is not None or spec.minutes is not None:
        if spec.iterations is not None and spec.minutes is not None:
            raise ConfigError("run spec: give iterations or minutes, not both")
        return Budget(iterations=spec.iterations, minutes=spec.minutes)
    suggested = model_cls.suggested_budget(preset)
    if not suggested:
        raise ConfigError(f"run spec: give iterations or minutes (model {spec.model!r} suggests no budget)")
    return Budget(**{k: (int(v) if k == "iterations" else float(v)) for k, v in suggested.items()})


def _named_indices(test: Any, files: list[str], root: Path) -> np.ndarray:
    """Indices in the test split of the named defect images (absolute paths, or relative to the data folder)."""
    where = {Path(p).resolve(): i for i, p in enumerate(test.paths)}
    chosen = []
    for name in files:
        path = Path(name).expanduser()
        candidates = [path] if path.is_absolute() else [root / path, path]
        index = next((where[c.resolve()] for c in candidates if c.resolve() in where), None)
        if index is None:
            raise DataError(f"labelled defect {name}: not an image of the test split of {root}")
        if test.labels[index] != 1:
            raise DataError(f"labelled defect {name}: a good image, not a defect")
        chosen.append(index)
    if len(set(chosen)) != len(chosen):
        raise DataError("labelled defect files: a file is named twice")
    return np.sort(np.asarray(chosen, dtype=np.int64))


def _take_labelled(
    test: Any, count: int, seed: int, files: list[str] | None = None, root: Path | None = None
) -> tuple[Any, np.ndarray, np.ndarray | None, list[str]]:
    """Remove `count` seeded defect images (or the named `files`) from the test set -> (remaining test, images,
    masks, paths)."""

    if test is None:
        raise DataError("labelled_defects: the data has no test split with defect images to take them from")
    if files:
        chosen = _named_indices(test, files, root or Path("."))
    else:
        defect_idx = np.flatnonzero(np.asarray(test.labels) == 1)
        if len(defect_idx) < count:
            raise DataError(f"labelled_defects: asked for {count} defect images, the test split has {len(defect_idx)}")
        chosen = np.sort(np.random.default_rng(seed).choice(defect_idx, size=count, replace=False))
    keep = np.setdiff1d(np.arange(len(test)), chosen)
    from recon_core.leakage import subset

    rest = subset(test, keep)
    masks = test.masks[chosen] if test.has_masks else None
    return rest, test.images[chosen], masks, [test.paths[i] for i in chosen]


def _without(images: Any, paths: list[str]) -> Any:
    """An ImageSet or TestSet without the images whose path is in `paths` (same order otherwise)."""
    if images is None or not paths:
        return images
    drop = set(paths)
    keep = np.array([i for i, p in enumerate(images.paths) if p not in drop], dtype=int)
    changes: dict[str, Any] = {"images": images.images[keep], "paths": [images.paths[i] for i in keep]}
    if hasattr(images, "labels"):
        changes.update(
            labels=np.asarray(images.labels)[keep],
            masks=images.masks[keep],
            defect_types=[images.defect_types[i] for i in keep],
        )
    return dataclasses.replace(images, **changes)


def _holdout(train: Any, seed: int) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """Split a plain folder's images into (train images, paths, held-out images, paths) for evaluation."""
    n = len(train.paths)
    if n < HOLDOUT_MIN_TRAIN:
        return train.images, list(train.paths), train.images, list(train.paths)
    k = max(2, round(n * HOLDOUT_SHARE))
    held = np.sort(np.random.default_rng(seed + 1).choice(n, size=k, replace=False))
    keep = np.setdiff1d(np.arange(n), held)
    return (
        train.images[keep],
        [train.paths[i] for i in keep],
        train.images[held],
        [train.paths[i] for i in held],
    )


def _attach_log(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "run.log", encoding="utf-8", errors="backslashreplace")  # odd names
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("recon_core")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def write_heatmaps(result: Any, out_dir: Path, limit: int = MAX_HEATMAPS) -> list[str]:
    """A few panels: the highest-scoring defects, the highest-scoring goods (likely false alarms), a typical good."""
    from recon_core.inference import panel, save_png

    if result.images is None or len(result.scores) == 0:
        return []
    order = np.argsort(-result.scores)
    defects = [i for i in order if result.labels[i] == 1][: max(1, limit - 2)]
    goods = [i for i in order if result.labels[i] == 0]
    picks = defects + goods[:1] + goods[len(goods) // 2 : len(goods) // 2 + 1]
    written = []
    for rank, i in enumerate(dict.fromkeys(picks)):
        if rank >= limit:
            break
        kind = "defect" if result.labels[i] == 1 else "good"
        mask = result.masks[i] if result.has_masks else None
        name = f"{rank:02d}_{kind}_{result.defect_types[i]}_{result.scores[i]:.4g}.png".replace("/", "_")
        save_png(out_dir / name, panel(result.images[i], result.maps[i], mask))
        written.append(name)
    return written


def _default_threshold(result: Any) -> Any:
    """metrics.default_threshold on the evaluation (from held-out goods unless there are real defects), so predict
    gives verdicts right away; marked provisional while the data cannot back it. The Threshold page / `threshold`
    command replace it."""
    from recon_core.metrics import default_threshold

    try:
        seen = bool(result.metrics.get("evaluation_goods_seen_in_training"))
        return default_threshold(result.labels, result.scores, bool(result.synthetic), seen)
    except ReconError:
        return None


def _record_leak_check(run_dir: Path, m: dict[str, Any]) -> None:
    """data.json says honestly whether the evaluation used training images (compared by content)."""
    path = run_dir / "data.json"
    data = json.loads(path.read_text())
    for key in ("evaluation_goods_seen_in_training", "excluded_training_images"):
        data[key] = m.get(key)
    save_json(path, data)


def finished_run(run_dir: str | Path) -> bool:
    """A run that completed: its bundle and its metrics are written (the last two things execute_run writes)."""
    return (Path(run_dir) / "model.pt").is_file() and (Path(run_dir) / "metrics.json").is_file()


def execute_run(
    spec: RunSpec,
    run_dir: str | Path,
    *,
    progress: Any = None,
    should_stop: Any = None,
    resume: bool = False,
) -> RunResult:
    from recon_core import bundle as bundle_mod
    from recon_core.device import configure_cpu_threads, describe_device, resolve_device
    from recon_core.evaluation import evaluate_bundle, evaluated_on, save_eval
    from recon_core.images import TestSet, load_dataset
    from recon_core.leakage import digests
    from recon_core.memory import check_fits
    from recon_core.models import get_model_class
    from recon_core.normalisation import calibrate as calibrate_normalisation
    from recon_core.precision import training_precision
    from recon_core.seeding import seeded_model
    from recon_core.train import fit

    if not isinstance(spec, RunSpec):
        raise ConfigError(f"execute_run: expected a RunSpec, got {type(spec).__name__}")
    if spec.model == "auto":  # a run-level strategy: trains candidate models through this function
        from recon_core.auto import run_auto

        return run_auto(spec, run_dir, progress=progress, should_stop=should_stop, resume=resume)
    run_dir = Path(run_dir)
    if resume and finished_run(run_dir):  # nothing to continue: keep its model, threshold and evaluation as they are
        log.info("run %s already finished: resume changes nothing", run_dir.name)
        return RunResult(str(run_dir / "model.pt"), load_json(run_dir / "metrics.json"))
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = _attach_log(run_dir)
    try:
        started = time.time()
        save_json(run_dir / "spec.json", spec)
        cls = get_model_class(spec.model)
        preset = spec.preset or cls.default_preset
        config = cls.config_from_preset(preset, **spec.model_overrides)
        budget = budget_for(spec, cls, preset)
        if spec.labelled_defects < 0:
            raise ConfigError("run spec: labelled_defects must be >= 0")
        device = resolve_device(spec.device)
        if device.type == "cpu":
            configure_cpu_threads()
        needs = check_fits(spec.model, config, device)  # refuse what cannot fit before loading any data
        if needs is not None:
            log.info("memory: %s", needs.describe())
        data_path = resolve_data_path(spec.data)
        log.info(
            "run %s: model %s preset %s on %s (%s), data %s",
            run_dir.name,
            spec.model,
            preset,
            device,
            training_precision(config, device),
            data_path,
        )

        dataset = load_dataset(data_path, config.image_size, shots=spec.shots, seed=spec.seed)
        if spec.exclude_paths:
            dataset.train = _without(dataset.train, spec.exclude_paths)
            dataset.test = _without(dataset.test, spec.exclude_paths)
        test = dataset.test
        train_images, train_paths = dataset.train.images, list(dataset.train.paths)
        labelled_paths: list[str] = []
        model = seeded_model(cls, config, device, spec.seed)  # starting weights follow the run's seed
        if spec.labelled_defects or spec.labelled_defect_files:
            test, l_images, l_masks, labelled_paths = _take_labelled(
                test, spec.labelled_defects, spec.seed, spec.labelled_defect_files, data_path
            )
            model.set_labelled_defects(l_images, l_masks)
            log.info("training with %d labelled defect image(s); they leave the evaluation", len(labelled_paths))
        held_images, held_paths = None, []
        if test is None:
            train_images, train_paths, held_images, held_paths = _holdout(dataset.train, spec.seed)
        save_json(
            run_dir / "data.json",
            {
                "root": str(data_path),
                "train": train_paths,
                "train_sha256": digests(train_paths + labelled_paths),  # leakage: content, not paths
                "held_out_goods": held_paths if held_paths != train_paths else [],
                "evaluation_goods_seen_in_training": test is None and held_paths == train_paths,
                "labelled_defects": labelled_paths,
                "problems": [dataclasses.asdict(p) for p in dataset.train.problems]
                + ([dataclasses.asdict(p) for p in dataset.test.problems] if dataset.test is not None else []),
                "test": None
                if test is None
                else {"n": len(test), "n_defect": int(np.sum(test.labels == 1)), "has_masks": bool(test.has_masks)},
            },
        )
        if spec.init_from:
            warm = bundle_mod.load_bundle(spec.init_from, device, expected_model=spec.model)
            if warm.model.config_dict() != model.config_dict():
                log.warning("init_from: %s has another configuration; loading its weights anyway", spec.init_from)
            try:
                model.load_state_dict(warm.model.state_dict())
            except Exception as exc:
                raise ConfigError(f"init_from {spec.init_from}: weights do not fit this configuration ({exc})") from exc
            log.info("warm start from %s", spec.init_from)

        summary = fit(
            model,
            train_images,
            spec.synth,
            budget,
            seed=spec.seed,
            progress=progress,
            should_stop=should_stop,
            checkpoint_path=run_dir / "checkpoint.pt",
            checkpoint_every=spec.checkpoint_every,
            resume=resume,
            loss_log_path=run_dir / "losses.csv",
        )
        model.synth_config = spec.synth
        log.info(
            "trained %d iterations, per stage %s (RunSpec.stage_iterations / --stage-iterations replays them)",
            summary.iterations,
            format_stage_plan(summary.stage_iterations),
        )
        # scores relative to the goods' maps, if that helps on synthetic validation (training goods: global only)
        model.normaliser, norm_figures = calibrate_normalisation(model, train_images, spec.synth, goods_trained_on=True)
        log.info("map normalisation: %s (validation %s)", getattr(model.normaliser, "mode", "none"), norm_figures)
        facts = {"preset": preset, "iterations": summary.iterations}  # for the evaluation's under-training check
        loaded = bundle_mod.LoadedBundle(model, spec.synth, None, facts, None, str(run_dir / "model.pt"))
        eval_set = test
        if test is None:  # a plain folder: held-out goods (+ synthetic defects, added by evaluate_bundle)
            eval_set = TestSet(
                images=held_images,
                labels=np.zeros(len(held_images), int),
                masks=np.zeros(held_images.shape[:3], np.float32),
                has_masks=False,
                paths=held_paths,
                defect_types=["good"] * len(held_paths),
            )
        result = evaluate_bundle(loaded, eval_set)  # leaves out copies of the training files (data.json digests)
        save_eval(result, run_dir / "eval")
        _record_leak_check(run_dir, result.metrics)
        threshold = _default_threshold(result)
        metadata = {
            "data": str(data_path),
            "shots": spec.shots,
            "n_train": len(train_images),
            "seed": spec.seed,
            "preset": preset,
            "device": describe_device(device),
            "iterations": summary.iterations,
            "train_seconds": round(summary.seconds, 2),
            "run": spec.name or run_dir.name,
            "init_from": spec.init_from,
        }
        bundle_path = run_dir / "model.pt"
        bundle_mod.save_bundle(bundle_path, model, synth_config=spec.synth, threshold=threshold, metadata=metadata)
        metrics = {
            **result.metrics,
            "model": spec.model,
            "preset": preset,
            "iterations": summary.iterations,
            "total_iterations": summary.total_iterations,
            # "vq=490,dsr=350,upsampling=175" in stage order (--stage-iterations / RunSpec.stage_iterations replay it)
            "stage_iterations": format_stage_plan(summary.stage_iterations),
            "stopped_by_time": summary.stopped_by_time,
            "train_seconds": round(summary.seconds, 2),
            "final_losses": summary.final_losses,
            "n_train": len(train_images),
            "device": describe_device(device),
            "precision": training_precision(model.config, model.device),
            "threshold": None if threshold is None else to_dict(threshold),
            "normalisation": getattr(model.normaliser, "mode", "none"),
            "normalisation_validation": norm_figures,
            "wall_seconds": round(time.time() - started, 2),
            "evaluation": "eval",
            "evaluated_on": evaluated_on(result.metrics),
        }
        save_json(run_dir / "metrics.json", metrics)
        write_heatmaps(result, run_dir / "heatmaps")
        log.info("run finished: %s", {k: metrics[k] for k in ("image_auroc", "pixel_auroc", "iterations")})
        return RunResult(str(bundle_path), metrics)
    except TrainingCancelled as exc:  # a user's decision, not a failure
        log.info("run cancelled: %s", exc)
        raise
    except ReconError as exc:
        log.error("run failed: %s", exc)
        raise
    finally:
        logging.getLogger("recon_core").removeHandler(handler)
        handler.close()


def validate_spec(spec_dict: dict[str, Any], *, device_here: bool = True) -> RunSpec:
    """Refuse at submit what would fail at once where the job runs: unknown settings, a bad model config or budget,
    and (`device_here`: the job runs on this machine) a batch or image size the requested device cannot hold.
    A cluster job's device is chosen and checked on the node that runs it."""
    from recon_core.models import get_model_class

    spec = from_dict(RunSpec, spec_dict, where="run spec")
    if spec.model == "auto":  # a strategy over several models, checked by its own module
        from recon_core.auto import candidate_configs, validate_auto_spec

        validate_auto_spec(spec)
        candidates = [
            (dataclasses.replace(spec, model=name), config) for name, config in candidate_configs(spec).items()
        ]
    else:
        cls = get_model_class(spec.model)
        preset = spec.preset or cls.default_preset
        config = cls.config_from_preset(preset, **spec.model_overrides)
        budget_for(spec, cls, preset)
        candidates = [(spec, config)]
    if device_here:
        for candidate, config in candidates:
            _check_memory_here(candidate, config)
    return spec


def _check_memory_here(spec: RunSpec, config: Any) -> None:
    """Refuse a batch / image size that cannot fit on the requested device, when that device is on this machine."""
    from recon_core.device import resolve_device
    from recon_core.memory import check_fits

    try:
        device = resolve_device(spec.device)
    except ConfigError:
        return  # not on this machine: the worker checks it where it runs
    check_fits(spec.model, config, device)
