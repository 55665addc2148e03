#!/usr/bin/env bash
# One command that validates a fresh checkout on a GPU machine in at most 8 minutes:
#
#   bash bench/gpu_check.sh            # from the repository root; needs torch, triton,
#                                      # pybind11, setuptools and nvcc; no package index
#
# 1. builds and installs cbda with the CUDA module (pip install --no-build-isolation --no-deps .),
# 2. runs the GPU tests (pytest -m gpu),
# 3. runs python -m cbda.info --check (every backend against the reference),
# 4. runs the GPU benchmark (bench/bench_gpu.py),
# and writes bench/results/gpu-<device>.json and .md (the benchmark, with the exit status and
# the tail of every step embedded) plus bench/results/gpu-check-<device>.log (everything).
# Each step has its own time limit, and a failing step does not stop the later ones; the exit
# status is 0 only when every step passed.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
T0=$(date +%s)
BUDGET="${CBDA_GPU_CHECK_SECONDS:-480}"
WORK="$(mktemp -d)"
NOTES="$WORK/notes.txt"
LOG="$WORK/log.txt"
: > "$NOTES"
elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(elapsed) )); }

# run NAME LIMIT CMD...: time-limited, logged, status and tail recorded in the notes
run() {
  local name="$1" limit="$2"; shift 2
  local l; l=$(left)
  if [ "$limit" -gt "$l" ]; then limit="$l"; fi
  if [ "$limit" -le 5 ]; then
    echo "== $name: SKIPPED (no time left of the ${BUDGET} s budget)" | tee -a "$NOTES" "$LOG"
    FAILED=1; return
  fi
  echo "== $name (limit ${limit} s, at $(elapsed) s): $*" | tee -a "$LOG"
  local s; s=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$WORK/step.txt" 2>&1
  local rc=$?
  cat "$WORK/step.txt" >> "$LOG"
  local status="ok"; [ $rc -ne 0 ] && status="FAILED (exit $rc$([ $rc -eq 124 ] && echo ', timed out'))" && FAILED=1
  { echo "== $name: $status in $(( $(date +%s) - s )) s"; tail -n 15 "$WORK/step.txt" | sed 's/^/   /'; } >> "$NOTES"
  echo "== $name: $status" | tee -a "$LOG"
}
FAILED=0

JOBS="$(nproc 2>/dev/null || echo 4)"
export CBDA_BUILD_CUDA=1 CBDA_BUILD_JOBS="$JOBS" MAX_JOBS="$JOBS" TRITON_DEFAULT_FP_FUSION=1
run "build" 200 "$PY" -m pip install --no-build-isolation --no-deps --no-index -v .
# the installed package, never the source tree: run from outside the checkout
run "info" 30 bash -c "cd '$WORK' && '$PY' -m cbda.info"
run "pytest -m gpu" 200 bash -c "cd '$ROOT/tests' && '$PY' -m pytest -m gpu -q -p no:cacheprovider --rootdir '$ROOT' -x ."
run "cbda.info --check" 90 bash -c "cd '$WORK' && '$PY' -m cbda.info --check"
run "bench_gpu" 600 "$PY" bench/bench_gpu.py --repeat 5 --round-budget 45 --timeout 150 --notes "$NOTES"
DEV="$("$PY" -c 'import re, torch; print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-") if torch.cuda.is_available() else "no-gpu")' 2>/dev/null || echo unknown)"
mkdir -p bench/results
cp "$LOG" "bench/results/gpu-check-$DEV.log"
cat "$NOTES"
echo "gpu_check: $([ $FAILED -eq 0 ] && echo PASSED || echo FAILED) in $(elapsed) s; results in bench/results/gpu-$DEV.{json,md}"
rm -rf "$WORK"
exit $FAILED
