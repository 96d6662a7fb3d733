#!/usr/bin/env bash
# lmforge vs PyTorch training speed and memory, back to back: for each preset, PAIRS alternating
# runs of `lmforge bench train --preset P --json` and `../shared/bench/pytorch_gpt_bench.py
# --config P --threads N --json` (the same model, batch, optimizer and clipping), then one table
# row per preset: median tokens/s and peak RSS of each, and the median and range of the
# per-pair ratios. Pairs, not two series: shared machines drift by ±20% within minutes, and a
# pair's two runs see nearly the same machine.
#
# PyTorch runs from a throwaway venv ($TORCH_VENV, default /tmp/torchref), created here with
# torch from PyPI when missing (several GB). Needs python3.
#
# usage: scripts/bench-vs-pytorch.sh [PAIRS] [PRESET ...]     (default: 5 bench-gpt bench-llama)
# env:   STEPS (timed steps per run, default 10), THREADS (default: all cores), TORCH_VENV
set -euo pipefail
PAIRS=${1:-5}
shift || true
PRESETS=("$@")
[ ${#PRESETS[@]} -gt 0 ] || PRESETS=(bench-gpt bench-llama)
STEPS=${STEPS:-10}
THREADS=${THREADS:-$(nproc)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REF="$ROOT/../shared/bench/pytorch_gpt_bench.py"
VENV=${TORCH_VENV:-/tmp/torchref}
[ -f "$REF" ] || { echo "error: $REF is missing (../shared beside the checkout)" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "installing torch into $VENV ..." >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch
fi
cargo build --release --manifest-path "$ROOT/Cargo.toml" -q -p lmforge-cli
LMF="$ROOT/target/release/lmforge"
OUT=$(mktemp -d)
for preset in "${PRESETS[@]}"; do
  for i in $(seq "$PAIRS"); do
    # Alternate which runs first, so neither side always gets the warmer machine.
    if [ $((i % 2)) -eq 1 ]; then order="lmforge pytorch"; else order="pytorch lmforge"; fi
    for who in $order; do
      if [ "$who" = lmforge ]; then
        RAYON_NUM_THREADS=$THREADS "$LMF" bench train --preset "$preset" --steps "$STEPS" --json >"$OUT/$preset.$i.lmforge.json"
      else
        "$VENV/bin/python" "$REF" --config "$preset" --threads "$THREADS" --steps "$STEPS" --json \
          2>/dev/null >"$OUT/$preset.$i.pytorch.json"
      fi
    done
    echo "$preset pair $i/$PAIRS done" >&2
  done
done
python3 - "$OUT" "$PAIRS" "${PRESETS[@]}" <<'EOF'
import json, statistics, sys
out, pairs, presets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
load = lambda p, i, who: json.load(open(f"{out}/{p}.{i}.{who}.json"))
print("| preset | lmforge tok/s | PyTorch tok/s | ratio (median, pair range) | lmforge peak RSS | PyTorch peak RSS | ratio | lmforge MFU |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for p in presets:
    runs = [(load(p, i, "lmforge"), load(p, i, "pytorch")) for i in range(1, pairs + 1)]
    lt = [l["tokens_per_s"] for l, _ in runs]
    pt = [t["tokens_per_s"] for _, t in runs]
    ratios = [a / b for a, b in zip(lt, pt)]
    lr = statistics.median(l["peak_rss_bytes"] for l, _ in runs)
    pr = statistics.median(t["peak_rss_bytes"] for _, t in runs)
    mfu = statistics.median(l["mfu"] for l, _ in runs)
    print(f"| `{p}` | {statistics.median(lt):,.0f} | {statistics.median(pt):,.0f} | "
          f"**{statistics.median(ratios):.2f}×** ({min(ratios):.2f}–{max(ratios):.2f}) | "
          f"{lr / 1e6:,.0f} MB | {pr / 1e6:,.0f} MB | **{lr / pr:.2f}×** | {mfu:.2f} |")
EOF
rm -rf "$OUT"
