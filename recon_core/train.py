"""The one training loop every model uses: budget, stages, lr schedule, progress, loss log, checkpoints,
cancel and resume. Models only provide `stages()` (step functions + optimizers); see models/base.py.

Schedule: the total iteration count is fixed up front (or, for a minutes budget, after timing the first few
iterations) and stored in every checkpoint, so a resumed run follows exactly the schedule it started with. It is
split across stages by weight; inside a stage the lr is the optimizer's base lr x 0.1 per lr_drop passed. The lr is
set from the base lr at every step (never multiplied in place), so a resume is exact.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recon_core.errors import CheckpointError, TrainingCancelled, TrainingError
from recon_core.models.base import AnomalyModel, Budget, Progress, ProgressFn, TrainingStage

log = logging.getLogger(__name__)

CALIBRATION_WARMUP = 1  # first iteration(s) not timed: allocator / kernel selection make them slow
CALIBRATION_ITERATIONS = 4  # timed iterations for a minutes budget
CALIBRATION_MAX_SHARE = 0.1  # never spend more than this share of the budget calibrating
REFINE_AT = (0.1, 0.25, 0.5, 0.7)  # shares of the planned total where the estimate is refined on the latest window
# (timings drift: warm-up, other processes); only while still before the first lr drop, so the schedule the run
# follows is the same as if the final total had been known from the start
TIME_SAFETY = 0.95  # plan for 95 % of the budget: finish_training and the final checkpoint need time too
LOSS_LOG_FIELDS = ["iteration", "stage", "lr", "elapsed_s", "term", "value"]


@dataclass
class TrainSummary:
    iterations: int
    total_iterations: int
    seconds: float
    final_losses: dict[str, float]
    cancelled: bool = False
    stopped_by_time: bool = False
    stage_iterations: dict[str, int] = field(default_factory=dict)


def stage_lengths(total: int, stages: list[TrainingStage]) -> list[int]:
    """Split `total` iterations by stage weight; every stage gets at least one when total allows."""
    weights = np.array([max(0.0, float(s.weight)) for s in stages], dtype=float)
    if weights.sum() <= 0:
        weights = np.ones(len(stages))
    raw = weights / weights.sum() * total
    lengths = np.floor(raw).astype(int)
    # largest remainders get the leftover iterations
    for i in np.argsort(-(raw - lengths))[: total - int(lengths.sum())]:
        lengths[i] += 1
    if total >= len(stages):
        for i in range(len(stages)):
            while lengths[i] == 0:
                j = int(np.argmax(lengths))
                lengths[j] -= 1
                lengths[i] += 1
    return [int(n) for n in lengths]


def locate(iteration: int, lengths: list[int]) -> tuple[int, int]:
    """0-based global iteration -> (stage index, 0-based index inside the stage)."""
    start = 0
    for k, n in enumerate(lengths):
        if iteration < start + n:
            return k, iteration - start
        start += n
    return len(lengths) - 1, max(0, lengths[-1] - 1)


def lr_factor(local: int, length: int, drops: tuple[float, ...]) -> float:
    frac = local / max(1, length)
    return 0.1 ** sum(1 for d in drops if frac >= d)


def _batch(images: np.ndarray, batch_size: int, rng: np.random.Generator, device: torch.device) -> torch.Tensor:
    n = len(images)
    idx = rng.choice(n, size=batch_size, replace=n < batch_size)
    batch = torch.from_numpy(np.ascontiguousarray(images[np.sort(idx)], dtype=np.float32))
    return batch.permute(0, 3, 1, 2).contiguous().to(device)


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class _LossLog:
    """Long-format CSV (iteration, stage, lr, elapsed_s, term, value): stages may log different terms. Rows are
    buffered and flushed with each progress report and checkpoint; on resume rows after the checkpoint's iteration
    are dropped, since those iterations are redone."""

    def __init__(self, path: str | Path | None, resume_iteration: int | None) -> None:
        self.path = Path(path) if path else None
        self.rows: list[list[Any]] = []
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_iteration is not None and self.path.is_file():
            with open(self.path, newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if r.get("iteration", "").isdigit()]
            kept = [r for r in kept if int(r["iteration"]) <= resume_iteration]
            with open(self.path, "w", newline="") as fh:
                writer = csv.DictWriter(fh, LOSS_LOG_FIELDS)
                writer.writeheader()
                writer.writerows({k: r.get(k, "") for k in LOSS_LOG_FIELDS} for r in kept)
        else:
            with open(self.path, "w", newline="") as fh:
                csv.writer(fh).writerow(LOSS_LOG_FIELDS)

    def add(self, iteration: int, stage: str, lr: float, elapsed: float, losses: dict[str, float]) -> None:
        if self.path is not None:
            for term, value in losses.items():
                self.rows.append([iteration, stage, f"{lr:.6g}", f"{elapsed:.3f}", term, f"{value:.6g}"])

    def flush(self) -> None:
        if self.path is None or not self.rows:
            return
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerows(self.rows)
        self.rows = []


@dataclass
class _State:
    iteration: int = 0  # iterations done
    total: int | None = None
    elapsed_before: float = 0.0  # seconds spent in earlier attempts (resume)
    last_it_s: float = 0.0  # duration of the latest iteration (deadline check; carried over a resume)
    calib_t0: float | None = None  # elapsed() when the current timing window started
    calib_it0: int = 0
    refines_done: int = 0  # how many of REFINE_AT have passed (all of them after a resume: the total is final)


def _training_state(
    state: _State, stages: list[TrainingStage], rng: np.random.Generator, seed: int, budget: Budget, elapsed: float
) -> dict[str, Any]:
    stage_name = stages[0].name
    if state.total:
        stage_name = stages[locate(max(0, state.iteration - 1), stage_lengths(state.total, stages))[0]].name
    out: dict[str, Any] = {
        "iteration": state.iteration,
        "total_iterations": state.total,
        "stage": stage_name,
        "elapsed_s": float(elapsed),
        "last_iteration_s": float(state.last_it_s),
        "seed": seed,
        "budget": json.dumps({"iterations": budget.iterations, "minutes": budget.minutes}),
        "optimizers": [[opt.state_dict() for opt in s.optimizers] for s in stages],
        "rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda_rng"] = torch.cuda.get_rng_state_all()
    return out


def _write_checkpoint(path: Path, model: AnomalyModel, synth_config: Any, training_state: dict[str, Any]) -> None:
    from recon_core.bundle import save_bundle

    try:
        save_bundle(path, model, synth_config=synth_config, training_state=training_state)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise TrainingError(
                f"disk full while writing checkpoint {path}: free some space (the previous checkpoint is intact) "
                "and resume"
            ) from exc
        raise TrainingError(f"could not write checkpoint {path}: {exc}") from exc


def _restore(
    path: Path, model: AnomalyModel, stages: list[TrainingStage], rng: np.random.Generator, state: _State
) -> None:
    try:
        _load_checkpoint(path, model, stages, rng, state)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:  # a key missing, a bad rng state
        raise CheckpointError(
            f"{path}: checkpoint is incomplete or damaged ({type(exc).__name__}: {str(exc)[:200]}); it cannot be "
            "resumed: delete it to start the run over"
        ) from exc


def _load_checkpoint(
    path: Path, model: AnomalyModel, stages: list[TrainingStage], rng: np.random.Generator, state: _State
) -> None:
    from recon_core.bundle import read_bundle_dict

    raw = read_bundle_dict(path, map_location=model.device)
    ts = raw.get("training_state")
    if not isinstance(ts, dict):
        raise CheckpointError(f"{path}: has no training state to resume from (a finished bundle, not a checkpoint)")
    if raw["model"] != model.name:
        raise CheckpointError(f"{path}: checkpoint of a {raw['model']!r} model, cannot resume a {model.name!r} run")
    saved_config = json.loads(raw["config"])
    if saved_config != model.config_dict():
        raise CheckpointError(f"{path}: checkpoint was trained with another configuration; start a new run")
    model.load_state_dict(raw["state"])
    opt_states = ts.get("optimizers", [])
    if len(opt_states) != len(stages) or any(
        len(o) != len(s.optimizers) for o, s in zip(opt_states, stages, strict=False)
    ):
        raise CheckpointError(f"{path}: optimizer layout does not match the model's stages")
    for saved, stage in zip(opt_states, stages, strict=True):
        for opt_state, opt in zip(saved, stage.optimizers, strict=True):
            opt.load_state_dict(opt_state)
    rng.bit_generator.state = json.loads(ts["rng"])
    torch.set_rng_state(ts["torch_rng"].cpu())
    if "cuda_rng" in ts and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in ts["cuda_rng"]])
    state.iteration = int(ts["iteration"])
    state.total = int(ts["total_iterations"]) if ts.get("total_iterations") is not None else None
    state.elapsed_before = float(ts.get("elapsed_s", 0.0))
    state.last_it_s = float(ts.get("last_iteration_s", 0.0))


def _set_lrs(stage: TrainingStage, base_lrs: list[list[float]], factor: float) -> float:
    lr = 0.0
    for opt, bases in zip(stage.optimizers, base_lrs, strict=True):
        for group, base in zip(opt.param_groups, bases, strict=True):
            group["lr"] = base * factor
            lr = lr or group["lr"]
    return lr


def fit(
    model: AnomalyModel,
    train_images: np.ndarray,
    synth_config: Any,
    budget: Budget,
    *,
    seed: int = 0,
    progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    loss_log_path: str | Path | None = None,
    progress_every: int | None = None,
) -> TrainSummary:
    """Train `model` on (N, H, W, 3) float32 images in [0, 1]. See the module docstring for the schedule."""
    images = np.asarray(train_images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise TrainingError(f"training images must be (N, H, W, 3) with N >= 1, got shape {images.shape}")
    size = model.config.image_size
    if images.shape[1:3] != (size, size):
        raise TrainingError(f"training images are {images.shape[1:3]}, the model expects {size}x{size}")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    rng = np.random.default_rng(seed)
    model.setup_training(images, synth_config, seed)
    stages = model.stages()
    if not stages:
        raise TrainingError(f"{model.name}: the model has no training stages")
    base_lrs = [[[float(g["lr"]) for g in opt.param_groups] for opt in s.optimizers] for s in stages]
    state = _State(total=budget.iterations)
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    resumed = False
    if resume and ckpt is not None and ckpt.is_file():
        _restore(ckpt, model, stages, rng, state)
        if state.total is not None:  # a fixed schedule is never changed after a resume
            state.refines_done = len(REFINE_AT)
        resumed = True
        log.info("resuming from %s at iteration %d/%s", ckpt, state.iteration, state.total)
    elif resume:
        log.info("no checkpoint to resume from; starting from scratch")
    if budget.iterations is not None and state.total is None:
        state.total = budget.iterations
    loss_log = _LossLog(loss_log_path, state.iteration if resumed else None)
    deadline = budget.minutes * 60.0 - state.elapsed_before if budget.minutes is not None else math.inf

    model.train_mode(True)
    start = time.perf_counter()
    last_report_t, last_report_it = start, state.iteration
    losses: dict[str, float] = {}
    stopped_by_time = False
    batch_size = int(model.config.batch_size)

    def elapsed() -> float:
        return time.perf_counter() - start

    def checkpoint() -> None:
        if ckpt is not None:
            loss_log.flush()
            _write_checkpoint(ckpt, model, synth_config, _training_state(state, stages, rng, seed, budget, total_s()))

    def total_s() -> float:
        return state.elapsed_before + elapsed()

    def report(stage: TrainingStage, lr: float) -> None:
        nonlocal last_report_t, last_report_it
        loss_log.flush()  # live loss curves; rows past a checkpoint are dropped again on resume
        if progress is None:
            return
        now = time.perf_counter()
        done = state.iteration - last_report_it
        per_it = elapsed() / max(1, state.iteration - last_start_it)
        ips = done * batch_size / max(now - last_report_t, 1e-9) if done else batch_size / max(per_it, 1e-9)
        total = state.total or state.iteration
        eta = max(0.0, (total - state.iteration) * per_it)
        progress(Progress(stage.name, state.iteration, total, dict(losses), ips, total_s(), eta, lr))
        last_report_t, last_report_it = now, state.iteration

    last_start_it = state.iteration
    last_end = 0.0  # elapsed() at the end of the previous iteration
    lr = 0.0
    stage = stages[0]
    try:
        while state.total is None or state.iteration < state.total:
            if should_stop is not None and should_stop():
                checkpoint()
                raise TrainingCancelled(
                    f"training cancelled at iteration {state.iteration}/{state.total or '?'}; "
                    + ("the checkpoint is kept, resume to continue" if ckpt else "no checkpoint was written")
                )
            # stop when the next iteration would likely end past the deadline (the wall-clock limit is a limit)
            if state.total is not None and elapsed() + state.last_it_s > deadline:
                stopped_by_time = True
                log.warning("time budget reached at iteration %d/%d; stopping early", state.iteration, state.total)
                break
            if state.total is None:  # minutes budget, still calibrating: first stage at base lr
                k, local, length = 0, state.iteration, 1
            else:
                lengths = stage_lengths(state.total, stages)
                k, local = locate(state.iteration, lengths)
                length = lengths[k]
            stage = stages[k]
            lr = _set_lrs(stage, base_lrs[k], 1.0 if state.total is None else lr_factor(local, length, stage.lr_drops))
            batch = _batch(images, batch_size, rng, model.device)
            try:
                raw_losses = stage.step(batch, rng)
            except (RuntimeError, MemoryError) as exc:
                if _is_oom(exc):
                    raise TrainingError(
                        f"out of memory at iteration {state.iteration + 1} (batch size {batch_size}, image size "
                        f"{size}): use a smaller batch size or a smaller preset (e.g. 'cpu'/'cpu-fast')"
                    ) from exc
                raise
            losses = {name: float(v) for name, v in raw_losses.items()}
            bad = [name for name, v in losses.items() if not math.isfinite(v)]
            if bad:
                raise TrainingError(
                    f"loss became NaN at iteration {state.iteration + 1} (lr too high?): term(s) {bad} "
                    f"with lr {lr:.3g}; try a lower lr or another preset"
                )
            state.iteration += 1
            loss_log.add(state.iteration, stage.name, lr, total_s(), losses)
            if budget.minutes is not None and state.refines_done < len(REFINE_AT):
                _calibrate(state, stages, budget, deadline, elapsed())
            every = progress_every or max(1, min(10, (state.total or 10) // 100))
            if state.iteration == 1 or state.iteration % every == 0:
                report(stage, lr)
            if ckpt is not None and checkpoint_every > 0 and state.iteration % checkpoint_every == 0:
                checkpoint()
            now = elapsed()
            state.last_it_s, last_end = now - last_end, now
        model.train_mode(False)
        model.finish_training(images)
        if ckpt is not None:
            checkpoint()
        else:
            loss_log.flush()
        report(stage, lr)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide the real error behind a full disk
            loss_log.flush()  # rows after the last checkpoint are dropped on resume, so keeping them is safe
        model.train_mode(False)
        raise
    return TrainSummary(
        iterations=state.iteration,
        total_iterations=state.total or state.iteration,
        seconds=total_s(),
        final_losses=losses,
        cancelled=False,
        stopped_by_time=stopped_by_time,
        stage_iterations={
            s.name: n for s, n in zip(stages, stage_lengths(state.total or state.iteration, stages), strict=True)
        },
    )


def _first_drop(total: int, stages: list[TrainingStage]) -> float:
    """Global iteration where the lr first drops under a given total (the first stage's first lr_drop)."""
    return stage_lengths(total, stages)[0] * min(stages[0].lr_drops or (1.0,))


def _calibrate(state: _State, stages: list[TrainingStage], budget: Budget, deadline: float, spent: float) -> None:
    """Minutes budget: time a few iterations (wall clock incl. batch building and checkpoints, after a warm-up),
    then fix the total so the budget is used; refine it at REFINE_AT shares of the total on the latest window while
    the lr has not dropped yet under either the old or the new total."""
    if state.calib_t0 is None:
        if state.iteration >= CALIBRATION_WARMUP:
            state.calib_t0, state.calib_it0 = spent, state.iteration
        return
    timed = state.iteration - state.calib_it0
    if state.total is None:
        if timed < CALIBRATION_ITERATIONS and spent < CALIBRATION_MAX_SHARE * deadline:
            return
    elif state.iteration < REFINE_AT[state.refines_done] * state.total or timed < 2:
        return
    per_it = (spent - state.calib_t0) / max(1, timed)
    remaining = max(0.0, deadline * TIME_SAFETY - spent)
    total = max(state.iteration + 1, state.iteration + int(remaining / max(per_it, 1e-6)))
    if state.total is not None:
        while state.refines_done < len(REFINE_AT) and state.iteration >= REFINE_AT[state.refines_done] * state.total:
            state.refines_done += 1
        if state.iteration >= min(_first_drop(state.total, stages), _first_drop(total, stages)):
            state.refines_done = len(REFINE_AT)  # too late: the schedule is final
            return
    state.calib_t0, state.calib_it0 = spent, state.iteration  # next refinement times a fresh window
    if total != state.total:
        log.info(
            "minutes budget %.2f: %.3f s/iteration measured, training %d iterations",
            budget.minutes or 0,
            per_it,
            total,
        )
    state.total = total
