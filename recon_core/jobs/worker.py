"""The worker: runs one job (`runs.execute_run`) to a true final state and reports through a channel.

The same `JobRunner` runs a local job (in its own process, reporting to jobs.sqlite: `SqliteChannel`) and a cluster
job (in a Ray task on some node, reporting to the job's supervisor: cluster.py). It throttles progress to <= 2
writes/s, polls for cancel / pause requests every CANCEL_POLL_S, and turns every way a run can end into one state:
succeeded, failed, cancelled, interrupted (or back to `queued` when a background job pauses for a user's job).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from recon_core.errors import ReconError, TrainingCancelled
from recon_core.jobs.local import process_create_time
from recon_core.jobs.records import (
    CANCEL_POLL_S,
    CHECKPOINT_FILE,
    HEARTBEAT_S,
    PROGRESS_MIN_INTERVAL_S,
    JobRecords,
)

log = logging.getLogger(__name__)

RUNNER_ENV = "RECON_JOBS_RUNNER"  # "module:function" replacing execute_run (development / tests of other layers)
FAULT_DISK_FULL_ENV = "RECON_FAULT_DISK_FULL"  # "1": checkpoint writes raise ENOSPC in the worker (tests)


class JobChannel(Protocol):
    """Where a running job reports; implemented by SqliteChannel (local) and the cluster's supervisor client."""

    def heartbeat(self) -> bool: ...  # False: this worker no longer owns the job (stop)
    def flags(self) -> tuple[bool, bool]: ...  # (cancel requested, pause requested)
    def progress(self, fields: dict[str, Any]) -> None: ...
    def log(self, level: str, message: str) -> None: ...
    def finish(self, state: str, error: str | None, result: dict | None) -> bool: ...
    def requeue(self) -> bool: ...


class SqliteChannel:
    """A local worker's channel: the job's own rows in jobs.sqlite, guarded by this process's pid."""

    def __init__(self, records: JobRecords, job_id: str):
        self.records, self.job_id, self.pid = records, job_id, os.getpid()
        self.attempt = 0

    def attach(self) -> bool:
        self.attempt = self.records.attach(self.job_id, self.pid, process_create_time(self.pid), socket.gethostname())
        return self.attempt > 0

    def heartbeat(self) -> bool:
        return self.records.owned_update(self.job_id, self.pid, "UPDATE jobs SET heartbeat_at=?", (time.time(),)) > 0

    def flags(self) -> tuple[bool, bool]:
        return self.records.flags(self.job_id)

    def progress(self, fields: dict[str, Any]) -> None:
        self.records.record_progress(self.job_id, self.pid, self.attempt, fields)

    def log(self, level: str, message: str) -> None:
        self.records.log(self.job_id, level, message)

    def finish(self, state: str, error: str | None, result: dict | None) -> bool:
        return self.records.finish(self.job_id, self.pid, state, error, result)

    def requeue(self) -> bool:
        return self.records.requeue_paused(self.job_id, self.pid)


class ChannelLogHandler(logging.Handler):
    """Send the worker's log records to its channel (from any thread)."""

    def __init__(self, channel: JobChannel):
        super().__init__(level=logging.INFO)
        self.channel = channel
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.log(record.levelname, self.format(record))
        except Exception:  # pragma: no cover - logging must never break training
            self.handleError(record)


def progress_fields(p: Any) -> dict[str, Any]:
    """execute_run's progress object as the plain fields the records keep."""
    return {
        "t": time.time(),
        "stage": p.stage,
        "iteration": p.iteration,
        "total_iterations": p.total_iterations,
        "losses": {k: float(v) for k, v in (p.losses or {}).items()},
        "images_per_s": p.images_per_s,
        "elapsed_s": p.elapsed_s,
        "eta_s": p.eta_s,
        "lr": p.lr,
    }


