#!/usr/bin/env bash
# Installs what `cargo build --features lmforge-cli/cuda` needs on a Debian machine WITHOUT a GPU
# or a CUDA installation (the CI machine, a laptop): NVIDIA's CUDA 13.0 compiler, headers and
# user-space libraries from PyPI, unpacked into one folder, plus link stubs for the driver's
# libcuda.so.1 (no wheel has it; the GPU machine's driver provides the real one at run time)
# and NCCL's libnccl.so.2 (loaded from the GPU machine's NCCL at run time).
# CUDA 13.0 matches the target GPUs' driver (580.x). Idempotent; prints the environment to
# build with, which `source <(scripts/install-cuda.sh --env)` applies to the current shell.
#
#   scripts/install-cuda.sh            # install (once) and print the build environment
#   scripts/install-cuda.sh --env      # the same, only the `export` lines on stdout
#   LMFORGE_CUDA_DIR=/opt/cuda13 scripts/install-cuda.sh   # another folder
#
# Needs python3 with pip (for the wheels) and a C compiler (for the stub). See README "GPUs".
set -euo pipefail
dir="${LMFORGE_CUDA_DIR:-$HOME/.cache/lmforge/cuda-13.0}"
env_only=0
[ "${1:-}" = "--env" ] && env_only=1
say() { if [ "$env_only" = 1 ]; then echo "install-cuda.sh: $*" >&2; else echo "install-cuda.sh: $*"; fi; }

# One CUDA release's pieces (13.0): the compiler (nvcc, cicc, ptxas, crt headers), the runtime
# headers, CCCL (thrust / cub / libcu++), and the libraries candle links: cuBLAS (+Lt), cuRAND,
# NVRTC, cudart.
wheels=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.0.35"
  "nvidia-cuda-nvrtc==13.0.88"
)
root="$dir/nvidia/cu13"
stamp="$dir/.installed"
want="$(printf '%s\n' "${wheels[@]}")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing CUDA 13.0 from PyPI into $dir (about 1 GB)"
  mkdir -p "$dir"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$dir" "${wheels[@]}" >&2
  [ -x "$root/bin/nvcc" ] || { echo "install-cuda.sh: no nvcc under $root/bin after installing" >&2; exit 1; }
  # The linker wants unversioned names (-lcublas); the wheels ship only the sonames.
  for so in "$root"/lib/lib*.so.*; do
    base="${so##*/}"
    name="${base%%.so.*}.so"
    [ -e "$root/lib/$name" ] || ln -sf "$base" "$root/lib/$name"
  done
  # libcuda.so.1 is the driver's. A stub with that soname, exporting every driver function
  # cudarc declares, lets the binary link here; it then loads the real driver on a GPU machine.
  # (CUDA's own toolkit ships lib64/stubs/libcuda.so for the same purpose; the wheels do not.)
  decls="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | tail -1 || true)"
  mkdir -p "$root/lib/stubs"
  stub_c="$root/lib/stubs/cuda_stub.c"
  {
    echo "/* link stub for libcuda.so.1, written by scripts/install-cuda.sh */"
    if [ -n "$decls" ]; then
      grep -rhoE '\bfn cu[A-Za-z0-9_]+\(' "$decls" | sed 's/^fn //; s/($//' | sort -u | sed 's/.*/int &(void) { return 999; }/'
    else
      # cudarc's sources are not unpacked yet (no cargo fetch before this script): the driver
      # API names from the headers the runtime wheel ships.
      grep -hoE '\bCUresult CUDAAPI cu[A-Za-z0-9_]+' "$root/include/cuda.h" | awk '{print $3}' | sort -u |
        sed 's/.*/int &(void) { return 999; }/'
    fi
  } >"$stub_c"
  # cuda.h renames versioned entry points (cuCtxCreate -> cuCtxCreate_v4, ...); export both.
  grep -hoE '#define (cu[A-Za-z0-9_]+) +(cu[A-Za-z0-9_]+)' "$root/include/cuda.h" | awk '{print $3}' | sort -u |
    sed 's/.*/int &(void) { return 999; }/' >>"$stub_c"
  sort -u -o "$stub_c" "$stub_c"
  ${CC:-cc} -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so.1" "$stub_c"
  ln -sf libcuda.so.1 "$root/lib/stubs/libcuda.so"
  echo "$want" >"$stamp"
fi
# libnccl.so.2 (NCCL, for multi-GPU collectives) is linked but not called while building: a
# stub with its soname stands in, like libcuda's; the GPU machine's NCCL (PyTorch's
# nvidia-nccl wheel, or a system install) is loaded at run time.
if [ ! -f "$root/lib/stubs/libnccl.so.2" ]; then
  nccl_decls="$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-0.19.*/src/nccl/sys 2>/dev/null | tail -1 || true)"
  nccl_c="$root/lib/stubs/nccl_stub.c"
  mkdir -p "$root/lib/stubs"
  {
    echo "/* link stub for libnccl.so.2, written by scripts/install-cuda.sh */"
    if [ -n "$nccl_decls" ]; then
      grep -rhoE '\bfn nccl[A-Za-z0-9_]+\(' "$nccl_decls" | sed 's/^fn //; s/($//'
    else
      # cudarc is not unpacked yet: the calls lmforge makes, and their neighbours.
      printf '%s\n' ncclGetUniqueId ncclCommInitRank ncclCommInitAll ncclCommAbort ncclCommDestroy \
        ncclCommFinalize ncclCommCount ncclCommCuDevice ncclCommUserRank ncclCommGetAsyncError \
        ncclGetErrorString ncclGetLastError ncclGetVersion ncclAllReduce ncclReduceScatter ncclAllGather \
        ncclBroadcast ncclBcast ncclReduce ncclSend ncclRecv ncclGroupStart ncclGroupEnd
    fi
  } | sort -u | sed 's/^nccl.*/int &(void) { return 999; }/' >"$nccl_c"
  ${CC:-cc} -shared -fPIC -Wl,-soname,libnccl.so.2 -o "$root/lib/stubs/libnccl.so.2" "$nccl_c"
  ln -sf libnccl.so.2 "$root/lib/stubs/libnccl.so"
fi
"$root/bin/nvcc" --version | tail -2 >&2
# CUDAFORGE_THREADS: candle's kernel build (cudaforge) runs nvcc on half the cores unless told.
exports="export CUDA_ROOT=\"$root\" CUDA_PATH=\"$root\" CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS=\"\${CUDAFORGE_THREADS:-$(nproc)}\"
export PATH=\"$root/bin:\$PATH\"
export LIBRARY_PATH=\"$root/lib:$root/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}\""
if [ "$env_only" = 1 ]; then
  echo "$exports"
else
  say "CUDA 13.0 for building is in $root. Build the CUDA binary with:"
  echo "$exports" | sed 's/^/  /'
  echo "  cargo build --release -p lmforge-cli --features cuda --target-dir target/cuda"
fi
