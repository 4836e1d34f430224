"""`JobStore`: the job records plus the launchers that start, watch and stop jobs (what the app and CLI use).

store = JobStore(workspace)                       # marks jobs of dead workers interrupted, starts queued ones
job_id = store.submit(spec, project="bottle")     # local worker process; cluster="ray://head:10001" (or
                                                  # $RECON_CLUSTER) sends it to a Ray cluster instead
job = store.get(job_id)                           # reads never start anything: they only bring the records up
rows = store.progress_rows(job_id)                # to date (dead local workers, cluster progress)
store.cancel(job_id); store.resume(job_id); store.delete(job_id)
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from recon_core.errors import ConfigError, ReconError
from recon_core.jobs.local import LocalLauncher
from recon_core.jobs.records import (
    CLUSTER_SLOT,
    LOCAL,
    RECONCILE_EVERY_S,
    Job,
    JobRecords,
    _check_project,
    _spec_to_dict,
)

log = logging.getLogger(__name__)


def device_slot(device: str | None) -> str:
    """The concurrency key of a device setting (device.normalize_device: 'cpu', 'cpu:0', 'cpu:1' are one slot)."""
    from recon_core.device import normalize_device  # imports torch: only when a job is submitted

    return normalize_device(device)


class JobStore(JobRecords):
    """Durable job queue with one local worker process per running local job, or jobs on a Ray cluster.

    Opening a store reconciles rows whose worker died and (autostart) starts queued local jobs whose device is
    free; pass `autostart=False` to queue without starting workers (tests) and call `ensure_worker()` later.
    """

    def __init__(self, workspace: str | os.PathLike, *, per_device_limit: int | None = None, autostart: bool = True):
        super().__init__(workspace)
        self.autostart = autostart
        self.local = LocalLauncher(self)
        self._cluster: Any = None
        self._last_reconcile = 0.0
        self.cluster_problem: str | None = None  # the last reason a cluster job could not be followed
        if per_device_limit is not None:
            self.set_per_device_limit(per_device_limit)
        self.reconcile()

    @property
    def cluster(self) -> Any:
        if self._cluster is None:
            from recon_core.jobs.cluster import ClusterLauncher  # imports ray only when a cluster is used

            self._cluster = ClusterLauncher(self)
        return self._cluster

    # ---- reads: bring the records up to date, start nothing -----------------------------------------------------
    def _refresh(self, job_id: str | None = None) -> None:
        if time.monotonic() - self._last_reconcile > RECONCILE_EVERY_S:
            self._mark_dead()
        self.sync_cluster(job_id)

    def sync_cluster(self, job_id: str | None = None, force: bool = False) -> None:
        """Copy cluster jobs' progress, logs and (when they end) run folders into this workspace."""
        jobs = [j for j in self.active_jobs(cluster=True) if job_id is None or j.id == job_id]
        for job in jobs:
            try:
                self.cluster.sync(job, force=force)
                self.cluster_problem = None
            except ReconError as exc:  # the cluster is unreachable: the job stays as recorded until it is back
                self.cluster_problem = str(exc)
                log.warning("job %s: %s", job.id, exc)

    def _mark_dead(self) -> list[str]:
        self._last_reconcile = time.monotonic()
        return self.local.mark_dead()

    # ---- submitting and changing jobs -------------------------------------------------------------------------
    def submit(
        self, spec: Any, project: str | None = None, priority: str = "normal", cluster: str | None = None
    ) -> str:
        """Queue a training run (a recon_core.runs.RunSpec) and start it when its device is free (local), or send
        it to a Ray cluster (`cluster`, else $RECON_CLUSTER; 'local' forces this machine). Returns the job id. Bad
        settings and a missing data folder raise ReconError now; the data path is stored absolute."""
        from recon_core.jobs.cluster import cluster_address
        from recon_core.runs import resolve_data_path, validate_spec

        project = _check_project(project)
        spec_dict = _spec_to_dict(spec)
        data = spec_dict.get("data")
        if not data:
            raise ConfigError("submit: the run spec has no data folder")
        spec_dict["data"] = str(resolve_data_path(data).resolve())
        address = cluster_address(cluster)
        validate_spec(spec_dict, device_here=address is None)
        if address is None:
            slot = device_slot(spec_dict.get("device"))
            job_id = self.insert(spec_dict, project, slot, priority)
            self.preempt_background(slot)
            if self.autostart:
                self.kick()
            return job_id
        if priority != "normal":
            raise ConfigError("background priority is for local jobs; the cluster schedules its own")
        job_id = self.insert(spec_dict, project, CLUSTER_SLOT, priority, launcher=address)
        self._send(job_id)
        return job_id

    def _send(self, job_id: str) -> None:
        job = self.peek(job_id)
        try:
            self.cluster.start(job)
        except ReconError as exc:
            self.finish_cluster_job(job_id, "failed", f"could not send the job to the cluster: {exc}", None)
            raise

    def cancel(self, job_id: str) -> Job:
        """Stop a job. Queued (or interrupted) jobs become `cancelled` at once; a running job is asked to stop and
        becomes `cancelled` within a few seconds, after its worker has written a checkpoint (resume continues). On a
        cluster the request reaches the node running it."""
        self._mark_dead()  # a dead worker's job is interrupted, and cancelling that is immediate
        self.request_cancel(job_id)
        job = self.get(job_id)
        if job.on_cluster:
            self.cluster.cancel(job)
        return self.get(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue an interrupted, cancelled or failed job again; it continues from its last checkpoint with the same
        schedule (execute_run(resume=True)). Local jobs go to the back of the queue; cluster jobs are sent again with
        the checkpoint this machine holds."""
        self.queue_again(job_id)
        job = self.get(job_id)
        if job.on_cluster:
            self._send(job_id)
            return self.get(job_id)
        self.preempt_background(job.device_slot)
        if self.autostart:
            self.kick()
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        self._mark_dead()
        job = self.get(job_id)
        super().delete(job_id)
        if job.on_cluster:
            self.cluster.forget(job)
            self.forget_cursor(job_id)

    # ---- keeping the queue moving ----------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Mark `running` jobs whose worker is gone as `interrupted` (never `running` forever), then (autostart)
        start queued local jobs if a device is free. Returns the ids marked interrupted."""
        changed = self._mark_dead()
        if self.autostart:
            self.kick()
        return changed

    def ensure_worker(self) -> list[str]:
        """Reconcile, then start workers for queued jobs whose device is free. Call it on app start / page load:
        after a restart, queued jobs then continue. Returns the ids started now."""
        self._mark_dead()
        return self.kick()

    def kick(self) -> list[str]:
        return self.local.kick()

    def _spawn_worker(self, job_id: str) -> None:  # kept for callers of the earlier single-module store
        self.local.spawn(job_id)


__all__ = ["LOCAL", "JobStore", "device_slot"]
