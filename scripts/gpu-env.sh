# Sourced by scripts/gpu-check.sh, gpu-speed.sh, gpu-visit.sh and gpu-sanitize.sh on the GPU machine (the
# caller has cd'd to the checkout and set `script`): unpacks what scripts/gpu-prepare.sh put in
# .gpu/ into $G, puts the CUDA 13 user-space libraries and NCCL on LD_LIBRARY_PATH, and defines
# the helpers they use.
# When the script started: its time budget (scripts/gpu-sections.sh) counts the unpacking too.
SCRIPT_START=$(date +%s)
[ -f .gpu/lmforge.xz ] || { echo "$script: no .gpu/lmforge.xz: run scripts/gpu-prepare.sh first (and carry .gpu)" >&2; exit 1; }
# The executables travel xz-compressed; unpack them beside the fixtures, outside the checkout.
G=/tmp/lmforge-gpu
rm -rf "$G" && mkdir -p "$G" && cp -r .gpu/fixtures .gpu/pytorch_gpt_bench.py "$G/"
for f in .gpu/*.xz; do
  name=$(basename "$f" .xz)
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$f" "$G/$name"
  chmod +x "$G/$name"
done

# CUDA 13 user-space libraries (cuBLAS, cuRAND, NVRTC, cudart) and NCCL: PyTorch's wheels, else a toolkit.
libdirs=$(python3 - <<'PY'
import glob, os, site
found = set()
roots = site.getsitepackages() + [site.getusersitepackages(), "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"]
for root in roots:
    for name in ("libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13", "libcudart.so.13", "libnccl.so.2"):
        for hit in glob.glob(os.path.join(root, "**", name), recursive=True):
            found.add(os.path.dirname(hit))
print(":".join(sorted(found)))
PY
)
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

section() { printf '\n==== %s ====\n' "$*"; }
gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
# Samples the GPU's memory every 100 ms into FILE (the highest value seen: the whole process's
# use, allocator caches included, as PyTorch's reserved memory rather than its allocated) until
# `kill $!`; start it in the background: `sample_peak FILE &`.
sample_peak() {
  local peak=0 m
  while :; do m=$(gpu_mem); [ "$m" -gt "$peak" ] && peak=$m && echo "$peak" >"$1"; sleep 0.1; done
}
