"""Background training jobs that survive closed tabs, app restarts and crashes (design: notes/jobs.md).

State lives in one SQLite file, `<workspace>/jobs.sqlite` (WAL mode, busy_timeout), so any process (the Streamlit
app, the CLI, a worker) can read and change it and nothing is lost when one of them dies:

    jobs      one row per job: state, the RunSpec as JSON, worker pid + heartbeat, latest progress, error, result
    progress  throttled progress rows (<= 2/s per job): iteration, losses, images/s, ETA
    logs      log lines written by the worker (its raw stdout/stderr also go to <run_dir>/worker.log)

Each running job has ONE worker process (`python -m recon_core jobs worker --job ID`, its own session, so it
outlives the page or app that started it). A worker calls `recon_core.runs.execute_run` in the job's run folder
`<workspace>/<project>/runs/<job_id>/`; when it ends it starts the next queued job. Scheduling is a claim inside
`BEGIN IMMEDIATE` (one writer at a time), FIFO per device, at most `per_device_limit` running per device.

States::

    queued -> running -> succeeded | failed | cancelled | interrupted
    queued -> cancelled                         (cancel before it started)
    failed | cancelled | interrupted -> queued  (resume: continues from the last checkpoint)

`interrupted` = the worker vanished without reporting (SIGKILL, crash, machine restart, app restart that killed it);
`reconcile()` finds those from the pid (guarded against pid reuse by the process create time) and the heartbeat.

Usage (the app)::

    store = JobStore(workspace)            # reconciles stale rows on open
    job_id = store.submit(spec, project="bottle")
    job = store.get(job_id)                # Job: state, iteration/total, losses, eta_s, error, run_dir, ...
    rows = store.progress_rows(job_id)     # for a loss chart; pass since_id to poll incrementally
    store.cancel(job_id); store.resume(job_id); store.delete(job_id)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from recon_core.errors import ConfigError, ReconError, TrainingCancelled

log = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")
RESUMABLE_STATES = ("failed", "cancelled", "interrupted")

DB_NAME = "jobs.sqlite"
SCHEMA_VERSION = 2  # 2: priority + yield_requested (background jobs yield to the user's)
PRIORITIES = {"normal": 0, "background": 1}  # lower runs first; a background job yields its device to a normal one
BUSY_TIMEOUT_MS = 30_000
HEARTBEAT_S = 2.0  # worker -> DB heartbeat period
CANCEL_POLL_S = 0.5  # worker reads cancel_requested this often (cancel latency ~ this + one iteration)
PROGRESS_MIN_INTERVAL_S = 0.5  # at most 2 progress writes per second per job
STALE_HEARTBEAT_S = 600.0  # a live worker silent this long is considered hung (and killed)
RECONCILE_EVERY_S = 2.0  # get() re-checks workers at most this often
LAUNCH_GRACE_S = 60.0  # a claimed job whose worker never reported its pid within this is interrupted
LOG_FILE = "worker.log"
CHECKPOINT_FILE = "checkpoint.pt"  # execute_run's checkpoint inside run_dir (contract)
DEFAULT_PROJECT = "default"
_RUNNER_ENV = "RECON_JOBS_RUNNER"  # "module:function" replacing execute_run (development / tests of other layers)
_FAULT_DISK_FULL_ENV = "RECON_FAULT_DISK_FULL"  # "1": checkpoint writes raise ENOSPC in the worker (tests)
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    device_slot TEXT NOT NULL,
    queue_seq INTEGER NOT NULL,
    run_dir TEXT NOT NULL,
    created_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    pid_create_time REAL,
    host TEXT,
    heartbeat_at REAL,
    stage TEXT,
    iteration INTEGER,
    total_iterations INTEGER,
    losses TEXT,
    images_per_s REAL,
    elapsed_s REAL,
    eta_s REAL,
    priority INTEGER NOT NULL DEFAULT 0,
    yield_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, device_slot, queue_seq);
CREATE TABLE IF NOT EXISTS progress (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    t REAL NOT NULL,
    stage TEXT,
    iteration INTEGER,
    total_iterations INTEGER,
    losses TEXT,
    images_per_s REAL,
    elapsed_s REAL,
    eta_s REAL,
    lr REAL
);
CREATE INDEX IF NOT EXISTS progress_job ON progress(job_id, id);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    t REAL NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_job ON logs(job_id, id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_MIGRATIONS = {  # from schema version N to N + 1
    1: (
        "ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN yield_requested INTEGER NOT NULL DEFAULT 0",
    ),
}

# Popen handles of workers this process started: polled so that finished children are reaped (no zombies in a
# long-running app process).
_CHILDREN: list[subprocess.Popen] = []
_CHILDREN_LOCK = threading.Lock()  # Streamlit may share one JobStore between session threads


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """A snapshot of one job. `spec` is the RunSpec as a dict; progress fields are None until training reports."""

    id: str
    project: str
    state: str
    spec: dict[str, Any]
    device_slot: str
    run_dir: Path
    created_at: float
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    cancel_requested: bool = False
    resume: bool = False
    attempts: int = 0
    pid: int | None = None
    host: str | None = None
    heartbeat_at: float | None = None
    stage: str | None = None
    iteration: int | None = None
    total_iterations: int | None = None
    losses: dict[str, float] = field(default_factory=dict)
    images_per_s: float | None = None
    elapsed_s: float | None = None
    eta_s: float | None = None
    queue_position: int | None = None  # 1 = next to start on its device (queued jobs only)
    priority: int = 0  # PRIORITIES: 0 normal, 1 background (the demo run)
    waiting_for: str | None = None  # queued jobs: why it has not started (what holds its device)

    @property
    def budget_minutes(self) -> float | None:
        minutes = self.spec.get("minutes")
        return float(minutes) if minutes and not self.spec.get("iterations") else None

    def progress_text(self, with_state: bool = True) -> str:
        """One line for a person: what the job is doing, in the units of its budget. Queued: why it waits.
        Iterations budget: iteration i/N and ETA. Minutes budget: elapsed of the budget and time left (the total
        number of iterations is only an estimate there, so it is not shown as one)."""
        state = self.state + (" (cancel requested)" if self.cancel_requested and self.state == "running" else "")
        parts = [state] if with_state else []
        if self.state == "queued":
            parts.append(self.waiting_for or "starts when its device is free")
            return " · ".join(parts)
        minutes = self.budget_minutes
        if self.stage and self.state == "running":
            parts.append(self.stage)
        if minutes is not None:
            budget = format_duration(minutes * 60)
            if self.elapsed_s is not None:
                parts.append(f"{format_duration(self.elapsed_s)} of {budget}")
                if self.is_active:
                    parts.append(f"{format_duration(max(0.0, minutes * 60 - self.elapsed_s))} left")
            else:
                parts.append(f"{budget} budget")
            if self.iteration:
                parts.append(f"{self.iteration} iterations")
        elif self.iteration:
            total = f"/{self.total_iterations}" if self.total_iterations else ""
            parts.append(f"iteration {self.iteration}{total}")
            if self.is_active and self.eta_s is not None:
                parts.append(f"ETA {format_duration(self.eta_s)}")
        elif self.state == "running":
            parts.append("starting (loading data and model)")
        return " · ".join(parts)

    @property
    def model(self) -> str:
        return str(self.spec.get("model", ""))

    @property
    def data(self) -> str:
        return str(self.spec.get("data", ""))

    @property
    def is_active(self) -> bool:
        """Queued or running: the page should keep polling."""
        return self.state in ACTIVE_STATES

    @property
    def can_resume(self) -> bool:
        return self.state in RESUMABLE_STATES

    @property
    def fraction(self) -> float:
        """Training progress in [0, 1] (1 for succeeded jobs)."""
        if self.state == "succeeded":
            return 1.0
        if self.budget_minutes is not None:  # a time budget: the iteration total is an estimate, the clock is not
            return min(1.0, (self.elapsed_s or 0.0) / (60 * self.budget_minutes))
        if not self.iteration or not self.total_iterations:
            return 0.0
        return min(1.0, self.iteration / self.total_iterations)

    @property
    def log_path(self) -> Path:
        return self.run_dir / LOG_FILE


def format_duration(seconds: float | None) -> str:
    """m:ss, or h:mm:ss from an hour; '—' when unknown."""
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class JobQueue(Protocol):
    """What the app and CLI need from a job backend. `JobStore` (SQLite + local worker processes) is the only one
    today; a multi-machine backend (workers on other hosts claiming from a shared queue) would implement this."""

    def submit(self, spec: Any, project: str | None = None, priority: str = "normal") -> str: ...
    def list_jobs(self, project: str | None = None) -> list[Job]: ...
    def get(self, job_id: str) -> Job: ...
    def cancel(self, job_id: str) -> Job: ...
    def resume(self, job_id: str) -> Job: ...
    def delete(self, job_id: str) -> None: ...
    def progress_rows(self, job_id: str, since_id: int = 0) -> list[dict[str, Any]]: ...
    def logs(self, job_id: str, tail: int | None = None) -> str: ...


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def default_workspace() -> Path:
    """$RECON_WORKSPACE, else ./workspace."""
    return Path(os.environ.get("RECON_WORKSPACE") or "workspace")


def device_slot(device: str | None) -> str:
    """The concurrency key of a device setting (device.normalize_device: 'cpu', 'cpu:0', 'cpu:1' are one slot)."""
    from recon_core.device import normalize_device  # imports torch: only when a job is submitted

    return normalize_device(device)


def _process_create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


def _process_alive(pid: int | None, create_time: float | None) -> bool:
    """True if `pid` runs and is the same process that registered (not a reused pid, not a zombie)."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # A different create time means the pid was reused by another process.
        return create_time is None or abs(proc.create_time() - create_time) <= 1.0
    except (psutil.Error, OSError):
        return False


