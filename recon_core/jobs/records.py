"""Job records: the durable job table in `<workspace>/jobs.sqlite` (design: notes/jobs.md).

One of three parts of the job system, each with one job:

    records   (this module)  the job table: states, run specs, progress rows and log lines. Reading never starts
                              anything; every method is safe from several processes at once (app, CLI, workers).
    launchers (local.py, cluster.py)  how a job is started, watched and cancelled: a local worker process, or a
                              task on a Ray cluster
    worker    (worker.py)    runs one job (`runs.execute_run`) and reports to its records through a channel

`store.JobStore` puts them together for the app and the CLI.

State lives in one SQLite file (WAL mode, busy_timeout), so nothing is lost when a process dies:

    jobs      one row per job: state, the RunSpec as JSON, where it runs (launcher, pid/host or cluster node),
              heartbeat, latest progress, error, result
    progress  throttled progress rows (<= 2/s per job): iteration, losses, images/s, ETA
    logs      log lines written by the worker (or copied from the cluster)

States::

    queued -> running -> succeeded | failed | cancelled | interrupted
    queued -> cancelled                         (cancel before it started)
    failed | cancelled | interrupted -> queued  (resume: continues from the last checkpoint)
    running -> queued                           (a background job, e.g. the demo, pausing for a user's job)

Priorities: `priority="background"` jobs are claimed after normal ones and, while running, are asked to pause when a
normal job waits for their device. A queued job's `waiting_for` says what it waits for; `Job.progress_text()` is
the one progress line for the CLI and the app. A damaged jobs.sqlite is moved aside on open and the job list rebuilt
from the run folders (`repair`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recon_core.errors import ConfigError, ReconError

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled", "interrupted")
RESUMABLE_STATES = ("failed", "cancelled", "interrupted")

DB_NAME = "jobs.sqlite"
SCHEMA_VERSION = 3  # 2: priority + yield_requested (background jobs yield to the user's); 3: launcher (local/cluster)
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
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOCAL = "local"  # the launcher of jobs that run as worker processes on this machine
CLUSTER_SLOT = "cluster"  # device_slot of cluster jobs: the cluster schedules them, not the local queue


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
    yield_requested INTEGER NOT NULL DEFAULT 0,
    launcher TEXT NOT NULL DEFAULT 'local'
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
    2: ("ALTER TABLE jobs ADD COLUMN launcher TEXT NOT NULL DEFAULT 'local'",),
}

# Popen handles of workers this process started: polled so that finished children are reaped (no zombies in a
# long-running app process).


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


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
    launcher: str = LOCAL  # "local", or the address of the cluster it was sent to (ray://host:port, host:port)

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

    @property
    def on_cluster(self) -> bool:
        return self.launcher != LOCAL

    @property
    def where(self) -> str:
        """Where the job runs, for a person: 'local (cpu, pid 123 on host)' or 'cluster node 10.0.0.5 (ray://...)'."""
        if not self.on_cluster:
            worker = f", pid {self.pid} on {self.host}" if self.pid and self.state == "running" else ""
            return f"local ({self.device_slot}{worker})"
        node = f"node {self.host}" if self.host else "not placed yet"
        return f"cluster {node} ({self.launcher})"


def format_duration(seconds: float | None) -> str:
    """m:ss, or h:mm:ss from an hour; '—' when unknown."""
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def default_workspace() -> Path:
    """$RECON_WORKSPACE, else ./workspace."""
    return Path(os.environ.get("RECON_WORKSPACE") or "workspace")


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


def _storable(text: str | None) -> str | None:
    """Text SQLite can store: a path with undecodable bytes (non-UTF-8 file name, kept by Python as surrogate
    escapes) would make the write raise; those bytes are shown as U+FFFD instead."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _enable_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL, waiting for a process doing the same. SQLite answers "database is locked" at once, without
    its busy handler, when two processes open a new database file at the same instant (the app and a CLI
    `jobs submit`; reproduced in 28 of 40 tries of two processes started together), so retry up to the busy
    timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class JobRecords:
    """The job table in `<workspace>/jobs.sqlite`: what every process (app, CLI, worker) reads and changes.

    Nothing here starts, watches or stops a process; `store.JobStore` adds the launchers. `_refresh()` is the hook
    that reads call first (the store uses it to notice dead workers and copy cluster progress; it never starts jobs).
    """

    def __init__(self, workspace: str | os.PathLike):
        self.workspace = Path(workspace).expanduser().resolve()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.db_path = self.workspace / DB_NAME
        self._local = threading.local()
        self.repaired: str | None = None  # set when opening found the database damaged and rebuilt it
        self._init_schema()

    def _refresh(self, job_id: str | None = None) -> None:
        """Bring records up to date before a read (subclasses: dead workers, cluster progress)."""

    def _conn(self) -> sqlite3.Connection:
        """One connection per thread (sqlite3 connections must not cross threads); autocommit mode, explicit
        BEGIN IMMEDIATE for read-modify-write."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            _enable_wal(conn)
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
            launcher=row["launcher"],
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
            if slot == CLUSTER_SLOT:  # the cluster's scheduler holds it until a node has the resources
                out[row["id"]] = (1, "sent to the cluster: waiting for a node with free resources")
                continue
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

    def peek(self, job_id: str) -> Job:
        """The job as recorded, without bringing the records up to date first."""
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise ReconError(f"no job {job_id!r} in {self.db_path}")
        return self._row_to_job(row)

    def get(self, job_id: str) -> Job:
        """The job's current state; ReconError if there is no such job. Notices dead workers (at most every 2 s), so
        a page that only polls `get` never shows a dead job as running."""
        self._refresh(job_id)
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise ReconError(f"no job {job_id!r} in {self.db_path}")
        job = self._row_to_job(row)
        if job.state == "queued":
            job.queue_position, job.waiting_for = self._queue_positions().get(job.id, (None, None))
        return job

    def list_jobs(self, project: str | None = None, states: tuple[str, ...] | None = None) -> list[Job]:
        """Jobs, newest first (after reconciling dead workers). Filter by project and/or states."""
        self._refresh()
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

    # ---- changing records (the store adds starting and stopping) -----------------------------------------------
    def insert(self, spec_dict: dict[str, Any], project: str, slot: str, priority: str, launcher: str = LOCAL) -> str:
        """A new `queued` job at the back of the queue; returns its id."""
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
                        " queued_at, priority, launcher) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
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
                            launcher,
                        ),
                    )
                break
            except sqlite3.IntegrityError:
                continue
        else:  # pragma: no cover - 5 collisions of 24 random bits in the same second
            raise ReconError("could not allocate a job id")
        where = slot if launcher == LOCAL else f"the cluster at {launcher}"
        self.log(job_id, "INFO", f"queued on {where}: {spec_dict.get('model')} on {spec_dict['data']}")
        return job_id

    def preempt_background(self, slot: str) -> None:
        """A normal job waits on `slot` while a background job (the demo run) holds it: ask that job to pause. Its
        worker stops after the current iteration with a checkpoint and the job goes back to the queue (behind the
        user's jobs, resuming where it stopped) instead of ending `cancelled`."""
        if slot == CLUSTER_SLOT:
            return  # the cluster's scheduler decides
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
        self.log(victim, "INFO", f"pausing: a run of yours is waiting for {slot}; this job continues afterwards")

    def request_cancel(self, job_id: str) -> str:
        """Queued (or interrupted) jobs become `cancelled` at once; a running job is flagged to stop (its worker
        ends it `cancelled` after writing a checkpoint). Returns the state the job was in."""
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
        self.log(job_id, "INFO", "cancel requested" if state == "running" else f"cancelled ({state} before)")
        return state

    def queue_again(self, job_id: str) -> str:
        """An interrupted, cancelled or failed job back to the end of the queue, to continue from its checkpoint.
        Returns the state it was in."""
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
        self.log(job_id, "INFO", f"resume requested (was {row['state']})")
        return row["state"]

    def delete(self, job_id: str) -> None:
        """Forget a job and delete its run folder (checkpoints, model). Running jobs must be cancelled first."""
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

    def claim_next(self, slots: tuple[str, ...] | None = None) -> str | None:
        """Atomically move the oldest queued local job whose device has a free slot to `running` (pid not yet
        known) and return its id, or None. Race-free across processes: the whole check-and-set holds the write
        lock. Cluster jobs are never claimed here: the cluster schedules them."""
        limit = self.per_device_limit()
        with self._write() as c:
            running: dict[str, int] = {}
            for row in c.execute("SELECT device_slot, COUNT(*) AS n FROM jobs WHERE state='running' GROUP BY 1"):
                running[row["device_slot"]] = row["n"]
            rows = c.execute(
                "SELECT id, device_slot FROM jobs WHERE state='queued' AND launcher=? ORDER BY priority, queue_seq",
                (LOCAL,),
            )
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

    def running_rows(self, launcher: str | None = None) -> list[sqlite3.Row]:
        """Raw rows of running jobs (for the launchers' liveness checks)."""
        rows = self._conn().execute("SELECT * FROM jobs WHERE state='running'").fetchall()
        return [r for r in rows if launcher is None or (r["launcher"] == LOCAL) == (launcher == LOCAL)]

    def active_jobs(self, cluster: bool) -> list[Job]:
        """Queued and running jobs of the local launcher (cluster=False) or of any cluster (True), without a
        refresh."""
        rows = self._conn().execute("SELECT * FROM jobs WHERE state IN ('queued', 'running')").fetchall()
        return [self._row_to_job(r) for r in rows if (r["launcher"] != LOCAL) == cluster]

    def mark_interrupted(self, row: sqlite3.Row, reason: str) -> bool:
        """`running` -> `interrupted` unless the row changed since it was read (the worker reported meanwhile)."""
        with self._write() as c:
            cur = c.execute(
                "UPDATE jobs SET state='interrupted', finished_at=?, error=? WHERE id=? AND state='running'"
                " AND pid IS ? AND heartbeat_at IS ?",
                (time.time(), reason, row["id"], row["pid"], row["heartbeat_at"]),
            )
        if cur.rowcount:
            self.log(row["id"], "WARNING", reason)
        return bool(cur.rowcount)

    # ---- what a running job reports (its worker through a channel, or the store for a cluster job) -------------
    def attach(
        self, job_id: str, pid: int | None, create_time: float | None, host: str, queued_ok: bool = False
    ) -> int:
        """The worker for `job_id` starts: record who runs it. Returns the attempt number, 0 when the job is not
        waiting for this worker (cancelled, deleted, or taken by another). `queued_ok`: a cluster job starts
        straight from `queued` (the cluster, not this table, scheduled it)."""
        states = "('running', 'queued')" if queued_ok else "('running')"
        now = time.time()
        with self._write() as c:
            cur = c.execute(
                "UPDATE jobs SET state='running', pid=?, pid_create_time=?, host=?, heartbeat_at=?,"
                " started_at=COALESCE(started_at, ?), attempts=attempts+1"
                f" WHERE id=? AND state IN {states} AND (pid IS NULL OR pid=?)",
                (pid, create_time, host, now, now, job_id, pid),
            )
            row = c.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row["attempts"] if cur.rowcount == 1 and row else 0

    def owned_update(self, job_id: str, pid: int | None, sql: str, params: tuple) -> int:
        """UPDATE jobs ... only while the job is running and owned by `pid` (reconcile may have taken it)."""
        with self._write() as c:
            return c.execute(sql + " WHERE id=? AND state='running' AND pid IS ?", (*params, job_id, pid)).rowcount

    def flags(self, job_id: str) -> tuple[bool, bool]:
        """(cancel requested, pause requested); (True, False) when the job is gone."""
        row = self._conn().execute("SELECT cancel_requested, yield_requested FROM jobs WHERE id=?", (job_id,))
        found = row.fetchone()
        if found is None:
            return True, False
        return bool(found["cancel_requested"]), bool(found["yield_requested"])

    def record_progress(self, job_id: str, pid: int | None, attempt: int, fields: dict[str, Any]) -> None:
        """One progress row and the job's latest progress (fields: stage, iteration, total_iterations, losses
        (dict), images_per_s, elapsed_s, eta_s, lr; t optional), while `pid` owns the running job."""
        with self._write() as c:
            _write_progress(c, job_id, attempt, fields, "pid IS ?", (pid,))

    def finish(self, job_id: str, pid: int | None, state: str, error: str | None, result: dict | None) -> bool:
        """The running job ends in `state`; False when the row is no longer this worker's."""
        n = self.owned_update(
            job_id,
            pid,
            "UPDATE jobs SET state=?, finished_at=?, error=?, result=?, cancel_requested=0",
            (state, time.time(), _storable(error), json.dumps(result) if result is not None else None),
        )
        return bool(n)

    def requeue_paused(self, job_id: str, pid: int | None) -> bool:
        """A background job paused for a user's job: back to the queue, to resume from its checkpoint."""
        n = self.owned_update(
            job_id,
            pid,
            "UPDATE jobs SET state='queued', resume=1, cancel_requested=0, yield_requested=0, pid=NULL,"
            " pid_create_time=NULL, host=NULL",
            (),
        )
        return bool(n)

    def log(self, job_id: str, level: str, message: str, t: float | None = None) -> None:
        with contextlib.suppress(sqlite3.Error), self._write() as c:
            c.execute(
                "INSERT INTO logs(job_id, t, level, message) VALUES (?, ?, ?, ?)",
                (job_id, t or time.time(), level, _storable(message)),
            )

    # ---- what a cluster job reported (copied in by the cluster launcher) ------------------------------------------
    def cluster_cursor(self, job_id: str) -> int:
        """How many of the job's cluster events are already in these records."""
        row = self._conn().execute("SELECT value FROM settings WHERE key=?", (f"cursor:{job_id}",)).fetchone()
        return int(row["value"]) if row else 0

    def apply_cluster_report(self, job_id: str, cursor: int, report: dict[str, Any]) -> None:
        """Copy a supervisor's events (attach, progress, log) from index `cursor` on, once: two processes copying
        the same report at the same time do not write rows twice (cursor checked and moved in one transaction)."""
        events = report.get("events") or []
        with self._write() as c:
            key = f"cursor:{job_id}"
            row = c.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
            done = int(row["value"]) if row else 0
            for index, event in enumerate(events, start=cursor):
                if index < done:
                    continue
                if event["kind"] == "attach":
                    c.execute(
                        "UPDATE jobs SET state='running', host=?, attempts=?, heartbeat_at=?,"
                        " started_at=COALESCE(started_at, ?) WHERE id=? AND state IN ('queued', 'running')",
                        (event["node"], event["attempt"], event["t"], event["t"], job_id),
                    )
                elif event["kind"] == "log":
                    c.execute(
                        "INSERT INTO logs(job_id, t, level, message) VALUES (?, ?, ?, ?)",
                        (job_id, event["t"], event["level"], _storable(event["message"])),
                    )
                elif event["kind"] == "progress":  # no pid: the cluster's supervisor vouches for the attempt
                    _write_progress(c, job_id, event["attempt"], {"t": event["t"], **event["fields"]}, "1", ())
            c.execute(
                "INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)", (key, str(max(done, cursor + len(events))))
            )

    def finish_cluster_job(self, job_id: str, state: str, error: str | None, result: dict | None) -> bool:
        """A cluster job's end, once its files are in the run folder. A job cancelled while queued stays so."""
        with self._write() as c:
            cur = c.execute(
                "UPDATE jobs SET state=?, finished_at=?, error=?, result=?, cancel_requested=0"
                " WHERE id=? AND state IN ('queued', 'running')",
                (state, time.time(), _storable(error), json.dumps(result) if result is not None else None, job_id),
            )
        return bool(cur.rowcount)  # the supervisor's log already says how it ended

    def mark_cluster_lost(self, job_id: str, reason: str) -> None:
        with self._write() as c:
            cur = c.execute(
                "UPDATE jobs SET state='interrupted', finished_at=?, error=?"
                " WHERE id=? AND state IN ('queued', 'running')",
                (time.time(), reason, job_id),
            )
        if cur.rowcount:
            self.log(job_id, "WARNING", reason)

    def forget_cursor(self, job_id: str) -> None:
        with self._write() as c:
            c.execute("DELETE FROM settings WHERE key=?", (f"cursor:{job_id}",))


def _write_progress(
    c: sqlite3.Connection, job_id: str, attempt: int, fields: dict[str, Any], owner: str, owner_params: tuple
) -> None:
    """Inside a write transaction: a progress row, and the running job's latest progress where `owner` (an SQL
    condition on the job row) holds."""
    values = (
        fields.get("stage"),
        fields.get("iteration"),
        fields.get("total_iterations"),
        json.dumps({k: float(v) for k, v in (fields.get("losses") or {}).items()}),
        fields.get("images_per_s"),
        fields.get("elapsed_s"),
        fields.get("eta_s"),
    )
    c.execute(
        "INSERT INTO progress(job_id, attempt, t, stage, iteration, total_iterations, losses,"
        " images_per_s, elapsed_s, eta_s, lr) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (job_id, attempt, float(fields.get("t") or time.time()), *values, fields.get("lr")),
    )
    c.execute(
        "UPDATE jobs SET stage=?, iteration=?, total_iterations=?, losses=?, images_per_s=?, elapsed_s=?,"
        f" eta_s=?, heartbeat_at=? WHERE id=? AND state='running' AND {owner}",
        (*values, time.time(), job_id, *owner_params),
    )
