"""`python -m recon_core …`: a thin layer over the engine. Each sub-command group lives in
recon_core/commands/<group>.py and exposes `register(subparsers)`; handlers return an exit code."""

from __future__ import annotations

import argparse
import importlib
import logging
import sqlite3
import sys

from recon_core.errors import ReconError

COMMAND_MODULES = [
    "data",  # data check
    "synth",  # synth preview
    "train",  # train, eval, predict, export
    "bench",  # bench
    "jobs",  # jobs submit|list|show|cancel|resume|logs (+ hidden worker)
    "dsr",  # pretrain-vq
    "demo",  # demo workspace for the app
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recon_core",
        description="Recon Studio: visual defect detection from a few good images.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"recon_core.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"recon_core.commands.{name}":
                continue  # group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ReconError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except sqlite3.OperationalError as exc:  # busy / locked: not damage
        print(f"error: the job database is busy ({exc}); try again", file=sys.stderr)
        return 1
    except sqlite3.DatabaseError as exc:  # the job database was damaged while this command ran
        print(
            f"error: the job database is damaged ({exc}). `python -m recon_core jobs repair` moves it aside and "
            "rebuilds the job list from the run folders.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
