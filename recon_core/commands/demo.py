"""`python -m recon_core demo --workspace W [--quiet] [--train N]`: create the demo project if absent.

Idempotent and fast (procedural images, ~1 s): `run.sh app` calls it before starting Streamlit. `--train N`
additionally queues a short background run of N iterations on the demo project (only if the project has no run
and no job yet, so restarting the app never queues a second one): a newcomer sees live training on the Train page
and every later page has a model to show within a few minutes.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from recon_core.demo import DEMO_PROJECT, ensure_demo

if TYPE_CHECKING:
    from recon_core.workspace import Project


def demo_command(args: argparse.Namespace) -> int:
    project, created = ensure_demo(args.workspace, name=args.name)
    if not args.quiet:
        state = "created" if created else "already present"
        print(f"demo project {state}: {project.root} ({project.counts()})")
    if args.train:
        _queue_demo_run(project, args)
    return 0


def _queue_demo_run(project: Project, args: argparse.Namespace) -> None:
    from recon_core.jobs import JobStore
    from recon_core.runs import RunSpec

    store = JobStore(project.workspace)
    if project.run_dirs() or store.list_jobs(project=project.name):
        return
    spec = RunSpec(
        data=str(project.data_dir),
        model=args.model,
        preset=args.preset,
        iterations=args.train,
        synth=project.load_synth(),
        name="demo",
    )
    # the user's runs go first; always on this machine, even when $RECON_CLUSTER sends the user's runs elsewhere
    job_id = store.submit(spec, project=project.name, priority="background", cluster="local")
    if not args.quiet:
        print(f"queued demo run {job_id} ({args.model}, {args.train} iterations, background: your runs go first)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="create the demo project (procedural washer images) if absent")
    p.add_argument("--workspace", default=None, help="workspace folder (default $RECON_WORKSPACE or ./workspace)")
    p.add_argument("--name", default=DEMO_PROJECT, help="project name (default demo)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.add_argument("--train", type=int, default=0, metavar="N", help="also queue a short run of N iterations")
    p.add_argument("--model", default="draem", help="model for --train (default draem)")
    p.add_argument("--preset", default=None, help="preset for --train (default: the model's default)")
    p.set_defaults(handler=demo_command)
