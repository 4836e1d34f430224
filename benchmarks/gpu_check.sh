#!/usr/bin/env bash
# One-command device check (issue 15): run from the repo root on a machine with a CUDA GPU.
#   bash benchmarks/gpu_check.sh                 all parts: tests, memory, speed (< 10 min), accuracy (hours, resumable)
#   bash benchmarks/gpu_check.sh --speed-only    the first three parts only (what a short device loan can do)
#   bash benchmarks/gpu_check.sh --cpu-smoke     every part on the CPU with tiny settings, into a temp folder
#   bash benchmarks/gpu_check.sh --dry-run       print the commands, run nothing
# Parts and outputs (benchmarks/results/):
#   1. pytest's `gpu`-marked tests (CUDA training with workers + bf16, ONNX export of a GPU-trained bundle, the memory
#      estimate against torch.cuda.max_memory_allocated)                              -> gpu_check_pytest.txt
#   2. memory estimate vs measured peak                                                -> gpu_memory_calibration.json
#   3. training speed of every DRAEM and DSR preset at batch 8 through train.fit: steps/s, img/s, ms/img, share of
#      the loop's time waiting for data; paper DRAEM also with 0/2/4 data workers    -> gpu_speed.jsonl
#   4. 10-min training of `gpu` DRAEM and `paper` DSR (DSR's GPU preset) on the four shared categories, 3 seeds,
#      through `recon_core bench`                                                      -> gpu_bench.{csv,json,md}
#      Resumable: a (model, category, seed) with a row in gpu_bench.csv (no error) is skipped; rerun after a stop.
# Environment: the project venv (`bash run.sh setup`, called here too); GPU_CHECK_MINUTES (10), GPU_CHECK_SEEDS
# ("0 1 2"), GPU_CHECK_ITERS (speed iterations per measurement, 50).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode="full"
case "${1:-}" in
  --dry-run) mode="dry" ;;
  --cpu-smoke) mode="smoke" ;;
  --speed-only) mode="speed" ;;
  "") ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--speed-only|--cpu-smoke|--dry-run]" >&2; exit 2 ;;
esac

if [ "$mode" != "dry" ]; then
  bash run.sh setup >/dev/null
  venv="${RECON_VENV:-$HOME/.cache/recon-studio/venv-$(sha256sum requirements.txt | cut -c1-12)}"
  export PATH="$venv/bin:$PATH"
fi
py="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

minutes="${GPU_CHECK_MINUTES:-10}"
seeds="${GPU_CHECK_SEEDS:-0 1 2}"
iters="${GPU_CHECK_ITERS:-50}"
categories="mvtec_ad/bottle mvtec3d_ad/tire magnetic_tile/magnetic_tile aitex/fabric01"
models="draem:gpu dsr:paper"
device="cuda"
out="benchmarks/results"
budget=(--minutes "$minutes")
draem_presets="paper gpu cpu cpu-fast"
dsr_presets="paper cpu"
batch=8
if [ "$mode" = "smoke" ]; then  # the same code paths, tiny and on the CPU
  device="cpu"
  out="$(mktemp -d /tmp/gpu_check_smoke.XXXXXX)"
  seeds="0"
  iters=1
  batch=2
  categories="mvtec_ad/bottle"
  models="draem:cpu-fast dsr:cpu"
  budget=(--iterations 2)
  draem_presets="cpu-fast"
  dsr_presets="cpu"
fi

run() {  # print, then run unless --dry-run
  echo "+ $*" >&2
  if [ "$mode" != "dry" ]; then "$@"; fi
}

machine() {
  "$py" - <<'EOF'
import torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}, torch {torch.__version__}")
else:
    print(f"no CUDA GPU (torch {torch.__version__})")
EOF
}

if [ "$mode" != "dry" ]; then
  machine | tee "$out/gpu_check_machine.txt"
  if [ "$mode" != "smoke" ] && ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU here; use --cpu-smoke to check the script's CPU paths" >&2
    exit 1
  fi
fi

echo "== 1. GPU-marked tests" >&2
if [ "$mode" = "dry" ]; then
  run "$py" -m pytest -q -m gpu -p no:cacheprovider
else
  set +e
  run "$py" -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tee "$out/gpu_check_pytest.txt"
  set -e
fi

echo "== 2. memory estimate vs measured peak" >&2
if [ "$mode" = "smoke" ]; then
  run "$py" benchmarks/memory_calibration.py --device cpu --json "$out/gpu_memory_calibration.json" --quick
else
  run "$py" benchmarks/memory_calibration.py --device "$device" --json "$out/gpu_memory_calibration.json"
fi

echo "== 3. training speed at batch $batch ($iters timed iterations each)" >&2
speed=(--batch "$batch" --iterations "$iters" --device "$device" --json "$out/gpu_speed.jsonl" --tag gpu_check)
run "$py" benchmarks/train_speed.py --model draem --presets $draem_presets --workers -1 "${speed[@]}"
run "$py" benchmarks/train_speed.py --model dsr --presets $dsr_presets --workers -1 "${speed[@]}"
if [ "$mode" = "smoke" ]; then
  run "$py" benchmarks/train_speed.py --model draem --presets cpu-fast --workers 1 "${speed[@]}"
else
  run "$py" benchmarks/train_speed.py --model draem --presets paper --workers 0 2 4 "${speed[@]}"
fi

if [ "$mode" = "speed" ]; then
  echo "speed part done; results in $out" >&2
  exit 0
fi

echo "== 4. ${budget[*]} training, 20 goods, seeds $seeds (resumable)" >&2
done_before() {  # model preset category seed -> exit 0 when gpu_bench.csv already has that row without an error
  "$py" - "$out/gpu_bench.csv" "$@" <<'EOF'
import csv, sys
path, model, preset, category, seed = sys.argv[1:]
try:
    rows = list(csv.DictReader(open(path)))
except FileNotFoundError:
    sys.exit(1)
hit = any(r["model"] == model and r["preset"] == preset and r["category"] == category and r["seed"] == seed
          and not r.get("error") for r in rows)
sys.exit(0 if hit else 1)
EOF
}
pass=1
[ "$mode" = "smoke" ] && pass=2  # the smoke test runs the loop twice: the second pass must skip everything
for _ in $(seq "$pass"); do
  for seed in $seeds; do
    for category in $categories; do
      for spec in $models; do
        model="${spec%%:*}"
        preset="${spec##*:}"
        if [ "$mode" != "dry" ] && done_before "$model" "$preset" "$category" "$seed"; then
          echo "skip $model $preset $category seed $seed: already in $out/gpu_bench.csv" >&2
          continue
        fi
        run "$py" -m recon_core bench --models "$model" --preset "$preset" --categories "$category" --seeds "$seed" \
          --shots 20 "${budget[@]}" --device "$device" --out "$out" --name gpu_bench --tag gpu_check
      done
    done
  done
done
echo "gpu_check done; results in $out" >&2
