"""The one training loop every model uses: budget, stages, lr schedule, progress, loss log, checkpoints,
cancel and resume. Models only provide `stages()` (step functions + optimizers); see models/base.py.

Schedule: every stage has its own length, and inside a stage the lr is the optimizer's base lr x 0.1 per lr_drop
passed (fractions of that stage's length). An iteration budget is split across stages by weight up front. A minutes
budget gives each stage, when it starts, its weight's share of the time left, and calibrates that stage's length on
its own iterations (stages can differ a lot in cost per iteration). The per-stage plan is stored in every checkpoint,
so a resumed run never re-plans a stage that has a length. The lr is set from the base lr at every step (never
multiplied in place), so a resume is exact.
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

from recon_core import precision
from recon_core.errors import CheckpointError, ConfigError, TrainingCancelled, TrainingError
from recon_core.models.base import AnomalyModel, Budget, Progress, ProgressFn, TrainingStage
from recon_core.pipeline import BatchMaker, BatchPipeline, default_workers, iteration_rngs
from recon_core.seeding import seed_everything

log = logging.getLogger(__name__)

CALIBRATION_WARMUP = 1  # first iteration(s) of a stage (and of a resumed attempt) not timed: allocator / kernel
# selection make them slow
CALIBRATION_ITERATIONS = 4  # timed iterations per stage for a minutes budget
CALIBRATION_MAX_SHARE = 0.1  # never spend more than this share of a stage's time slot calibrating
REFINE_AT = (0.1, 0.25, 0.5, 0.7)  # shares of a stage's planned length where it is refined on the latest window
# (timings drift: warm-up, other processes); only while still before the stage's first lr drop, so the schedule it
# follows is the same as if its final length had been known from the start
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
    data_wait_s: float = 0.0  # seconds the loop waited for batches (this attempt): the data pipeline's cost
    data_workers: int = 0


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


def replay_lengths(plan: dict[str, int], stages: list[TrainingStage], model: str) -> list[int]:
    """A recorded per-stage plan (Budget.stage_iterations) -> the stages' lengths, in the model's stage order."""
    names = [s.name for s in stages]
    if sorted(plan) != sorted(names):
        raise ConfigError(
            f"stage iterations name stages {', '.join(plan)}; {model} trains {', '.join(names)} "
            "(replay a plan recorded by a run of the same model)"
        )
    return [int(plan[name]) for name in names]


def _weights(stages: list[TrainingStage]) -> list[float]:
    """Stage weights as stage_lengths uses them: negatives count as 0, all 0 means equal shares."""
    weights = [max(0.0, float(s.weight)) for s in stages]
    return weights if sum(weights) > 0 else [1.0] * len(stages)


def _position(iteration: int, lengths: list[int | None]) -> tuple[int, int] | None:
    """0-based global iteration -> (stage index, 0-based index inside the stage); None when the plan is done. A stage
    not planned yet (minutes budget) takes every iteration past the planned ones: it is being calibrated."""
    start = 0
    for k, n in enumerate(lengths):
        if n is None or iteration < start + n:
            return k, iteration - start
        start += n
    return None


def lr_factor(local: int, length: int, drops: tuple[float, ...]) -> float:
    frac = local / max(1, length)
    return 0.1 ** sum(1 for d in drops if frac >= d)


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
    lengths: list[int | None] = field(default_factory=list)  # per stage; None = not planned yet (minutes budget)
    slot: tuple[int, float, float] = (-1, 0.0, 0.0)  # minutes budget: (stage, start, end) of the time slot of the
    # latest stage started, in seconds over all attempts
    elapsed_before: float = 0.0  # seconds spent in earlier attempts (resume)
    last_it_s: float = 0.0  # duration of the latest iteration (deadline check; carried over a resume)
    per_it: float = 0.0  # latest measured seconds per iteration of the current stage (0 = not measured yet)
    calib_t0: float | None = None  # seconds (over all attempts) when the current timing window started
    calib_it0: int = 0  # the stage's iterations done then
    warmup_left: int = CALIBRATION_WARMUP
    refines_done: int = len(REFINE_AT)  # REFINE_AT shares passed in the current stage; all = its length is final


def _planned(state: _State, weights: list[float], planned_end: float) -> list[int]:
    """Per-stage lengths for reports and summaries. A stage not planned yet is estimated from its time share at the
    current stage's rate; its real length is only fixed at its start, so the total may change there."""
    k, start, end = state.slot
    rate = state.per_it or state.last_it_s
    later = sum(weights[k + 1 :])
    out: list[int] = []
    for j, n in enumerate(state.lengths):
        if n is None and j == k:  # being calibrated: at least the iteration under way
            n = max(state.iteration - sum(out) + 1, int((end - start) / rate) if rate > 0 else 0)
        elif n is None:
            n = int(max(0.0, planned_end - end) * weights[j] / later / rate) if rate > 0 and later > 0 else 0
        out.append(n)
    return out


