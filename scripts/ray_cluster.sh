#!/usr/bin/env bash
# A real local Ray cluster: one head node (0 CPUs, 0 GPUs: it only coordinates) and N worker nodes, each a separate
# `ray start` on this machine, all on one IP (127.0.0.1 by default). For tests (tests/ray_cluster.py) and for users.
#
#   bash scripts/ray_cluster.sh start [--workers N] [--cpus-per-worker C] [--gpus-per-worker G] [--port P]
#                                     [--node-ip IP] [--client-port P] [--object-store-mb M] [--timeout S]
#   bash scripts/ray_cluster.sh status [--port P]
#   bash scripts/ray_cluster.sh stop   [--port P]
#
# `start` prints the address to use, `ray.init(address="127.0.0.1:P")` (and, for Ray Client, ray://IP:CLIENT_PORT).
# Everything lives in a per-cluster temp dir, /tmp/recon-ray-<port> (RECON_RAY_TMP overrides; keep it short: Ray puts
# AF_UNIX sockets under it and their paths must stay below 107 bytes). Each node is started in its own session
# (setsid); its session id is kept in <temp dir>/nodes/<head|worker-K>.sid and every process of that node (raylet,
# agents, workers; Ray only changes process *groups*) keeps it. `stop` kills exactly those sessions, never other Ray
# clusters on the machine (unlike `ray stop`); tests/ray_cluster.py kills one worker node the same way.
#
# Ray is run as "$PYTHON -m ray.scripts.scripts" (PYTHON defaults to python3 on PATH, i.e. the project's venv when it
# is active), so the CLI and the readiness check use the same interpreter; RAY="ray" uses the `ray` on PATH instead.
# Node-death detection is made fast (~3 s instead of Ray's default ~15-30 s) by the health-check system config below;
# RECON_RAY_SYSTEM_CONFIG replaces it (a JSON object, passed to the head's --system-config).
#
# Network: Ray advertises this machine's address in places even with --node-ip-address 127.0.0.1. To keep all traffic
# on loopback (tests), run the cluster and its drivers inside one network namespace that has only `lo`, e.g. as root:
#   unshare -n bash -c 'ip link set lo up; bash scripts/ray_cluster.sh start && python my_driver.py; bash scripts/ray_cluster.sh stop'
set -euo pipefail

cmd="${1:-}"
[ $# -gt 0 ] && shift
workers=2
cpus=1
gpus=0
port="${RECON_RAY_PORT:-6379}"
node_ip="${RECON_RAY_NODE_IP:-127.0.0.1}"
client_port=""
object_store_mb="${RECON_RAY_OBJECT_STORE_MB:-512}"
timeout=90
while [ $# -gt 0 ]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --cpus-per-worker) cpus="$2"; shift 2 ;;
    --gpus-per-worker) gpus="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --node-ip) node_ip="$2"; shift 2 ;;
    --client-port) client_port="$2"; shift 2 ;;
    --object-store-mb) object_store_mb="$2"; shift 2 ;;
    --timeout) timeout="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "ray_cluster.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
# Ray Client server: the head always starts one when grpc is installed (it cannot be switched off) and its default
# port, 10001, would clash between two clusters, so it gets the GCS port + 1 unless told otherwise.
[ -n "$client_port" ] || client_port=$((port + 1))

tmp="${RECON_RAY_TMP:-/tmp/recon-ray-$port}"
address="$node_ip:$port"
PYTHON="${PYTHON:-python3}"
if [ -n "${RAY:-}" ]; then
  read -r -a ray_cmd <<<"$RAY"
else
  ray_cmd=("$PYTHON" -m ray.scripts.scripts)
fi

# Fast node-death detection: the GCS pings each raylet every second and declares the node dead after 3 failed pings
# (a SIGKILLed raylet refuses connections at once, so each ping fails immediately). 1 s ping timeout, 3 misses: a
# raylet has to be unresponsive for ~3 s on a busy 2-core machine before it is wrongly declared dead.
fast_health='{"health_check_initial_delay_ms": 1000, "health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}'
system_config="${RECON_RAY_SYSTEM_CONFIG:-$fast_health}"

export RAY_USAGE_STATS_ENABLED=0
# Token authentication (Ray >= 2.52; on by default for new local clusters from 2.59, for all from 2.61). Every node
# and every client must agree on the mode and the token, or a worker node's `ray start` is refused ("InvalidAuthToken",
# seen with 2.60 when the mode was left to Ray's default). So the mode is set explicitly; the token is the file named
# by RAY_AUTH_TOKEN_PATH when set (made if missing), else one per cluster in $tmp/auth_token. `start` prints the two
# variables a client (the app, `jobs`) must have in its environment *before* it imports Ray (read once per process).
# Older Rays ignore both.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$tmp/auth_token}"

# Live (non-zombie) pids of this cluster, or of one node: the processes in the sessions recorded under $tmp/nodes.
# (Ray's processes rename themselves, ray::IDLE etc., and overwrite their /proc environ, so neither command line nor
# environment can tell two clusters apart; the session id can.)
pids_py='
import glob, os, sys
tmp, node = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
sids = set()
for f in glob.glob(os.path.join(tmp, "nodes", (node or "*") + ".sid")):
    try:
        sids.add(int(open(f).read().split()[0]))
    except (OSError, ValueError, IndexError):
        pass
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
    if fields[0] != "Z" and int(fields[3]) in sids:
        print(pid)
'
cluster_pids() { python3 -c "$pids_py" "$tmp" "${1:-}"; }

