"""`python -m recon_core jobs submit|list|show|cancel|resume|logs|delete`: background training jobs.

Jobs live in <workspace>/jobs.sqlite (workspace: --workspace, else $RECON_WORKSPACE, else ./workspace) and run in
their own worker processes, so closing the terminal does not stop them, or on a Ray cluster (`--cluster`, or
$RECON_CLUSTER; `jobs cluster` shows its nodes and free resources). `jobs worker` is the hidden entry point a
worker process runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from recon_core.commands.train import add_run_options, build_spec
from recon_core.jobs import Job, JobStore, default_workspace, format_duration, run_worker

FOLLOW_POLL_S = 0.5


def _store(args: argparse.Namespace) -> JobStore:
    store = JobStore(args.workspace or default_workspace())
    if store.repaired:  # opening found the database damaged and rebuilt it: say so, once, on stderr
        print(f"note: {store.repaired}", file=sys.stderr)
    return store


def repair(args: argparse.Namespace) -> int:
    store = JobStore(args.workspace or default_workspace(), autostart=False)
    if store.repaired:
        print(store.repaired)
        return 0
    problem = store.damage()
    if problem is None and not args.force:
        print(f"{store.db_path}: the job database is sound (quick_check ok); nothing to repair (--force rebuilds)")
        return 0
    print(store.repair(problem or "rebuild asked for with --force"))
    return 0


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _budget_text(spec: dict[str, Any]) -> str:
    if spec.get("iterations"):
        return f"{spec['iterations']} iterations"
    if spec.get("minutes"):
        return f"{spec['minutes']} minutes"
    return "the preset's suggested budget"


def _job_dict(job: Job) -> dict[str, Any]:
    out = {k: v for k, v in vars(job).items()}
    out["run_dir"] = str(job.run_dir)
    return out


# ---- handlers ---------------------------------------------------------------------------------------------------


def submit(args: argparse.Namespace) -> int:
    store = _store(args)
    job_id = store.submit(build_spec(args), project=args.project, cluster=args.cluster)
    job = store.get(job_id)
    print(job_id)
    if args.follow:
        return _follow(store, job_id)
    print(f"{job.state} on {job.where}; run folder {job.run_dir}", flush=True)
    print(f"follow with: python -m recon_core jobs show {job_id} --follow")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    jobs = _store(args).list_jobs(project=args.project)
    if args.json:
        print(json.dumps([_job_dict(j) for j in jobs], indent=2, default=str))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    header = (
        f"{'ID':<23} {'PROJECT':<12} {'STATE':<11} {'MODEL':<11} {'WHERE':<8} {'PROGRESS':<14} {'CREATED':<19} DATA"
    )
    print(header)

    for j in jobs:
        print(
            f"{j.id:<23} {j.project[:12]:<12} {j.state:<11} {j.model[:11]:<11} "
            f"{'cluster' if j.on_cluster else 'local':<8} "
            f"{j.progress_text(with_state=False) or '-':<14} "
            f"{_when(j.created_at):<19} {j.data}"
        )
    return 0


def _print_job(job: Job) -> None:
    rows = [
        ("job", job.id),
        ("state", job.state + (" (cancel requested)" if job.cancel_requested and job.state == "running" else "")),
        ("priority", "background (yields to your runs)" if job.priority else "normal"),
        ("project", job.project),
        ("model", f"{job.model}" + (f" (preset {job.spec['preset']})" if job.spec.get("preset") else "")),
        ("data", job.data),
        ("runs on", job.where),
        ("budget", _budget_text(job.spec)),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("progress", job.progress_text(with_state=False) or "-"),
    ]
    if job.losses:
        rows.append(("losses", "  ".join(f"{k} {v:.4g}" for k, v in job.losses.items())))
    if job.images_per_s is not None and job.state == "running":
        rows.append(("speed", f"{job.images_per_s:.1f} images/s, ETA {format_duration(job.eta_s)}"))
    if job.on_cluster and job.attempts > 1:
        rows.append(("attempts", f"{job.attempts} (a node was lost; each attempt continued from the checkpoint)"))
    if job.error:
        rows.append(("error" if job.state == "failed" else "reason", job.error))
    rows.append(("run folder", str(job.run_dir)))
    if job.result:
        for key, value in job.result.items():
            rows.append((key, json.dumps(value) if isinstance(value, dict) else str(value)))
    for key, value in rows:
        print(f"{key:<11} {value}")


def _follow(store: JobStore, job_id: str) -> int:
    """A tqdm bar until the job ends; Ctrl-C stops following, not the job."""
    from tqdm import tqdm

    bar = None
    last_state = None
    try:
        while True:
            job = store.get(job_id)
            if job.state != last_state:
                if bar is not None:
                    bar.clear()
                print(
                    f"{job_id}: {job.progress_text()}",
                    flush=True,
                )
                last_state = job.state
            if job.total_iterations and bar is None and job.state == "running":
                bar = tqdm(
                    total=job.total_iterations,
                    initial=job.iteration or 0,  # a resumed job: the rate counts only new iterations
                    unit="it",
                    dynamic_ncols=True,
                    desc=job.stage or "train",
                )
            if bar is not None and job.iteration is not None:
                if job.total_iterations and bar.total != job.total_iterations:
                    bar.total = job.total_iterations
                if job.iteration > bar.n:
                    bar.update(job.iteration - bar.n)
                done = job.iteration >= (job.total_iterations or 0)
                desc = "evaluating" if done and job.state == "running" else (job.stage or "train")
                bar.set_description(desc, refresh=False)
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(job.losses.items())[:3]}, refresh=False)
                bar.refresh()
            if not job.is_active:
                break
            time.sleep(FOLLOW_POLL_S)
            store.reconcile()  # a follower also notices a dead worker
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (jobs cancel {job_id} to stop it)")
        return 130
    finally:
        if bar is not None:
            bar.close()
    print(f"{job_id}: {job.state}" + (f": {job.error}" if job.error else ""))
    return 0 if job.state == "succeeded" else 1


def show(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.follow:
        return _follow(store, args.job_id)
    job = store.get(args.job_id)
    if args.json:
        print(json.dumps(_job_dict(job), indent=2, default=str))
    else:
        _print_job(job)
    return 0


def cancel(args: argparse.Namespace) -> int:
    store = _store(args)
    job = store.cancel(args.job_id)
    if job.state == "running":
        print(f"{job.id}: cancel requested; it stops after the current iteration and keeps its last checkpoint")
        if args.wait:
            deadline = time.time() + args.wait
            while job.state == "running" and time.time() < deadline:
                time.sleep(FOLLOW_POLL_S)
                store.reconcile()
                job = store.get(args.job_id)
    print(f"{job.id}: {job.state}")
    return 0


def resume(args: argparse.Namespace) -> int:
    job = _store(args).resume(args.job_id)
    print(f"{job.id}: {job.state} (continues from its last checkpoint)")
    return 0


def logs(args: argparse.Namespace) -> int:
    print(_store(args).logs(args.job_id, tail=args.tail))
    return 0


def delete(args: argparse.Namespace) -> int:
    _store(args).delete(args.job_id)
    print(f"{args.job_id}: deleted (with its run folder)")
    return 0


def cluster(args: argparse.Namespace) -> int:
    """The cluster a job would go to, its nodes and free resources."""
    from recon_core.jobs.cluster import cluster_address, cluster_resources

    address = cluster_address(args.cluster)
    if address is None:
        print("no cluster set: jobs run on this machine (set RECON_CLUSTER=ray://host:10001 or pass --cluster)")
        return 0
    info = cluster_resources(address)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{address}: {info['nodes']} node(s), {info['workers']} worker node(s); CPUs {info['free_cpus']:g} free of "
        f"{info['cpus']:g}; GPUs {info['free_gpus']:g} free of {info['gpus']:g}"
    )
    return 0


def worker(args: argparse.Namespace) -> int:
    return run_worker(args.workspace or default_workspace(), args.job)


# ---- parser -----------------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("jobs", help="background training jobs (submit, list, show, cancel, resume)")
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)
    sub = parser.add_subparsers(dest="jobs_command", metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=None, help="workspace folder (default: $RECON_WORKSPACE or ./workspace)")

    p = sub.add_parser("submit", parents=[common], help="queue a training run in the background; prints its id")
    p.add_argument("path", help="training data: an MVTec-layout folder or a folder of good images")
    add_run_options(p)
    p.add_argument("--project", default=None, help="project name (run folder <workspace>/<project>/runs/<id>)")
    p.add_argument("--follow", action="store_true", help="show a progress bar until the job ends")
    p.add_argument(
        "--cluster",
        default=None,
        metavar="ADDRESS",
        help="run it on a Ray cluster: ray://host:10001, host:6379 or auto (default: $RECON_CLUSTER; local = here)",
    )
    p.set_defaults(handler=submit)

    p = sub.add_parser("cluster", parents=[common], help="the Ray cluster jobs go to: nodes and free resources")
    p.add_argument("--cluster", default=None, metavar="ADDRESS", help="default: $RECON_CLUSTER")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cluster)

    p = sub.add_parser("list", parents=[common], help="all jobs, newest first")
    p.add_argument("--project", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=list_cmd)

    p = sub.add_parser("show", parents=[common], help="one job's state, progress and result")
    p.add_argument("job_id")
    p.add_argument("--follow", action="store_true", help="progress bar until the job ends (Ctrl-C stops following)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=show)

    p = sub.add_parser("cancel", parents=[common], help="stop a job (keeps its last checkpoint)")
    p.add_argument("job_id")
    p.add_argument("--wait", type=float, default=0, metavar="S", help="wait up to S seconds until it has stopped")
    p.set_defaults(handler=cancel)

    p = sub.add_parser("resume", parents=[common], help="continue an interrupted, cancelled or failed job")
    p.add_argument("job_id")
    p.set_defaults(handler=resume)

    p = sub.add_parser(
        "repair", parents=[common], help="a damaged jobs.sqlite: move it aside, rebuild the jobs from the run folders"
    )
    p.add_argument("--force", action="store_true", help="rebuild even when the database looks sound")
    p.set_defaults(handler=repair)

    p = sub.add_parser("logs", parents=[common], help="a job's log")
    p.add_argument("job_id")
    p.add_argument("--tail", type=int, default=None, metavar="N", help="only the last N lines")
    p.set_defaults(handler=logs)

    p = sub.add_parser("delete", parents=[common], help="forget a job and delete its run folder")
    p.add_argument("job_id")
    p.set_defaults(handler=delete)

    # Hidden: what a worker process runs (no help= so it is not listed).
    p = sub.add_parser("worker", parents=[common])
    p.add_argument("--job", required=True)
    p.set_defaults(handler=worker)
