"""Hostile corpus, training: failures of real job worker processes (tiny DRAEM, as tests/test_jobs.py).

Faults that need code inside the worker (a simulated out-of-memory, a checkpoint write that stalls half-way)
come from a runner module written to tmp_path and chosen with RECON_JOBS_RUNNER: it wraps the real
`execute_run`, so everything else is the production path. Each test states what the crash loses.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_jobs
from test_jobs import (
    CHECKPOINT_EVERY,
    REPO,
    checkpoint_iteration,
    gone,
    make_spec,
    wait_done,
    wait_for,
)

from recon_core.bundle import atomic_torch_save, load_bundle
from recon_core.jobs import JobStore

# the fixtures of tests/test_jobs.py (module attributes, so pytest finds them here too)
data_dir, quiet_workers, workspace = test_jobs.data_dir, test_jobs.quiet_workers, test_jobs.workspace

RUNNER = '''
"""Test runner: the real execute_run with one injected fault (HOSTILE_FAULT, HOSTILE_AT)."""
import os, time
from pathlib import Path

import torch

from recon_core.config import from_dict
from recon_core.runs import RunSpec, execute_run


def run(spec, run_dir, **kwargs):
    fault, at = os.environ.get("HOSTILE_FAULT", ""), int(os.environ.get("HOSTILE_AT", "0"))
    if fault == "oom":
        _oom_after(at)
    elif fault == "stall_checkpoint":
        _stall_checkpoint(Path(run_dir), at)
    elif fault == "diverge":
        _diverge(at)
    elif fault == "quick":
        time.sleep(at / 10)
        return {"slept": at / 10}
    return execute_run(from_dict(RunSpec, spec), run_dir, **kwargs)


def _oom_after(n):
    """Backward pass number n+1 fails like a GPU that ran out of memory."""
    original, calls = torch.Tensor.backward, [0]

    def backward(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] > n:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(self, *args, **kwargs)

    torch.Tensor.backward = backward


def _diverge(factor):
    """Every Adam optimizer's lr is multiplied by `factor`: a learning rate beyond the declared range (which
    submit refuses), as a model that diverges on its own would behave."""
    original = torch.optim.Adam.__init__

    def init(self, params, lr=1e-3, *args, **kwargs):
        original(self, params, lr * factor, *args, **kwargs)

    torch.optim.Adam.__init__ = init


def _stall_checkpoint(run_dir, at):
    """The checkpoint write of iteration `at` writes half a file, announces it (writing.flag) and waits for
    release.flag (60 s at most) before writing properly. Once per run folder, so a resume runs clean."""
    original = torch.save

    def save(obj, f, *args, **kwargs):
        state = obj.get("training_state") if isinstance(obj, dict) else None
        flag = run_dir / "writing.flag"
        if state and state.get("iteration") == at and not flag.exists():
            f.write(b"half a checkpoint")
            f.flush()
            flag.write_text(str(os.getpid()))
            deadline = time.monotonic() + 60
            while not (run_dir / "release.flag").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            f.seek(0)
            f.truncate()
        return original(obj, f, *args, **kwargs)

    torch.save = save
'''


@pytest.fixture
def fault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """fault(name, at) makes the next workers run RUNNER with that fault; fault(None) switches it off."""
    (tmp_path / "hostile_runner.py").write_text(RUNNER)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO)]))

    def set_fault(name: str | None, at: int = 0) -> None:
        if name is None:
            monkeypatch.delenv("RECON_JOBS_RUNNER", raising=False)
            return
        monkeypatch.setenv("RECON_JOBS_RUNNER", "hostile_runner:run")
        monkeypatch.setenv("HOSTILE_FAULT", name)
        monkeypatch.setenv("HOSTILE_AT", str(at))

    return set_fault


def temporaries(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob(".checkpoint.pt.*.tmp"))


def last_logged_iteration(run_dir: Path) -> int:
    with open(run_dir / "losses.csv", newline="") as fh:
        return max(int(row["iteration"]) for row in csv.DictReader(fh))


def assert_clean_error(error: str | None, *words: str) -> None:
    assert error and "Traceback" not in error and "unexpected error" not in error, error
    for word in words:
        assert word in error, error


# ---------------------------------------------------------------------------------------------------------------


def test_lr_so_high_the_loss_is_nan(workspace: Path, data_dir: Path, fault) -> None:
    # lr=1e8 is refused at submit now (issue 13 item 13), so the optimizer gets it behind the spec's back
    fault("diverge", at=10**11)  # 5e-4 * 1e11 = 5e7
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=40))
    job = wait_done(store, job_id)
    assert job.state == "failed", store.logs(job_id)
    assert_clean_error(job.error, "loss became NaN at iteration", "lr too high", "lower lr")
    assert not (job.run_dir / "model.pt").exists()  # no NaN model is ever saved as a result


def test_out_of_memory_mid_run_then_resume(workspace: Path, data_dir: Path, fault) -> None:
    # one backward per DRAEM iteration, plus one in the memory probe before training (recon_core.memory runs a
    # real 64 px step to measure activations): fails at iteration 26
    fault("oom", at=2 * CHECKPOINT_EVERY + 5 + 1)
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=40))
    job = wait_done(store, job_id)
    assert job.state == "failed", store.logs(job_id)
    assert_clean_error(job.error, "out of memory at iteration 26", "smaller batch size")
    kept = checkpoint_iteration(job.run_dir)
    assert kept == 2 * CHECKPOINT_EVERY  # lost: iterations 21-25, less than one checkpoint interval
    fault(None)  # "a smaller batch" / more memory: the same job resumes from its checkpoint
    store.resume(job_id)
    job = wait_done(store, job_id)
    assert job.state == "succeeded" and job.iteration == 40 and job.attempts == 2, store.logs(job_id)
    assert load_bundle(job.run_dir / "model.pt", "cpu").model.name == "draem"


def hold_at_checkpoint(store: JobStore, job_id: str) -> Path:
    """Wait until the job's worker is held inside its stalled checkpoint write (fault "stall_checkpoint")."""
    run_dir = store.get(job_id).run_dir
    wait_for(lambda: (run_dir / "writing.flag").exists(), "the checkpoint write to start")
    return run_dir