# Runs one `ray start` in a new session and records the session id as $tmp/nodes/<name>.sid. On a loaded machine
# `ray start` sometimes gives up ("The current node timed out during startup": its raylet did not register within
# Ray's fixed 30 s); then that node's processes are killed and it is started once more.
launch() {
  local name="$1" attempt pids; shift
  for attempt in 1 2; do
    setsid -w bash -c 'echo $$ >"$0"; exec "$@"' "$tmp/nodes/$name.sid" "$@" >>"$tmp/start-$name.log" 2>&1 && return 0
    echo "ray_cluster.sh: starting $name failed (attempt $attempt; log: $tmp/start-$name.log)" >&2
    pids="$(cluster_pids "$name")"
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  done
  return 1
}

# GCS query in one python process: wait until `want` nodes are ALIVE, or just print them (want=0).
nodes_py='
import sys, time
import ray._raylet as r
from ray.core.generated.gcs_pb2 import GcsNodeInfo
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
alive = []
while True:
    try:
        infos = r.GcsClient(address=address).get_all_node_info(timeout=5).values()
        alive = [i for i in infos if i.state == GcsNodeInfo.GcsNodeState.ALIVE]
    except Exception as e:  # GCS not up yet
        alive, err = [], e
    if len(alive) >= want or time.monotonic() > deadline:
        break
    time.sleep(0.3)
for i in sorted(alive, key=lambda i: (not i.is_head_node, i.node_manager_port)):
    cpu = i.resources_total.get("CPU", 0); gpu = i.resources_total.get("GPU", 0)
    kind = "head  " if i.is_head_node else "worker"
    print(f"  {kind} {i.node_id.hex()} {i.node_manager_address}:{i.node_manager_port} CPU={cpu:g} GPU={gpu:g}")
sys.exit(0 if len(alive) >= want else 1)
'

do_stop() {
  local pids
  pids="$(cluster_pids)"
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for _ in $(seq 1 15); do
      sleep 0.2
      pids="$(cluster_pids)"
      [ -z "$pids" ] && break
    done
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null || true
  fi
  if [ -f "$tmp/.recon-ray" ]; then rm -rf "$tmp"; fi
}

case "$cmd" in
  start)
    if [ -n "$(cluster_pids)" ]; then
      echo "ray_cluster.sh: a cluster is already running in $tmp (bash $0 stop --port $port first)" >&2
      exit 1
    fi
    # A stale dir from a crashed run (ours: it has the marker file) is removed; a foreign one is refused.
    if [ -e "$tmp" ]; then
      if [ -f "$tmp/.recon-ray" ]; then rm -rf "$tmp"; else
        echo "ray_cluster.sh: $tmp exists and is not ours; set RECON_RAY_TMP or remove it" >&2; exit 1; fi
    fi
    mkdir -p "$tmp/nodes" && touch "$tmp/.recon-ray"
    [ -s "$RAY_AUTH_TOKEN_PATH" ] \
      || (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$RAY_AUTH_TOKEN_PATH")
    osm=$((object_store_mb * 1024 * 1024))
    t0=$EPOCHREALTIME
    common=(--node-ip-address "$node_ip" --temp-dir "$tmp" --object-store-memory "$osm" --disable-usage-stats
            --dashboard-agent-listen-port 0)
    launch head "${ray_cmd[@]}" start --head --port "$port" --num-cpus 0 --num-gpus 0 \
      --include-dashboard=false --ray-client-server-port "$client_port" --system-config="$system_config" \
      "${common[@]}" \
      || { tail -n 20 "$tmp/start-head.log" >&2; [ -n "${RECON_RAY_KEEP_FAILED:-}" ] || do_stop; exit 1; }
    # Worker nodes start one after the other: they share the head's session dir, and two `ray start` at once pick the
    # same socket/log names there (raylet.1), so one raylet fails. One log monitor (the head's) serves all nodes.
    failed=0
    for k in $(seq 1 "$workers"); do
      launch "worker-$k" "${ray_cmd[@]}" start --address "$address" --num-cpus "$cpus" --num-gpus "$gpus" \
        --include-log-monitor=false "${common[@]}" \
        || { failed=1; tail -n 20 "$tmp/start-worker-$k.log" >&2; break; }
    done
    if [ "$failed" = 1 ] || ! "$PYTHON" -c "$nodes_py" "$address" $((workers + 1)) "$timeout" >"$tmp/nodes.txt"; then
      echo "ray_cluster.sh: cluster did not come up with $((workers + 1)) nodes; logs in $tmp" >&2
      cat "$tmp/nodes.txt" >&2 || true
      [ -n "${RECON_RAY_KEEP_FAILED:-}" ] || do_stop
      exit 1
    fi
    echo "$address" >"$tmp/address"
    echo "Ray cluster up in $(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $t0}") s: head + $workers worker node(s) ($cpus CPU, $gpus GPU each); temp dir $tmp"
    cat "$tmp/nodes.txt"
    echo "connect:  ray.init(address=\"$address\")   or Ray Client: ray.init(\"ray://$node_ip:$client_port\")"
    echo "RAY_ADDRESS=$address"
    echo "RAY_AUTH_MODE=token"
    echo "RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"
    ;;
  stop)
    do_stop
    echo "Ray cluster in $tmp stopped"
    ;;
  status)
    if [ -z "$(cluster_pids head)" ]; then echo "no Ray cluster running in $tmp"; exit 1; fi
    echo "Ray cluster at $address (temp dir $tmp); alive nodes:"
    "$PYTHON" -c "$nodes_py" "$address" 0 5
    ;;
  *)
    sed -n '2,22p' "$0"; exit 2 ;;
esac