def _training_state(
    state: _State,
    stages: list[TrainingStage],
    seed: int,
    budget: Budget,
    elapsed: float,
    total: int,
    scaler: torch.amp.GradScaler | None,
) -> dict[str, Any]:
    pos = _position(max(0, state.iteration - 1), state.lengths)
    out: dict[str, Any] = {
        "iteration": state.iteration,
        "total_iterations": total,  # informative: may hold estimates (see _planned); the plan is stage_lengths
        "stage_lengths": list(state.lengths),
        "stage_slot": list(state.slot),
        "stage": stages[pos[0] if pos else 0].name,
        "elapsed_s": float(elapsed),
        "last_iteration_s": float(state.last_it_s),
        "seed": seed,
        "budget": json.dumps(
            {"iterations": budget.iterations, "minutes": budget.minutes, "stage_iterations": budget.stage_iterations}
        ),
        "optimizers": [[opt.state_dict() for opt in s.optimizers] for s in stages],
        "batch_seeding": "per-iteration",  # batches are a function of (seed, stage, iteration): no rng state
        "torch_rng": torch.get_rng_state(),
    }
    if scaler is not None:
        out["grad_scaler"] = scaler.state_dict()
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
    path: Path, model: AnomalyModel, stages: list[TrainingStage], state: _State, scaler: torch.amp.GradScaler | None
) -> None:
    try:
        _load_checkpoint(path, model, stages, state, scaler)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:  # a key missing, a bad rng state
        raise CheckpointError(
            f"{path}: checkpoint is incomplete or damaged ({type(exc).__name__}: {str(exc)[:200]}); it cannot be "
            "resumed: delete it to start the run over"
        ) from exc


def _load_checkpoint(
    path: Path, model: AnomalyModel, stages: list[TrainingStage], state: _State, scaler: torch.amp.GradScaler | None
) -> None:
    from recon_core.bundle import read_bundle_dict
    from recon_core.config import from_dict, to_dict

    raw = read_bundle_dict(path, map_location=model.device)
    ts = raw.get("training_state")
    if not isinstance(ts, dict):
        raise CheckpointError(f"{path}: has no training state to resume from (a finished bundle, not a checkpoint)")
    if raw["model"] != model.name:
        raise CheckpointError(f"{path}: checkpoint of a {raw['model']!r} model, cannot resume a {model.name!r} run")
    saved_config = json.loads(raw["config"])
    # settings added since the checkpoint was written take their defaults
    saved_config = to_dict(from_dict(type(model.config), saved_config, where=f"{path} config"))
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
    torch.set_rng_state(ts["torch_rng"].cpu())
    if scaler is not None and "grad_scaler" in ts:
        scaler.load_state_dict(ts["grad_scaler"])
    if "cuda_rng" in ts and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in ts["cuda_rng"]])
    state.iteration = int(ts["iteration"])
    state.lengths = _saved_lengths(ts, stages)
    slot = ts.get("stage_slot") or (-1, 0.0, 0.0)
    state.slot = (int(slot[0]), float(slot[1]), float(slot[2]))
    state.elapsed_before = float(ts.get("elapsed_s", 0.0))
    state.last_it_s = float(ts.get("last_iteration_s", 0.0))


