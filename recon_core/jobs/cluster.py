"""The cluster launcher: jobs on a Ray cluster (a GPU server, or a few), with no shared filesystem.

Set `RECON_CLUSTER` (or the Train page's "Run on", or `jobs submit --cluster`) to a Ray address: `ray://host:10001`
(Ray Client, the app's machine outside the cluster), `host:6379` (the app's machine is a cluster node), or `auto`.

How a job travels (design: notes/cluster.md):

    submit    the app zips the job's data folder (and a warm-start bundle or a checkpoint to resume from) and creates
              the job's *supervisor*: a detached Ray actor on the head node that holds those bytes, the job's
              progress, log lines and latest checkpoint. The supervisor, not the app, owns the training task, so
              the job goes on when the app's machine goes away.
    run       a Ray task asks for what the preset needs (1 GPU for gpu/paper presets, else CPUs), unzips the data
              into a temporary folder on its node, runs the same JobRunner as a local worker and reports to the
              supervisor: progress, logs, and each new checkpoint (bytes).
    node dies Ray runs the task again on another node (max_retries); it starts from the supervisor's checkpoint, so
              at most one checkpoint interval is lost.
    follow    every read of the job records (app page, CLI) copies the supervisor's new progress and log lines into
              jobs.sqlite; when the job ends, the run folder's files (model.pt, metrics.json, ...) are written into
              the project's run folder exactly as a local run leaves them, and the supervisor is removed.
    cancel    a flag the task polls every CANCEL_POLL_S (running), or `ray.cancel` of the pending task (queued).

The training code reaches the nodes through Ray's `runtime_env` (`py_modules`: this `recon_core` package); the
nodes need the project's Python environment (requirements.txt), nothing else.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from recon_core.errors import ConfigError, DataError, ReconError
from recon_core.jobs.records import CHECKPOINT_FILE, LAUNCH_GRACE_S, TERMINAL_STATES, Job, JobRecords

log = logging.getLogger(__name__)
# Ray's C++ failure handler prints a "*** SIGTERM received" stack dump when the app is stopped normally (Ctrl+C on
# run.sh, a service stop). Ray reads this when it is first imported, and every import of Ray here follows this
# module's import. A user's own setting wins.
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

CLUSTER_ENV = "RECON_CLUSTER"
NAMESPACE = "recon-studio"
HEAD_RESOURCE = "node:__internal_head__"  # Ray gives the head node this resource: supervisors live there
MAX_NODE_RETRIES = 3  # a job survives this many lost nodes
MAX_DATA_BYTES = 2 * 1024**3  # a job's zipped data folder (the object store holds it while the job lives)
GPU_PRESETS = ("gpu", "paper")
SYNC_EVERY_S = 1.0  # reads copy a cluster job's progress at most this often
# Checkpoints go to the head at most at this average rate (MB/s; $RECON_CLUSTER_SHIP_MBPS): a tiny or `cpu` job ships
# every checkpoint, a `gpu` DRAEM (292 MB with Adam's state) about every 30 s, `paper` (1.2 GB) about every 2 min,
# so that a fast GPU writing a checkpoint every few seconds does not fill the network.
SHIP_MBPS = 10.0
CONNECT_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------------------------


def cluster_address(setting: str | None = None) -> str | None:
    """The cluster a new job goes to: `setting`, else $RECON_CLUSTER; None (or '', 'local') = run it here."""
    text = (setting if setting is not None else os.environ.get(CLUSTER_ENV, "")).strip()
    if text.lower() in ("", "local", "none"):
        return None
    if text == "auto" or text.startswith("ray://") or ":" in text:
        return text
    raise ConfigError(f"cluster {text!r}: use ray://host:port (Ray Client), host:port (a node's GCS), auto or local")


def job_resources(spec_dict: dict[str, Any]) -> dict[str, float]:
    """What a job asks the cluster for: one GPU for the GPU presets or a cuda device, else CPUs ($RECON_CLUSTER_CPUS,
    default 1: the training thread count follows it)."""
    preset = str(spec_dict.get("preset") or "")
    device = str(spec_dict.get("device") or "auto")
    cpus = float(os.environ.get("RECON_CLUSTER_CPUS", "1"))
    if preset.startswith(GPU_PRESETS) or device.startswith("cuda"):
        return {"num_cpus": cpus, "num_gpus": 1.0}
    return {"num_cpus": cpus, "num_gpus": 0.0}


def actor_name(job_id: str) -> str:
    return f"recon-job-{job_id}"


# ---------------------------------------------------------------------------------------------------------------
# what travels: the data folder as a zip, run folder files as bytes
# ---------------------------------------------------------------------------------------------------------------


def pack_folder(folder: Path, limit: int = MAX_DATA_BYTES) -> bytes:
    """The folder's files as zip bytes (images are already compressed: stored, not deflated)."""
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            total += path.stat().st_size
            if total > limit:
                raise DataError(f"{folder}: more than {limit / 1024**3:.0f} GB of data; too much to send with a job")
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def unpack_folder(data: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for member in archive.namelist():  # our own zip, but never write outside the folder
            target = (folder / member).resolve()
            if folder.resolve() not in target.parents:
                raise DataError(f"job data: member {member!r} escapes its folder")
        archive.extractall(folder)


@dataclass
class JobInputs:
    """Everything a cluster job reads, as bytes: it must not read the project's folders by path."""

    spec: dict[str, Any]  # paths made relative to the data folder; the node fills in its own folders
    data_zip: bytes
    textures_zip: bytes  # the synthetic-defect textures (bundled ones, or the spec's texture folder)
    init_bytes: bytes | None = None  # warm-start bundle
    checkpoint: bytes | None = None  # resume from here

    @property
    def size(self) -> int:
        return len(self.data_zip) + len(self.textures_zip) + len(self.init_bytes or b"") + len(self.checkpoint or b"")


def spec_for_cluster(spec_dict: dict[str, Any]) -> JobInputs:
    """The job's inputs: its data folder, textures and warm-start bundle as bytes, paths in the spec relative."""
    from recon_core.synth import bundled_textures_dir

    spec = json.loads(json.dumps(spec_dict))
    data = Path(spec["data"])
    for key in ("labelled_defect_files", "exclude_paths"):
        relative = []
        for item in spec.get(key) or []:
            path = Path(item)
            if path.is_absolute():
                try:
                    path = path.resolve().relative_to(data.resolve())
                except ValueError as exc:
                    raise ConfigError(
                        f"{key}: {item} is outside the data folder {data}; a cluster job only gets that folder"
                    ) from exc
            relative.append(path.as_posix())
        spec[key] = relative
    synth = spec.get("synth") or {}
    texture_dir = synth.get("texture_dir")
    textures = Path(texture_dir) if synth.get("texture_source") == "folder" and texture_dir else bundled_textures_dir()
    if not textures.is_dir():
        raise DataError(f"synth.texture_dir: {textures} is not a folder")
    init_bytes = None
    if spec.get("init_from"):
        try:
            init_bytes = Path(spec["init_from"]).read_bytes()
        except OSError as exc:
            raise DataError(f"init_from {spec['init_from']}: cannot read it ({exc.strerror})") from exc
    return JobInputs(spec, pack_folder(data), pack_folder(textures), init_bytes)


def run_folder_files(run_dir: Path, with_checkpoint: bool) -> dict[str, bytes]:
    """The run folder's files (relative path -> bytes), the checkpoint only when asked."""
    files = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and (with_checkpoint or path.name != CHECKPOINT_FILE) and not path.name.endswith(".tmp"):
            files[path.relative_to(run_dir).as_posix()] = path.read_bytes()
    return files


def write_run_files(files: dict[str, bytes], run_dir: Path) -> None:
    """Each file written whole (temporary name, then rename), never outside the run folder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    root = run_dir.resolve()
    for name, data in files.items():
        target = (run_dir / name).resolve()
        if root not in target.parents:
            raise DataError(f"cluster job result: {name!r} escapes the run folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(target.name + ".part")
        temporary.write_bytes(data)
        temporary.replace(target)


# ---------------------------------------------------------------------------------------------------------------
# on the cluster: the supervisor actor (head node) and the training task (any node with the resources)
# ---------------------------------------------------------------------------------------------------------------


class Supervisor:
    """One job's state on the cluster. Detached (outlives the app that created it), on the head node, threaded:
    the training task reports to it while the app polls it."""

    def __init__(self, job_id: str, inputs: JobInputs, resources: dict[str, float], attempts_before: int = 0):
        self.job_id, self.inputs_ = job_id, inputs
        self.checkpoint, self.checkpoint_iteration = inputs.checkpoint, None
        self.resources = resources
        self.state, self.error, self.result = "queued", None, None
        self.node: str | None = None
        self.attempts = attempts_before  # a resumed job's attempts go on counting
        self.first_attempt = attempts_before + 1
        self.last_iteration: int | None = None
        self.events: list[dict[str, Any]] = []  # progress and log events, in order; the app copies them by index
        self.files: dict[str, bytes] | None = None
        self.cancel_requested = False
        self.lock = threading.Lock()
        self.ref: Any = None

    def start(self) -> None:
        import ray

        task = ray.remote(train_on_node).options(
            **self.resources, max_retries=MAX_NODE_RETRIES, retry_exceptions=False, name=f"train {self.job_id}"
        )
        self.ref = task.remote(ray.get_runtime_context().current_actor, self.job_id)
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        """The task's end as Ray sees it: an error here means every attempt was lost (nodes died) or it was
        cancelled before it ran."""
        import ray

        try:
            ray.get(self.ref)
        except Exception as exc:  # TaskCancelledError, WorkerCrashedError, NodeDiedError, ...
            with self.lock:
                if self.state in TERMINAL_STATES:
                    return
                if self.cancel_requested:
                    self.state, self.error = "cancelled", "cancelled before it started on a node"
                else:
                    self.state = "interrupted"
                    self.error = (
                        f"the cluster lost the job after {self.attempts} attempt(s) ({type(exc).__name__}); resume "
                        "to continue from its last checkpoint"
                    )
                self._event("log", level="WARNING", message=self.error)
        with self.lock:
            if self.state not in TERMINAL_STATES:  # the task returned without reporting an end
                self.state, self.error = "interrupted", "the training task ended without reporting; resume to continue"

    def _event(self, kind: str, **payload: Any) -> None:
        self.events.append({"kind": kind, "t": time.time(), **payload})

    # -- called by the training task ------------------------------------------------------------------------
    def inputs(self) -> JobInputs:
        """What a (new) attempt starts from: the job's inputs with the latest checkpoint."""
        with self.lock:
            return dataclasses.replace(self.inputs_, checkpoint=self.checkpoint)

    def attach(self, node: str) -> int:
        with self.lock:
            self.attempts += 1
            previous, self.node = self.node, node
            self.state = "running"
            if self.attempts > self.first_attempt:
                where = (
                    f"from the checkpoint at iteration {self.checkpoint_iteration}"
                    if self.checkpoint
                    else "from the start (no checkpoint yet)"
                )
                self._event(
                    "log",
                    level="WARNING",
                    message=f"attempt {self.attempts} on node {node}: the previous node ({previous}) was lost at "
                    f"iteration {self.last_iteration}; continuing {where}",
                )
            self._event("attach", node=node, attempt=self.attempts)
            return self.attempts

    def heartbeat(self, attempt: int) -> tuple[bool, bool]:
        """(still this attempt's job, cancel requested)."""
        with self.lock:
            return attempt == self.attempts and self.state == "running", self.cancel_requested

    def progress(self, attempt: int, fields: dict[str, Any]) -> None:
        with self.lock:
            if attempt == self.attempts:
                self.last_iteration = fields.get("iteration")
                self._event("progress", attempt=attempt, fields=fields)

    def log(self, level: str, message: str) -> None:
        with self.lock:
            self._event("log", level=level, message=message)

    def put_checkpoint(self, attempt: int, data: bytes, iteration: int | None) -> None:
        with self.lock:
            if attempt == self.attempts:
                self.checkpoint, self.checkpoint_iteration = data, iteration

    def finish(self, attempt: int, state: str, error: str | None, result: dict | None, files: dict[str, bytes]) -> bool:
        with self.lock:
            if attempt != self.attempts or self.state in TERMINAL_STATES:
                return False
            self.state, self.error, self.result, self.files = state, error, result, files
            if CHECKPOINT_FILE in files:
                self.checkpoint = files[CHECKPOINT_FILE]
            return True

    # -- called by the app -------------------------------------------------------------------------------------
    def poll(self, since: int) -> dict[str, Any]:
        with self.lock:
            return {
                "state": self.state,
                "node": self.node,
                "attempts": self.attempts,
                "error": self.error,
                "result": self.result,
                "events": self.events[since:],
                "checkpoint_iteration": self.checkpoint_iteration,
            }

    def take_files(self) -> dict[str, bytes]:
        """The finished run folder (with the last checkpoint when the job did not succeed: resume needs it)."""
        with self.lock:
            files = dict(self.files or {})
            if self.state != "succeeded" and self.checkpoint is not None:
                files[CHECKPOINT_FILE] = self.checkpoint
            return files

    def cancel(self) -> str:
        import ray

        with self.lock:
            self.cancel_requested = True
            state = self.state
        if state == "queued" and self.ref is not None:
            with contextlib.suppress(Exception):
                ray.cancel(self.ref)  # not on a node yet: Ray drops the pending task
        return state


class RayChannel:
    """A cluster job's channel (worker.JobChannel): calls to its supervisor.

    Never a blocking `ray.get` or `ray.wait` in the task's main thread: Ray lends the CPUs of a task blocked there
    to other tasks, so a reporting job would let a second job onto its node (seen: three 1-CPU jobs on two 1-CPU
    nodes; `ray.wait(timeout=0)` polling lends them too, measured in notes/cluster.md). Reports are
    fire-and-forget; answers are awaited on a helper thread, whose blocking calls Ray does not count."""

    def __init__(self, supervisor: Any, run_dir: Path):
        self.supervisor, self.run_dir = supervisor, run_dir
        self.attempt = 0
        self.cancel = False
        self.last_iteration: int | None = None
        self._checkpoint_mtime: int | None = None
        self._next_ship = 0.0  # time.monotonic() before which no checkpoint is shipped (the rate limit)

    def _call(self, method: str, *args: Any) -> Any:
        """Call and wait for the answer, without lending this task's CPUs."""
        import ray

        ref = getattr(self.supervisor, method).remote(*args)
        return _answer_thread().submit(ray.get, ref).result()

    def _send(self, method: str, *args: Any) -> None:
        getattr(self.supervisor, method).remote(*args)  # calls from one caller arrive in order

    def attach(self) -> int:
        import ray

        node = ray.get_runtime_context().get_node_id()[:8]
        self.attempt = self._call("attach", f"{socket.gethostname()}/{node}")
        return self.attempt

    def heartbeat(self) -> bool:
        owned, self.cancel = self._call("heartbeat", self.attempt)
        return owned

    def flags(self) -> tuple[bool, bool]:
        return self.cancel, False

    def progress(self, fields: dict[str, Any]) -> None:
        self.last_iteration = fields.get("iteration")
        self._send("progress", self.attempt, fields)

    def ship_checkpoint(self) -> None:
        """After a progress report: a checkpoint newer than the last one shipped goes to the supervisor."""
        path = self.run_dir / CHECKPOINT_FILE
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._checkpoint_mtime or time.monotonic() < self._next_ship:
            return
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            self._checkpoint_mtime = mtime
            rate = float(os.environ.get("RECON_CLUSTER_SHIP_MBPS", SHIP_MBPS)) * 1e6
            self._next_ship = time.monotonic() + len(data) / rate
            self._send("put_checkpoint", self.attempt, data, self.last_iteration)

    def log(self, level: str, message: str) -> None:
        self._send("log", level, message)

    def finish(self, state: str, error: str | None, result: dict | None) -> bool:
        files = run_folder_files(self.run_dir, with_checkpoint=state != "succeeded")
        return bool(self._call("finish", self.attempt, state, error, result, files))

    def requeue(self) -> bool:  # the cluster's scheduler has no background jobs to pause
        return False


@cache
def _answer_thread() -> concurrent.futures.ThreadPoolExecutor:
    """Where a training task waits for its supervisor's answers (see RayChannel)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recon-cluster-answers")


def train_on_node(supervisor: Any, job_id: str) -> int:
    """The Ray task: run the job on this node in a temporary folder, from the supervisor's inputs."""
    import ray

    from recon_core.jobs.worker import JobRunner, reporting

    inputs: JobInputs = RayChannel(supervisor, Path())._call("inputs")
    checkpoint = inputs.checkpoint

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    os.environ["RECON_THREADS"] = str(max(1, int(cpus)))  # train on the cores the cluster gave this job
    with tempfile.TemporaryDirectory(prefix="recon-job-") as tmp:
        root = Path(tmp)
        unpack_folder(inputs.data_zip, root / "data")
        unpack_folder(inputs.textures_zip, root / "textures")
        spec = dict(inputs.spec, data=str(root / "data"))
        spec["synth"] = dict(spec.get("synth") or {})
        if spec["synth"].get("texture_source") == "folder":
            spec["synth"]["texture_dir"] = str(root / "textures")
        os.environ["RECON_TEXTURES_DIR"] = str(root / "textures")  # the bundled textures, as sent
        if inputs.init_bytes is not None:
            (root / "init.pt").write_bytes(inputs.init_bytes)
            spec["init_from"] = str(root / "init.pt")
        run_dir = root / "run"
        run_dir.mkdir()
        if checkpoint is not None:
            (run_dir / CHECKPOINT_FILE).write_bytes(checkpoint)
        channel = RayChannel(supervisor, run_dir)
        channel.attach()
        channel._checkpoint_mtime = (run_dir / CHECKPOINT_FILE).stat().st_mtime_ns if checkpoint else None
        runner = JobRunner(channel, job_id, on_progress=channel.ship_checkpoint)
        with reporting(runner, channel):
            log.info("job %s on node %s: %s", job_id, socket.gethostname(), "resuming" if checkpoint else "starting")
            return runner.run(spec, run_dir, resume=checkpoint is not None)


@cache
def _supervisor_actor() -> Any:
    import ray

    return ray.remote(Supervisor)


# ---------------------------------------------------------------------------------------------------------------
# on the app's machine: the launcher
# ---------------------------------------------------------------------------------------------------------------


def connect(address: str) -> None:
    """Connect this process to the cluster at `address` (once; a second, different address is refused)."""
    import ray

    if ray.is_initialized():
        current = getattr(connect, "address", None)
        if current not in (None, address):
            raise ConfigError(f"this process follows the cluster at {current}; it cannot also use {address}")
        return
    _check_reachable(address)
    package = str(Path(__file__).resolve().parents[1])  # recon_core, shipped to the nodes with every job
    try:
        ray.init(
            address=address,
            namespace=NAMESPACE,
            runtime_env={"py_modules": [package], "env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}},
            logging_level=logging.WARNING,
            log_to_driver=False,
            configure_logging=False,
        )
    except Exception as exc:  # ConnectionError, TimeoutError, RuntimeError from Ray
        if _about_auth(exc):
            raise ReconError(
                f"the cluster at {address} refused this app's Ray token: start the app with RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN_PATH set to the cluster's token file (`bash run.sh cluster start` prints both)"
            ) from exc
        raise ReconError(f"cannot reach the cluster at {address}: {exc}") from exc
    connect.address = address  # type: ignore[attr-defined]


def _about_auth(exc: BaseException) -> bool:
    """Whether Ray refused the connection for its token (the AuthenticationError sits in the exception's chain)."""
    seen: BaseException | None = exc
    while seen is not None:
        if "InvalidAuthToken" in str(seen) or "Authentication" in type(seen).__name__:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """A quick TCP connect first: Ray itself retries an unreachable address for a long time."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise ReconError(f"cannot reach the cluster at {address} ({reason}); is it started?") from exc


def cluster_resources(address: str) -> dict[str, Any]:
    """Nodes alive and the cluster's total / free CPUs and GPUs, for the Train page and `jobs cluster`."""
    import ray

    connect(address)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total, free = ray.cluster_resources(), ray.available_resources()
    return {
        "address": address,
        "nodes": len(nodes),
        "workers": sum(1 for n in nodes if HEAD_RESOURCE not in n.get("Resources", {})),
        "cpus": total.get("CPU", 0.0),
        "free_cpus": free.get("CPU", 0.0),
        "gpus": total.get("GPU", 0.0),
        "free_gpus": free.get("GPU", 0.0),
    }


class ClusterLauncher:
    """Sends jobs to a Ray cluster and copies what they report into the job records."""

    def __init__(self, records: JobRecords):
        self.records = records
        self._last_sync: dict[str, float] = {}

    def start(self, job: Job) -> None:
        """Send a queued job to its cluster: data, spec, and the checkpoint to resume from (if any)."""
        import ray

        connect(job.launcher)
        inputs = spec_for_cluster(job.spec)
        checkpoint_path = job.run_dir / CHECKPOINT_FILE
        if job.resume and checkpoint_path.is_file():
            inputs.checkpoint = checkpoint_path.read_bytes()
        self._remove_supervisor(job.id)  # a resumed job's earlier supervisor
        self.records.forget_cursor(job.id)  # the new supervisor's events count from 0
        supervisor = (
            _supervisor_actor()
            .options(
                name=actor_name(job.id),
                namespace=NAMESPACE,
                lifetime="detached",
                num_cpus=0,
                resources={HEAD_RESOURCE: 0.001},
                max_concurrency=32,
            )
            .remote(job.id, inputs, job_resources(job.spec), job.attempts)
        )
        ray.get(supervisor.start.remote())
        self.records.log(job.id, "INFO", f"sent to the cluster at {job.launcher} ({inputs.size / 1e6:.1f} MB)")

    def _supervisor(self, job_id: str) -> Any:
        import ray

        try:
            return ray.get_actor(actor_name(job_id), namespace=NAMESPACE)
        except ValueError:
            return None

    def _remove_supervisor(self, job_id: str) -> None:
        import ray

        actor = self._supervisor(job_id)
        if actor is not None:
            ray.kill(actor, no_restart=True)

    def cancel(self, job: Job) -> None:
        import ray

        connect(job.launcher)
        actor = self._supervisor(job.id)
        if actor is not None:
            ray.get(actor.cancel.remote())

    def sync(self, job: Job, force: bool = False) -> None:
        """Copy the job's new progress and log lines into the records; when it has ended, its run folder's files
        into the project's run folder and its final state into the records."""
        import ray

        now = time.monotonic()
        if not force and now - self._last_sync.get(job.id, 0.0) < SYNC_EVERY_S:
            return
        self._last_sync[job.id] = now
        connect(job.launcher)
        actor = self._supervisor(job.id)
        if actor is None:
            being_sent = job.state == "queued" and time.time() - job.queued_at < LAUNCH_GRACE_S
            if job.is_active and not being_sent:
                self.records.mark_cluster_lost(
                    job.id,
                    "the cluster no longer knows this job (its head node restarted?); resume sends it again from "
                    "the last checkpoint this machine holds",
                )
            return
        cursor = self.records.cluster_cursor(job.id)
        report = ray.get(actor.poll.remote(cursor))
        self.records.apply_cluster_report(job.id, cursor, report)
        if report["state"] in TERMINAL_STATES:
            files = ray.get(actor.take_files.remote())
            write_run_files(files, job.run_dir)
            result = dict(report["result"] or {})
            if "bundle_path" in result:  # the node's temporary path -> this machine's run folder
                result["bundle_path"] = str(job.run_dir / "model.pt")
            self.records.finish_cluster_job(job.id, report["state"], report["error"], result or None)
            ray.kill(actor, no_restart=True)

    def forget(self, job: Job) -> None:
        with contextlib.suppress(Exception):
            connect(job.launcher)
            self._remove_supervisor(job.id)
