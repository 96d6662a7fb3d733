# The GPU checks and measurements as named sections, sourced by scripts/gpu-check.sh,
# gpu-speed.sh and gpu-visit.sh on the GPU machine (after scripts/gpu-env.sh): each script is a
# list of sections run by `run_sections BUDGET NAME...` under one time budget. A device visit
# is 15 minutes in all and one command at most 10, so the sections run in the order given and
# one whose usual time no longer fits what is left is skipped, by name, for a later call; every
# command inside has a time limit cut to what is left. The closing table says what ran, how
# long it took and what was skipped (and $OUT/sections.tsv keeps it, to size the next visit).
#
# Sections (usual seconds on an H100 / H200: guesses until a visit measures them):
#   machine          the GPU, driver, libraries; which `plan --gpu` it is
#   kernels          lmforge_ops on_cuda: every CUDA kernel against the reference ops (f32, bf16)
#   parity           fixture logits ≤ 1e-5 and gradients ≤ 1e-4 on CUDA; gradient presence
#   nccl             a 1-process NCCL communicator and its three collectives
#   quickstart       the quickstart recipe in fp32 and bf16-mixed: final validation bits/byte
#   determinism      the same run twice, stopped and resumed on the GPU, resumed on the CPU
#   gpt2             GPT-2 124M bf16-mixed, batch 16 × 1024: lmforge beside PyTorch eager
#   gpt2-fp32        the same in fp32
#   gpt2-compile     PyTorch's torch.compile for the same GPT-2 step
#   llama1b          llama-1b bf16-mixed, batch 8 × 2048: lmforge beside PyTorch eager
#   llama1b-compile  torch.compile for llama-1b
#   llama7b          llama-7b, 1 × 4096, checkpointing: a few optimizer steps; plan beside it
#   llama7b-torch    PyTorch eager for the same llama-7b steps
#   llama7b-fewer    llama-7b recomputing the fewest blocks that fit (plan, scaled by llama7b's
#                    measured peak): the compute full recomputation spends, won back
#   profile          where a GPT-2 and a llama-1b bf16-mixed step go, op by op, timed by CUDA
#                    events (`bench train --profile`): works where ncu cannot read counters
#   ncu              every kernel of one GPT-2 bf16-mixed step under Nsight Compute
#   ncu-torch        the same for PyTorch eager's step, to set beside it

# The `plan --gpu` entry of this GPU, by its memory (MiB): an H200 has ~140 GiB, an H100 ~80.
PLAN_GPU=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 |
  awk '{print ($1 > 120000) ? "h200-141gb" : "h100-80gb"}')

declare -A SECTION_SECONDS=(
  [machine]=5 [kernels]=40 [parity]=60 [nccl]=15 [quickstart]=90 [determinism]=90
  [gpt2]=100 [gpt2-fp32]=60 [gpt2-compile]=120 [llama1b]=120 [llama1b-compile]=150
  [llama7b]=150 [llama7b-torch]=120 [llama7b-fewer]=150 [profile]=120 [ncu]=200 [ncu-torch]=200
)

# Seconds left of the budget (run_sections sets DEADLINE).
left() { echo $(( DEADLINE - $(date +%s) )); }
# A command's time limit: LIMIT seconds, or what is left of the budget less a margin.
cap() { local l; l=$(( $(left) - 5 )); [ "$l" -lt "$1" ] && echo $(( l > 1 ? l : 1 )) || echo "$1"; }

run_sections() {
  local budget="$1"; shift
  # From the script's start (scripts/gpu-env.sh), so unpacking .gpu counts against the budget.
  DEADLINE=$(( ${SCRIPT_START:-$(date +%s)} + budget ))
  local ran=() name start took
  printf 'section\tstatus\tseconds\n' >"$out/sections.tsv"
  for name in "$@"; do
    if [ -z "${SECTION_SECONDS[$name]:-}" ]; then
      echo "unknown section $name (known: ${!SECTION_SECONDS[*]})" >&2
      continue
    fi
    if [ "$(left)" -lt "${SECTION_SECONDS[$name]}" ]; then
      ran+=("$name: skipped (needs ~${SECTION_SECONDS[$name]} s, $(left) s left)")
      printf '%s\tskipped\t\n' "$name" >>"$out/sections.tsv"
      continue
    fi
    start=$(date +%s)
    "section_${name//-/_}"
    took=$(( $(date +%s) - start ))
    ran+=("$name: ${took} s")
    printf '%s\tran\t%s\n' "$name" "$took" >>"$out/sections.tsv"
  done
  summary
  section "sections (budget ${budget} s)"
  printf '  %s\n' "${ran[@]}"
  local skipped; skipped=$(awk -F'\t' '$2 == "skipped" {printf "%s ", $1}' "$out/sections.tsv")
  [ -n "$skipped" ] && echo "  next call: bash scripts/gpu-visit.sh SECONDS $skipped"
  return 0
}