def test_data_folder_deleted_mid_run(workspace: Path, data_dir: Path, fault) -> None:
    fault("stall_checkpoint", at=CHECKPOINT_EVERY)  # holds the run at iteration 10: "mid-run" on any machine
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=30))
    run_dir = hold_at_checkpoint(store, job_id)
    shutil.rmtree(data_dir)  # the images were read at the start: the run must not notice
    (run_dir / "release.flag").write_text("")
    job = wait_done(store, job_id)
    assert job.state == "succeeded" and job.iteration == 30, store.logs(job_id)
    assert load_bundle(job.run_dir / "model.pt", "cpu").metadata["data"] == str(data_dir)


def test_sigkill_during_checkpoint_write_keeps_the_last_good_one(workspace: Path, data_dir: Path, fault) -> None:
    at = 2 * CHECKPOINT_EVERY
    fault("stall_checkpoint", at=at)
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=30))
    run_dir = hold_at_checkpoint(store, job_id)
    pid = int((run_dir / "writing.flag").read_text())
    os.kill(pid, signal.SIGKILL)  # half of checkpoint 20 is on disk, in the temporary
    wait_for(lambda: gone(pid), "the kill")
    assert temporaries(run_dir) == [f".checkpoint.pt.{pid}.tmp"]
    kept = checkpoint_iteration(run_dir)  # the previous checkpoint loads: the write was atomic
    reached = last_logged_iteration(run_dir)  # the loss log is flushed right before each checkpoint write
    assert reached == at and kept == at - CHECKPOINT_EVERY, (reached, kept)
    print(f"SIGKILL in the checkpoint write of {at}: reached {reached}, kept {kept}, lost {reached - kept} iterations")
    job = JobStore(workspace, autostart=False).get(job_id)
    assert job.state == "interrupted"
    store.resume(job_id)
    job = wait_done(store, job_id)
    assert job.state == "succeeded" and job.iteration == 30 and job.attempts == 2, store.logs(job_id)
    assert temporaries(run_dir) == []  # the dead writer's half file was cleaned up by the next write


def test_cancel_during_checkpoint_write(workspace: Path, data_dir: Path, fault) -> None:
    at = CHECKPOINT_EVERY
    fault("stall_checkpoint", at=at)
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=10_000))
    run_dir = hold_at_checkpoint(store, job_id)
    store.cancel(job_id)
    time.sleep(1.0)  # the heartbeat (0.5 s) has seen the request while the write is still in progress
    assert store.get(job_id).state == "running"
    (run_dir / "release.flag").write_text("")
    job = wait_done(store, job_id)
    assert job.state == "cancelled", store.logs(job_id)
    assert "cancelled at iteration 10/" in job.error and checkpoint_iteration(run_dir) == at  # nothing lost
    assert temporaries(run_dir) == []
    log = store.logs(job_id)
    assert "run cancelled" in log and "run failed" not in log  # a cancel is logged as a cancel


