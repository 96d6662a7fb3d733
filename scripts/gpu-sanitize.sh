#!/usr/bin/env bash
# lmforge's CUDA kernels under NVIDIA's compute-sanitizer, one run on a GPU machine (a third
# visit after scripts/gpu-check.sh and scripts/gpu-speed.sh, from what scripts/gpu-prepare.sh
# put in `.gpu/`): the kernel tests (`lmforge_ops on_cuda`: attention, norms, activations, the
# LM loss, AdamW) under memcheck (out-of-bounds and misaligned accesses, leaks of device memory
# the tests allocate) and the attention tests under racecheck (shared-memory hazards between a
# block's threads: a missing __syncthreads). Prints each tool's error summary; logs under
# $OUT (or /tmp/gpu-sanitize). Each run has a time limit; the whole stays under ~9 minutes.
# The sanitizer needs a machine that lets it at the GPU (the device notes: Firecracker, not
# gVisor); elsewhere it says so and this script reports that.
#
# With a device call: carry [".gpu"], command `bash scripts/gpu-sanitize.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-sanitize}"
mkdir -p "$out"
script=gpu-sanitize.sh
source scripts/gpu-env.sh
section "machine"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer is not on this machine's PATH"; exit 0; }

# One tool over a test filter: the tests' own result line and the sanitizer's summary.
sanitize() {
  local tool="$1" limit="$2" filter="$3" log="$out/$1.log"
  section "$tool: lmforge_ops $filter (limit ${limit}s)"
  timeout "$limit" compute-sanitizer --tool "$tool" --print-limit 20 "$G/lmforge_ops" "$filter" --test-threads 1 \
    >"$log" 2>&1
  local rc=$?
  [ "$rc" -eq 124 ] && echo "over ${limit}s: the summary covers the tests that finished"
  grep -E "^test |test result|ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|Invalid|Race reported|Error:" "$log" | head -60
  echo "exit $rc"
}
sanitize memcheck 300 on_cuda
sanitize racecheck 200 on_cuda::attention
