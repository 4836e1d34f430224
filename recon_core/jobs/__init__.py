"""Background training jobs that survive closed tabs, app restarts and crashes, on this machine or a Ray cluster.

records.py  the job table (jobs.sqlite): states, progress, logs; reading starts nothing
local.py    the local launcher: one detached worker process per running job (the default)
cluster.py  the cluster launcher: jobs on a Ray cluster, data and results sent through Ray (no shared filesystem)
worker.py   runs one job (runs.execute_run) and reports through a channel (SQLite locally, a supervisor on Ray)
store.py    JobStore = records + launchers: what the app and the CLI use
"""

from recon_core.jobs.records import (
    ACTIVE_STATES,
    LAUNCH_GRACE_S,
    PROGRESS_MIN_INTERVAL_S,
    STATES,
    TERMINAL_STATES,
    Job,
    default_workspace,
    format_duration,
)
from recon_core.jobs.store import JobStore, device_slot
from recon_core.jobs.worker import run_worker

__all__ = [
    "ACTIVE_STATES",
    "LAUNCH_GRACE_S",
    "PROGRESS_MIN_INTERVAL_S",
    "STATES",
    "TERMINAL_STATES",
    "Job",
    "JobStore",
    "default_workspace",
    "device_slot",
    "format_duration",
    "run_worker",
]
