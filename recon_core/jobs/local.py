"""The local launcher: each running job is one detached worker process on this machine (the default).

A worker is `python -m recon_core jobs worker --workspace WS --job ID` in its own session, so it outlives the page
or app that started it; it runs the job (worker.py) and, when it ends, starts the next queued job. Liveness: a
running job whose worker pid is gone (guarded against pid reuse by the process create time), whose heartbeat is
older than the machine's boot, or silent for STALE_HEARTBEAT_S, becomes `interrupted` (resume continues from its
last checkpoint). Scheduling is `JobRecords.claim_next`: FIFO per device, at most `per_device_limit` per device.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from recon_core.jobs.records import LAUNCH_GRACE_S, LOCAL, STALE_HEARTBEAT_S, JobRecords

# Popen handles of workers this process started: polled so that finished children are reaped (no zombies in a
# long-running app process).
_CHILDREN: list[subprocess.Popen] = []
_CHILDREN_LOCK = threading.Lock()  # Streamlit may share one store between session threads


def process_create_time(pid: int) -> float | None:
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


class LocalLauncher:
    """Starts, watches and (through the records' cancel flag) stops worker processes on this machine."""

    def __init__(self, records: JobRecords):
        self.records = records

    def mark_dead(self) -> list[str]:
        """Running local jobs whose worker is gone become `interrupted`; returns their ids."""
        _reap_children()
        now = time.time()
        here = socket.gethostname()
        try:
            boot = psutil.boot_time()
        except (psutil.Error, OSError):  # pragma: no cover
            boot = 0.0
        changed = []
        for row in self.records.running_rows(LOCAL):
            reason = self._why_dead(row, now, here, boot)
            if reason is not None and self.records.mark_interrupted(row, reason):
                changed.append(row["id"])
        return changed

    @staticmethod
    def _why_dead(row: sqlite3.Row, now: float, here: str, boot: float) -> str | None:
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

    def kick(self) -> list[str]:
        """Start a worker for each queued local job that may run now (FIFO per device, within the limit)."""
        started: list[str] = []
        conn = self.records._conn()
        if conn.execute("SELECT 1 FROM jobs WHERE state='queued' AND launcher=? LIMIT 1", (LOCAL,)).fetchone() is None:
            return started  # the common case, without taking the write lock
        while True:
            job_id = self.records.claim_next()
            if job_id is None:
                return started
            self.spawn(job_id)
            started.append(job_id)

    def spawn(self, job_id: str) -> None:
        job = self.records.get(job_id)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # so `-m recon_core` works from any cwd
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        workspace = str(self.records.workspace)
        cmd = [sys.executable, "-m", "recon_core", "jobs", "worker", "--workspace", workspace, "--job", job_id]
        try:
            with open(job.log_path, "ab") as out:
                proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=workspace,
                    env=env,
                    start_new_session=True,  # survives the app/terminal that started it (and its Ctrl-C)
                    close_fds=True,
                )
        except OSError as exc:
            self.records.owned_update(
                job_id,
                None,
                "UPDATE jobs SET state='failed', finished_at=?, error=?",
                (time.time(), f"could not start the worker process: {exc}"),
            )
            return
        with _CHILDREN_LOCK:
            _CHILDREN.append(proc)
        # the worker records its own pid too (attach); this covers the gap until it does
        self.records.owned_update(
            job_id,
            None,
            "UPDATE jobs SET pid=?, pid_create_time=?, host=?",
            (proc.pid, process_create_time(proc.pid), socket.gethostname()),
        )