def test_two_jobs_submitted_at_the_same_instant(workspace: Path, data_dir: Path, fault) -> None:
    fault("quick", at=10)  # each job "trains" for 1 s: this is about the queue, not the model
    start_at = time.time() + 3.0
    code = (
        "import sys, time; from recon_core.jobs import JobStore\n"
        "store = JobStore(sys.argv[1])\n"
        "time.sleep(max(0, float(sys.argv[3]) - time.time()))\n"
        "print(store.submit({'data': sys.argv[2], 'model': 'draem', 'iterations': 5, 'device': 'cpu'}), flush=True)\n"
    )
    apps = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(workspace), str(data_dir), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    outputs = [app.communicate(timeout=60) for app in apps]
    assert all(app.returncode == 0 for app in apps), [err for _, err in outputs]
    ids = [out.strip() for out, _ in outputs]
    assert len(set(ids)) == 2
    store = JobStore(workspace)
    jobs = sorted((wait_done(store, i) for i in ids), key=lambda j: j.started_at)
    assert [j.state for j in jobs] == ["succeeded", "succeeded"], [store.logs(i) for i in ids]
    assert jobs[0].finished_at <= jobs[1].started_at  # one per device, never both at once
    assert all(j.attempts == 1 for j in jobs)


def test_app_restart_during_a_run(workspace: Path, data_dir: Path, fault) -> None:
    fault("stall_checkpoint", at=CHECKPOINT_EVERY)  # the job is surely still running while the app restarts
    store = JobStore(workspace)
    job_id = store.submit(make_spec(data_dir, iterations=40))
    run_dir = hold_at_checkpoint(store, job_id)
    pid = store.get(job_id).pid
    # the restarted app: a fresh process opens the store (reconciles), lists jobs and makes sure workers run
    code = (
        "import sys; from recon_core.jobs import JobStore\n"
        "store = JobStore(sys.argv[1]); store.ensure_worker()\n"
        "job = store.get(sys.argv[2]); print(job.state, job.pid, job.attempts)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(workspace), job_id], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.stdout.split() == ["running", str(pid), "1"], out.stderr
    (run_dir / "release.flag").write_text("")
    job = wait_done(store, job_id)
    assert job.state == "succeeded" and job.iteration == 40 and job.attempts == 1, store.logs(job_id)
    assert {row["attempt"] for row in store.progress_rows(job_id)} == {1}  # never restarted, nothing redone


def test_non_utf8_data_folder_through_the_job_runner(workspace: Path, data_dir: Path) -> None:
    odd = data_dir.with_name(os.fsdecode(b"caf\xe9-\xff"))  # latin-1 bytes: not UTF-8 (SQLite used to raise)
    data_dir.rename(odd)
    store = JobStore(workspace)
    job_id = store.submit(make_spec(odd, iterations=5))
    job = wait_done(store, job_id)
    assert job.state == "succeeded", store.logs(job_id)
    assert "caf\ufffd-\ufffd" in store.logs(job_id)  # logged, printable
    assert load_bundle(job.run_dir / "model.pt", "cpu").metadata["data"] == str(odd)
    assert "Logging error" not in (job.run_dir / "worker.log").read_text(errors="replace")  # run.log coped too


def test_stale_temporaries_only_of_dead_writers_are_removed(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        for pid in (dead.pid, live.pid):
            (tmp_path / f".checkpoint.pt.{pid}.tmp").write_bytes(b"half")
        (tmp_path / ".other.pt.1.tmp").write_bytes(b"not ours")
        atomic_torch_save({"x": 1}, target)
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            f".checkpoint.pt.{live.pid}.tmp",  # another writer still working: left alone
            ".other.pt.1.tmp",
            "checkpoint.pt",
        ]
    finally:
        live.kill()
        live.wait()


def test_processes_opening_a_new_job_database_at_one_instant_all_get_it(tmp_path: Path) -> None:
    # regression: SQLite answers "database is locked" at once (no busy wait) to a second process switching a new
    # database file to WAL; the app and a CLI `jobs submit` starting together failed ("cannot open the job database")
    code = (
        "import sys, time; from recon_core.jobs.records import JobRecords\n"
        "for i in range(12):  # twelve new workspaces, each opened by both processes at one instant\n"
        "    time.sleep(max(0, float(sys.argv[2]) + 0.25 * i - time.time()))\n"
        "    JobRecords(f'{sys.argv[1]}/ws{i}').list_jobs()\n"
    )
    start_at = time.time() + 4.0  # both processes have imported by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path), str(start_at)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    errors = [err for p in procs for _, err in [p.communicate(timeout=60)] if p.returncode != 0]
    assert not errors, errors
