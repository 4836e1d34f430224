"""A real multi-node Ray cluster on this machine for tests (a helper module, not a test file).

`start_cluster()` runs scripts/ray_cluster.sh: a head node (0 CPUs: it only coordinates) and N worker nodes, each a
separate `ray start`, on 127.0.0.1. `LoopbackCluster.kill_node()` SIGKILLs one worker node (its raylet, agents and
worker processes) so the cluster sees a real node failure; the script's health-check settings make the GCS declare it
dead within ~3 s.

Tests must only talk to loopback, and Ray advertises the machine's own address in places even with
--node-ip-address 127.0.0.1, so the cluster and every driver run inside one network namespace that has only `lo`:
    unshare -n bash -c 'ip link set lo up; python -m pytest tests/test_x.py'
`start_cluster()` refuses to run outside such a namespace (see `in_loopback_namespace`) unless told otherwise.

    @pytest.fixture(scope="module")
    def ray_cluster():
        if not in_loopback_namespace():
            pytest.skip("needs a loopback-only network namespace (unshare -n)")
        with start_cluster(workers=2, cpus_per_worker=1) as cluster:
            yield cluster  # cluster.address, cluster.node_ids(), cluster.kill_node(id), cluster.wait_node_dead(id)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "ray_cluster.sh"


def use_session_auth_token() -> None:
    """Ray token authentication for clusters this process starts, set before anything imports Ray: a process reads
    RAY_AUTH_MODE once, so setting it when the cluster starts was too late for a test process in which an earlier
    test had already imported Ray (the whole suite failed to connect; the cluster tests alone passed). One token per
    process, in a private file, which scripts/ray_cluster.sh then uses instead of making its own."""
    import secrets
    import tempfile

    if os.environ.get("RAY_AUTH_TOKEN_PATH") or os.environ.get("RAY_AUTH_TOKEN"):
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        return
    token = Path(tempfile.mkdtemp(prefix="recon-ray-auth-")) / "auth_token"
    token.write_text(secrets.token_hex(32) + "\n")
    token.chmod(0o600)
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})


def in_loopback_namespace() -> bool:
    """True when this process's network namespace has no interface but `lo`.

    Asks the kernel (if_nameindex, i.e. netlink in *this* namespace). /sys/class/net is not a safe test: after a bare
    `unshare -n` sysfs is still the host's mount and lists the host's interfaces."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair(lo: int = 20000, hi: int = 30000) -> int:
    """A port P with P and P+1 free (GCS and Ray Client server), outside Ray's worker-port range (10002-19999) and the
    kernel's ephemeral range (32768+), so nothing else grabs it while the cluster starts."""
    start = lo + (os.getpid() * 7919) % (hi - lo)
    for i in range(0, hi - lo, 2):
        port = lo + (start - lo + i) % (hi - lo - 1)
        if _port_free(port) and _port_free(port + 1):
            return port
    raise RuntimeError("no free port pair for a Ray cluster")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # state ppid pgrp session ...
    return fields[0], int(fields[3])


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes in session `sid`. Zombies count as dead: PID 1 in a container may never reap."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st and st[0] != "Z" and st[1] == sid:
                pids.append(int(name))
    return pids


@dataclass
class RayNode:
    node_id: str  # hex
    is_head: bool
    alive: bool
    node_manager_port: int
    raylet_pid: int | None  # None once the node is dead
    cpus: float
    gpus: float


