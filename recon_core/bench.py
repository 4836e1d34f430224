"""Benchmark runner: model x category x shots x seed on a data root, through the same `execute_run` the app uses.

Per run it records the evaluation metrics (image AUROC, pixel AUROC, AUPRO, ...), training wall time,
seconds per iteration, training images/s, inference ms per image (batch 8 of 256x256 inputs, median of
repeats), the peak resident memory of the run, and the machine (CPU model, cores, threads, torch version).

Results go to `<out>/<name>.csv`, `<name>.json` (all rows) and `<name>.md` (every row + a summary with
mean ± std over seeds). Files are appended to, so different models (and engineers) accumulate rows in one
table; a lock file serialises writers. Rows never contain images.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import platform
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon_core.errors import ConfigError, DataError
from recon_core.stage_plan import check_replay, format_stage_plan

log = logging.getLogger(__name__)

METRIC_KEYS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "f1_max")
COLUMNS = (
    "timestamp",
    "model",
    "preset",
    "overrides",
    "category",
    "shots",
    "labelled_defects",
    "seed",
    "budget",
    *METRIC_KEYS,
    "n_good",
    "n_defect",
    "synthetic_eval",
    "iterations",
    "stage_iterations",
    "normalisation",
    "train_s",
    "s_per_iteration",
    "train_images_per_s",
    "infer_ms_per_image",
    "run_s",
    "peak_rss_mb",
    "parameters_m",
    "image_size",
    "batch_size",
    "device",
    "precision",
    "threads",
    "cpu",
    "cores",
    "torch",
    "tag",
    "error",
)
GROUP_KEYS = ("model", "preset", "overrides", "category", "shots", "labelled_defects", "budget", "precision")
SUMMARY_METRICS = ("image_auroc", "pixel_auroc", "aupro", "train_s", "train_images_per_s", "infer_ms_per_image")
# timings swing with the machine's load (shared 2-core box): the summary gives their median, not mean ± std
TIMING_METRICS = ("train_s", "train_images_per_s", "infer_ms_per_image")


def default_data_root() -> Path:
    """../shared/data next to the repository (RECON_SHARED_DATA overrides)."""
    env = os.environ.get("RECON_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class BenchConfig:
    models: list[str]
    categories: list[str]  # paths relative to data_root (e.g. "mvtec_ad/bottle") or absolute
    shots: list[int | None] = field(default_factory=lambda: [20])
    seeds: list[int] = field(default_factory=lambda: [0])
    # K real defect images of the test split go to training (RunSpec.labelled_defects) and leave the evaluation
    labelled_defects: list[int] = field(default_factory=lambda: [0])
    minutes: float | None = None
    iterations: int | None = None
    # a replay of a recorded schedule (a row's stage_iterations); with `iterations`, where that run stopped
    stage_iterations: dict[str, int] | None = None
    preset: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # synthetic-defect design (SynthConfig fields, e.g. {"foreground": "off"}); the seed is each run's own
    synth_overrides: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    out_dir: str = "benchmarks/results"
    name: str = "bench"
    device: str = "auto"
    threads: int | None = None
    infer_repeats: int = 5
    keep_runs: str | None = None  # keep run folders here (default: temporary, deleted)
    tag: str = ""

    def __post_init__(self) -> None:
        if not self.models or not self.categories:
            raise ConfigError("bench: give at least one model and one category")
        if self.stage_iterations is not None:
            check_replay(self.stage_iterations, self.iterations, self.minutes, "bench")
        elif (self.minutes is None) == (self.iterations is None):
            raise ConfigError("bench: give exactly one of --minutes, --iterations or --stage-iterations")
        if not self.seeds:
            raise ConfigError("bench: give at least one seed")
        if not self.labelled_defects or any(k < 0 for k in self.labelled_defects):
            raise ConfigError("bench: labelled defects must be whole numbers >= 0")
        if "seed" in self.synth_overrides:
            raise ConfigError("bench: the design's seed is each run's --seeds value: leave it out of --synth-config")
        self.synth_config(0)  # unknown or ill-typed design settings fail before any training

    def synth_config(self, seed: int) -> Any:
        """The run's SynthConfig: the overrides, seeded with the run's seed."""
        from recon_core.config import from_dict
        from recon_core.synth import SynthConfig

        return from_dict(SynthConfig, {**self.synth_overrides, "seed": seed}, where="synth")

    def budget_text(self) -> str:
        """The 'budget' column: "10.0 min", "1330 it", or a replay "replay vq=490,dsr=350,upsampling=175"."""
        if self.stage_iterations is not None:
            stop = f" stop {self.iterations}" if self.iterations is not None else ""
            return f"replay {format_stage_plan(self.stage_iterations)}{stop}"
        return f"{self.minutes} min" if self.minutes is not None else f"{self.iterations} it"

    def overrides_text(self) -> str:
        """The 'overrides' column: model overrides, and the defect design under "synth" when it is not default."""
        both = {**self.model_overrides, **({"synth": self.synth_overrides} if self.synth_overrides else {})}
        return json.dumps(both, sort_keys=True) if both else ""


# ---------------------------------------------------------------------------------------------------------
# machine and measurement helpers
# ---------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return {"cpu": cpu, "cores": cores, "torch": torch.__version__, "threads": torch.get_num_threads()}


class PeakRss:
    """Samples this process's resident memory in a thread; `.peak_mb` = the largest seen (this run only, unlike
    ru_maxrss which is the process lifetime maximum)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _current(self) -> int:
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except Exception:  # psutil missing or failing: fall back to the lifetime maximum
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._current())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak = self._current()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._current())

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def inference_ms_per_image(model: Any, repeats: int = 5, batch: int = 8, size: int = 256) -> float:
    """Median over `repeats` of the time to score a batch of `batch` random size x size images, per image
    (after one warm-up call). Includes the resize to the model's resolution, as in real use."""
    images = np.random.default_rng(0).random((batch, size, size, 3), dtype=np.float32)
    model.predict(images, batch_size=batch)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        model.predict(images, batch_size=batch)
        times.append((time.perf_counter() - start) * 1000 / batch)
    return float(statistics.median(times))


