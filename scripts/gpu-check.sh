#!/usr/bin/env bash
# The GPU verification, in one run on a machine with an NVIDIA GPU and no Rust toolchain
# (issue 18): everything it runs was built by `scripts/gpu-prepare.sh` into `.gpu/`. Prints every
# figure; writes the logs under $OUT (or /tmp/gpu-check). About 5 minutes on an H200.
#
#   1. the parity tests on CUDA (fixture logits ≤ 1e-5, gradients ≤ 1e-4 relative) and the
#      gradient-presence test (every parameter of every architecture, fp32 and bf16-mixed), and
#      lmforge's CUDA kernels (attention, norms, GELU, SwiGLU, RoPE against the reference ops
#      in f32 and bf16, attention's bits twice; AdamW and the gradient norm against the CPU),
#      and NCCL (a 1-process communicator, its three collectives);
#   2. the quickstart recipe on the GPU in fp32 and in bf16-mixed: final validation bits/byte
#      of each and their ratio (goal: bf16-mixed within 1%);
#   3. determinism: the same short run twice (losses to the bit), a run stopped and resumed
#      on the GPU (exact), and one resumed on the CPU (checkpoints are device-neutral);
#   4. `lmforge bench train --preset gpt2-124m` in bf16-mixed (and fp32) beside PyTorch's
#      eager bf16 step on the same GPU: tokens/s, MFU, peak GPU memory of each.
#
# With a device call: carry [".gpu"], command `bash scripts/gpu-check.sh`.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-check}"
mkdir -p "$out"
script=gpu-check.sh
source scripts/gpu-env.sh
section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "libraries: $libdirs"
ldd "$G/lmforge" | grep -E "cuda|cublas|curand|nvrtc|nccl|not found" | sed 's/^\s*/  /'
# Peak GPU memory of a command above what was in use before.
with_peak() {
  local log="$1"; shift
  local base; base=$(gpu_mem)
  sample_peak "$log.peak" &
  local sampler=$!
  "$@"
  local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  echo "peak GPU memory: $(( $(cat "$log.peak" 2>/dev/null || echo "$base") - base )) MiB above the $base MiB in use before"
  return $rc
}

section "1. parity and gradient presence on CUDA"
export LMFORGE_FIXTURES="$G/fixtures"
LMFORGE_TEST_DEVICE=cuda "$G/parity" --test-threads 1 --skip minilm 2>&1 | tee "$out/parity.log" | grep -E "^test |test result|panicked|error"
LMFORGE_TEST_DEVICE=cuda "$G/presence" --test-threads 1 2>&1 | tee "$out/presence.log" | grep -E "^test |test result|panicked|error"
# lmforge's CUDA kernels: the norms against the reference ops (f32, bf16), AdamW against the CPU.
"$G/lmforge_ops" on_cuda --test-threads 1 2>&1 | tee "$out/kernels.log" | grep -E "^test |test result|panicked|error"
# NCCL (issue 24): a 1-process communicator and its three collectives on the GPU.
"$G/nccl" --test-threads 1 2>&1 | tee "$out/nccl.log" | grep -E "^test |test result|panicked|error"

section "2. quickstart on the GPU: fp32 and bf16-mixed"
for p in fp32 bf16-mixed; do
  start=$(date +%s.%N)
  "$G/lmforge" quickstart --run-dir "/tmp/q-$p" --set train.device=cuda --set "train.precision=$p" \
    >"$out/quickstart-$p.log" 2>&1
  echo "$p: exit $?, $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s wall"
  grep -E "val|tokens/s|bits" "$out/quickstart-$p.log" | tail -4 | sed 's/^/  /'
done
python3 - "/tmp/q-fp32" "/tmp/q-bf16-mixed" <<'EOF'
import json, sys
def last_val(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
    return [r for r in rows if r.get("split") == "val"][-1]
a, b = last_val(sys.argv[1]), last_val(sys.argv[2])
key = "bits_per_byte" if "bits_per_byte" in a else "loss"
print(f"final validation {key}: fp32 {a[key]:.4f}, bf16-mixed {b[key]:.4f}, ratio {b[key] / a[key]:.4f} (goal within 1%)")
EOF

section "3. determinism and resume on the GPU"
q=(--config configs/quickstart.toml --set train.device=cuda --set train.max_steps=200 --set train.checkpoint_every=100)
"$G/lmforge" train "${q[@]}" --run-dir /tmp/d-a >"$out/det-a.log" 2>&1
"$G/lmforge" train "${q[@]}" --run-dir /tmp/d-b >"$out/det-b.log" 2>&1
"$G/lmforge" train "${q[@]}" --run-dir /tmp/d-split --stop-after 100 >"$out/det-split.log" 2>&1
"$G/lmforge" train --resume /tmp/d-split >>"$out/det-split.log" 2>&1
"$G/lmforge" train "${q[@]}" --run-dir /tmp/d-cpu --stop-after 100 >"$out/det-cpu.log" 2>&1
"$G/lmforge" train --resume /tmp/d-cpu --device cpu >>"$out/det-cpu.log" 2>&1
python3 - <<'EOF'
import json
def losses(run):
    return [(r["step"], r.get("split"), r["loss"]) for r in map(json.loads, open(f"/tmp/{run}/metrics.jsonl"))]
a, b, split, cpu = (losses(r) for r in ("d-a", "d-b", "d-split", "d-cpu"))
print(f"same run twice on the GPU: {'identical' if a == b else 'DIFFERENT'} ({len(a)} metric rows)")
print(f"stopped at 100, resumed on the GPU: {'identical' if a == split else 'DIFFERENT'}")
va = [x for x in a if x[1] == "val"][-1][2]
vc = [x for x in cpu if x[1] == "val"][-1][2]
print(f"stopped on the GPU at 100, resumed on the CPU: final val loss {vc:.4f} vs {va:.4f} all on the GPU ({100 * abs(vc - va) / va:.2f}% apart)")
EOF

section "4. GPT-2 124M training speed: lmforge vs PyTorch eager, same GPU"
for p in bf16-mixed fp32; do
  echo "lmforge $p:"
  with_peak "$out/bench-$p" "$G/lmforge" bench train --device cuda --precision "$p" --preset gpt2-124m \
    --batch 16 --steps 10 --warmup 3 --json >"$out/bench-$p.json" 2>"$out/bench-$p.err"
  python3 -c "import json; r = json.load(open('$out/bench-$p.json')); print(f\"  tokens/s {r['tokens_per_s']:.0f}, step {r['step_ms_median']:.1f} ms, MFU {100 * r['mfu']:.1f}%, loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}\")" \
    || tail -5 "$out/bench-$p.err"
done
for d in bf16 fp32; do
  echo "PyTorch eager $d:"
  python3 "$G/pytorch_gpt_bench.py" --config gpt2-124m --device cuda --dtype "$d" --json >"$out/torch-$d.json" 2>"$out/torch-$d.err"
  python3 -c "import json; r = json.load(open('$out/torch-$d.json')); print('  ' + ', '.join(f'{k} {v}' for k, v in r.items()))" \
    || tail -5 "$out/torch-$d.err"
done
python3 - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
try:
    ours, theirs = json.load(open(f"{out}/bench-bf16-mixed.json")), json.load(open(f"{out}/torch-bf16.json"))
    print(f"bf16: lmforge / PyTorch eager tokens/s = {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f} (goal >= 0.7)")
except Exception as e:
    print(f"no ratio: {e}")
EOF