# The headline figures of every measured run of this call (its $out/*.json), in one table at
# the end, where a device call's output tail keeps them; the issues' goals beside them; the
# fallbacks in effect.
summary() {
  section "summary: the measured runs of this call"
  for var in LMFORGE_CUDA_ATTENTION LMFORGE_CUDA_WEIGHT_GRAD LMFORGE_CUDA_ARG_CHECK; do
    [ -n "${!var:-}" ] && echo "  !!! fallback in effect: $var=${!var}"
  done
  python3 - "$out" <<'EOF'
import glob, json, os, sys
out = sys.argv[1]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(path)[:-5]
    try:
        text = open(path).read()
        runs[name] = json.loads(text[text.index("{"):])
    except Exception:
        continue
    try:
        runs[name]["_mib"] = int(open(os.path.join(out, name + ".mib")).read())
    except Exception:
        pass
if not runs:
    print("  no measured run")
    sys.exit(0)
print(f"  {'run':<34} {'tokens/s':>10} {'MFU':>7} {'step ms':>9} {'peak MiB':>9}")
for name, r in runs.items():
    tps, mfu, step = r.get("tokens_per_s"), r.get("mfu"), r.get("step_ms_median")
    if tps is None:
        continue
    mfu = f"{100 * mfu:.1f}%" if mfu is not None else "-"
    step = f"{step:.1f}" if step is not None else "-"
    print(f"  {name:<34} {tps:>10.0f} {mfu:>7} {step:>9} {r.get('_mib', '-'):>9}")
def ratio(a, b, goal):
    if a in runs and b in runs:
        x = runs[a]["tokens_per_s"] / runs[b]["tokens_per_s"]
        print(f"  {a} / {b}: {x:.2f} (goal {goal})")
ratio("lmforge-gpt2-124m-bf16-mixed", "torch-eager-gpt2-124m-bf16", ">= 0.7 (issue 18), >= 1.3 (issue 19)")
ratio("lmforge-gpt2-124m-bf16-mixed", "torch-compile-gpt2-124m-bf16", ">= 1.0 (issue 19)")
ratio("lmforge-llama-1b-bf16-mixed", "torch-eager-llama-1b-bf16", "none set")
ratio("lmforge-llama-1b-bf16-mixed", "torch-compile-llama-1b-bf16", "none set")
ratio("lmforge-llama-7b", "torch-eager-llama-7b", "none set")
for name, goal in [("lmforge-gpt2-124m-bf16-mixed", 45), ("lmforge-llama-7b", 35), ("lmforge-llama-7b-fewer", 35)]:
    if name in runs and runs[name].get("mfu") is not None:
        print(f"  {name}: MFU {100 * runs[name]['mfu']:.1f}% (goal >= {goal}%)")
EOF
}