# ---------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------


def _metric(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _run_api() -> tuple[Any, Callable[..., Any], Callable[..., Any]]:
    """(RunSpec, execute_run, load_bundle): the run pipeline, imported late (and replaceable in tests)."""
    from recon_core.bundle import load_bundle
    from recon_core.runs import RunSpec, execute_run

    return RunSpec, execute_run, load_bundle


def training_cost(
    metrics: dict[str, Any], batch_size: int, progress: dict[str, Any]
) -> tuple[int | None, float | None, float | None]:
    """-> (iterations, training seconds, training images per second) of a run. An `auto` run trained every
    candidate, so its cost is theirs together (not the winner's alone, which would make a run that kept its quick
    candidate look ~40x cheaper than it was); a speed across different networks means nothing, so it has none."""
    candidates = (metrics.get("auto") or {}).get("candidates")
    if candidates:
        iterations = sum(int(c.get("iterations") or 0) for c in candidates) or None
        seconds = round(sum(float(c.get("train_seconds") or 0.0) for c in candidates), 2) or None
        return iterations, seconds, None
    iterations = metrics.get("iterations") or progress.get("iteration")
    seconds = metrics.get("train_seconds") or progress.get("elapsed")
    return iterations, seconds, (iterations * batch_size / seconds if seconds and iterations else None)


def run_one(
    cfg: BenchConfig, model: str, category: str, shots: int | None, seed: int, run_dir: Path, labelled: int = 0
) -> dict[str, Any]:
    """Train + evaluate one configuration through runs.execute_run and measure it. Returns one row.
    `labelled` real defect images (seeded choice) leave the test split and go to training."""
    RunSpec, execute, load_bundle = _run_api()
    root = Path(cfg.data_root) if cfg.data_root else default_data_root()
    data = Path(category) if Path(category).is_absolute() else root / category
    if not data.is_dir():
        raise DataError(f"bench: data folder {data} not found (data root {root}; set --data-root)")
    spec = RunSpec(
        data=str(data),
        model=model,
        preset=cfg.preset,
        model_overrides=dict(cfg.model_overrides),
        shots=shots,
        synth=cfg.synth_config(seed),
        iterations=cfg.iterations,
        minutes=cfg.minutes,
        stage_iterations=dict(cfg.stage_iterations or {}),
        device=cfg.device,
        seed=seed,
        labelled_defects=labelled,
        name=f"bench-{model}-{category.replace('/', '-')}-{shots}-{labelled}-{seed}",
    )
    last: dict[str, Any] = {}

    def progress(p: Any) -> None:
        last["iteration"], last["elapsed"], last["images_per_s"] = p.iteration, p.elapsed_s, p.images_per_s

    start = time.perf_counter()
    with PeakRss() as rss:
        result = execute(spec, run_dir, progress=progress)
        run_s = time.perf_counter() - start
        bundle = load_bundle(result.bundle_path, device=cfg.device)
        infer_ms = inference_ms_per_image(bundle.model, cfg.infer_repeats)
    metrics = dict(result.metrics or {})
    net = bundle.model
    iterations, train_s, images_per_s = training_cost(metrics, net.config.batch_size, last)
    row: dict[str, Any] = {
        "model": model,
        "preset": cfg.preset or type(net).default_preset,
        "overrides": cfg.overrides_text(),
        "category": category,
        "shots": shots if shots is not None else "all",
        "labelled_defects": labelled,
        "seed": seed,
        "budget": cfg.budget_text(),
        **{k: _metric(metrics.get(k)) for k in METRIC_KEYS},
        "n_good": metrics.get("n_good"),
        "n_defect": metrics.get("n_defect"),
        "synthetic_eval": bool(metrics.get("synthetic", False)),
        "iterations": iterations,
        # what replays this run (bench --stage-iterations); none for `auto`, which trains several models
        "stage_iterations": metrics.get("stage_iterations") or "",
        "normalisation": metrics.get("normalisation"),  # the map normalisation chosen after training
        "train_s": train_s,
        "s_per_iteration": train_s / iterations if images_per_s else None,  # one network's speed, or none
        "train_images_per_s": images_per_s,
        "infer_ms_per_image": infer_ms,
        "run_s": run_s,
        "peak_rss_mb": rss.peak_mb,
        "parameters_m": net.parameter_count() / 1e6,
        "image_size": net.config.image_size,
        "batch_size": net.config.batch_size,
        "device": str(net.device),
        "precision": metrics.get("precision"),  # what training ran in ("auto" resolves per machine)
        "by_type": metrics.get("by_type"),  # per defect type (JSON only): which kinds of real defect it finds
        "outlying_goods": metrics.get("outlying_goods"),  # test goods far above the rest (JSON only)
    }
    return row


# ---------------------------------------------------------------------------------------------------------
# result files
# ---------------------------------------------------------------------------------------------------------


@contextmanager
def _locked(out_dir: Path, name: str) -> Iterator[None]:
    out_dir.mkdir(parents=True, exist_ok=True)
    # the lock file lives in the temp folder so the results folder holds only the tables
    key = hashlib.sha1(str(out_dir.resolve()).encode()).hexdigest()[:12]
    with open(Path(tempfile.gettempdir()) / f"recon-bench-{key}-{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _mean_std(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _group_value(row: dict[str, Any], key: str) -> str:
    if key == "labelled_defects":  # rows from before the column existed had none
        return str(row.get(key) or 0)
    if key == "precision":  # rows from before the column existed all trained in float32
        return str(row.get(key) or "fp32")
    return str(row.get(key, ""))


def _median(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):.1f}" if values else "–"


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, preset, overrides, category, shots, labelled defects, budget) group: metrics as mean ± std over
    seeds, timings as the median."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("error"):
            continue
        key = tuple(_group_value(row, k) for k in GROUP_KEYS)
        groups.setdefault(key, []).append(row)
    out = []
    for key, members in groups.items():
        entry = dict(zip(GROUP_KEYS, key, strict=True))
        entry["seeds"] = len(members)
        for metric in SUMMARY_METRICS:
            values = [_metric(m.get(metric)) for m in members]
            entry[metric] = _median(values) if metric in TIMING_METRICS else _mean_std(values)
        out.append(entry)
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    machines = sorted({f"{r.get('cpu')} ({r.get('cores')} cores), torch {r.get('torch')}" for r in rows})
    lines = ["# Benchmark results", "", "Machine: " + "; ".join(machines), ""]
    lines += ["## Summary (metrics: mean ± std over seeds; timings: median)", ""]
    head = [*GROUP_KEYS, "seeds", *SUMMARY_METRICS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in summarise(rows):
        lines.append("| " + " | ".join(_fmt(entry.get(k)) for k in head) + " |")
    lines += ["", "## All runs", ""]
    cols = ["timestamp", "model", "preset", "category", "shots", "labelled_defects", "seed", "budget", "image_auroc",
            "pixel_auroc",
            "aupro", "iterations", "train_s", "train_images_per_s", "infer_ms_per_image", "peak_rss_mb", "tag",
            "error"]  # fmt: skip
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)).replace("|", "/") for c in cols) + " |")
    return "\n".join(lines) + "\n"


