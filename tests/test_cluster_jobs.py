"""Jobs on a REAL Ray cluster: a head and two worker nodes (separate `ray start` processes) on loopback only.

The suite runs inside a network namespace that has only `lo` (run.sh test does `unshare -n`), so nothing here can
reach another machine; outside one these tests skip (and fail under CI=true, where they must run). One cluster for
the module; the node-loss test runs last because it takes a node away.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_jobs import data_dir, make_spec  # noqa: F401 - the same tiny DRAEM on six striped images as local jobs

from recon_core.jobs import JobStore

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 180.0

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    from ray_cluster import in_loopback_namespace, start_cluster

    if not in_loopback_namespace():
        message = "needs a loopback-only network namespace (bash run.sh test makes one as root: unshare -n)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    os.environ["RECON_THREADS"] = "1"
    c = start_cluster(workers=2, cpus_per_worker=1)
    try:
        yield c
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        c.stop()


def wait_job(store: JobStore, job_id: str, done, timeout: float = WAIT_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = store.get(job_id)
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"timed out; job is {job.state} {job.progress_text()}\n{store.logs(job_id)}")


def test_jobs_run_on_the_nodes_with_their_own_data_and_come_back_like_local_runs(
    cluster,
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
) -> None:
    from recon_core.config import load_json
    from recon_core.runs import execute_run

    store = JobStore(tmp_path / "ws")
    ids = [store.submit(make_spec(data_dir, 40, seed=s), project="p", cluster=cluster.address) for s in (0, 1, 2)]
    moved = data_dir.with_name("moved-away")
    data_dir.rename(moved)  # the jobs must not read the project's folder by path: their data went with them
    jobs = [wait_job(store, i, lambda j: not j.is_active) for i in ids]
    for job in jobs:
        assert job.state == "succeeded", store.logs(job.id)
        assert job.on_cluster and job.host, job.where
        assert (job.run_dir / "model.pt").is_file() and (job.run_dir / "metrics.json").is_file()
        assert job.result["bundle_path"] == str(job.run_dir / "model.pt")
        rows = store.progress_rows(job.id)
        assert rows and rows[-1]["iteration"] == 40  # progress came back while it ran
    assert len({j.host for j in jobs}) == 2, [j.where for j in jobs]  # both worker nodes took jobs
    # one 1-CPU job at a time per 1-CPU node: a job waiting for its supervisor must not lend its CPU to another
    times = {j.id: [r["t"] for r in store.progress_rows(j.id)] for j in jobs}
    spans = {job_id: (t[0], t[-1]) for job_id, t in times.items()}
    for a in jobs:
        for b in jobs:
            if a.id < b.id and a.host == b.host:
                (a0, a1), (b0, b1) = spans[a.id], spans[b.id]
                assert a1 <= b0 or b1 <= a0, f"jobs {a.id} and {b.id} trained at once on {a.host}: {spans}"
    # the same spec run here, on one thread like the nodes, gives the same model and scores
    moved.rename(data_dir)
    local = execute_run(make_spec(data_dir, 40, seed=0), tmp_path / "local-run")
    remote = load_json(jobs[0].run_dir / "metrics.json")
    for key in ("image_auroc", "pixel_auroc"):
        assert remote[key] == pytest.approx(local.metrics[key], abs=1e-6), key
    for key, value in remote["final_losses"].items():
        assert value == pytest.approx(local.metrics["final_losses"][key], rel=1e-5), key


def test_cancel_queued_and_running_jobs_then_resume_from_the_checkpoint(
    cluster,
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
) -> None:
    store = JobStore(tmp_path / "ws")
    ids = [store.submit(make_spec(data_dir, 3000), project="p", cluster=cluster.address) for _ in range(3)]
    running = [wait_job(store, i, lambda j: (j.iteration or 0) >= 20) for i in ids[:2]]
    queued = store.get(ids[2])
    assert queued.state == "queued" and "cluster" in (queued.waiting_for or "")  # two nodes, one CPU each
    assert store.cancel(queued.id).state == "cancelled"  # at once
    store.cancel(running[0].id)
    stopped = wait_job(store, running[0].id, lambda j: not j.is_active, timeout=60)
    assert stopped.state == "cancelled", store.logs(stopped.id)
    assert (stopped.run_dir / "checkpoint.pt").is_file()  # the last checkpoint came back for a resume
    store.cancel(running[1].id)
    wait_job(store, running[1].id, lambda j: not j.is_active, timeout=60)
    stopped_at = stopped.iteration
    store.resume(stopped.id)

    def new_attempt_reported(job) -> bool:
        return any(r["attempt"] > stopped.attempts for r in store.progress_rows(job.id))

    resumed = wait_job(store, stopped.id, new_attempt_reported)
    first_new = next(r for r in store.progress_rows(stopped.id) if r["attempt"] > stopped.attempts)
    assert first_new["iteration"] >= stopped_at, (stopped_at, first_new)  # continued, not restarted
    store.cancel(resumed.id)
    wait_job(store, resumed.id, lambda j: not j.is_active, timeout=60)
    assert store.get(queued.id).state == "cancelled" and not (queued.run_dir / "model.pt").exists()


def test_a_job_outlives_the_app_that_sent_it(cluster, tmp_path: Path, data_dir: Path) -> None:  # noqa: F811
    """The 'app' is another process: it submits and exits; a new one finds the job still tracked and finishing."""
    ws = tmp_path / "ws"
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])\n"
        "from recon_core.jobs import JobStore\n"
        "from test_jobs import make_spec\n"
        "from pathlib import Path\n"
        "s = JobStore(sys.argv[3])\n"
        "print(s.submit(make_spec(Path(sys.argv[4]), 150), project='p', cluster=sys.argv[5]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO), str(REPO / "tests"), str(ws), str(data_dir), cluster.address],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = out.stdout.strip().splitlines()[-1]
    store = JobStore(ws)  # the restarted app
    job = wait_job(store, job_id, lambda j: not j.is_active)
    assert job.state == "succeeded", store.logs(job_id)
    assert (job.run_dir / "model.pt").is_file()


def test_train_page_sends_a_run_to_the_cluster_and_shows_where_it_ran(
    cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    from recon_core.demo import ensure_demo

    ensure_demo(tmp_path / "ws")
    monkeypatch.setenv("RECON_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "app_pages" / "3_train.py"), default_timeout=120)
    at.run()
    at.radio(key="train_where").set_value("Cluster")
    at.run()
    at.text_input(key="train_cluster").set_value(cluster.address)
    at.run()
    assert not at.exception and not at.warning, [w.value for w in at.warning]
    assert any("2 worker node(s)" in c.value for c in at.caption)
    at.radio(key="budget_kind").set_value("iterations")
    at.run()
    at.number_input(key="budget_iterations").set_value(5)
    at.button(key="start_training").click()
    at.run()
    assert not at.exception and "Queued job" in at.success[0].value
    store = JobStore(tmp_path / "ws")
    job = store.list_jobs("demo")[0]
    assert job.on_cluster
    done = wait_job(store, job.id, lambda j: not j.is_active)
    assert done.state == "succeeded", store.logs(job.id)
    at.run()
    assert any("Runs on cluster node" in c.value for c in at.caption)


def test_an_app_with_the_wrong_ray_token_is_told_what_to_set(cluster, tmp_path: Path) -> None:
    wrong = tmp_path / "token"
    wrong.write_text("0" * 64 + "\n")
    code = "import sys; from recon_core.jobs.cluster import connect; connect(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}
    out = subprocess.run(
        [sys.executable, "-c", code, cluster.address], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode != 0
    assert "refused this app's Ray token" in out.stderr and "RAY_AUTH_TOKEN_PATH" in out.stderr, out.stderr[-2000:]


def test_an_app_stopped_by_sigterm_exits_without_a_stack_dump(cluster) -> None:
    """Streamlit connects from a script thread; stopping the app (SIGTERM) used to print Ray's C++ stack dump."""
    code = (
        "import sys, threading, time; from recon_core.jobs.cluster import connect\n"
        "t = threading.Thread(target=connect, args=(sys.argv[1],)); t.start(); t.join()\n"
        "print('connected', flush=True); time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", code, cluster.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected", proc.stderr
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -15, err[-2000:]
    assert "SIGTERM received" not in err and "logging.cc" not in err, err[-2000:]


def test_a_job_waiting_for_its_supervisor_keeps_its_cpu(cluster) -> None:
    """RayChannel's answers are awaited off the task's main thread: Ray lends the CPU of a task blocked in `ray.get`
    or `ray.wait` there, which let a queued 1-CPU job start beside a running one on a 1-CPU node (measured: with
    `ray.wait(timeout=0)` polling the second task started 1 s into the first)."""
    import ray

    from recon_core.jobs.cluster import HEAD_RESOURCE, RayChannel, connect

    connect(cluster.address)

    @ray.remote(num_cpus=0)
    class Echo:
        def ping(self) -> float:
            return time.time()

    @ray.remote(num_cpus=1)
    def asks_all_the_time(echo, seconds: float) -> tuple[float, float]:
        start = time.time()
        channel = RayChannel(echo, Path())
        while time.time() - start < seconds:
            channel._call("ping")
            spin = time.time()
            while time.time() - spin < 0.02:
                pass
        return start, time.time()

    echo = Echo.options(resources={HEAD_RESOURCE: 0.001}).remote()
    spans = sorted(ray.get([asks_all_the_time.remote(echo, 3.0) for _ in range(3)], timeout=120))
    # two 1-CPU worker nodes: the third task may start only once one of the first two has ended
    assert spans[2][0] >= min(spans[0][1], spans[1][1]) - 0.05, spans
    ray.kill(echo)


def test_a_lost_node_costs_at_most_one_checkpoint_interval(
    cluster,
    tmp_path: Path,
    data_dir: Path,  # noqa: F811
) -> None:
    every = 20
    store = JobStore(tmp_path / "ws")
    job_id = store.submit(make_spec(data_dir, 400, checkpoint_every=every), project="p", cluster=cluster.address)
    job = wait_job(store, job_id, lambda j: (j.iteration or 0) >= 3 * every + 5)
    node = next(n for n in cluster.worker_nodes() if job.host.endswith(n.node_id[:8]))
    cluster.kill_node(node.node_id)
    lost_at = store.get(job_id).iteration
    done = wait_job(store, job_id, lambda j: not j.is_active)
    assert done.state == "succeeded", store.logs(job_id)
    assert done.attempts == 2 and not done.host.endswith(node.node_id[:8])
    assert "attempt 2 on node" in store.logs(job_id)
    second = [r for r in store.progress_rows(job_id) if r["attempt"] == 2]
    resumed_from = second[0]["iteration"]
    # progress lost: from the last iteration reported before the kill back to where the new node continued
    assert lost_at - resumed_from <= every + 5, (lost_at, resumed_from)
    assert (done.run_dir / "model.pt").is_file()