# Runs a command with a time limit (cut to the budget), sampling the GPU's memory every 100 ms;
# prints tokens/s, MFU and the peak above what was in use before (the whole process's,
# allocator caches and context included) from the JSON it writes to $out/NAME.json, and the
# program's own figure: lmforge's memory-pool peaks after warmup (in use / reserved), PyTorch's
# max allocated after warmup.
measured() {
  local name="$1" limit; limit=$(cap "$2"); shift 2
  local base; base=$(gpu_mem)
  sample_peak "$out/$name.peak" &
  local sampler=$!
  timeout "$limit" "$@" >"$out/$name.json" 2>"$out/$name.err"
  local rc=$?
  # A launch the argument check refused (a visit without the kernels section, gpu-speed.sh):
  # once more without the check, in what is left of the limit.
  if [ "$rc" -ne 0 ] && arg_check_fallback "$out/$name.err"; then
    timeout "$(cap "$limit")" "$@" >"$out/$name.json" 2>"$out/$name.err"
    rc=$?
  fi
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
tps = r.get("tokens_per_s")
mfu = r.get("mfu")
step = r.get("step_ms_median")
gib = lambda b: b / 2**30
own = r.get("peak_gpu_bytes")
own = f", PyTorch's max allocated {gib(own):.2f} GiB" if own else ""
if r.get("peak_device_used_bytes") is not None:
    own = f", pool peak {gib(r['peak_device_used_bytes']):.2f} GiB in use / {gib(r['peak_device_reserved_bytes']):.2f} GiB reserved"
opt = f", {r['optimizer']}" if r.get("optimizer") else ""
loss = f", loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}" if "first_loss" in r else ""
print(f"  {name}: tokens/s {tps:.0f}, MFU {100 * mfu:.1f}%, step {step:.1f} ms, peak GPU memory {peak} MiB{own}{opt}{loss}")
EOF
}

ratio() {
  python3 - "$out/$1.json" "$out/$2.json" "$3" <<'EOF'
import json, sys
def tps(path):
    text = open(path).read()
    return json.loads(text[text.index("{"):])["tokens_per_s"]
try:
    print(f"  lmforge / {sys.argv[3]}: {tps(sys.argv[1]) / tps(sys.argv[2]):.2f}")
except Exception as e:
    print(f"  lmforge / {sys.argv[3]}: no ratio ({e})")
EOF
}

# `lmforge plan`'s predicted peak for a bench, printed beside the measured one.
planned() {
  "$G/lmforge" plan --gpu "$PLAN_GPU" --precision bf16-mixed "$@" 2>&1 |
    grep -E "^  total" | sed "s/^  total */  plan ($PLAN_GPU): predicted peak /"
}

# A test executable's result lines, its log under $out.
tests() {
  local name="$1" limit; limit=$(cap "$2"); shift 2
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log" | grep -E "^test |test result|panicked|error"
  [ "${PIPESTATUS[0]}" -eq 124 ] && echo "  $name: over ${limit}s"
  return 0
}

section_machine() {
  section "machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "libraries: $libdirs"
  ldd "$G/lmforge" | grep -E "cuda|cublas|curand|nvrtc|nccl|not found" | sed 's/^\s*/  /'
  echo "plan's device: $PLAN_GPU"
}

# Each launch's arguments are checked against the kernel's C signature (cuda/launch.rs), a
# check that has not met a GPU either: where a log (a test's, a bench's) shows it refusing a
# launch, every command after this runs without it (LMFORGE_CUDA_ARG_CHECK=off), and says so
# with the refusals; returns 0 when it turned the check off. (The test of the refusals
# themselves runs alone, kernels-args, and is not read here.)
arg_check_fallback() {
  local refused
  refused=$(grep -E "arguments pushed, the kernel takes|the kernel's parameter [0-9]+ is" "$1")
  if [ -n "$refused" ] && [ "${LMFORGE_CUDA_ARG_CHECK:-}" != off ]; then
    export LMFORGE_CUDA_ARG_CHECK=off
    echo "  !!! the launch argument check REFUSED launches: the sections below run with LMFORGE_CUDA_ARG_CHECK=off"
    echo "$refused" | head -5 | sed 's/^/    /'
    return 0
  fi
  return 1
}

