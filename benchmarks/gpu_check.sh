#!/usr/bin/env bash
# The prepared GPU check of issue 25: the Pallas kernels' tests compiled for the
# GPU, then the GPU benchmark (pallas vs patches vs ConvLocal, training step),
# then a sweep of the kernels' block sizes. Run from the repository root on the
# lent GPU machine, in its image's own python3 (jax with CUDA, flax, optax,
# pytest are installed there; nothing is installed by this script):
#
#     bash benchmarks/gpu_check.sh            # device tool: run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
#
# Writes under $OUT (default /tmp/gpu_check): env.txt, tests.log, bench.log,
# gpu_bench.json, tune.log, gpu_tune.json. Each stage has its own time limit
# (tests 80 + 60 s, benchmark 200 s, sweep 100 s: under 8 minutes together); a stage
# that fails or runs out of time does not stop the next. GPU_CHECK_QUICK=1 runs
# the same stages on tiny cases (a dry run on CPU, in interpret mode).
set -uo pipefail
OUT="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# XLA takes GPU memory as it needs it: the benchmark's temp-memory numbers come
# from XLA's own analysis, and a preallocated pool would only hide other faults.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
start=$SECONDS
PALLAS_TESTS=(tests/test_pallas.py)
FUNCTIONAL_TESTS=(tests/test_functional.py)
QUICK=()
if [[ -n "${GPU_CHECK_QUICK:-}" ]]; then
  PALLAS_TESTS=(tests/test_pallas.py -k "lower or empty")
  FUNCTIONAL_TESTS=(tests/test_functional.py -k "output_shape")
  QUICK=(--quick)
fi
PYTEST=(-q -p no:cacheprovider -o addopts="" -W default::DeprecationWarning -W default::FutureWarning -rfE --durations=5)

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  "$PY" -c "import jax, flax, sys; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, jax.devices())" 2>&1
  git log -1 --format='commit %H %s' 2>/dev/null
} | tee "$OUT/env.txt"

echo "== tests: the Pallas kernels compiled by Triton =="
timeout 80 "$PY" -m pytest "${PALLAS_TESTS[@]}" "${PYTEST[@]}" 2>&1 | tee "$OUT/tests.log" | tail -15
echo "pallas tests: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/tests.log"

echo "== tests: the functional suite =="
timeout 60 "$PY" -m pytest "${FUNCTIONAL_TESTS[@]}" "${PYTEST[@]}" 2>&1 | tee -a "$OUT/tests.log" | tail -8
echo "functional tests: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/tests.log"

echo "== benchmark =="
timeout 200 "$PY" -m benchmarks.gpu_run "${QUICK[@]}" --budget-s 150 --json "$OUT/gpu_bench.json" 2>&1 \
  | tee "$OUT/bench.log" | grep -v "^  " | tail -20
echo "benchmark: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"

echo "== block-size sweep =="
timeout 100 "$PY" -m benchmarks.gpu_tune "${QUICK[@]}" --budget-s 80 --json "$OUT/gpu_tune.json" 2>&1 \
  | tee "$OUT/tune.log" | grep -v "^  " | tail -20
echo "sweep: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
