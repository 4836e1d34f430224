"""What running a job on a Ray cluster costs compared with running it here, on a real loopback cluster.

1. Overhead, one job at a time, local worker vs the cluster (a fresh 2-worker-node cluster, 1 CPU per node), for the
   tiny DRAEM job of tests/test_cluster_jobs.py and a `cpu`-preset DRAEM job on a real folder: submit -> first
   progress row, submit -> finished, and the end gap (job seen terminal - last progress row: evaluation, bundle,
   and for cluster jobs the copy of the run folder back here); the run folder's size and the MB sent with the job.
2. Throughput: a batch of tiny jobs submitted at once to a fresh 1-worker-node cluster, then to a fresh 2-worker-node
   cluster, then run locally (one at a time on the cpu device): wall time, jobs/min, 2-node/1-node ratio.

Job states are polled every POLL_S; a cluster job's progress is copied here at most once per SYNC_EVERY_S (1 s), so
"finished" times of cluster jobs have ~1 s resolution. Progress-row times are the worker's own clock (same machine).
Every measurement gets a fresh temporary workspace. Writes <out-dir>/cluster.json (raw records, machine info) and
<out-dir>/cluster.md (tables).

Run as root inside a loopback-only network namespace (tests/ray_cluster.py refuses otherwise), under the benchmark
lock, with RECON_THREADS=1 (cluster nodes train on 1 thread: each offers 1 CPU):

    flock /tmp/recon-bench.lock unshare -n bash -c 'ip link set lo up; \
        RECON_THREADS=1 PATH=<venv>/bin:$PATH python benchmarks/cluster_overhead.py'

`--render` only rewrites cluster.md from an existing cluster.json (no cluster, no lock needed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # ray_cluster.py: the loopback cluster helper the tests use

from ray_cluster import use_session_auth_token  # noqa: E402

use_session_auth_token()  # before anything imports Ray

TINY = {"image_size": 32, "recon_width": 8, "disc_width": 8, "recon_depth": 3, "disc_depth": 3, "batch_size": 2}
POLL_S = 0.2
JOB_TIMEOUT_S = 600.0
SENT_RE = re.compile(r"sent to the cluster at \S+ \(([\d.]+) MB\)")


# ---------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------


def make_tiny_data(folder: Path) -> Path:
    """The 6 generated 48x48 PNGs of tests/test_jobs.py `data_dir` (a copy: benchmarks do not import tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    xx = np.mgrid[0:48, 0:48][1] / 48
    for i in range(6):
        base = 0.5 + 0.2 * np.sin(2 * np.pi * (4 * xx + rng.uniform(0, 0.3)))
        img = np.stack([base, 0.8 * base, np.full_like(base, 0.3)], -1) + rng.normal(0, 0.02, (48, 48, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@dataclass(frozen=True)
class JobKind:
    name: str
    data: Path
    iterations: int
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    shots: int | None = None

    def spec(self, seed: int = 0) -> Any:
        from recon_core.runs import RunSpec

        return RunSpec(
            data=str(self.data),
            model="draem",
            preset=self.preset,
            model_overrides=dict(self.overrides),
            shots=self.shots,
            iterations=self.iterations,
            checkpoint_every=10,
            device="cpu",
            seed=seed,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data": str(self.data),
            "model": "draem",
            "preset": self.preset,
            "overrides": self.overrides,
            "shots": self.shots,
            "iterations": self.iterations,
        }


# ---------------------------------------------------------------------------------------------------------------
# following jobs
# ---------------------------------------------------------------------------------------------------------------


def folder_size(folder: Path) -> tuple[int, int]:
    """(bytes, files) of the files under `folder`."""
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def job_record(store: Any, job_id: str, t_submit: float, submit_call_s: float, terminal_seen: float) -> dict[str, Any]:
    """What one finished job tells: times relative to the submit call, the end gap, sizes."""
    job = store.get(job_id)
    rows = store.progress_rows(job_id)
    first_t = rows[0]["t"] if rows else None
    last_t = rows[-1]["t"] if rows else None
    size, files = folder_size(job.run_dir)
    sent = SENT_RE.search(store.logs(job_id))

    def since(t: float | None, t0: float = t_submit) -> float | None:
        return None if t is None else round(t - t0, 3)

    return {
        "job_id": job_id,
        "state": job.state,
        "error": job.error,
        "where": "cluster" if job.on_cluster else "local",
        "host": job.host,
        "attempts": job.attempts,
        "iterations_done": rows[-1]["iteration"] if rows else None,
        "progress_rows": len(rows),
        "submit_call_s": round(submit_call_s, 3),
        "submit_to_started_s": since(job.started_at),
        "submit_to_first_progress_s": since(first_t),
        "submit_to_last_progress_s": since(last_t),
        "submit_to_finished_s": since(terminal_seen),  # polled: when this process saw the job terminal
        "submit_to_finished_recorded_s": since(job.finished_at),  # the record's finished_at
        "train_s": since(last_t, first_t) if first_t is not None else None,  # first to last progress row
        "end_gap_s": since(terminal_seen, last_t) if last_t is not None else None,
        "end_gap_recorded_s": since(job.finished_at, last_t) if last_t is not None and job.finished_at else None,
        "run_dir_mb": round(size / 1e6, 3),
        "run_dir_files": files,
        "sent_mb": float(sent.group(1)) if sent else None,
        "t_submit": t_submit,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def wait_all(store: Any, job_ids: list[str], timeout: float = JOB_TIMEOUT_S) -> dict[str, float]:
    """Poll until every job is terminal; returns job id -> time.time() when it was first seen terminal."""
    seen: dict[str, float] = {}
    deadline = time.time() + timeout
    while len(seen) < len(job_ids):
        if time.time() > deadline:
            states = {i: store.get(i).state for i in job_ids if i not in seen}
            raise TimeoutError(f"jobs not finished after {timeout:.0f} s: {states}")
        for job_id in job_ids:
            if job_id not in seen and not store.get(job_id).is_active:
                seen[job_id] = time.time()
        if len(seen) < len(job_ids):
            time.sleep(POLL_S)
    return seen


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="recon-cluster-bench-") as tmp:
        yield Path(tmp)


def run_one(kind: JobKind, cluster: str, repeat: int) -> dict[str, Any]:
    """One job alone in a fresh workspace, followed to its end."""
    from recon_core.jobs import JobStore

    with workspace() as ws:
        store = JobStore(ws)
        t_submit = time.time()
        job_id = store.submit(kind.spec(), project="bench", cluster=cluster)
        submit_call_s = time.time() - t_submit
        seen = wait_all(store, [job_id])
        record = job_record(store, job_id, t_submit, submit_call_s, seen[job_id])
        store.close()
    return {"kind": kind.name, "iterations": kind.iterations, "repeat": repeat, **record}


def run_batch(kind: JobKind, jobs: int, cluster: str) -> dict[str, Any]:
    """`jobs` jobs submitted at once to a fresh workspace; wall time from the first submit until all ended."""
    from recon_core.jobs import JobStore

    with workspace() as ws:
        store = JobStore(ws)
        t0 = time.time()
        ids = []
        for seed in range(jobs):
            t_submit = time.time()
            ids.append((store.submit(kind.spec(seed), project="bench", cluster=cluster), t_submit))
        submitted_s = time.time() - t0
        seen = wait_all(store, [i for i, _ in ids])
        wall = max(seen.values()) - t0
        records = [job_record(store, i, t, 0.0, seen[i]) for i, t in ids]
        store.close()
    return {
        "kind": kind.name,
        "iterations": kind.iterations,
        "jobs": jobs,
        "submit_all_s": round(submitted_s, 3),
        "wall_s": round(wall, 3),
        "jobs_per_min": round(60 * jobs / wall, 3),
        "succeeded": sum(r["state"] == "succeeded" for r in records),
        "hosts": sorted({str(r["host"]) for r in records}),
        "job_records": records,
    }


# ---------------------------------------------------------------------------------------------------------------
# clusters
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(workers: int) -> Iterator[tuple[str, float]]:
    """A fresh loopback cluster with `workers` 1-CPU worker nodes: (address, seconds it took to start)."""
    import ray
    from ray_cluster import start_cluster

    t0 = time.time()
    c = start_cluster(workers=workers, cpus_per_worker=1)
    started = time.time() - t0
    try:
        yield c.address, started
    finally:
        if ray.is_initialized():
            ray.shutdown()  # the next cluster gets a fresh connection (recon_core connects once per address)
        c.stop()


# ---------------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import ray
    import torch

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": commit or None,
        "recon_threads": os.environ.get("RECON_THREADS"),
        "loadavg_at_start": os.getloadavg(),
        "poll_s": POLL_S,
        "cluster_sync_every_s": sync_every_s(),
    }


def sync_every_s() -> float | None:
    try:
        from recon_core.jobs.cluster import SYNC_EVERY_S
    except ImportError:
        return None
    return float(SYNC_EVERY_S)


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return lines


OVERHEAD_COLUMNS = [
    ("submit_to_first_progress_s", "submit → 1st progress (s)"),
    ("submit_to_finished_s", "submit → finished (s)"),
    ("train_s", "1st → last progress (s)"),
    ("end_gap_s", "end gap (s)"),
    ("run_dir_mb", "run folder (MB)"),
    ("sent_mb", "sent (MB)"),
]


def overhead_summary(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (kind, where), then cluster - local per kind."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in records):
        by_where = {}
        for where in ("local", "cluster"):
            group = [r for r in records if r["kind"] == kind and r["where"] == where]
            if not group:
                continue
            row = {"kind": kind, "where": where, "iterations": group[0]["iterations"], "n": len(group)}
            row["succeeded"] = sum(r["state"] == "succeeded" for r in group)
            row.update({key: median([r[key] for r in group]) for key, _ in OVERHEAD_COLUMNS})
            by_where[where] = row
            out.append(row)
        if len(by_where) == 2:
            diff = {"kind": kind, "where": "cluster − local", "iterations": by_where["local"]["iterations"]}
            for key, _ in OVERHEAD_COLUMNS:
                a, b = by_where["cluster"][key], by_where["local"][key]
                diff[key] = None if a is None or b is None or key in ("run_dir_mb", "sent_mb") else a - b
            out.append(diff)
    return out


def most_training_at_once(records: list[dict[str, Any]]) -> int:
    """The most jobs of a batch training at the same time on one host (first to last progress row)."""
    events: dict[str, list[tuple[float, int]]] = {}
    for r in records:
        if r["submit_to_first_progress_s"] is None or r["submit_to_last_progress_s"] is None:
            continue
        host = str(r["host"])
        events.setdefault(host, []).append((r["t_submit"] + r["submit_to_first_progress_s"], 1))
        events.setdefault(host, []).append((r["t_submit"] + r["submit_to_last_progress_s"], -1))
    most = 0
    for points in events.values():
        running = 0
        for _, step in sorted(points, key=lambda p: (p[0], p[1])):  # an end before a start at the same instant
            running += step
            most = max(most, running)
    return most


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Cluster jobs: overhead and throughput (benchmarks/cluster_overhead.py)",
        "",
        f"Machine: {m['cpu_model']} ({m['cores']} cores), torch {m['torch']}, ray {m['ray']}, python {m['python']}; "
        f"{m['date']}; repo {m['git']}; RECON_THREADS={m['recon_threads']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg_at_start'])}.",
        "",
        "The cluster is real (scripts/ray_cluster.sh): a head node with 0 CPUs and 1-CPU worker nodes, separate "
        "`ray start` processes on this machine, in a loopback-only network namespace. Local jobs are worker "
        "processes of the local launcher (one at a time on the cpu device). Both train on 1 thread.",
        "",
        f"Timing resolution: job states polled every {m['poll_s']} s; a cluster job's progress and end are copied "
        f"here at most once per {m['cluster_sync_every_s']} s (SYNC_EVERY_S), so its 'finished' times are ~1 s "
        "coarse. Progress-row times are the worker's clock (same machine).",
    ]
    overhead = results.get("overhead")
    if overhead:
        kinds = "; ".join(
            f"{k['name']}: {k['iterations']} iterations"
            + (f", preset {k['preset']}" if k["preset"] else f", overrides {json.dumps(k['overrides'])}")
            + (f", {k['shots']} shots" if k["shots"] else "")
            + f" of {k['data']}"
            for k in overhead["kinds"]
        )
        lines += [
            "",
            "## 1. Overhead of one job: local vs cluster (medians)",
            "",
            f"{overhead['repeats']} repeats per job kind, one job at a time, local and cluster interleaved; the "
            f"cluster has {overhead['workers']} worker nodes (started in {overhead['cluster_start_s']:.1f} s). "
            f"Jobs: {kinds}.",
            "",
            "*end gap* = (job seen terminal by polling) − (t of its last progress row): evaluation, writing the "
            "bundle and, for a cluster job, the supervisor handing the run folder back and it being written here. "
            "The local job's end gap is the same work without the transfer, so *cluster − local* of the end gap "
            "estimates the transfer (± the 1 s sync resolution). *run folder* = sum of file sizes in job.run_dir "
            "here (a succeeded cluster job brings its run folder back without the training checkpoint, which a local "
            "run keeps, hence smaller); *sent* = data + textures (+ checkpoint) sent with the job (its log line).",
            "",
        ]
        header = ["job", "where", "iterations", "n ok"] + [title for _, title in OVERHEAD_COLUMNS]
        rows = [
            [s["kind"], s["where"], s["iterations"], f"{s['succeeded']}/{s['n']}" if "n" in s else "–"]
            + [s[key] for key, _ in OVERHEAD_COLUMNS]
            for s in overhead["summary"]
        ]
        lines += table(header, rows)
        lines += ["", "Per job:", ""]
        header = ["job", "where", "repeat", "state", "host", "submit call (s)"] + [t for _, t in OVERHEAD_COLUMNS]
        rows = [
            [r["kind"], r["where"], r["repeat"], r["state"], r["host"] or "–", r["submit_call_s"]]
            + [r[key] for key, _ in OVERHEAD_COLUMNS]
            for r in overhead["records"]
        ]
        lines += table(header, rows)
    throughput = results.get("throughput")
    if throughput:
        batches = throughput["batches"]
        lines += [
            "",
            "## 2. Throughput: a batch of tiny jobs submitted at once",
            "",
            f"{throughput['jobs']} tiny jobs of {throughput['iterations']} iterations each "
            f"(seeds 0..{throughput['jobs'] - 1}), submitted at once; wall time from the first submit until all were "
            "seen finished. Each cluster is fresh.",
            "",
        ]
        header = ["setup", "cluster start (s)", "submit all (s)", "wall (s)", "jobs/min", "ok", "nodes used"]
        header.append("most jobs training at once on one node (1 CPU each)")
        rows = [
            [
                b["setup"],
                b.get("cluster_start_s"),
                b["submit_all_s"],
                b["wall_s"],
                b["jobs_per_min"],
                f"{b['succeeded']}/{b['jobs']}",
                len(b["hosts"]) if b["setup"] != "local" else "–",
                most_training_at_once(b["job_records"]),
            ]
            for b in batches
        ]
        lines += table(header, rows)
        ratios = throughput.get("ratios", {})
        lines += [""] + [f"- {name}: **{value:.2f}**" for name, value in ratios.items() if value is not None]
        lines += [
            "",
            f"All of this runs on one {m['cores']}-core machine: the worker nodes share its cores (and the head node, "
            "the supervisors and this driver run there too), so the absolute jobs/min says little about a real "
            f"cluster. What matters is the 2-node/1-node ratio, which is bounded by the {m['cores']} cores here "
            "(at most 2 with two 1-thread jobs at a time), not by Ray.",
        ]
        crowded = [b["setup"] for b in batches if b["setup"] != "local" and most_training_at_once(b["job_records"]) > 1]
        if crowded:
            lines += [
                "",
                f"**Note:** in {' and '.join(crowded)}, a 1-CPU worker node trained more than one job at a time "
                "(overlapping first-to-last progress intervals on the same node; per-job times in cluster.json), so "
                "Ray placed more 1-CPU jobs on a node than it has CPUs. The 1-node batch then already used both "
                "cores, so the 2-node/1-node ratio here does not show what a second node adds.",
            ]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cluster.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "cluster.md").write_text(render(results))


# ---------------------------------------------------------------------------------------------------------------
# the measurements
# ---------------------------------------------------------------------------------------------------------------


def measure_overhead(
    kinds: list[JobKind], repeats: int, workers: int, save: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    result: dict[str, Any] = {"repeats": repeats, "workers": workers, "kinds": [k.describe() for k in kinds]}
    records: list[dict[str, Any]] = []
    result["records"] = records
    with cluster(workers) as (address, start_s):
        result["cluster_start_s"] = round(start_s, 2)
        for repeat in range(1, repeats + 1):
            for kind in kinds:
                for where in ("local", address):
                    record = run_one(kind, where, repeat)
                    records.append(record)
                    print(
                        f"[overhead] {kind.name} {record['where']} #{repeat}: {record['state']}, first progress "
                        f"{fmt(record['submit_to_first_progress_s'])} s, finished {fmt(record['submit_to_finished_s'])}"
                        f" s, end gap {fmt(record['end_gap_s'])} s",
                        flush=True,
                    )
                    result["summary"] = overhead_summary(records)
                    save(result)
    return result


def measure_throughput(kind: JobKind, jobs: int, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    result: dict[str, Any] = {"kind": kind.describe(), "jobs": jobs, "iterations": kind.iterations, "batches": []}
    for workers in (1, 2):
        with cluster(workers) as (address, start_s):
            batch = {"setup": f"cluster, {workers} worker node{'s' * (workers > 1)}", "workers": workers}
            batch |= {"cluster_start_s": round(start_s, 2), **run_batch(kind, jobs, address)}
        result["batches"].append(batch)
        print(f"[throughput] {batch['setup']}: {batch['wall_s']:.1f} s, {batch['jobs_per_min']:.2f} jobs/min")
        save(result)
    batch = {"setup": "local", "workers": None, **run_batch(kind, jobs, "local")}
    result["batches"].append(batch)
    print(f"[throughput] local: {batch['wall_s']:.1f} s, {batch['jobs_per_min']:.2f} jobs/min", flush=True)
    per_min = {b["workers"]: b["jobs_per_min"] for b in result["batches"]}
    result["ratios"] = {
        "2-node / 1-node jobs/min": per_min[2] / per_min[1],
        "1-node / local jobs/min": per_min[1] / per_min[None],
        "2-node / local jobs/min": per_min[2] / per_min[None],
    }
    save(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny-iterations", type=int, default=30)
    parser.add_argument("--cpu-iterations", type=int, default=20)
    parser.add_argument("--cpu-data", type=Path, default=REPO.parent / "shared" / "data" / "mvtec_ad" / "bottle")
    parser.add_argument("--shots", type=int, default=20)
    parser.add_argument("--batch-jobs", type=int, default=6)
    parser.add_argument("--batch-iterations", type=int, default=60)
    parser.add_argument("--skip", nargs="*", default=[], choices=["overhead", "throughput", "cpu"])
    parser.add_argument("--render", action="store_true", help="only rewrite cluster.md from <out-dir>/cluster.json")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads((args.out_dir / "cluster.json").read_text())
        (args.out_dir / "cluster.md").write_text(render(results))
        return 0

    from ray_cluster import in_loopback_namespace

    if not in_loopback_namespace():
        parser.error("run inside a loopback-only network namespace: unshare -n bash -c 'ip link set lo up; ...'")
    if os.environ.get("RECON_THREADS") != "1":
        print("note: RECON_THREADS is not 1; setting it (cluster jobs train on 1 thread)", flush=True)
        os.environ["RECON_THREADS"] = "1"
    os.environ.pop("RECON_CLUSTER", None)  # "local" must mean local

    results: dict[str, Any] = {"machine": machine_info(), "argv": sys.argv}

    def save(part: str | None = None, partial: dict[str, Any] | None = None) -> None:
        if part is not None:
            results[part] = partial
        write_results(results, args.out_dir)

    with tempfile.TemporaryDirectory(prefix="recon-cluster-bench-data-") as tmp:
        tiny_data = make_tiny_data(Path(tmp) / "good")
        t0 = time.time()
        if "overhead" not in args.skip:
            kinds = [JobKind("tiny", tiny_data, args.tiny_iterations, overrides=dict(TINY))]
            if "cpu" not in args.skip:
                kinds.append(JobKind("cpu-preset", args.cpu_data, args.cpu_iterations, preset="cpu", shots=args.shots))
            measure_overhead(kinds, args.repeats, 2, lambda partial: save("overhead", partial))
        if "throughput" not in args.skip:
            kind = JobKind("tiny", tiny_data, args.batch_iterations, overrides=dict(TINY))
            measure_throughput(kind, args.batch_jobs, lambda partial: save("throughput", partial))
        results["total_s"] = round(time.time() - t0, 1)
        save()
    print(f"wrote {args.out_dir / 'cluster.json'} and {args.out_dir / 'cluster.md'} ({results['total_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