class LoopbackCluster:
    def __init__(self, port: int, temp_dir: Path, python: str):
        self.port = port
        self.address = f"127.0.0.1:{port}"  # ray.init(address=...)
        self.client_address = f"ray://127.0.0.1:{port + 1}"  # Ray Client
        self.temp_dir = temp_dir
        self._python = python
        self._gcs = None

    # --- inspection -------------------------------------------------------------------------------------------------
    def _gcs_client(self):
        if self._gcs is None:
            import ray._raylet

            self._gcs = ray._raylet.GcsClient(address=self.address)
        return self._gcs

    def nodes(self) -> list[RayNode]:
        """All nodes the GCS knows, head first, alive and dead."""
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        raylets = _raylet_pids()
        out = []
        for info in self._gcs_client().get_all_node_info(timeout=10).values():
            node_id = info.node_id.hex()
            alive = info.state == GcsNodeInfo.GcsNodeState.ALIVE
            out.append(
                RayNode(
                    node_id=node_id,
                    is_head=info.is_head_node,
                    alive=alive,
                    node_manager_port=info.node_manager_port,
                    raylet_pid=raylets.get(node_id),
                    cpus=info.resources_total.get("CPU", 0.0),
                    gpus=info.resources_total.get("GPU", 0.0),
                )
            )
        return sorted(out, key=lambda n: (not n.is_head, not n.alive, n.node_manager_port))

    def worker_nodes(self) -> list[RayNode]:
        """The alive worker (non-head) nodes."""
        return [n for n in self.nodes() if n.alive and not n.is_head]

    def node_ids(self) -> list[str]:
        """Hex ids of the alive worker nodes (where tasks run)."""
        return [n.node_id for n in self.worker_nodes()]

    def head_node_id(self) -> str:
        return next(n.node_id for n in self.nodes() if n.is_head)

    # --- failure injection ------------------------------------------------------------------------------------------
    def kill_node(self, node_id: str) -> float:
        """SIGKILL a worker node: its raylet and every process of its session (agents, Ray workers running tasks).

        Returns time.monotonic() of the kill. The GCS notices when its health checks fail (~3 s with the script's
        settings); `wait_node_dead` waits for that."""
        node = next((n for n in self.nodes() if n.node_id == node_id), None)
        if node is None or node.is_head:
            raise ValueError(f"{node_id} is not a worker node of this cluster")
        if node.raylet_pid is None:
            raise ValueError(f"node {node_id} has no running raylet")
        st = _stat(node.raylet_pid)
        own = {int(p.read_text().split()[0]) for p in (self.temp_dir / "nodes").glob("worker-*.sid")}
        if st is None or st[1] not in own:
            raise RuntimeError(f"raylet {node.raylet_pid} of {node_id} is not in a session this cluster started")
        sid = st[1]
        t_kill = time.monotonic()
        for _ in range(5):  # a worker forked while we were killing has to go too
            pids = _session_pids(sid)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)
        return t_kill

    def wait_node_dead(self, node_id: str, timeout: float = 60.0) -> float:
        """Block until the GCS marks `node_id` dead; returns time.monotonic() when seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            node = next((n for n in self.nodes() if n.node_id == node_id), None)
            if node is not None and not node.alive:
                return time.monotonic()
            time.sleep(0.1)
        raise TimeoutError(f"node {node_id} not declared dead within {timeout} s")

    # --- lifecycle --------------------------------------------------------------------------------------------------
    def _script(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHON": self._python, "RECON_RAY_TMP": str(self.temp_dir)}
        return subprocess.run(
            ["bash", str(SCRIPT), *args, "--port", str(self.port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def stop(self) -> None:
        self._gcs = None
        self._script("stop", timeout=60)

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _raylet_pids() -> dict[str, int]:
    """node id (hex) -> pid of the raylet serving it, from raylet command lines (`--node_id=<hex>`)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"/raylet"):
            continue
        st = _stat(int(name))
        if st is None or st[0] == "Z":
            continue
        for arg in argv:
            if arg.startswith(b"--node_id="):
                out[arg.split(b"=", 1)[1].decode()] = int(name)
    return out


def start_cluster(
    workers: int = 2,
    cpus_per_worker: int = 1,
    gpus_per_worker: int = 0,
    *,
    port: int | None = None,
    object_store_mb: int = 128,
    timeout: float = 180,
    require_loopback_namespace: bool = True,
) -> LoopbackCluster:
    """Start head + `workers` worker nodes (separate `ray start` processes) and wait until all are alive."""
    if not os.environ.get("RAY_AUTH_TOKEN_PATH"):  # use_session_auth_token(), before this process imports Ray
        raise RuntimeError("RAY_AUTH_TOKEN_PATH is not set: the cluster and this process must share a token")
    if require_loopback_namespace and not in_loopback_namespace():
        raise RuntimeError(
            "refusing to start a Ray cluster outside a loopback-only network namespace; run under "
            "`unshare -n bash -c 'ip link set lo up; ...'` (as root)"
        )
    port = port or free_port_pair()
    cluster = LoopbackCluster(port, Path(f"/tmp/recon-ray-{port}"), sys.executable)
    res = cluster._script(
        "start",
        "--workers",
        str(workers),
        "--cpus-per-worker",
        str(cpus_per_worker),
        "--gpus-per-worker",
        str(gpus_per_worker),
        "--object-store-mb",
        str(object_store_mb),
        "--timeout",
        str(int(timeout)),
        timeout=timeout + 60,
    )
    if res.returncode != 0:
        cluster.stop()
        raise RuntimeError(f"Ray cluster did not start (rc {res.returncode}):\n{res.stdout}\n{res.stderr[-4000:]}")
    return cluster
