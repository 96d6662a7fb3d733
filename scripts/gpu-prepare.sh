#!/usr/bin/env bash
# Builds, on this (CPU) machine, everything `scripts/gpu-check.sh` runs on a GPU machine that has
# no Rust toolchain, into `.gpu/` (git-ignored; about 40 MB, under the 64 MiB a device call
# carries): the CUDA release binary and the parity, gradient-presence, NCCL and CUDA-kernel test
# executables built
# with CUDA, each stripped and xz-compressed (each is ~75 MB stripped, mostly candle's kernels;
# ~10 MB compressed), the reference fixtures they read, and PyTorch's bench script.
#
#   scripts/gpu-prepare.sh     # then, on the GPU machine: scripts/gpu-check.sh
#
# Needs scripts/install-cuda.sh's CUDA 13.0 (it is run here) and ../shared beside the checkout.
# The build uses its own target dir (target/cuda), so the CPU build's artefacts stay as they are.
set -euo pipefail
cd "$(dirname "$0")/.."
source <(scripts/install-cuda.sh --env)
export CARGO_TARGET_DIR=target/cuda
cargo build --release -p lmforge-cli --features cuda
# The test executables' names and paths, from cargo's JSON messages: those named in argv.
list_tests='
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"].replace("-", "_")
        if name in sys.argv[1:]:
            print(name, m["executable"])
'
# lmforge's parity, presence and NCCL tests and lmforge-ops' unit tests (module on_cuda: its
# CUDA kernels against the reference ops), in one cargo invocation: one feature set, the
# binary's, so candle's kernels (~5 minutes of nvcc on two cores) are built once. (lmforge-ops'
# tests built alone resolve other features and build them again.) `--lib` also builds lmforge's
# unit tests, which are not packed.
packed=(parity presence nccl lmforge_ops)
tests=$(cargo test --release -p lmforge -p lmforge-ops --features lmforge/cuda,lmforge-ops/cuda \
  --test parity --test presence --test nccl --lib --no-run --message-format=json |
  python3 -c "$list_tests" "${packed[@]}")
[ "$(wc -l <<<"$tests")" -eq "${#packed[@]}" ] ||
  { echo "gpu-prepare.sh: expected the test executables ${packed[*]}, got: $tests" >&2; exit 1; }
rm -rf .gpu
mkdir -p .gpu
pack() { strip -o ".gpu/$1" "$2" && xz -T2 -9 ".gpu/$1"; }
pack lmforge "$CARGO_TARGET_DIR/release/lmforge"
while read -r name exe; do
  pack "$name" "$exe"
done <<<"$tests"
# The fixtures the device-aware tests read (the optimizer / schedule ones run on the CPU there
# too); not the pretrained MiniLM under ../shared/data, which gpu-check.sh skips.
cp -r ../shared/fixtures .gpu/fixtures
cp ../shared/bench/pytorch_gpt_bench.py .gpu/
du -sh .gpu/* | sort -h
total=$(du -sm .gpu | cut -f1)
echo "gpu-prepare.sh: .gpu is ${total} MB (a device call carries 64 MiB in all)"
[ "$total" -lt 64 ] || { echo "gpu-prepare.sh: .gpu is too large to carry" >&2; exit 1; }
