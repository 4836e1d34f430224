"""The job queue as a user sees it (issue 13): one slot per device whatever its spelling (item 12), the demo run
yields to the user's runs and the queue says why a job waits (item 14), progress text in the budget's units
(item 15). Fast tests use autostart=False (no workers); one test runs real workers on a tiny DRAEM."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from test_jobs import data_dir, make_spec, quiet_workers, wait_done, wait_for, wait_iteration, workspace  # noqa: F401

from recon_core.device import normalize_device
from recon_core.errors import ConfigError
from recon_core.jobs import Job, JobStore


@pytest.mark.parametrize(
    ("given", "slot"),
    [("cpu", "cpu"), ("CPU", "cpu"), ("cpu:0", "cpu"), ("cpu:1", "cpu"), (" cpu ", "cpu"), ("cuda", "cuda:0")],
)
def test_device_names_are_normalised(given: str, slot: str) -> None:
    assert normalize_device(given) == slot


def test_bad_device_is_refused() -> None:
    for bad in ("gpu", "cuda:x", "cpu:"):
        with pytest.raises(ConfigError, match="unknown device"):
            normalize_device(bad)


def test_cpu_spellings_share_one_slot(workspace: Path, data_dir: Path) -> None:  # noqa: F811
    """Item 12: `cpu`, `cpu:0` and `cpu:1` were three devices to the queue, so three CPU jobs ran at once."""
    store = JobStore(workspace, autostart=False)
    ids = [store.submit(make_spec(data_dir, 5, device=d)) for d in ("cpu", "cpu:0", "cpu:1")]
    assert {store.get(i).device_slot for i in ids} == {"cpu"}
    assert store.claim_next() == ids[0] and store.claim_next() is None  # one CPU job at a time
    for i in ids:
        store.cancel(i)


def _set(ws: Path, job_id: str, **values: object) -> None:
    conn = sqlite3.connect(ws / "jobs.sqlite", isolation_level=None)
    conn.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in values)} WHERE id=?", (*values.values(), job_id))
    conn.close()


def test_user_job_goes_before_a_queued_demo_and_says_why_it_waits(workspace: Path, data_dir: Path) -> None:  # noqa: F811
    store = JobStore(workspace, autostart=False)
    first = store.submit(make_spec(data_dir, 5, name="mine"))
    demo = store.submit(make_spec(data_dir, 5, name="demo"), priority="background")
    mine = store.submit(make_spec(data_dir, 5, name="second"))
    assert store.claim_next() == first  # holds cpu now
    waiting = {j.id: j for j in store.list_jobs()}
    assert waiting[mine].queue_position == 1 and waiting[demo].queue_position == 2  # the user's run first
    assert f"waiting for job {first} (mine) to finish on cpu" in waiting[mine].progress_text()
    assert "background job: yields to your runs" in waiting[demo].progress_text()
    _set(workspace, first, state="succeeded")
    assert store.claim_next() == mine
    for i in (mine, demo):
        store.cancel(i)


def test_a_user_job_asks_a_running_demo_to_pause(workspace: Path, data_dir: Path) -> None:  # noqa: F811
    store = JobStore(workspace, autostart=False)
    demo = store.submit(make_spec(data_dir, 5), priority="background")
    assert store.claim_next() == demo
    mine = store.submit(make_spec(data_dir, 5))
    row = sqlite3.connect(workspace / "jobs.sqlite").execute(
        "SELECT cancel_requested, yield_requested FROM jobs WHERE id=?", (demo,)
    )
    assert row.fetchone() == (1, 1)
    assert "is pausing to free cpu for it" in store.get(mine).progress_text()
    store.cancel(demo)  # the user's own cancel wins over the pause: no requeue
    assert sqlite3.connect(workspace / "jobs.sqlite").execute(
        "SELECT yield_requested FROM jobs WHERE id=?", (demo,)
    ).fetchone() == (0,)
    store.cancel(mine)


def test_demo_yields_to_the_users_run_then_finishes(workspace: Path, data_dir: Path) -> None:  # noqa: F811
    """Item 14, with real workers: the demo run (background) is running; the user's run starts within seconds (the
    demo pauses at a checkpoint and is queued again), and the demo then resumes and completes its iterations."""
    store = JobStore(workspace)
    demo = store.submit(make_spec(data_dir, 400, name="demo"), priority="background")
    wait_iteration(store, demo, 3)
    mine = store.submit(make_spec(data_dir, 4, name="mine"))
    wait_for(lambda: store.get(mine).state in ("running", "succeeded"), "the user's job to start", timeout=60)
    paused = store.get(demo)
    assert paused.state in ("queued", "running") and paused.state != "cancelled"
    assert wait_done(store, mine).state == "succeeded"
    assert "paused for another job" in store.logs(demo)
    store.cancel(demo)  # no need to wait for 400 iterations: it resumed (or is queued to), which is the point
    job = wait_done(store, demo)
    assert job.state == "cancelled" and job.attempts >= 1


def _job(**values: object) -> Job:
    base = dict(id="j", project="p", state="running", spec={}, device_slot="cpu", run_dir=Path("."))
    return Job(**{**base, "created_at": 0.0, "queued_at": 0.0, **values})


def test_progress_text_for_each_budget() -> None:
    """Item 15: "queued · · iteration 0/?", None in the iteration column, "iteration 1/2 · ETA 0:03" on a
    minutes budget."""
    queued = _job(state="queued", spec={"iterations": 300})
    assert queued.progress_text() == "queued · starts when its device is free"
    starting = _job(spec={"iterations": 300})
    assert starting.progress_text() == "running · starting (loading data and model)"
    iters = _job(spec={"iterations": 300}, stage="train", iteration=12, total_iterations=300, eta_s=83)
    assert iters.progress_text() == "running · train · iteration 12/300 · ETA 1:23"
    minutes = _job(spec={"minutes": 10}, stage="train", iteration=1, total_iterations=2, elapsed_s=130, eta_s=3)
    text = minutes.progress_text()
    assert text == "running · train · 2:10 of 10:00 · 7:50 left · 1 iterations" and "ETA" not in text
    assert minutes.fraction == pytest.approx(130 / 600)
    done = _job(state="succeeded", spec={"iterations": 10}, iteration=10, total_iterations=10)
    assert done.progress_text() == "succeeded · iteration 10/10"
    assert "None" not in " ".join(j.progress_text(with_state=False) for j in (queued, starting, iters, minutes))


# ---------------------------------------------------------------------------------------------------------------
# item 11: a damaged jobs.sqlite


def _truncate(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file, then cut it in half
    conn.close()
    with open(db, "r+b") as f:
        f.truncate(db.stat().st_size // 2)


def test_truncated_job_database_is_rebuilt_from_the_run_folders(
    workspace: Path,  # noqa: F811
    data_dir: Path,  # noqa: F811
    capsys: pytest.CaptureFixture,
) -> None:
    """`jobs.sqlite` truncated (here: after a real job finished) gave `database disk image is malformed` on every
    command. Opening the store now moves it aside and rebuilds the records from the run folders."""
    from recon_core.cli import main

    store = JobStore(workspace)
    done = store.submit(make_spec(data_dir, 4, name="kept"), project="p")
    assert wait_done(store, done).state == "succeeded"
    unfinished = workspace / "p" / "runs" / "20260101-000000-abcdef"  # a run that never finished
    unfinished.mkdir(parents=True)
    (unfinished / "spec.json").write_text((store.get(done).run_dir / "spec.json").read_text())
    with store._write() as c:  # enough rows that half the file loses real pages
        c.executemany("INSERT INTO logs(job_id, t, level, message) VALUES (?, 0, 'INFO', ?)", [(done, "x" * 300)] * 400)
    store.close()
    _truncate(workspace / "jobs.sqlite")
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(workspace / "jobs.sqlite").execute("SELECT COUNT(*) FROM logs").fetchone()

    assert main(["jobs", "list", "--workspace", str(workspace)]) == 0
    out, err = capsys.readouterr()
    assert "job database was damaged" in err and "rebuilt from the run folders" in err
    assert done in out and unfinished.name in out
    assert list(workspace.glob("jobs.sqlite.damaged-*"))  # the damaged file is kept, not deleted
    fresh = JobStore(workspace, autostart=False)
    assert fresh.repaired is None  # sound now: no second repair
    job = fresh.get(done)
    assert job.state == "succeeded" and job.spec["name"] == "kept" and job.iteration == 4
    assert job.result["metrics"]["iterations"] == 4
    lost = fresh.get(unfinished.name)
    assert lost.state == "interrupted" and lost.can_resume
    assert main(["jobs", "repair", "--workspace", str(workspace)]) == 0
    assert "sound" in capsys.readouterr().out
