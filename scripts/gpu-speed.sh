#!/usr/bin/env bash
# Issue 19's GPU speed figures, one run on a machine with an NVIDIA GPU and no Rust toolchain,
# from what `scripts/gpu-prepare.sh` put in `.gpu/` (scripts/gpu-check.sh checks correctness;
# this one only measures). Prints every figure; logs under $OUT (or /tmp/gpu-visit). The
# sections (scripts/gpu-sections.sh) run in this order within GPU_BUDGET seconds (default
# 570); one that no longer fits is skipped by name for a later call:
#
#   gpt2, gpt2-compile        GPT-2 124M (batch 16 × 1024) bf16-mixed: lmforge `bench train`
#                             beside pytorch_gpt_bench.py eager and --compile on the same GPU —
#                             tokens/s, MFU, peak GPU memory, ratios (goals ≥ 1.3× eager, ≥ 1.0×
#                             compile), and `plan`'s predicted peak beside the measured one
#   llama7b, llama7b-torch    llama-7b at sequence 4096, batch 1, activation checkpointing: a
#                             few optimizer steps, with AdamW where plan says it fits this GPU,
#                             else plan's lighter optimizer (Adafactor on an 80 GB H100), and
#                             plan's prediction beside the measured peak; PyTorch the same
#   llama7b-fewer             the same recomputing only the fewest blocks that fit (plan's
#                             prediction scaled by llama7b's measured peak): tokens/s beside
#                             llama7b's
#   llama1b, llama1b-compile  llama-1b (batch 8 × 2048), as GPT-2
#   ncu, ncu-torch            every kernel of one GPT-2 step timed by Nsight Compute (clocks
#                             left alone), summed per kernel name: where the step's time goes,
#                             lmforge's and PyTorch eager's
#
# With a device call: carry [".gpu"], command `bash scripts/gpu-speed.sh`. One visit for both
# issues: scripts/gpu-visit.sh.
exec bash "$(dirname "$0")/gpu-visit.sh" "${GPU_BUDGET:-570}" machine gpt2 gpt2-compile llama7b llama7b-fewer llama7b-torch llama1b llama1b-compile profile ncu ncu-torch