class JobRunner:
    """Runs one job's spec in `run_dir`, reporting to `channel`; `run()` returns the process exit code."""

    def __init__(self, channel: JobChannel, job_id: str, on_progress: Callable[[], None] | None = None):
        self.channel, self.job_id = channel, job_id
        self.on_progress = on_progress  # called after each progress report (the cluster ships checkpoints here)
        self.stop = threading.Event()  # set by cancel, SIGTERM/SIGINT, or losing ownership of the job
        self.signalled: str | None = None  # the signal that stopped the worker (a shutdown or kill, not a cancel)
        self.done = threading.Event()
        self._last_write = 0.0
        self._pending: Any = None
        self._last_stage: str | None = None

    def heartbeat_loop(self) -> None:
        last_beat = 0.0
        while not self.done.wait(CANCEL_POLL_S):
            try:
                now = time.time()
                if now - last_beat >= HEARTBEAT_S:
                    if not self.channel.heartbeat() and not self.done.is_set():
                        log.warning("this worker no longer owns the job; stopping")
                        self.stop.set()
                    last_beat = now
                if self.channel.flags()[0]:
                    if not self.stop.is_set():
                        log.info("cancel requested: stopping after the current iteration (checkpoint kept)")
                    self.stop.set()
            except Exception as exc:  # a locked/busy DB or a slow cluster must not kill the heartbeat
                log.debug("heartbeat: %s", exc)

    def progress(self, p: Any) -> None:
        """execute_run's progress callback: throttled to <= 2 writes/s; stage changes and the last iteration are
        always written."""
        self._pending = p
        now = time.monotonic()
        stage_changed = getattr(p, "stage", None) != self._last_stage
        final = p.total_iterations and p.iteration >= p.total_iterations
        if stage_changed or final or now - self._last_write >= PROGRESS_MIN_INTERVAL_S:
            self.flush_progress()

    def flush_progress(self) -> None:
        p, self._pending = self._pending, None
        if p is None:
            return
        self._last_write = time.monotonic()
        self._last_stage = p.stage
        try:
            self.channel.progress(progress_fields(p))
        except Exception as exc:  # progress is best effort; the checkpoint is the truth
            log.warning("could not record progress: %s", exc)
        if self.on_progress is not None:
            self.on_progress()

    def finish(self, state: str, error: str | None = None, result: dict | None = None) -> None:
        self.done.set()  # stop the heartbeat first: after the final write it would find the job no longer ours
        self.flush_progress()
        try:
            owned = self.channel.finish(state, error, result)
        except sqlite3.DatabaseError as exc:  # the run folder holds the outcome; `jobs repair` rebuilds the record
            print(
                f"job {self.job_id}: {state}, but the job database could not record it ({exc}); the run folder "
                "has the result. `python -m recon_core jobs repair` (or opening the app) rebuilds the job list.",
                file=sys.stderr,
                flush=True,
            )
            return
        if owned:
            log.info("job %s: %s%s", self.job_id, state, f": {error}" if error else "")

    def run(self, spec_dict: dict[str, Any], run_dir: Path, resume: bool) -> int:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            resume = resume and (run_dir / CHECKPOINT_FILE).exists()
            spec = load_spec(spec_dict)
            runner = _runner()
            if self.channel.flags()[0]:  # cancelled while the worker was starting
                raise TrainingCancelled("cancelled before training started")
            result = runner(spec, run_dir, progress=self.progress, should_stop=self.stop.is_set, resume=resume)
        except TrainingCancelled as exc:
            if self.channel.flags()[1]:
                self.done.set()
                self.flush_progress()
                if self.channel.requeue():
                    log.info("job %s: paused for another job; queued again, resumes from its checkpoint", self.job_id)
                return 0
            if self.signalled and not self.channel.flags()[0]:  # nobody cancelled it: the machine or a person
                detail = str(exc).removeprefix("training cancelled ")  # "at iteration i/n; <checkpoint or not>"
                self.finish(  # stopped the worker, so it is resumable work, not a user's decision
                    "interrupted",
                    f"the worker was stopped by {self.signalled} (a shutdown or kill, not a cancel) {detail}",
                )
                return 0
            self.finish("cancelled", str(exc) or "cancelled; last checkpoint kept")
            return 0
        except ReconError as exc:
            self.finish("failed", str(exc))
            return 1
        except BaseException as exc:  # the job must end in a true state whatever happened
            message = describe_unexpected(exc)
            log.error("%s\n%s", message, traceback.format_exc())
            self.finish("failed", message)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return 1
        self.flush_progress()
        if self.stop.is_set() and self.channel.flags()[0]:
            log.info("cancel arrived after training finished; keeping the finished result")
        self.finish("succeeded", None, result_dict(result))
        return 0


