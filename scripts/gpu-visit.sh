#!/usr/bin/env bash
# One device visit for issues 18 and 19: the sections of scripts/gpu-check.sh and gpu-speed.sh
# (scripts/gpu-sections.sh lists them) in order of what matters most — correctness, then the
# headline figures, then the rest — within one command's time. A visit is 15 minutes of device
# time in all (the machine's start included) and one command at most 10, so the default budget
# is 560 s: what does not fit is skipped, and the closing table names it for a second call on
# the still-warm machine.
#
#   bash scripts/gpu-visit.sh                  # everything, in priority order, 560 s
#   bash scripts/gpu-visit.sh 200 ncu nccl     # a second call: those sections, 200 s
#   bash scripts/gpu-visit.sh llama7b          # one section, the default budget
#
# With a device call: carry [".gpu"] (scripts/gpu-prepare.sh makes it here), timeout_s a little
# over the budget. Logs under $OUT (or /tmp/gpu-visit); sections.tsv there has each section's
# seconds, to size the next visit.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-visit}"
mkdir -p "$out"
script=gpu-visit.sh
source scripts/gpu-env.sh
source scripts/gpu-sections.sh
budget=560
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
  budget="$1"
  shift
fi
if [ $# -eq 0 ]; then
  set -- machine kernels parity gpt2 quickstart llama7b determinism llama7b-fewer profile gpt2-compile \
    llama1b nccl llama7b-torch llama1b-compile gpt2-fp32 ncu ncu-torch
fi
run_sections "$budget" "$@"