def _reap_children() -> None:
    with _CHILDREN_LOCK:
        for proc in list(_CHILDREN):
            if proc.poll() is not None:
                _CHILDREN.remove(proc)


def _json_or_none(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


def _check_project(project: str | None) -> str:
    project = project or DEFAULT_PROJECT
    if not _PROJECT_RE.match(project):
        raise ConfigError(
            f"project name {project!r}: use letters, digits, '.', '_' or '-' (max 64, not starting with '.' or '-')"
        )
    return project


def _spec_to_dict(spec: Any) -> dict[str, Any]:
    from recon_core.config import to_dict

    if isinstance(spec, dict):
        return json.loads(json.dumps(spec))
    if dataclasses.is_dataclass(spec):
        return to_dict(spec)
    raise ConfigError(f"submit: expected a RunSpec, got {type(spec).__name__}")


def _resolve_data(data: str) -> Path:
    """An absolute data folder (a path, or an MVTec category name under the shared data, as execute_run accepts)."""
    from recon_core.runs import resolve_data_path

    return resolve_data_path(data).resolve()


def _validate_spec(spec_dict: dict[str, Any]) -> None:
    """Refuse at submit what would fail at once in the worker: unknown settings, a bad model config or budget.
    (The device is checked by the worker: a multi-machine backend may run it where that device exists.)"""
    from recon_core.config import from_dict
    from recon_core.models import get_model_class
    from recon_core.runs import RunSpec, budget_for

    spec = from_dict(RunSpec, spec_dict, where="run spec")
    if spec.model == "auto":  # a strategy over several models, checked by its own module
        from recon_core.auto import candidate_configs, validate_auto_spec

        validate_auto_spec(spec)
        for name, config in candidate_configs(spec).items():
            _check_memory(dataclasses.replace(spec, model=name), config)
        return
    cls = get_model_class(spec.model)
    preset = spec.preset or cls.default_preset
    config = cls.config_from_preset(preset, **spec.model_overrides)
    budget_for(spec, cls, preset)
    _check_memory(spec, config)


def _check_memory(spec: Any, config: Any) -> None:
    """Refuse a batch / image size that cannot fit on the requested device, when that device is here."""
    from recon_core.device import resolve_device
    from recon_core.memory import check_fits

    try:
        device = resolve_device(spec.device)
    except ConfigError:
        return  # not on this machine: the worker checks it where it runs
    check_fits(spec.model, config, device)


# ---------------------------------------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------------------------------------


class JobStore:
    """Durable job queue in `<workspace>/jobs.sqlite` with one local worker process per running job.

    Every method is safe to call from several processes at once (the app, the CLI, workers). Opening a store
    reconciles rows whose worker died; pass `autostart=False` to queue without starting workers (tests, or a
    backend where workers run elsewhere) and call `ensure_worker()` later.
    """

    def __init__(self, workspace: str | os.PathLike, *, per_device_limit: int | None = None, autostart: bool = True):
        self.workspace = Path(workspace).expanduser().resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.db_path = self.workspace / DB_NAME
        self.autostart = autostart
        self._local = threading.local()
        self._last_reconcile = 0.0
        self.repaired: str | None = None  # set when opening found the database damaged and rebuilt it
        self._init_schema()
        if per_device_limit is not None:
            self.set_per_device_limit(per_device_limit)
        self.reconcile()

    # ---- connection ---------------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections must not cross threads); autocommit mode, explicit
        BEGIN IMMEDIATE for read-modify-write."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, fast commits
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database write lock up front (no lost updates between processes)."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _init_schema(self) -> None:
        """Create or migrate the schema; a damaged file (not a busy or unreadable one) is repaired."""
        try:
            conn = self._conn()
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ReconError(f"{self.db_path}: made by a newer Recon Studio (schema {version}); upgrade")
            if version < SCHEMA_VERSION:  # the usual case (equal) needs no write lock
                with self._write() as c:
                    version = c.execute("PRAGMA user_version").fetchone()[0]  # another process may have done it
                    if version == 0:
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                c.execute(statement)
                    else:
                        for v in range(version, SCHEMA_VERSION):
                            for statement in _MIGRATIONS[v]:
                                c.execute(statement)
                    c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.OperationalError as exc:  # busy, locked, no permission: not damage, never moved aside
            raise ReconError(f"{self.db_path}: cannot open the job database ({exc})") from exc
        except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
            self.repair(str(exc))
            return
        problem = self.damage()
        if problem:
            self.repair(problem)

    # ---- damage and repair --------------------------------------------------------------------------------
    def damage(self) -> str | None:
        """What is wrong with the database file (sqlite's quick_check), or None when it is sound."""
        try:
            rows = self._conn().execute("PRAGMA quick_check").fetchall()
        except sqlite3.OperationalError:
            return None  # busy or locked is not damage
        except sqlite3.DatabaseError as exc:
            return str(exc)
        messages = [r[0] for r in rows]
        return None if messages == ["ok"] else "; ".join(messages[:3])

    def repair(self, reason: str = "asked for") -> str:
        """Move a damaged jobs.sqlite aside (kept as jobs.sqlite.damaged-<time>) and rebuild the job records from
        the run folders (<workspace>/<project>/runs/<job id>/: spec.json, metrics.json, model.pt, checkpoint.pt).
        Finished runs come back `succeeded` with their metrics; the others `interrupted` (resume continues from
        their checkpoint). Logs and loss curves stay in each run folder (worker.log, losses.csv). Returns the
        message, also kept in `self.repaired`."""
        self.close()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.db_path.with_name(f"{DB_NAME}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.db_path) + suffix)
            if src.exists():
                src.replace(Path(str(aside) + suffix))
        self._init_fresh()
        rebuilt = self._rebuild_from_run_folders()
        counts: dict[str, int] = {}
        for state in rebuilt.values():
            counts[state] = counts.get(state, 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no run folders"
        self.repaired = (
            f"The job database was damaged ({reason[:200]}). It was moved aside to {aside.name} and the job list "
            f"was rebuilt from the run folders ({summary}). Logs and loss curves of older attempts are in each run "
            "folder (worker.log, losses.csv); interrupted jobs can be resumed."
        )
        log.warning("%s", self.repaired)
        return self.repaired

    def _init_fresh(self) -> None:
        with self._write() as c:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _rebuild_from_run_folders(self) -> dict[str, str]:
        from recon_core.device import normalize_device

        rebuilt: dict[str, str] = {}
        spec_files = sorted(self.workspace.glob("*/runs/*/spec.json"), key=lambda p: p.stat().st_mtime)
        with self._write() as c:
            for seq, spec_file in enumerate(spec_files, start=1):
                run_dir = spec_file.parent
                project = run_dir.parent.parent.name
                try:
                    spec = json.loads(spec_file.read_text())
                    slot = normalize_device(spec.get("device"))
                except (OSError, ValueError, ReconError):
                    continue  # not a run this store can describe
                created = spec_file.stat().st_mtime
                metrics_file = run_dir / "metrics.json"
                finished = (run_dir / "model.pt").is_file() and metrics_file.is_file()
                metrics: dict[str, Any] = {}
                if finished:
                    with contextlib.suppress(OSError, ValueError):
                        metrics = json.loads(metrics_file.read_text())
                state = "succeeded" if finished else "interrupted"
                error = None if finished else "record rebuilt after the job database was damaged; resume to continue"
                result = {"bundle_path": str(run_dir / "model.pt"), "metrics": metrics} if finished else None
                c.execute(
                    "INSERT OR IGNORE INTO jobs(id, project, state, spec, device_slot, queue_seq, run_dir, created_at,"
                    " queued_at, finished_at, error, result, iteration, total_iterations, resume)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_dir.name,
                        project,
                        state,
                        json.dumps(spec),
                        slot,
                        seq,
                        f"{project}/runs/{run_dir.name}",
                        created,
                        created,
                        metrics_file.stat().st_mtime if finished else None,
                        error,
                        json.dumps(result, default=str) if result is not None else None,
                        metrics.get("iterations"),
                        metrics.get("total_iterations") or metrics.get("iterations"),
                        0 if finished else 1,
                    ),
                )
                rebuilt[run_dir.name] = state
        return rebuilt

    # ---- settings -----------------------------------------------------------------------------------------
    def per_device_limit(self) -> int:
        """How many jobs may run at once on one device (default 1)."""
        row = self._conn().execute("SELECT value FROM settings WHERE key='per_device_limit'").fetchone()
        return int(row["value"]) if row else 1

    def set_per_device_limit(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"per_device_limit must be an integer >= 1, got {limit!r}")
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO settings(key, value) VALUES ('per_device_limit', ?)", (str(limit),))

    # ---- reading ------------------------------------------------------------------------------------------
    def _row_to_job(self, row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            project=row["project"],
            state=row["state"],
            spec=json.loads(row["spec"]),
            device_slot=row["device_slot"],
            run_dir=self.workspace / row["run_dir"],
            created_at=row["created_at"],
            queued_at=row["queued_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            error=row["error"],
            result=_json_or_none(row["result"]),
            cancel_requested=bool(row["cancel_requested"]),
            resume=bool(row["resume"]),
            attempts=row["attempts"],
            pid=row["pid"],
            host=row["host"],
            heartbeat_at=row["heartbeat_at"],
            stage=row["stage"],
            iteration=row["iteration"],
            total_iterations=row["total_iterations"],
            losses=_json_or_none(row["losses"]) or {},
            images_per_s=row["images_per_s"],
            elapsed_s=row["elapsed_s"],
            eta_s=row["eta_s"],
            priority=row["priority"],
        )

    def _queue_positions(self) -> dict[str, tuple[int, str]]:
        """{queued job id: (position on its device, why it waits)}, in claim order (priority, then FIFO)."""
        conn = self._conn()
        rows = conn.execute(
            "SELECT id, device_slot, priority FROM jobs WHERE state='queued' ORDER BY priority, queue_seq"
        ).fetchall()
        running: dict[str, list[sqlite3.Row]] = {}
        held = "SELECT id, device_slot, spec, priority, yield_requested FROM jobs WHERE state='running'"
        for r in conn.execute(held):
            running.setdefault(r["device_slot"], []).append(r)
        limit = self.per_device_limit()
        counts: dict[str, int] = {}
        out: dict[str, tuple[int, str]] = {}
        for row in rows:
            slot = row["device_slot"]
            counts[slot] = counts.get(slot, 0) + 1
            position = counts[slot]
            busy = running.get(slot, [])
            if len(busy) >= limit:
                holder = busy[0]
                name = json.loads(holder["spec"]).get("name")
                what = f"job {holder['id']}" + (f" ({name})" if name else "")
                if holder["yield_requested"]:
                    why = f"{what} is pausing to free {slot} for it" if position == 1 else f"waiting for {what}"
                else:
                    why = f"waiting for {what} to finish on {slot}"
            elif position > 1:
                why = f"{position - 1} job(s) ahead on {slot}"
            else:
                why = f"starting on {slot}"
            if position > 1 and len(busy) >= limit:
                why += f"; {position - 1} job(s) ahead"
            if row["priority"] > 0:
                why += "; background job: yields to your runs"
            out[row["id"]] = (position, why)
        return out

    def get(self, job_id: str) -> Job:
        """The job's current state; ReconError if there is no such job. Notices dead workers (at most every 2 s), so
        a page that only polls `get` never shows a dead job as running."""
        if time.monotonic() - self._last_reconcile > RECONCILE_EVERY_S:
            self.reconcile()
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise ReconError(f"no job {job_id!r} in {self.db_path}")
        job = self._row_to_job(row)
        if job.state == "queued":
            job.queue_position, job.waiting_for = self._queue_positions().get(job.id, (None, None))
        return job

    def list_jobs(self, project: str | None = None, states: tuple[str, ...] | None = None) -> list[Job]:
        """Jobs, newest first (after reconciling dead workers). Filter by project and/or states."""
        self.reconcile()
        sql, params = "SELECT * FROM jobs", []
        where = []
        if project is not None:
            where.append("project=?")
            params.append(project)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(states)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, queue_seq DESC"
        jobs = [self._row_to_job(r) for r in self._conn().execute(sql, params).fetchall()]
        positions = self._queue_positions()
        for job in jobs:
            job.queue_position, job.waiting_for = positions.get(job.id, (None, None))
        return jobs

    def progress_rows(self, job_id: str, since_id: int = 0) -> list[dict[str, Any]]:
        """Progress reports in order: dicts with id, attempt, t, stage, iteration, total_iterations, losses (dict),
        images_per_s, elapsed_s, eta_s, lr. Poll with since_id = the last id you have."""
        rows = (
            self._conn()
            .execute("SELECT * FROM progress WHERE job_id=? AND id>? ORDER BY id", (job_id, since_id))
            .fetchall()
        )
        out = []
        for row in rows:
            item = dict(row)
            item["losses"] = _json_or_none(item["losses"]) or {}
            out.append(item)
        return out

    def logs(self, job_id: str, tail: int | None = None) -> str:
        """The job's log lines (from SQLite), then the worker's raw output (tracebacks, warnings) if it wrote any."""
        job = self.get(job_id)
        rows = (
            self._conn().execute("SELECT t, level, message FROM logs WHERE job_id=? ORDER BY id", (job_id,)).fetchall()
        )
        lines = []
        for row in rows:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["t"]))
            level = "" if row["level"] == "INFO" else f"{row['level']}: "
            lines.append(f"{stamp} {level}{row['message']}")
        if tail is not None:
            lines = lines[-tail:]
        text = "\n".join(lines)
        try:
            raw = job.log_path.read_text(errors="replace").strip()
        except OSError:
            raw = ""
        if raw:
            raw_lines = raw.splitlines()
            if tail is not None:
                raw_lines = raw_lines[-tail:]
            text += f"\n--- worker output ({job.log_path}) ---\n" + "\n".join(raw_lines)
        return text

    # ---- submitting and changing jobs ---------------------------------------------------------------------
    def submit(self, spec: Any, project: str | None = None, priority: str = "normal") -> str:
        """Queue a training run (a recon_core.runs.RunSpec) and start it when its device is free; returns the job
        id. Bad settings (unknown keys, model config, budget) and a missing data folder raise ReconError now; the
        spec is stored with the data path made absolute so the worker finds it from any directory."""
        project = _check_project(project)
        spec_dict = _spec_to_dict(spec)
        data = spec_dict.get("data")
        if not data:
            raise ConfigError("submit: the run spec has no data folder")
        spec_dict["data"] = str(_resolve_data(data))
        _validate_spec(spec_dict)
        slot = device_slot(spec_dict.get("device"))
        if priority not in PRIORITIES:
            raise ConfigError(f"submit: priority {priority!r} is not one of {list(PRIORITIES)}")
        now = time.time()
        for _ in range(5):  # ids are random; retry on the (unlikely) collision
            job_id = _new_job_id()
            try:
                with self._write() as c:
                    seq = c.execute("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM jobs").fetchone()[0]
                    c.execute(
                        "INSERT INTO jobs(id, project, state, spec, device_slot, queue_seq, run_dir, created_at,"
                        " queued_at, priority) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                        (
                            job_id,
                            project,
                            json.dumps(spec_dict),
                            slot,
                            seq,
                            f"{project}/runs/{job_id}",
                            now,
                            now,
                            PRIORITIES[priority],
                        ),
                    )
                break
            except sqlite3.IntegrityError:
                continue
        else:  # pragma: no cover - 5 collisions of 24 random bits in the same second
            raise ReconError("could not allocate a job id")
        self._log(job_id, "INFO", f"queued on {slot}: {spec_dict.get('model')} on {spec_dict['data']}")
        self._preempt_background(slot)
        if self.autostart:
            self.kick()
        return job_id

    def _preempt_background(self, slot: str) -> None:
        """A normal job waits on `slot` while a background job (the demo run) holds it: ask that job to pause. Its
        worker stops after the current iteration with a checkpoint and the job goes back to the queue (behind the
        user's jobs, resuming where it stopped) instead of ending `cancelled`."""
        with self._write() as c:
            waiting = c.execute(
                "SELECT 1 FROM jobs WHERE state='queued' AND device_slot=? AND priority=0 LIMIT 1", (slot,)
            ).fetchone()
            running = c.execute(
                "SELECT id, priority, yield_requested FROM jobs WHERE state='running' AND device_slot=?", (slot,)
            ).fetchall()
            if waiting is None or len(running) < self.per_device_limit():
                return
            if any(r["yield_requested"] for r in running):
                return  # one is already making room
            victim = next((r["id"] for r in running if r["priority"] > 0), None)
            if victim is None:
                return
            c.execute("UPDATE jobs SET yield_requested=1, cancel_requested=1 WHERE id=?", (victim,))
        self._log(victim, "INFO", f"pausing: a run of yours is waiting for {slot}; this job continues afterwards")

    def cancel(self, job_id: str) -> Job:
        """Stop a job. Queued (or interrupted) jobs become `cancelled` at once; a running job is asked to stop and
        becomes `cancelled` within a few seconds, after its worker has written a checkpoint (resume continues)."""
        self._mark_dead()  # a dead worker's job is interrupted, and cancelling that is immediate
        with self._write() as c:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise ReconError(f"no job {job_id!r}")
            state = row["state"]
            if state in ("queued", "interrupted"):
                c.execute(
                    "UPDATE jobs SET state='cancelled', finished_at=?, error=NULL WHERE id=?", (time.time(), job_id)
                )
            elif state == "running":  # the user's cancel wins over a pending pause (no requeue)
                c.execute("UPDATE jobs SET cancel_requested=1, yield_requested=0 WHERE id=?", (job_id,))
            else:
                raise ReconError(
                    f"job {job_id} has already {'ended' if state != 'cancelled' else 'been cancelled'}"
                    f" ({state}); nothing to cancel"
                )
        self._log(job_id, "INFO", "cancel requested" if state == "running" else f"cancelled ({state} before)")
        return self.get(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue an interrupted, cancelled or failed job again; it continues from its last checkpoint with the same
        schedule (execute_run(resume=True)). It goes to the back of the queue."""
        with self._write() as c:
            row = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise ReconError(f"no job {job_id!r}")
            if row["state"] not in RESUMABLE_STATES:
                raise ReconError(
                    f"job {job_id} is {row['state']}; only {', '.join(RESUMABLE_STATES)} jobs can be resumed"
                )
            seq = c.execute("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM jobs").fetchone()[0]
            c.execute(
                "UPDATE jobs SET state='queued', resume=1, cancel_requested=0, yield_requested=0, error=NULL,"
                " finished_at=NULL, pid=NULL, pid_create_time=NULL, host=NULL, queue_seq=?, queued_at=? WHERE id=?",
                (seq, time.time(), job_id),
            )
        self._log(job_id, "INFO", f"resume requested (was {row['state']})")
        self._preempt_background(self.get(job_id).device_slot)
        if self.autostart:
            self.kick()
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Forget a job and delete its run folder (checkpoints, model). Running jobs must be cancelled first."""
        self._mark_dead()
        job = self.get(job_id)
        with self._write() as c:
            state = c.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()["state"]
            if state == "running":
                raise ReconError(f"job {job_id} is running; cancel it first (jobs cancel {job_id})")
            for table, column in (("progress", "job_id"), ("logs", "job_id"), ("jobs", "id")):
                c.execute(f"DELETE FROM {table} WHERE {column}=?", (job_id,))
        # Only ever remove a folder inside this workspace's runs/ (the path comes from the DB).
        run_dir = job.run_dir.resolve()
        if run_dir.parent.name == "runs" and self.workspace in run_dir.parents:
            shutil.rmtree(run_dir, ignore_errors=True)

    # ---- keeping the queue honest and moving ----------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Mark `running` jobs whose worker is gone as `interrupted` (never `running` forever), then (autostart)
        start queued jobs if a device is free. Returns the ids marked interrupted. Cheap; called on open and list."""
        changed = self._mark_dead()
        if self.autostart:
            self.kick()
        return changed

    def _mark_dead(self) -> list[str]:
        self._last_reconcile = time.monotonic()
        _reap_children()
        now = time.time()
        here = socket.gethostname()
        try:
            boot = psutil.boot_time()
        except (psutil.Error, OSError):  # pragma: no cover
            boot = 0.0
        changed = []
        rows = self._conn().execute("SELECT * FROM jobs WHERE state='running'").fetchall()
        for row in rows:
            reason = self._why_dead(row, now, here, boot)
            if reason is None:
                continue
            with self._write() as c:
                # Re-check inside the lock: the worker may have finished meanwhile.
                cur = c.execute(
                    "UPDATE jobs SET state='interrupted', finished_at=?, error=? WHERE id=? AND state='running'"
                    " AND pid IS ? AND heartbeat_at IS ?",
                    (now, reason, row["id"], row["pid"], row["heartbeat_at"]),
                )
            if cur.rowcount:
                changed.append(row["id"])
                self._log(row["id"], "WARNING", reason)
        return changed

    def _why_dead(self, row: sqlite3.Row, now: float, here: str, boot: float) -> str | None:
        beat = row["heartbeat_at"] or 0.0
        if row["pid"] is None:
            if now - beat > LAUNCH_GRACE_S:
                return f"the worker process never started (no report within {LAUNCH_GRACE_S:.0f} s)"
            return None
        if row["host"] not in (None, here):  # another machine's worker: only its heartbeat tells
            if now - beat > STALE_HEARTBEAT_S:
                return f"the worker on {row['host']} stopped reporting (no heartbeat for {now - beat:.0f} s)"
            return None
        resume_hint = "; resume to continue from the last checkpoint"
        if beat < boot:
            return "the machine restarted while the job was running" + resume_hint
        if not _process_alive(row["pid"], row["pid_create_time"]):
            return f"the worker process (pid {row['pid']}) ended without reporting (killed or crashed)" + resume_hint
        if now - beat > STALE_HEARTBEAT_S:
            with contextlib.suppress(OSError):
                os.kill(row["pid"], signal.SIGKILL)  # hung: make sure it cannot write any more
            return f"the worker stopped responding (no heartbeat for {now - beat:.0f} s) and was stopped" + resume_hint
        return None

    def ensure_worker(self) -> list[str]:
        """Reconcile, then start workers for queued jobs whose device is free. Call it on app start / page load:
        after a restart, queued jobs then continue. Returns the ids started now."""
        self._mark_dead()
        return self.kick()

    def kick(self) -> list[str]:
        """Start a worker for each queued job that may run now (FIFO per device, within the limit)."""
        started: list[str] = []
        if self._conn().execute("SELECT 1 FROM jobs WHERE state='queued' LIMIT 1").fetchone() is None:
            return started  # the common case, without taking the write lock
        while True:
            job_id = self.claim_next()
            if job_id is None:
                return started
            self._spawn_worker(job_id)
            started.append(job_id)

    def claim_next(self, slots: tuple[str, ...] | None = None) -> str | None:
        """Atomically move the oldest queued job whose device has a free slot to `running` (pid not yet known) and
        return its id, or None. Race-free across processes: the whole check-and-set holds the write lock."""
        limit = self.per_device_limit()
        with self._write() as c:
            running: dict[str, int] = {}
            for row in c.execute("SELECT device_slot, COUNT(*) AS n FROM jobs WHERE state='running' GROUP BY 1"):
                running[row["device_slot"]] = row["n"]
            rows = c.execute("SELECT id, device_slot FROM jobs WHERE state='queued' ORDER BY priority, queue_seq")
            for row in rows.fetchall():
                slot = row["device_slot"]
                if slots is not None and slot not in slots:
                    continue
                if running.get(slot, 0) >= limit:
                    continue  # FIFO per device: later jobs on this device wait behind this one
                cur = c.execute(
                    "UPDATE jobs SET state='running', pid=NULL, pid_create_time=NULL, host=NULL, heartbeat_at=?,"
                    " cancel_requested=0 WHERE id=? AND state='queued'",
                    (time.time(), row["id"]),
                )
                if cur.rowcount:
                    return row["id"]
        return None

    def _spawn_worker(self, job_id: str) -> None:
        job = self.get(job_id)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[1])  # so `-m recon_core` works from any cwd
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable,
            "-m",
            "recon_core",
            "jobs",
            "worker",
            "--workspace",
            str(self.workspace),
            "--job",
            job_id,
        ]
        try:
            with open(job.log_path, "ab") as out:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=str(self.workspace),
                    env=env,
                    start_new_session=True,  # survives the app/terminal that started it (and its Ctrl-C)
                    close_fds=True,
                )
        except OSError as exc:
            with self._write() as c:
                c.execute(
                    "UPDATE jobs SET state='failed', finished_at=?, error=? WHERE id=? AND state='running'",
                    (time.time(), f"could not start the worker process: {exc}", job_id),
                )
            return
        with _CHILDREN_LOCK:
            _CHILDREN.append(proc)
        with self._write() as c:
            c.execute(
                "UPDATE jobs SET pid=?, pid_create_time=?, host=? WHERE id=? AND state='running' AND pid IS NULL",
                (proc.pid, _process_create_time(proc.pid), socket.gethostname(), job_id),
            )

    # ---- logging ------------------------------------------------------------------------------------------
    def _log(self, job_id: str, level: str, message: str) -> None:
        with contextlib.suppress(sqlite3.Error), self._write() as c:
            c.execute(
                "INSERT INTO logs(job_id, t, level, message) VALUES (?, ?, ?, ?)",
                (job_id, time.time(), level, _storable(message)),
            )


# ---------------------------------------------------------------------------------------------------------------
# the worker (runs in its own process: `python -m recon_core jobs worker --workspace WS --job ID`)
# ---------------------------------------------------------------------------------------------------------------


def _storable(text: str | None) -> str | None:
    """Text SQLite can store: a path with undecodable bytes (non-UTF-8 file name, kept by Python as surrogate
    escapes) would make the write raise; those bytes are shown as U+FFFD instead."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _DbLogHandler(logging.Handler):
    """Send the worker's log records to the job's rows in SQLite (from any thread)."""

    def __init__(self, store: JobStore, job_id: str):
        super().__init__(level=logging.INFO)
        self.store, self.job_id = store, job_id
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.store._log(self.job_id, record.levelname, self.format(record))
        except Exception:  # pragma: no cover - logging must never break training
            self.handleError(record)


class _Worker:
    def __init__(self, store: JobStore, job_id: str):
        self.store, self.job_id = store, job_id
        self.pid = os.getpid()
        self.stop = threading.Event()  # set by cancel, SIGTERM/SIGINT, or losing ownership of the row
        self.done = threading.Event()
        self.attempt = 0
        self._last_write = 0.0
        self._pending: Any = None
        self._last_stage: str | None = None

    # -- ownership ------------------------------------------------------------------------------------------
    def attach(self) -> bool:
        with self.store._write() as c:
            cur = c.execute(
                "UPDATE jobs SET pid=?, pid_create_time=?, host=?, heartbeat_at=?,"
                " started_at=COALESCE(started_at, ?), attempts=attempts+1"
                " WHERE id=? AND state='running' AND (pid IS NULL OR pid=?)",
                (
                    self.pid,
                    _process_create_time(self.pid),
                    socket.gethostname(),
                    time.time(),
                    time.time(),
                    self.job_id,
                    self.pid,
                ),
            )
            row = c.execute("SELECT attempts FROM jobs WHERE id=?", (self.job_id,)).fetchone()
        self.attempt = row["attempts"] if row else 0
        return cur.rowcount == 1

    def _owned_update(self, sql: str, params: tuple) -> int:
        """UPDATE jobs ... only while this process still owns the running row (reconcile may have taken it)."""
        with self.store._write() as c:
            return c.execute(
                sql + " WHERE id=? AND state='running' AND pid=?", (*params, self.job_id, self.pid)
            ).rowcount

    def heartbeat_loop(self) -> None:
        last_beat = 0.0
        while not self.done.wait(CANCEL_POLL_S):
            try:
                now = time.time()
                if now - last_beat >= HEARTBEAT_S:
                    if self._owned_update("UPDATE jobs SET heartbeat_at=?", (now,)) == 0 and not self.done.is_set():
                        log.warning("this worker no longer owns the job; stopping")
                        self.stop.set()
                    last_beat = now
                row = (
                    self.store._conn()
                    .execute("SELECT cancel_requested FROM jobs WHERE id=?", (self.job_id,))
                    .fetchone()
                )
                if row is None or row["cancel_requested"]:
                    if not self.stop.is_set():
                        log.info("cancel requested: stopping after the current iteration (checkpoint kept)")
                    self.stop.set()
            except sqlite3.Error as exc:  # a locked/busy DB must not kill the heartbeat
                log.debug("heartbeat: %s", exc)

    # -- progress -------------------------------------------------------------------------------------------
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
        losses = json.dumps({k: float(v) for k, v in (p.losses or {}).items()})
        now = time.time()
        try:
            fields = (p.stage, p.iteration, p.total_iterations, losses, p.images_per_s, p.elapsed_s, p.eta_s)
            with self.store._write() as c:
                c.execute(
                    "INSERT INTO progress(job_id, attempt, t, stage, iteration, total_iterations, losses,"
                    " images_per_s, elapsed_s, eta_s, lr) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (self.job_id, self.attempt, now, *fields, p.lr),
                )
                c.execute(
                    "UPDATE jobs SET stage=?, iteration=?, total_iterations=?, losses=?, images_per_s=?, elapsed_s=?,"
                    " eta_s=?, heartbeat_at=? WHERE id=? AND state='running' AND pid=?",
                    (*fields, now, self.job_id, self.pid),
                )
        except sqlite3.Error as exc:  # progress is best effort; the checkpoint is the truth
            log.warning("could not record progress: %s", exc)

    # -- the run --------------------------------------------------------------------------------------------
    def finish(self, state: str, error: str | None = None, result: dict | None = None) -> None:
        self.done.set()  # stop the heartbeat first: after the final write it would find the row no longer ours
        self.flush_progress()
        try:
            n = self._owned_update(
                "UPDATE jobs SET state=?, finished_at=?, error=?, result=?, cancel_requested=0",
                (state, time.time(), _storable(error), json.dumps(result) if result is not None else None),
            )
        except sqlite3.DatabaseError as exc:  # the run folder holds the outcome; `jobs repair` rebuilds the record
            print(
                f"job {self.job_id}: {state}, but the job database could not record it ({exc}); the run folder "
                "has the result. `python -m recon_core jobs repair` (or opening the app) rebuilds the job list.",
                file=sys.stderr,
                flush=True,
            )
            return
        if n:
            log.info("job %s: %s%s", self.job_id, state, f": {error}" if error else "")

    def run(self) -> int:
        try:
            job = self.store.get(self.job_id)
            run_dir = job.run_dir
            run_dir.mkdir(parents=True, exist_ok=True)
            resume = job.resume and (run_dir / CHECKPOINT_FILE).exists()
            log.info(
                "worker pid %d on %s: %s job %s (attempt %d)",
                self.pid,
                socket.gethostname(),
                "resuming" if resume else "starting",
                self.job_id,
                self.attempt,
            )
            spec = _load_spec(job.spec)
            runner = _runner()
            if self._cancel_requested():  # cancelled while the worker was starting
                raise TrainingCancelled("cancelled before training started")
            result = runner(spec, run_dir, progress=self.progress, should_stop=self.stop.is_set, resume=resume)
        except TrainingCancelled as exc:
            if self._yield_requested():
                self.requeue()
                return 0
            self.finish("cancelled", str(exc) or "cancelled; last checkpoint kept")
            return 0
        except ReconError as exc:
            self.finish("failed", str(exc))
            return 1
        except BaseException as exc:  # the job must end in a true state whatever happened
            message = _describe_unexpected(exc)
            log.error("%s\n%s", message, traceback.format_exc())
            self.finish("failed", message)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return 1
        self.flush_progress()
        if self.stop.is_set() and self._cancel_requested():
            log.info("cancel arrived after training finished; keeping the finished result")
        self.finish("succeeded", None, _result_dict(result, self.store.workspace))
        return 0

    def _yield_requested(self) -> bool:
        row = self.store._conn().execute("SELECT yield_requested FROM jobs WHERE id=?", (self.job_id,)).fetchone()
        return bool(row and row["yield_requested"])

    def requeue(self) -> None:
        """A background job paused for a user's job: back to the queue, to resume from its checkpoint."""
        self.done.set()
        self.flush_progress()
        n = self._owned_update(
            "UPDATE jobs SET state='queued', resume=1, cancel_requested=0, yield_requested=0, pid=NULL,"
            " pid_create_time=NULL, host=NULL",
            (),
        )
        if n:
            log.info("job %s: paused for another job; queued again, resumes from its checkpoint", self.job_id)

    def _cancel_requested(self) -> bool:
        row = self.store._conn().execute("SELECT cancel_requested FROM jobs WHERE id=?", (self.job_id,)).fetchone()
        return bool(row and row["cancel_requested"])


def _describe_unexpected(exc: BaseException) -> str:
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


def _load_spec(spec_dict: dict[str, Any]) -> Any:
    from recon_core.config import from_dict

    if os.environ.get(_RUNNER_ENV):
        return dict(spec_dict)  # an alternative runner takes the plain dict
    from recon_core.runs import RunSpec

    return from_dict(RunSpec, spec_dict, where="job spec")


def _runner() -> Callable[..., Any]:
    target = os.environ.get(_RUNNER_ENV)
    if target:
        import importlib

        module_name, _, func = target.partition(":")
        return getattr(importlib.import_module(module_name), func)
    from recon_core.runs import execute_run

    return execute_run


def _result_dict(result: Any, workspace: Path) -> dict[str, Any]:
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


def run_worker(workspace: str | os.PathLike, job_id: str) -> int:
    """Entry point of a worker process: run one job to a true final state, then start the next queued job."""
    store = JobStore(workspace, autostart=False)
    worker = _Worker(store, job_id)
    if not worker.attach():
        log.info("job %s is not waiting for a worker (cancelled, deleted or taken); nothing to do", job_id)
        return 0
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for old in list(root.handlers):  # log lines go to SQLite only; stderr (worker.log) keeps raw output
        root.removeHandler(old)
    handler = _DbLogHandler(store, job_id)
    root.addHandler(handler)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received signal %d: stopping after the current iteration", signum)
        worker.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if os.environ.get(_FAULT_DISK_FULL_ENV) == "1":
        _install_disk_full_fault()
    beat = threading.Thread(target=worker.heartbeat_loop, name="job-heartbeat", daemon=True)
    beat.start()
    code = 1
    try:
        code = worker.run()
    finally:
        worker.done.set()
        beat.join(timeout=5)
        # Whatever happened above, never leave the row `running` behind a live-looking pid.
        worker.finish("interrupted", "the worker stopped before the job ended; resume to continue")
        root.removeHandler(handler)
        # The finishing worker keeps the queue moving (one new process per job).
        with contextlib.suppress(Exception):
            store.autostart = True
            store.kick()
        store.close()
    return code


__all__ = [
    "ACTIVE_STATES",
    "STATES",
    "TERMINAL_STATES",
    "Job",
    "JobQueue",
    "JobStore",
    "default_workspace",
    "device_slot",
    "run_worker",
]