section_kernels() {
  section "kernels: lmforge's CUDA kernels against the reference ops (f32, bf16)"
  # The tests that run the tensor-core attention kernels go in a process of their own: a kernel
  # fault poisons its CUDA context, and every later test of that process would fail with it.
  local attention="on_cuda::attention_matches_the_reference_on_the_gpu"
  local sublayers="on_cuda::sublayers_match_their_composition_on_the_gpu"
  local wgrad="on_cuda::transposed_products_match_on_the_gpu"
  # The weight gradients' cuBLAS product (f32 out of bf16 operands, added in place) has not run
  # on a GPU either: first, in a process of its own; where it fails, every section after this
  # one forms the weight gradients composed (LMFORGE_CUDA_WEIGHT_GRAD=composed), and says so.
  tests kernels-wgrad 30 "$G/lmforge_ops" "$wgrad" --test-threads 1
  if ! grep -q "test result: ok. 1 passed" "$out/kernels-wgrad.log"; then
    export LMFORGE_CUDA_WEIGHT_GRAD=composed
    echo "  !!! the weight gradients' cuBLAS product FAILED: the sections below run with LMFORGE_CUDA_WEIGHT_GRAD=composed"
  fi
  # The test of the launch argument check's refusals, alone: its refusals are meant.
  local refusal="on_cuda::a_launch_with_wrong_arguments"
  tests kernels-args 20 "$G/lmforge_ops" "$refusal" --test-threads 1
  tests kernels 90 "$G/lmforge_ops" on_cuda --skip "$attention" --skip "$sublayers" --skip "$wgrad" --skip "$refusal" \
    --test-threads 1
  arg_check_fallback "$out/kernels.log" || true
  tests kernels-attention 60 "$G/lmforge_ops" "$attention" "$sublayers" --test-threads 1
  arg_check_fallback "$out/kernels-attention.log" || true
  # Those kernels are the newest and the least proven (no GPU had run them when they were
  # written): if the attention test fails, run it again on the scalar kernels and, where those
  # pass, take them for every section after this one, so that the visit's training figures
  # still come out (slower attention), and say so loudly.
  if grep -q "$attention.*FAILED" "$out/kernels-attention.log"; then
    tests kernels-scalar 60 env LMFORGE_CUDA_ATTENTION=scalar "$G/lmforge_ops" "$attention" --test-threads 1
    if grep -q "test result: ok. 1 passed" "$out/kernels-scalar.log"; then
      export LMFORGE_CUDA_ATTENTION=scalar
      echo "  !!! the tensor-core attention kernels FAILED; the scalar ones pass: the sections below run with LMFORGE_CUDA_ATTENTION=scalar"
    fi
  fi
}

section_parity() {
  section "parity and gradient presence on CUDA"
  export LMFORGE_FIXTURES="$G/fixtures"
  tests parity 150 env LMFORGE_TEST_DEVICE=cuda "$G/parity" --test-threads 1 --skip minilm
  tests presence 120 env LMFORGE_TEST_DEVICE=cuda "$G/presence" --test-threads 1
}

section_nccl() {
  section "NCCL: a 1-process communicator and its three collectives"
  tests nccl 60 "$G/nccl" --test-threads 1
}

section_quickstart() {
  section "quickstart on the GPU: fp32 and bf16-mixed"
  local p start
  for p in fp32 bf16-mixed; do
    start=$(date +%s.%N)
    timeout "$(cap 150)" "$G/lmforge" quickstart --run-dir "/tmp/q-$p" --set train.device=cuda \
      --set "train.precision=$p" >"$out/quickstart-$p.log" 2>&1
    echo "$p: exit $?, $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s wall"
    grep -E "val|tokens/s|bits" "$out/quickstart-$p.log" | tail -4 | sed 's/^/  /'
  done
  python3 - "/tmp/q-fp32" "/tmp/q-bf16-mixed" <<'EOF'
import json, sys
def last_val(run):
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
    return [r for r in rows if r.get("split") == "val"][-1]
try:
    a, b = last_val(sys.argv[1]), last_val(sys.argv[2])
except Exception as e:
    sys.exit(f"no comparison: {e}")
key = "bits_per_byte" if "bits_per_byte" in a else "loss"
print(f"final validation {key}: fp32 {a[key]:.4f}, bf16-mixed {b[key]:.4f}, ratio {b[key] / a[key]:.4f} (goal within 1%)")
EOF
}

