# Sourced by the timed benchmark scripts: one way to run `recon_core bench` under the shared lock.
# Every timed run holds /tmp/recon-bench.lock so two timed runs never overlap (2-core machine: timings would lie).
py="${PYTHON:-python}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # idle OpenMP threads sleep (big win on a shared 2-core CPU)
locked_bench() {  # any `recon_core bench` options; 2 threads and benchmarks/results are the defaults here
  flock /tmp/recon-bench.lock "$py" -m recon_core bench --threads 2 --out benchmarks/results "$@"
}