def describe_unexpected(exc: BaseException) -> str:
    """A sentence for a person, for errors execute_run did not already turn into a ReconError."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" while writing {exc.filename}" if exc.filename else ""
        return f"disk full: no space left on the device{where}; free some space, then resume the job"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out of memory: use a smaller batch size or image size (or another device), then resume"
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return "the worker was stopped"
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"unexpected error: {type(exc).__name__}{': ' + text if text else ''} (traceback in the job log)"


def load_spec(spec_dict: dict[str, Any]) -> Any:
    from recon_core.config import from_dict

    if os.environ.get(RUNNER_ENV):
        return dict(spec_dict)  # an alternative runner takes the plain dict
    from recon_core.runs import RunSpec

    return from_dict(RunSpec, spec_dict, where="job spec")


def _runner() -> Callable[..., Any]:
    target = os.environ.get(RUNNER_ENV)
    if target:
        import importlib

        module_name, _, func = target.partition(":")
        return getattr(importlib.import_module(module_name), func)
    from recon_core.runs import execute_run

    return execute_run


def result_dict(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    if dataclasses.is_dataclass(result):
        out = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    elif isinstance(result, dict):
        out = dict(result)
    else:
        return {"value": str(result)}
    return json.loads(json.dumps(out, default=str))


def _install_disk_full_fault() -> None:
    """Test hook (RECON_FAULT_DISK_FULL=1): writing a checkpoint fails like a full disk does. Patching torch.save in
    this real worker process is the honest, portable stand-in for a full filesystem (no tmpfs mount needed)."""
    import torch

    original = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
        name = str(getattr(f, "name", f))  # a path or an open file (bundle.atomic_torch_save writes a temp file)
        if "checkpoint" in os.path.basename(name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)
        return original(obj, f, *args, **kwargs)

    torch.save = save


@contextlib.contextmanager
def reporting(runner: JobRunner, channel: JobChannel):
    """Log records to the channel and a heartbeat thread for the duration of a run."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    old_handlers = list(root.handlers)
    for old in old_handlers:  # log lines go to the channel only; stderr (worker.log) keeps raw output
        root.removeHandler(old)
    handler = ChannelLogHandler(channel)
    root.addHandler(handler)
    beat = threading.Thread(target=runner.heartbeat_loop, name="job-heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        runner.done.set()
        beat.join(timeout=5)
        root.removeHandler(handler)
        for old in old_handlers:
            root.addHandler(old)


def run_worker(workspace: str | os.PathLike, job_id: str) -> int:
    """Entry point of a local worker process: run one job to a true final state, then start the next queued job."""
    from recon_core.jobs.store import JobStore

    store = JobStore(workspace, autostart=False)
    channel = SqliteChannel(store, job_id)
    if not channel.attach():
        log.info("job %s is not waiting for a worker (cancelled, deleted or taken); nothing to do", job_id)
        return 0
    runner = JobRunner(channel, job_id)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received signal %d: stopping after the current iteration", signum)
        runner.signalled = signal.Signals(signum).name
        runner.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if os.environ.get(FAULT_DISK_FULL_ENV) == "1":
        _install_disk_full_fault()
    code = 1
    try:
        with reporting(runner, channel):
            job = store.get(job_id)
            log.info(
                "worker pid %d on %s: %s job %s (attempt %d)",
                channel.pid,
                socket.gethostname(),
                "resuming" if job.resume and (job.run_dir / CHECKPOINT_FILE).exists() else "starting",
                job_id,
                channel.attempt,
            )
            code = runner.run(job.spec, job.run_dir, job.resume)
    finally:
        # Whatever happened above, never leave the row `running` behind a live-looking pid.
        runner.finish("interrupted", "the worker stopped before the job ended; resume to continue")
        # The finishing worker keeps the queue moving (one new process per job).
        with contextlib.suppress(Exception):
            store.kick()
        store.close()
    return code