section_determinism() {
  section "determinism and resume on the GPU"
  local q=(--config configs/quickstart.toml --set train.device=cuda --set train.max_steps=200 --set train.checkpoint_every=100)
  local t; t=$(cap 40)
  timeout "$t" "$G/lmforge" train "${q[@]}" --run-dir /tmp/d-a >"$out/det-a.log" 2>&1
  timeout "$t" "$G/lmforge" train "${q[@]}" --run-dir /tmp/d-b >"$out/det-b.log" 2>&1
  timeout "$t" "$G/lmforge" train "${q[@]}" --run-dir /tmp/d-split --stop-after 100 >"$out/det-split.log" 2>&1
  timeout "$t" "$G/lmforge" train --resume /tmp/d-split >>"$out/det-split.log" 2>&1
  timeout "$t" "$G/lmforge" train "${q[@]}" --run-dir /tmp/d-cpu --stop-after 100 >"$out/det-cpu.log" 2>&1
  timeout "$(cap 60)" "$G/lmforge" train --resume /tmp/d-cpu --device cpu >>"$out/det-cpu.log" 2>&1
  python3 - <<'EOF'
import json
def losses(run):
    return [(r["step"], r.get("split"), r["loss"]) for r in map(json.loads, open(f"/tmp/{run}/metrics.jsonl"))]
try:
    a, b, split, cpu = (losses(r) for r in ("d-a", "d-b", "d-split", "d-cpu"))
except Exception as e:
    raise SystemExit(f"no comparison: {e}")
print(f"same run twice on the GPU: {'identical' if a == b else 'DIFFERENT'} ({len(a)} metric rows)")
print(f"stopped at 100, resumed on the GPU: {'identical' if a == split else 'DIFFERENT'}")
va = [x for x in a if x[1] == "val"][-1][2]
vc = [x for x in cpu if x[1] == "val"][-1][2]
print(f"stopped on the GPU at 100, resumed on the CPU: final val loss {vc:.4f} vs {va:.4f} all on the GPU ({100 * abs(vc - va) / va:.2f}% apart)")
EOF
}

# lmforge beside PyTorch eager for one preset and precision.
versus_eager() {
  local preset="$1" batch="$2" precision="$3" dtype="$4" lm="$5" torch="$6"
  echo "$preset, batch $batch, $precision:"
  measured "lmforge-$preset-$precision" "$lm" "$G/lmforge" bench train --device cuda --precision "$precision" \
    --preset "$preset" --batch "$batch" --steps 10 --warmup 3 --json
  measured "torch-eager-$preset-$dtype" "$torch" python3 "$G/pytorch_gpt_bench.py" --config "$preset" --device cuda \
    --dtype "$dtype" --batch "$batch" --json
  [ "$precision" = bf16-mixed ] && planned --preset "$preset" --micro-batch "$batch"
  ratio "lmforge-$preset-$precision" "torch-eager-$preset-$dtype" "PyTorch eager"
}

section_gpt2() {
  section "GPT-2 124M bf16-mixed, batch 16 x 1024: lmforge vs PyTorch eager (issue 18: >= 0.7; 19: >= 1.3, MFU >= 45%)"
  versus_eager gpt2-124m 16 bf16-mixed bf16 150 120
}

section_gpt2_fp32() {
  section "GPT-2 124M fp32, batch 16 x 1024: lmforge vs PyTorch eager"
  versus_eager gpt2-124m 16 fp32 fp32 150 120
}

compiled() {
  local preset="$1" batch="$2"
  measured "torch-compile-$preset-bf16" "$3" python3 "$G/pytorch_gpt_bench.py" --config "$preset" --device cuda \
    --dtype bf16 --batch "$batch" --compile --json
  ratio "lmforge-$preset-bf16-mixed" "torch-compile-$preset-bf16" "torch.compile (goal >= 1.0)"
}

section_gpt2_compile() {
  section "GPT-2 124M bf16, batch 16 x 1024: torch.compile"
  compiled gpt2-124m 16 200
}

