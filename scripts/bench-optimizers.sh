#!/usr/bin/env bash
# Optimizer comparison on the quickstart model: the same data, model, schedule shape and number
# of steps for AdamW, Adafactor, LAMB, Lion and Muon (each at a learning rate suited to it), run
# back to back; prints final validation loss, bits/byte, training wall time and optimizer-state
# memory. The optimizer step is a small share of a step here, so equal steps ≈ equal wall time
# (the table shows both).
#
# usage: scripts/bench-optimizers.sh [STEPS]        (runs go to $WORK, default /tmp/lmforge-bench-optim)
set -euo pipefail
STEPS=${1:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/lmforge-bench-optim}
cargo build --release --manifest-path "$ROOT/Cargo.toml" -q
LMF="$ROOT/target/release/lmforge"
mkdir -p "$WORK"
# The recipe's `beta2` is AdamW's; other optimizers keep their own defaults (Adafactor has none).
grep -v '^beta2' "$ROOT/configs/quickstart.toml" > "$WORK/base.toml"
# name | overrides
RUNS=(
  "adamw|optim.name=adamw optim.lr=2e-3 optim.beta2=0.99"
  "adafactor|optim.name=adafactor optim.lr=2e-3 optim.beta1=0.9 optim.scale_parameter=false optim.weight_decay=0.0"
  "lamb|optim.name=lamb optim.lr=2e-2"
  "lion|optim.name=lion optim.lr=3e-4 optim.weight_decay=1.0"
  "muon|optim.name=muon optim.lr=0.02 optim.adam_lr_ratio=0.1"
)
printf "%-10s %10s %10s %10s %14s\n" optimizer val_loss bits/byte train_s state
ONLY=${ONLY:-}   # e.g. ONLY="adafactor lamb" reruns just those
for r in "${RUNS[@]}"; do
  name=${r%%|*}; sets=()
  if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then continue; fi
  for kv in ${r#*|}; do sets+=(--set "$kv"); done
  rm -rf "${WORK:?}/$name"
  "$LMF" train --config "$WORK/base.toml" --run-dir "$WORK/$name" "${sets[@]}" \
    --set data.path="\"$ROOT/data/tinyshakespeare.txt\"" --set train.max_steps="$STEPS" \
    --set train.eval_every=0 --set train.checkpoint_every=0 --set log.progress=lines > "$WORK/$name.out" 2>&1
  state=$(grep -o "state [0-9.]* [KMG]iB" "$WORK/$name.out" | head -1 | cut -d' ' -f2-)
  python3 - "$WORK/$name/metrics.jsonl" "$name" "$state" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
val = [r for r in rows if r["split"] == "val"][-1]
train = [r for r in rows if r["split"] == "train"][-1]
print(f"{sys.argv[2]:<10} {val['loss']:10.4f} {val['bits_per_byte']:10.4f} {train['elapsed_s']:10.1f} {sys.argv[3]:>14}")
PY
done