def _saved_lengths(ts: dict[str, Any], stages: list[TrainingStage]) -> list[int | None]:
    """The checkpoint's per-stage plan. Checkpoints from before per-stage plans hold only a total (None while the
    first stage was still calibrating): its split by weight is what that run would have followed."""
    if "stage_lengths" not in ts:
        total = ts.get("total_iterations")
        return stage_lengths(int(total), stages) if total is not None else [None] * len(stages)
    lengths = [None if n is None else int(n) for n in ts["stage_lengths"]]
    if len(lengths) != len(stages):
        raise CheckpointError(f"checkpoint plans {len(lengths)} stages, the model has {len(stages)}")
    return lengths


def _fill_unplanned(lengths: list[int | None], iterations: int, stages: list[TrainingStage]) -> None:
    """An iteration budget resuming a minutes run that had not planned every stage: those share what is left."""
    todo = [j for j, n in enumerate(lengths) if n is None]
    if todo:
        left = max(len(todo), iterations - sum(n or 0 for n in lengths))
        for j, n in zip(todo, stage_lengths(left, [stages[j] for j in todo]), strict=True):
            lengths[j] = n


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
    data_workers: int | None = None,
) -> TrainSummary:
    """Train `model` on (N, H, W, 3) float32 images in [0, 1]. See the module docstring for the schedule, and
    recon_core/pipeline.py for how batches are made (`data_workers`: None = the device's default)."""
    images = np.asarray(train_images, dtype=np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise TrainingError(f"training images must be (N, H, W, 3) with N >= 1, got shape {images.shape}")
    size = model.config.image_size
    if images.shape[1:3] != (size, size):
        raise TrainingError(f"training images are {images.shape[1:3]}, the model expects {size}x{size}")
    seed_everything(seed)
    model.setup_training(images, synth_config, seed)
    stages = model.stages()
    if not stages:
        raise TrainingError(f"{model.name}: the model has no training stages")
    amp_dtype = precision.autocast_dtype(model.config, model.device)
    if amp_dtype is torch.float16 and not model.supports_grad_scaling:
        log.warning("%s: fp16 needs gradient scaling, which this model does not do; training in fp32", model.name)
        amp_dtype = None
    model.grad_scaler = scaler = precision.grad_scaler(amp_dtype, model.device)
    precision.apply_layout(model.config, model)
    base_lrs = [[[float(g["lr"]) for g in opt.param_groups] for opt in s.optimizers] for s in stages]
    weights = _weights(stages)
    limit = budget.minutes * 60.0 if budget.minutes is not None else math.inf  # seconds over all attempts
    planned_end = limit * TIME_SAFETY
    lengths: list[int | None] = [None] * len(stages)  # minutes budget: each stage is planned at its start
    if budget.stage_iterations is not None:
        lengths = list(replay_lengths(budget.stage_iterations, stages, model.name))
    elif budget.iterations is not None:
        lengths = list(stage_lengths(budget.iterations, stages))
    stop_at = budget.iterations if budget.stage_iterations is not None else None  # a replay of a run cut short
    state = _State(lengths=lengths)
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    resumed = False
    if resume and ckpt is not None and ckpt.is_file():
        _restore(ckpt, model, stages, state, scaler)
        if budget.iterations is not None and budget.stage_iterations is None:
            _fill_unplanned(state.lengths, budget.iterations, stages)
        pos = _position(state.iteration, state.lengths)
        if pos is not None and state.lengths[pos[0]] is None:
            state.refines_done = 0  # cancelled while calibrating this stage: time it again (after a warm-up)
        resumed = True
        log.info("resuming from %s at iteration %d, stage lengths %s", ckpt, state.iteration, state.lengths)
    elif resume:
        log.info("no checkpoint to resume from; starting from scratch")
    loss_log = _LossLog(loss_log_path, state.iteration if resumed else None)
    workers = default_workers(model.device) if data_workers is None else max(0, int(data_workers))
    maker = BatchMaker(images, int(model.config.batch_size), seed, [s.synth for s in stages])
    pipeline = BatchPipeline(maker, model.device, workers, channels_last=bool(model.config.channels_last))

    model.train_mode(True)
    start = time.perf_counter()
    last_report_t, last_report_it = start, state.iteration
    losses: dict[str, float] = {}
    stopped_by_time = False
    batch_size = int(model.config.batch_size)

    def elapsed() -> float:
        return time.perf_counter() - start

    def total_s() -> float:
        return state.elapsed_before + elapsed()

    def total() -> int:
        planned = max(state.iteration, sum(_planned(state, weights, planned_end)))
        return planned if stop_at is None else min(planned, stop_at)

    def checkpoint() -> None:
        if ckpt is not None:
            loss_log.flush()
            ts = _training_state(state, stages, seed, budget, total_s(), total(), scaler)
            _write_checkpoint(ckpt, model, synth_config, ts)

    def report(stage: TrainingStage, lr: float) -> None:
        nonlocal last_report_t, last_report_it
        loss_log.flush()  # live loss curves; rows past a checkpoint are dropped again on resume
        if progress is None:
            return
        now = time.perf_counter()
        done = state.iteration - last_report_it
        per_it = elapsed() / max(1, state.iteration - last_start_it)
        ips = done * batch_size / max(now - last_report_t, 1e-9) if done else batch_size / max(per_it, 1e-9)
        planned = total()
        eta = max(0.0, (planned - state.iteration) * per_it)
        if budget.minutes is not None:  # stages differ in cost: the current stage's rate, and never past the limit
            eta = min(max(0.0, (planned - state.iteration) * (state.per_it or per_it)), max(0.0, limit - total_s()))
        progress(Progress(stage.name, state.iteration, planned, dict(losses), ips, total_s(), eta, lr))
        last_report_t, last_report_it = now, state.iteration

    last_start_it = state.iteration
    last_end = 0.0  # elapsed() at the end of the previous iteration
    lr = 0.0
    stage = stages[0]
    pos = _position(state.iteration, state.lengths)
    try:
        while pos is not None and (stop_at is None or state.iteration < stop_at):
            if should_stop is not None and should_stop():
                checkpoint()
                raise TrainingCancelled(
                    f"training cancelled at iteration {state.iteration}/{total()}; "
                    + ("the checkpoint is kept, resume to continue" if ckpt else "no checkpoint was written")
                )
            # stop when the next iteration would likely end past the deadline (the wall-clock limit is a limit)
            if total_s() + state.last_it_s > limit:
                stopped_by_time = True
                log.warning("time budget reached at iteration %d/%d; stopping early", state.iteration, total())
                break
            k, local = pos
            if state.lengths[k] is None and state.slot[0] != k:
                _open_slot(state, k, stages, weights, planned_end, total_s())
            stage, length = stages[k], state.lengths[k]
            lr = _set_lrs(stage, base_lrs[k], 1.0 if length is None else lr_factor(local, length, stage.lr_drops))
            batch = pipeline.get(k, state.iteration)
            _, step_rng = iteration_rngs(seed, state.iteration)
            try:
                with precision.autocast(amp_dtype, model.device):
                    raw_losses = stage.step(batch if stage.synth is not None else batch["images"], step_rng)
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
            if state.refines_done < len(REFINE_AT):  # minutes budget: this stage's length is not final yet
                _calibrate(state, stage, local + 1, total_s())
            every = progress_every or max(1, min(10, total() // 100))
            if state.iteration == 1 or state.iteration % every == 0:
                report(stage, lr)
            if ckpt is not None and checkpoint_every > 0 and state.iteration % checkpoint_every == 0:
                checkpoint()
            now = elapsed()
            state.last_it_s, last_end = now - last_end, now
            pos = _position(state.iteration, state.lengths)
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
    finally:
        pipeline.close()
        model.grad_scaler = None
    if pipeline.batches:
        log.info(
            "data: %.1f %% of the loop's time waiting for batches (%d workers)",
            100 * pipeline.wait_s / max(elapsed(), 1e-9),
            workers,
        )
    planned = _planned(state, weights, planned_end)
    return TrainSummary(
        iterations=state.iteration,
        total_iterations=max(state.iteration, sum(planned)),
        seconds=total_s(),
        final_losses=losses,
        cancelled=False,
        stopped_by_time=stopped_by_time,
        stage_iterations={s.name: n for s, n in zip(stages, planned, strict=True)},
        data_wait_s=pipeline.wait_s,
        data_workers=workers,
    )


def _open_slot(
    state: _State, k: int, stages: list[TrainingStage], weights: list[float], planned_end: float, now: float
) -> None:
    """Minutes budget, stage k starts: its slot is its weight's share of the time left (whatever earlier stages
    used), and its length is calibrated on its own iterations."""
    rest = sum(weights[k:])
    share = weights[k] / rest if rest > 0 else 0.0
    state.slot = (k, now, now + max(0.0, planned_end - now) * share)
    state.per_it, state.calib_t0, state.warmup_left, state.refines_done = 0.0, None, CALIBRATION_WARMUP, 0
    if share <= 0:  # weight 0: one iteration, as an iteration budget gives every stage at least one
        state.lengths[k], state.refines_done = 1, len(REFINE_AT)
    log.info("minutes budget: stage %s gets %.1f s from %.1f s", stages[k].name, state.slot[2] - now, now)


def _calibrate(state: _State, stage: TrainingStage, local: int, now: float) -> None:
    """Minutes budget, after an iteration of the current stage (`local` of its iterations done): after a warm-up,
    time a few iterations (wall clock incl. batch building and checkpoints) and fix the stage's length so it fills
    its slot; refine it at REFINE_AT shares of that length on the latest window while the stage's lr has not dropped
    under either the old or the new length."""
    if state.calib_t0 is None:
        state.warmup_left -= 1
        if state.warmup_left <= 0:
            state.calib_t0, state.calib_it0 = now, local
        return
    k, start, end = state.slot
    length = state.lengths[k]
    timed = local - state.calib_it0
    if length is None:
        if timed < CALIBRATION_ITERATIONS and now - start < CALIBRATION_MAX_SHARE * (end - start):
            return
    elif local < REFINE_AT[state.refines_done] * length or timed < 2:
        return
    state.per_it = (now - state.calib_t0) / max(1, timed)
    new = max(local + 1, local + int(max(0.0, end - now) / max(state.per_it, 1e-6)))
    while lr_factor(local - 1, new, stage.lr_drops) < 1.0:  # the iterations already run were at the base lr
        new += 1
    if length is not None:
        while state.refines_done < len(REFINE_AT) and local >= REFINE_AT[state.refines_done] * length:
            state.refines_done += 1
        if min(lr_factor(local, length, stage.lr_drops), lr_factor(local, new, stage.lr_drops)) < 1.0:
            state.refines_done = len(REFINE_AT)  # too late: the lr drops next under one of them; length is final
            return
    state.calib_t0, state.calib_it0 = now, local  # the next refinement times a fresh window
    if new != length:
        log.info("stage %s: %.3f s/iteration measured, planning %d iterations", stage.name, state.per_it, new)
    state.lengths[k] = new
