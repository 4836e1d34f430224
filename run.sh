#!/usr/bin/env bash
# Recon Studio: one entry point for newcomers and CI.
#   bash run.sh app    set up (first time only) and start the app on http://localhost:8501 with a demo project
#   bash run.sh test   set up (first time only) and run lint + the whole test suite (what CI runs)
#   bash run.sh setup  only create/refresh the Python environment
#   bash run.sh cli …  run the command-line interface (python -m recon_core …) inside the environment
#   bash run.sh cluster start|status|stop   a local Ray cluster (head + worker nodes) for cluster jobs
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

python_bin="${PYTHON:-python3}"
req_hash="$(sha256sum requirements.txt | cut -c1-12)"
# The environment lives outside the clone so that fresh clones (and CI) reuse it; keyed by requirements.
venv="${RECON_VENV:-$HOME/.cache/recon-studio/venv-$req_hash}"

setup_env() {
  if [ ! -f "$venv/.complete" ]; then
    echo "[setup] creating Python environment in $venv (first run only; torch is large, this takes a few minutes)"
    rm -rf "$venv"
    "$python_bin" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    "$venv/bin/python" -m pip install --quiet -r requirements.txt
    touch "$venv/.complete"
  fi
  export PATH="$venv/bin:$PATH"
}

ensure_chromium() {
  if command -v chromium >/dev/null 2>&1; then return 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing Debian's chromium for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "[setup] could not install chromium; browser tests will fail and say how to get it"
  else
    echo "[setup] chromium not found: install it (sudo apt-get install chromium) for the browser tests"
  fi
}

cmd="${1:-app}"
shift || true
case "$cmd" in
  setup)
    setup_env ;;
  app)
    setup_env
    # first start: the demo project plus a short background DRAEM run on it (2-3 min on 2 idle CPU cores, 10+ on a
    # busy machine); it runs at background priority, so the user's own runs pause it and go first
    python -m recon_core demo --workspace "${RECON_WORKSPACE:-$here/workspace}" --quiet \
      --train "${RECON_DEMO_ITERATIONS:-300}" --preset cpu-fast
    exec python -m streamlit run app.py --server.address "${RECON_ADDRESS:-127.0.0.1}" \
      --server.port "${RECON_PORT:-8501}" --server.headless true --browser.gatherUsageStats false "$@" ;;
  test)
    setup_env
    ensure_chromium
    echo "[test] ruff"
    ruff check .
    echo "[test] pytest"
    # The suite runs in a network namespace that has only loopback (as root): the Ray cluster tests start a real
    # head + 2 worker nodes, and Ray advertises the machine's own address even when told 127.0.0.1; inside the
    # namespace no test traffic can leave the machine. Elsewhere the cluster tests skip (and fail under CI=true).
    if [ "$(id -u)" = "0" ] && command -v unshare >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 \
        && unshare -n true 2>/dev/null; then
      exec unshare -n bash -c 'ip link set lo up && exec python -m pytest -q -p no:cacheprovider "$@"' pytest "$@"
    fi
    exec python -m pytest -q -p no:cacheprovider "$@" ;;
  cli)
    setup_env
    exec python -m recon_core "$@" ;;
  cluster)
    setup_env
    exec bash scripts/ray_cluster.sh "$@" ;;
  *)
    echo "usage: bash run.sh [app|test|setup|cli ...|cluster ...]" >&2; exit 2 ;;
esac
