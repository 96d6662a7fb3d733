#!/usr/bin/env bash
# Issue 19's GPU speed figures, one run on a machine with an NVIDIA GPU and no Rust toolchain,
# from what `scripts/gpu-prepare.sh` put in `.gpu/` (run scripts/gpu-check.sh first for
# correctness; this one only measures). Prints every figure; logs under $OUT (or
# /tmp/gpu-speed). Each command has a time limit so the whole stays under ~9 minutes.
#
#   1. GPT-2 124M (batch 16 × 1024) and llama-1b (batch 8 × 2048), bf16-mixed: lmforge
#      `bench train` beside pytorch_gpt_bench.py eager and --compile on the same GPU —
#      tokens/s, MFU, peak GPU memory, and the ratios (goals: ≥ 1.3× eager, ≥ 1.0× compile);
#   2. llama-7b at sequence 4096, batch 1, activation checkpointing: a few optimizer steps of
#      each, and `lmforge plan`'s predicted device memory beside the measured peak;
#   3. where a GPT-2 step's time goes: every kernel of one bf16-mixed step timed by Nsight
#      Compute (`ncu`, where the machine lets it read the GPU; clocks left alone), summed per
#      kernel name — the profile the tuning works from.
#
# With a device call: carry [".gpu"], command `bash scripts/gpu-speed.sh` (after gpu-check.sh
# on the same warm machine, or alone: scripts/gpu-env.sh unpacks .gpu for both).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/gpu-speed}"
mkdir -p "$out"
script=gpu-speed.sh
source scripts/gpu-env.sh
# Runs a command with a time limit, sampling the GPU's memory every 100 ms; prints the peak
# above what was in use before (the whole process's, allocator caches included).
measured() {
  local name="$1" limit="$2"; shift 2
  local base; base=$(gpu_mem)
  sample_peak "$out/$name.peak" &
  local sampler=$!
  timeout "$limit" "$@" >"$out/$name.json" 2>"$out/$name.err"
  local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  local peak; peak=$(( $(cat "$out/$name.peak" 2>/dev/null || echo "$base") - base ))
  echo "$peak" >"$out/$name.mib"
  if [ "$rc" -ne 0 ]; then
    echo "  $name: exit $rc$([ "$rc" -eq 124 ] && echo " (over ${limit}s)"); last lines:"; tail -4 "$out/$name.err" | sed 's/^/    /'
  fi
  python3 - "$out/$name.json" "$name" "$peak" <<'EOF'
import json, sys
path, name, peak = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    text = open(path).read()
    r = json.loads(text[text.index("{"):])
except Exception:
    sys.exit(0)
tps = r.get("tokens_per_s") or r.get("tokens_per_sec") or r.get("tok_per_s")
mfu = r.get("mfu")
step = r.get("step_ms_median") or r.get("step_ms")
print(f"  {name}: tokens/s {tps}, MFU {mfu}, step {step} ms, peak GPU memory {peak} MiB")
EOF
}
ratio() {
  python3 - "$out/$1.json" "$out/$2.json" "$3" <<'EOF'
import json, sys
def tps(path):
    text = open(path).read()
    r = json.loads(text[text.index("{"):])
    return r.get("tokens_per_s") or r.get("tokens_per_sec") or r.get("tok_per_s")
try:
    print(f"  lmforge / {sys.argv[3]}: {tps(sys.argv[1]) / tps(sys.argv[2]):.2f}")
except Exception as e:
    print(f"  lmforge / {sys.argv[3]}: no ratio ({e})")
EOF
}

section "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

section "1. training speed, bf16-mixed: lmforge vs PyTorch eager and torch.compile"
for shape in "gpt2-124m 16" "llama-1b 8"; do
  set -- $shape
  preset=$1 batch=$2
  echo "$preset, batch $batch:"
  measured "lmforge-$preset" 150 "$G/lmforge" bench train --device cuda --precision bf16-mixed --preset "$preset" \
    --batch "$batch" --steps 10 --warmup 3 --json
  measured "torch-eager-$preset" 120 python3 "$G/pytorch_gpt_bench.py" --config "$preset" --device cuda --dtype bf16 \
    --batch "$batch" --json
  measured "torch-compile-$preset" 180 python3 "$G/pytorch_gpt_bench.py" --config "$preset" --device cuda --dtype bf16 \
    --batch "$batch" --compile --json
  "$G/lmforge" plan --preset "$preset" --gpu h200-141gb --micro-batch "$batch" --precision bf16-mixed 2>&1 |
    grep -E "^  total" | sed "s/^  total */  plan: predicted peak /; s/\$/ (lmforge's measured peak above)/"
  ratio "lmforge-$preset" "torch-eager-$preset" "PyTorch eager (goal >= 1.3)"
  ratio "lmforge-$preset" "torch-compile-$preset" "torch.compile (goal >= 1.0)"
done

section "2. llama-7b, sequence 4096, batch 1, activation checkpointing, on one GPU"
"$G/lmforge" plan --preset llama-7b --gpu h200-141gb --micro-batch 1 --seq-len 4096 --precision bf16-mixed \
  --activation-checkpointing 2>&1 | grep -E "weights|gradients|optimizer state|activations|temporary|overhead|total|fits" | sed 's/^/  plan: /'
measured "lmforge-llama-7b" 240 "$G/lmforge" bench train --device cuda --precision bf16-mixed --preset llama-7b \
  --batch 1 --steps 3 --warmup 1 --activation-checkpointing --json
measured "torch-eager-llama-7b" 150 python3 "$G/pytorch_gpt_bench.py" --config llama-7b --device cuda --dtype bf16 \
  --batch 1 --steps 3 --warmup 1 --checkpoint --json
ratio "lmforge-llama-7b" "torch-eager-llama-7b" "PyTorch eager"

section "3. one GPT-2 124M bf16-mixed step, kernel by kernel (ncu)"
if command -v ncu >/dev/null; then
  # One step with no warmup: ncu times each kernel on the GPU alone, so the first step's host
  # work (loading modules, the allocator growing) does not enter the figures.
  timeout 240 ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base \
    "$G/lmforge" bench train --device cuda --precision bf16-mixed --preset gpt2-124m --batch 16 --steps 1 \
    --warmup 0 --json >"$out/ncu.csv" 2>"$out/ncu.err"
  rc=$?
  [ "$rc" -ne 0 ] && { echo "  ncu: exit $rc$([ "$rc" -eq 124 ] && echo " (over 240 s)"); last lines:"; tail -4 "$out/ncu.err" | sed 's/^/    /'; }
  python3 - "$out/ncu.csv" <<'EOF'
import csv, re, sys
from collections import defaultdict
rows = [l for l in open(sys.argv[1]) if l.startswith('"')]
total, per, count = 0.0, defaultdict(float), defaultdict(int)
for r in csv.DictReader(rows):
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    # Templates and argument lists shortened to the kernel's own name.
    name = re.sub(r"<.*|\(.*", "", r["Kernel Name"]).strip()
    ns = float(r["Metric Value"].replace(",", ""))
    total += ns
    per[name] += ns
    count[name] += 1
if not total:
    sys.exit("  no kernel timings (see ncu.err)")
print(f"  {sum(count.values())} kernels, {total / 1e6:.1f} ms of GPU time in the step (kernels back to back, no gaps)")
for name, ns in sorted(per.items(), key=lambda kv: -kv[1])[:25]:
    print(f"  {100 * ns / total:5.1f}%  {ns / 1e6:8.2f} ms  {count[name]:5d}x  {name}")
EOF
else
  echo "  ncu is not on this machine's PATH"
fi
