#!/usr/bin/env bash
# The GPU verification of issue 18, in one run on a machine with an NVIDIA GPU and no Rust
# toolchain: everything it runs was built by `scripts/gpu-prepare.sh` into `.gpu/`. Prints every
# figure; writes the logs under $OUT (or /tmp/gpu-visit). The sections (scripts/gpu-sections.sh)
# run in this order within GPU_BUDGET seconds (default 570); one that no longer fits is skipped
# by name for a later call:
#
#   machine, kernels   the GPU; lmforge's CUDA kernels (attention, norms, GELU, SwiGLU, RoPE, the
#                      LM loss against the reference ops in f32 and bf16; AdamW, the gradient norm)
#   parity             the fixtures' logits (≤ 1e-5) and gradients (≤ 1e-4) on CUDA, and the
#                      gradient-presence test (every parameter, every architecture, fp32 / bf16)
#   quickstart         the quickstart recipe in fp32 and bf16-mixed: final validation bits/byte
#                      and their ratio (goal: bf16-mixed within 1%)
#   gpt2               `bench train --preset gpt2-124m` bf16-mixed beside PyTorch's eager step
#   determinism        the same run twice (losses to the bit), stopped and resumed on the GPU,
#                      resumed on the CPU (checkpoints are device-neutral)
#   nccl, gpt2-fp32    NCCL's collectives on one GPU; the GPT-2 comparison in fp32
#
# With a device call: carry [".gpu"], command `bash scripts/gpu-check.sh`. One visit for both
# issues: scripts/gpu-visit.sh.
exec bash "$(dirname "$0")/gpu-visit.sh" "${GPU_BUDGET:-570}" machine kernels parity quickstart gpt2 determinism nccl gpt2-fp32