def append_rows(out_dir: Path, name: str, new_rows: list[dict[str, Any]]) -> dict[str, Path]:
    """Append to <name>.json / .csv and rewrite <name>.md from all rows. Returns the three paths."""
    paths = {ext: out_dir / f"{name}.{ext}" for ext in ("json", "csv", "md")}
    with _locked(out_dir, name):
        rows: list[dict[str, Any]] = []
        if paths["json"].is_file():
            try:
                rows = json.loads(paths["json"].read_text())
            except json.JSONDecodeError as exc:
                raise DataError(f"{paths['json']}: not valid JSON ({exc}); move it away to start a new table") from exc
        rows.extend(new_rows)
        tmp = paths["json"].with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rows, indent=1, default=str))
        tmp.replace(paths["json"])
        with open(paths["csv"], "w", newline="") as fh:  # rewritten so old and new rows share one header
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        paths["md"].write_text(markdown(rows))
    return paths


# ---------------------------------------------------------------------------------------------------------
# the whole benchmark
# ---------------------------------------------------------------------------------------------------------


def run_bench(cfg: BenchConfig, *, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every model x category x shots x seed; each finished row is written at once (a crash keeps the rest).
    A run that fails is recorded with its error and the benchmark goes on."""
    from recon_core.device import configure_cpu_threads

    if cfg.threads:
        os.environ["RECON_THREADS"] = str(cfg.threads)  # execute_run configures threads from this
    configure_cpu_threads(cfg.threads)
    machine = machine_info()
    rows = []
    out_dir = Path(cfg.out_dir)
    grid = itertools.product(cfg.models, cfg.categories, cfg.shots, cfg.labelled_defects, cfg.seeds)
    for model, category, shots, labelled, seed in grid:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        echo(f"[{stamp}] {model} {category} shots={shots} labelled_defects={labelled} seed={seed} ...")
        base = {"timestamp": stamp, "model": model, "preset": cfg.preset or "", "overrides": cfg.overrides_text(),
                "category": category, "shots": shots if shots is not None else "all", "labelled_defects": labelled,
                "seed": seed, "tag": cfg.tag}  # fmt: skip
        try:
            with _run_dir(cfg, model, category, shots, seed, labelled) as run_dir:
                row = {**base, **run_one(cfg, model, category, shots, seed, run_dir, labelled)}
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one failing run must not lose the others
            log.exception("bench run failed")
            row = {**base, "error": f"{type(exc).__name__}: {exc}"}
        row.update(machine)
        row["threads"] = torch.get_num_threads()
        rows.append(row)
        append_rows(out_dir, cfg.name, [row])
        echo("  " + _row_line(row))
    return rows


def _row_line(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"error: {row['error']}"
    keys = ("image_auroc", "pixel_auroc", "aupro", "iterations", "train_s", "train_images_per_s", "infer_ms_per_image")
    return ", ".join(f"{k}={_fmt(row.get(k))}" for k in keys)


@contextmanager
def _run_dir(
    cfg: BenchConfig, model: str, category: str, shots: int | None, seed: int, labelled: int = 0
) -> Iterator[Path]:
    if cfg.keep_runs:
        stem = f"{model}-{category.replace('/', '-')}-{shots}-{labelled}-{seed}-{int(time.time())}"
        path = Path(cfg.keep_runs) / stem
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="recon-bench-") as tmp:
        yield Path(tmp)


def config_dict(cfg: BenchConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


__all__ = [
    "BenchConfig",
    "PeakRss",
    "append_rows",
    "default_data_root",
    "inference_ms_per_image",
    "machine_info",
    "markdown",
    "run_bench",
    "run_one",
    "summarise",
]