# Each phase of the step waited for and each op's GPU time read from CUDA events around it
# (ops::profile), so the rows say where the step goes even where Nsight Compute cannot read the
# hardware counters (gVisor); the profiled steps are slower than the timed ones of gpt2.
section_profile() {
  section "where a bf16-mixed step goes, op by op (CUDA events): GPT-2 124M 16 x 1024, llama-1b 8 x 2048"
  local preset batch preset_batch
  for preset_batch in gpt2-124m:16 llama-1b:8; do
    preset=${preset_batch%:*} batch=${preset_batch#*:}
    timeout "$(cap 55)" "$G/lmforge" bench train --device cuda --precision bf16-mixed --preset "$preset" \
      --batch "$batch" --steps 3 --warmup 2 --profile >"$out/profile-$preset.log" 2>&1
    echo "  $preset: exit $?"
    if grep -q "^per step" "$out/profile-$preset.log"; then
      sed -n '/^per step/,$p' "$out/profile-$preset.log" | sed 's/^/    /'
    else
      tail -4 "$out/profile-$preset.log" | sed 's/^/    /'
    fi
  done
}

section_llama1b() {
  section "llama-1b bf16-mixed, batch 8 x 2048: lmforge vs PyTorch eager"
  versus_eager llama-1b 8 bf16-mixed bf16 180 150
}

section_llama1b_compile() {
  section "llama-1b bf16, batch 8 x 2048: torch.compile"
  compiled llama-1b 8 240
}

# The optimizer llama-7b trains with on this GPU: AdamW where `plan` says its state fits, else
# the lighter one plan offers (Adafactor on an 80 GB H100), said so.
llama7b_optim() {
  "$G/lmforge" plan --preset llama-7b --gpu "$PLAN_GPU" --micro-batch 1 --seq-len 4096 --precision bf16-mixed \
    --activation-checkpointing --json | python3 -c '
import json, re, sys
p = json.load(sys.stdin)
lighter = re.search(r"--optim (\S+)", (p.get("optimizer_suggestion") or {}).get("change", ""))
print("adamw" if p["fits"] or not lighter else lighter.group(1))'
}

section_llama7b() {
  section "llama-7b, sequence 4096, batch 1, activation checkpointing, on one GPU"
  LLAMA7B_OPTIM=$(llama7b_optim)
  [ "$LLAMA7B_OPTIM" = adamw ] || echo "  AdamW's state does not fit this GPU (plan); training with $LLAMA7B_OPTIM, plan's lighter optimizer"
  "$G/lmforge" plan --preset llama-7b --gpu "$PLAN_GPU" --micro-batch 1 --seq-len 4096 --precision bf16-mixed \
    --activation-checkpointing --optim "$LLAMA7B_OPTIM" 2>&1 |
    grep -E "weights|gradients|optimizer state|activations|temporary|overhead|total|fits" | sed "s/^/  plan ($PLAN_GPU): /"
  measured "lmforge-llama-7b" 300 "$G/lmforge" bench train --device cuda --precision bf16-mixed --preset llama-7b \
    --batch 1 --steps 3 --warmup 1 --activation-checkpointing --optim "$LLAMA7B_OPTIM" --json
  # $OUT is a new folder each call: llama7b-fewer, run in a later call on the warm machine,
  # finds the measured peak here.
  cp "$out/lmforge-llama-7b.mib" /tmp/lmforge-llama-7b.mib 2>/dev/null
}

section_llama7b_torch() {
  section "llama-7b, PyTorch eager, the same steps"
  local optim=${LLAMA7B_OPTIM:-$(llama7b_optim)}
  # The shared bench script knows AdamW only; scripts/torch_bench_optim.py runs it with
  # torch.optim.Adafactor instead where lmforge trained with Adafactor.
  measured "torch-eager-llama-7b" 200 python3 scripts/torch_bench_optim.py "$optim" "$G/pytorch_gpt_bench.py" \
    --config llama-7b --device cuda --dtype bf16 --batch 1 --steps 3 --warmup 1 --checkpoint --json
  ratio "lmforge-llama-7b" "torch-eager-llama-7b" "PyTorch eager ($optim)"
}

# The fewest of llama-7b's 32 blocks to recompute at 1 × 4096 that fit this GPU: plan's
# prediction for each count, scaled up by how far llama7b's measured peak (nvidia-smi, whole
# process; this call's, or an earlier call's on the same machine) came out above plan's for
# every block recomputed (5% when it was not measured), with 1 GiB to spare. Prints the count
# (32 when none fewer fits) and, on stderr, why.
fewest_blocks() {
  local mib="$out/lmforge-llama-7b.mib"
  [ -s "$mib" ] || mib=/tmp/lmforge-llama-7b.mib
  python3 - "$G/lmforge" "$PLAN_GPU" "$1" "$mib" <<'EOF'
import json, subprocess, sys
lmforge, gpu, optim, mib = sys.argv[1:5]
base = [lmforge, "plan", "--preset", "llama-7b", "--gpu", gpu, "--micro-batch", "1", "--seq-len", "4096",
        "--precision", "bf16-mixed", "--optim", optim, "--json", "--activation-checkpointing"]
plan = lambda blocks: json.loads(subprocess.run(base + [blocks], capture_output=True, text=True, check=True).stdout)
full = plan("all")
predicted, device = full["memory_per_device_bytes"], full["device_memory_bytes"]
try:
    measured = int(open(mib).read()) * 2**20
    scale = max(1.0, measured / predicted)
    why = f"measured {measured / 2**30:.1f} GiB against plan's {predicted / 2**30:.1f} GiB"
except (OSError, ValueError, ZeroDivisionError):
    scale, why = 1.05, "llama7b not measured: 5% margin"
gib = lambda b: f"{b / 2**30:.1f} GiB"
for n in range(33):
    p = plan(str(n))["memory_per_device_bytes"]
    if p * scale + 2**30 <= device:
        print(f"  plan x {scale:.3f} ({why}): {n} of 32 blocks recomputed,"
              f" plan {gib(p)}, scaled {gib(p * scale)} of {gib(device)}", file=sys.stderr)
        print(n)
        break
else:
    print(32)
EOF
}

section_llama7b_fewer() {
  section "llama-7b, sequence 4096, batch 1, the fewest blocks recomputed that fit"
  local optim=${LLAMA7B_OPTIM:-$(llama7b_optim)} blocks
  blocks=$(fewest_blocks "$optim")
  if [ -z "$blocks" ] || [ "$blocks" -ge 32 ]; then
    echo "  no fewer than 32 blocks fit by that margin: llama7b's run is the one"
    return 0
  fi
  measured "lmforge-llama-7b-fewer" 300 "$G/lmforge" bench train --device cuda --precision bf16-mixed --preset llama-7b \
    --batch 1 --steps 3 --warmup 1 --activation-checkpointing "$blocks" --optim "$optim" --json
  ratio "lmforge-llama-7b-fewer" "lmforge-llama-7b" "every block recomputed ($optim)"
}

# Every kernel of one step of COMMAND timed by Nsight Compute (clocks left alone), summed per
# kernel name, into $out/NAME.csv.
kernel_profile() {
  local name="$1" limit; limit=$(cap "$2"); shift 2
  command -v ncu >/dev/null || { echo "  ncu is not on this machine's PATH"; return 0; }
  timeout "$limit" ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base "$@" \
    >"$out/$name.csv" 2>"$out/$name.err"
  local rc=$?
  [ "$rc" -ne 0 ] && { echo "  ncu: exit $rc$([ "$rc" -eq 124 ] && echo " (over ${limit} s)"); last lines:"; tail -4 "$out/$name.err" | sed 's/^/    /'; }
  python3 - "$out/$name.csv" <<'EOF'
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
    sys.exit("  no kernel timings (see the .err log)")
print(f"  {sum(count.values())} kernels, {total / 1e6:.1f} ms of GPU time in the step (kernels back to back, no gaps)")
for name, ns in sorted(per.items(), key=lambda kv: -kv[1])[:25]:
    print(f"  {100 * ns / total:5.1f}%  {ns / 1e6:8.2f} ms  {count[name]:5d}x  {name}")
EOF
}

section_ncu() {
  section "one GPT-2 124M bf16-mixed step, kernel by kernel (ncu)"
  # One step with no warmup: ncu times each kernel on the GPU alone, so the first step's host
  # work (loading modules, the allocator growing) does not enter the figures.
  kernel_profile ncu 280 "$G/lmforge" bench train --device cuda --precision bf16-mixed --preset gpt2-124m --batch 16 \
    --steps 1 --warmup 0 --json
}

section_ncu_torch() {
  section "the same GPT-2 step in PyTorch eager, kernel by kernel (ncu)"
  kernel_profile ncu-torch 280 python3 "$G/pytorch_gpt_bench.py" --config gpt2-124m --device cuda --dtype bf16 \
    --batch 16 --steps 1 --warmup 0 --json
}
