"""Background jobs with REAL worker processes: a tiny DRAEM on six generated 32 px images.

Each test gets its own workspace (its own jobs.sqlite). Waits are bounded; actions that need a job mid-run
(cancel, SIGKILL) wait until the progress rows show iteration >= N so they are deterministic.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from recon_core.cli import main as cli_main
from recon_core.errors import ReconError
from recon_core.jobs import LAUNCH_GRACE_S, PROGRESS_MIN_INTERVAL_S, Job, JobStore

TINY = {"image_size": 32, "recon_width": 8, "disc_width": 8, "recon_depth": 3, "disc_depth": 3, "batch_size": 2}
CHECKPOINT_EVERY = 10
REPO = Path(__file__).resolve().parents[1]
WAIT_S = 60.0  # generous: other test files share the two cores


@pytest.fixture(autouse=True)
def quiet_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Workers inherit the environment: one thread each (tiny convolutions; two workers may overlap briefly).
    monkeypatch.setenv("RECON_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("RECON_JOBS_RUNNER", raising=False)
    monkeypatch.delenv("RECON_FAULT_DISK_FULL", raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "good"
    folder.mkdir()
    rng = np.random.default_rng(0)
    xx = np.mgrid[0:48, 0:48][1] / 48
    for i in range(6):
        base = 0.5 + 0.2 * np.sin(2 * np.pi * (4 * xx + rng.uniform(0, 0.3)))
        img = np.stack([base, 0.8 * base, np.full_like(base, 0.3)], -1) + rng.normal(0, 0.02, (48, 48, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    ws = tmp_path / "ws"
    yield ws
    # Never leave a worker behind, whatever the test did (only the ones this workspace started).
    if (ws / "jobs.sqlite").exists():
        conn = sqlite3.connect(ws / "jobs.sqlite")
        for (pid,) in conn.execute("SELECT pid FROM jobs WHERE state='running' AND pid IS NOT NULL"):
            if pid == os.getpid():  # the reconcile test's "live worker" is this very process
                continue
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        conn.close()


def make_spec(data: Path, iterations: int, **changes):
    from recon_core.runs import RunSpec
    from recon_core.synth import SynthConfig

    values = dict(
        data=str(data),
        model="draem",
        model_overrides=dict(TINY),
        synth=SynthConfig(texture_source="noise"),
        iterations=iterations,
        device="cpu",
        seed=0,
        checkpoint_every=CHECKPOINT_EVERY,
    )
    values.update(changes)
    return RunSpec(**values)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_done(store: JobStore, job_id: str, timeout: float = WAIT_S) -> Job:
    wait_for(lambda: not store.get(job_id).is_active, f"job {job_id} to end", timeout)
    return store.get(job_id)


def wait_iteration(store: JobStore, job_id: str, n: int) -> Job:
    def reached() -> bool:
        job = store.get(job_id)
        assert job.state in ("queued", "running"), f"job ended early: {job.state} {job.error}\n{store.logs(job_id)}"
        return (job.iteration or 0) >= n and job.pid is not None

    wait_for(reached, f"iteration {n}")
    return store.get(job_id)


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def checkpoint_iteration(run_dir: Path) -> int:
    from recon_core.bundle import read_bundle_dict

    return int(read_bundle_dict(run_dir / "checkpoint.pt")["training_state"]["iteration"])


# ---------------------------------------------------------------------------------------------------------------


def test_cli_submit_follow_list_logs_delete(workspace: Path, data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    ws = str(workspace)
    sets = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    args = ["--iterations", "12", "--checkpoint-every", "6", "--device", "cpu", "--project", "bottle"]
    code = cli_main(["jobs", "submit", str(data_dir), *args, "--workspace", ws, "--follow", *sets])
    out = capsys.readouterr().out
    job_id = out.splitlines()[0].strip()
    store = JobStore(workspace)
    job = store.get(job_id)
    assert code == 0, f"{out}\n{store.logs(job_id)}"
    assert job.state == "succeeded" and job.error is None
    assert job.iteration == job.total_iterations == 12
    assert job.run_dir == workspace.resolve() / "bottle" / "runs" / job_id
    assert (job.run_dir / "model.pt").is_file() and (job.run_dir / "spec.json").is_file()
    wait_for(lambda: gone(job.pid), "the worker to exit", timeout=15)  # it exits right after the final write
    rows = store.progress_rows(job_id)
    assert rows and rows[-1]["iteration"] == 12 and rows[-1]["losses"]
    assert [r["iteration"] for r in rows] == sorted(r["iteration"] for r in rows)
    # throttled: at most ~2 rows per second of training (+ stage changes / the final row)
    span = rows[-1]["t"] - rows[0]["t"]
    assert len(rows) <= span / PROGRESS_MIN_INTERVAL_S + 4
    assert store.progress_rows(job_id, since_id=rows[-1]["id"]) == []

    assert cli_main(["jobs", "list", "--workspace", ws]) == 0
    listing = capsys.readouterr().out
    assert job_id in listing and "succeeded" in listing and "12/12" in listing
    assert cli_main(["jobs", "show", job_id, "--workspace", ws]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert cli_main(["jobs", "logs", job_id, "--workspace", ws]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert cli_main(["jobs", "resume", job_id, "--workspace", ws]) == 1  # nothing to resume
    assert "only failed, cancelled, interrupted" in capsys.readouterr().err
    assert cli_main(["jobs", "delete", job_id, "--workspace", ws]) == 0
    assert not job.run_dir.exists()
    with pytest.raises(ReconError, match="no job"):
        store.get(job_id)


def test_cancel_stops_within_seconds_and_keeps_checkpoint(workspace: Path, data_dir: Path) -> None:
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=100_000))
    wait_iteration(store, job_id, CHECKPOINT_EVERY + 2)
    t0 = time.monotonic()
    assert store.cancel(job_id).cancel_requested
    job = wait_done(store, job_id, timeout=20)
    latency = time.monotonic() - t0
    assert job.state == "cancelled", store.logs(job_id)
    assert latency < 10, f"cancel took {latency:.1f} s"
    assert (job.run_dir / "checkpoint.pt").is_file()
    assert checkpoint_iteration(job.run_dir) >= CHECKPOINT_EVERY
    with pytest.raises(ReconError, match="nothing to cancel"):
        store.cancel(job_id)
    print(f"cancel latency {latency:.2f} s")


def test_sigterm_interrupts_a_job_it_does_not_cancel_it(workspace: Path, data_dir: Path) -> None:
    """A shutdown or `kill` of a worker is not the user's cancel: the job says interrupted (resumable), with why.
    (It used to say 'cancelled', as if someone had pressed Cancel.)"""
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=3000))
    job = wait_iteration(store, job_id, CHECKPOINT_EVERY + 3)
    os.kill(job.pid, signal.SIGTERM)
    job = wait_done(store, job_id, timeout=30)
    assert job.state == "interrupted", (job.state, job.error, store.logs(job_id))
    assert "SIGTERM" in job.error and "not a cancel" in job.error and "resume" in job.error
    assert (job.run_dir / "checkpoint.pt").is_file()


def test_sigkill_then_resume_reaches_full_count(workspace: Path, data_dir: Path) -> None:
    total = 60
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=total))
    job = wait_iteration(store, job_id, 2 * CHECKPOINT_EVERY + 3)
    os.kill(job.pid, signal.SIGKILL)
    wait_for(lambda: gone(job.pid), "the kill")
    # Read the DB directly (JobStore.get would already reconcile): the row still says running, nobody looked yet.
    conn = sqlite3.connect(workspace / "jobs.sqlite")
    state, seen = conn.execute("SELECT state, iteration FROM jobs WHERE id=?", (job_id,)).fetchone()
    conn.close()
    assert state == "running"  # seen = the last progress the DB got; the worker may have done a few more

    store2 = JobStore(workspace, autostart=False)  # "restart the app"
    job = store2.get(job_id)
    assert job.state == "interrupted" and "killed or crashed" in job.error
    kept = checkpoint_iteration(job.run_dir)
    # A crash loses at most one checkpoint interval: the kept checkpoint is at most CHECKPOINT_EVERY behind the
    # last iteration the DB saw (the worker itself may have been up to ~0.5 s of iterations further).
    assert kept % CHECKPOINT_EVERY == 0 and seen - CHECKPOINT_EVERY <= kept <= total, (seen, kept)
    print(f"SIGKILL after iteration >= {seen}: checkpoint at {kept}, lost >= {max(0, seen - kept)} iterations")

    store2.resume(job_id)
    store2.ensure_worker()
    job = wait_done(store2, job_id)
    assert job.state == "succeeded", store2.logs(job_id)
    assert job.attempts == 2
    assert job.iteration == job.total_iterations == total
    rows = store2.progress_rows(job_id)
    second = [r for r in rows if r["attempt"] == 2]
    assert second and second[0]["iteration"] > kept - 1 and second[-1]["iteration"] == total
    assert checkpoint_iteration(job.run_dir) == total
    assert "resuming" in store2.logs(job_id)


def test_queue_outlives_the_app_fifo_and_one_per_device(workspace: Path, data_dir: Path) -> None:
    # A stand-in for the Streamlit server submits two jobs, prints their ids, then is SIGKILLed (app crash or
    # restart). The jobs must still run, one at a time (limit 1 per device), in submission order.
    code = (
        "import sys, time; from recon_core.jobs import JobStore; from recon_core.runs import RunSpec\n"
        "from recon_core.synth import SynthConfig\n"
        "store = JobStore(sys.argv[1])\n"
        "for seed in (0, 1):\n"
        f"    spec = RunSpec(data=sys.argv[2], model_overrides={TINY!r}, synth=SynthConfig(texture_source='noise'),"
        " iterations=8, device='cpu', checkpoint_every=4, seed=seed)\n"
        "    print(store.submit(spec), flush=True)\n"
        "time.sleep(60)\n"
    )
    app = subprocess.Popen(
        [sys.executable, "-c", code, str(workspace), str(data_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    first, second = app.stdout.readline().strip(), app.stdout.readline().strip()
    app.kill()
    app.wait()
    store = JobStore(workspace)
    peak = 0
    deadline = time.monotonic() + 2 * WAIT_S
    while time.monotonic() < deadline:
        jobs = store.list_jobs()
        peak = max(peak, sum(j.state == "running" for j in jobs))
        if not any(j.is_active for j in jobs):
            break
        time.sleep(0.1)
    a, b = store.get(first), store.get(second)
    assert a.state == b.state == "succeeded", store.logs(first) + store.logs(second)
    assert a.iteration == b.iteration == 8 and (b.run_dir / "model.pt").is_file()
    assert peak == 1
    assert a.started_at < a.finished_at <= b.started_at  # the second waited for the first (FIFO, one per device)


def test_data_folder_vanishes_fails_readably(workspace: Path, data_dir: Path) -> None:
    store = JobStore(workspace, autostart=False)
    job_id = store.submit(make_spec(data_dir, iterations=5))
    shutil.rmtree(data_dir)
    assert store.ensure_worker() == [job_id]
    job = wait_done(store, job_id)
    assert job.state == "failed"
    assert str(data_dir) in job.error or data_dir.name in job.error, job.error
    assert "Traceback" not in job.error and "unexpected" not in job.error
    print(f"vanished data: {job.error}")
    # nothing else broke: the store still answers and a new submission of a missing folder is refused up front
    with pytest.raises(ReconError, match="no such folder"):
        store.submit(make_spec(data_dir, iterations=5))
    assert [j.id for j in store.list_jobs()] == [job_id]


def test_submit_refuses_bad_settings_at_once(workspace: Path, data_dir: Path) -> None:
    store = JobStore(workspace, autostart=False)
    with pytest.raises(ReconError, match="norm"):
        store.submit(make_spec(data_dir, iterations=5, model_overrides={"norm": "bogus"}))
    with pytest.raises(ReconError, match="unknown setting"):
        store.submit({"data": str(data_dir), "model": "draem", "iterations": 5, "colour": "red"})
    with pytest.raises(ReconError, match="unknown model"):
        store.submit(make_spec(data_dir, iterations=5, model="nope"))
    with pytest.raises(ReconError, match="project name"):
        store.submit(make_spec(data_dir, iterations=5), project="../evil")
    assert store.list_jobs() == []


def test_disk_full_fails_with_clear_message(workspace: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECON_FAULT_DISK_FULL", "1")  # the worker's checkpoint writes raise ENOSPC
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=30, checkpoint_every=5))
    job = wait_done(store, job_id)
    assert job.state == "failed", store.logs(job_id)
    assert "disk full" in job.error.lower() and "resume" in job.error, job.error
    print(f"disk full: {job.error}")
    assert "Traceback" not in job.error


def test_reconcile_marks_dead_or_reused_pids_interrupted(workspace: Path, data_dir: Path) -> None:
    store = JobStore(workspace, autostart=False)
    ids = [store.submit({"data": str(data_dir), "model": "draem", "iterations": 5, "device": "cpu"}) for _ in range(4)]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    me = psutil.Process()
    now = time.time()
    conn = sqlite3.connect(workspace / "jobs.sqlite", isolation_level=None)
    host = socket.gethostname()
    rows = [
        (dead.pid, now - 1, host, now),  # a worker that died (SIGKILL, crash)
        (me.pid, me.create_time() - 1000, host, now),  # pid reused by another (live) process
        (None, None, None, now - LAUNCH_GRACE_S - 5),  # claimed, but the worker never started
        (me.pid, me.create_time(), host, now),  # genuinely alive: stays running
    ]
    for job_id, (pid, ctime, h, beat) in zip(ids, rows, strict=True):
        conn.execute(
            "UPDATE jobs SET state='running', pid=?, pid_create_time=?, host=?, heartbeat_at=? WHERE id=?",
            (pid, ctime, h, beat, job_id),
        )
    conn.close()
    fresh = JobStore(workspace, autostart=False)  # opening reconciles
    states = [fresh.get(i).state for i in ids]
    assert states == ["interrupted", "interrupted", "interrupted", "running"]
    assert all(fresh.get(i).error for i in ids[:3])
    assert fresh.get(ids[0]).can_resume
    assert fresh.reconcile() == []  # idempotent


def test_claim_is_fifo_per_device_and_race_free(workspace: Path, data_dir: Path) -> None:
    store = JobStore(workspace, autostart=False)

    def spec(device: str) -> dict:
        return {"data": str(data_dir), "model": "draem", "iterations": 5, "device": device}

    a, b, c = store.submit(spec("cpu")), store.submit(spec("cpu")), store.submit(spec("cuda:1"))
    assert [store.get(i).queue_position for i in (a, b, c)] == [1, 2, 1]
    # Eight processes claim at the same moment: exactly one gets the cpu job, one the cuda:1 job, in FIFO order.
    code = (
        "import sys, time; from recon_core.jobs import JobStore\n"
        "s = JobStore(sys.argv[1], autostart=False)\n"
        "time.sleep(max(0, float(sys.argv[2]) - time.time()))\n"
        "print(s.claim_next() or '')\n"
    )
    start = str(time.time() + 1.5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(workspace), start], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        for _ in range(8)
    ]
    claimed = sorted(out.strip() for p in procs if (out := p.communicate(timeout=30)[0].strip()))
    assert claimed == sorted([a, c])
    assert store.get(b).state == "queued" and store.claim_next() is None  # cpu is full (limit 1)
    conn = sqlite3.connect(workspace / "jobs.sqlite", isolation_level=None)
    conn.execute("UPDATE jobs SET state='succeeded' WHERE id=?", (a,))
    conn.close()
    assert store.claim_next() == b
    store.set_per_device_limit(2)
    d = store.submit(spec("cpu"))
    assert store.claim_next() == d  # two may run on cpu now
    for job_id in (b, c, d):  # no workers were started: clean up the claims
        store.cancel(job_id)


def test_unexpected_error_short_message_traceback_in_log(
    workspace: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's runner is swapped (RECON_JOBS_RUNNER) for one that fails like a bug would.
    (tmp_path / "buggy_runner.py").write_text(
        "def execute_run(spec, run_dir, **kwargs):\n    raise ValueError('boom: index 7 out of range\\nmore detail')\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("RECON_JOBS_RUNNER", "buggy_runner:execute_run")
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=5))
    job = wait_done(store, job_id)
    assert job.state == "failed"
    assert job.error == "unexpected error: ValueError: boom: index 7 out of range (traceback in the job log)"
    text = store.logs(job_id)
    assert "Traceback (most recent call last)" in text and "buggy_runner.py" in text
