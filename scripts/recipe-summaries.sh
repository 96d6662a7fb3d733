#!/usr/bin/env bash
# The summaries recipe end to end on data every Debian machine has: builds the dataset from the
# man pages under /usr/share/man and Debian's AppStream metadata (scripts/make_summary_dataset.py;
# stable train / val / test split), pretrains a small model on the train descriptions
# (configs/summaries/pretrain.toml), scores that base on the test split, LoRA-fine-tunes it to
# write the one-line summary (configs/summaries/lora.toml), and prints ROUGE-L / BLEU of both.
#   bash scripts/recipe-summaries.sh [OUT_DIR]   (default runs/summaries; LMFORGE=path/to/lmforge)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/summaries}
lmforge=${LMFORGE:-target/release/lmforge}
[ -x "$lmforge" ] || cargo build --release -q
start=$(date +%s)
mkdir -p "$out"
python3 scripts/make_summary_dataset.py --out "$out/data"
rm -rf "$out/pretrain" "$out/lora"
"$lmforge" train --config configs/summaries/pretrain.toml --run-dir "$out/pretrain" \
    --set data.path="$out/data/descriptions.txt"
"$lmforge" eval generation --model "$out/pretrain" --data "$out/data/test.jsonl" --max-new-tokens 24 \
    --output "$out/base-generations.jsonl" --json > "$out/base-metrics.json"
"$lmforge" finetune --config configs/summaries/lora.toml --run-dir "$out/lora" \
    --set model.base="$out/pretrain" --set data.train="$out/data/train.jsonl" \
    --set data.validation="$out/data/val.jsonl" --set data.test="$out/data/test.jsonl"
python3 - "$out" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
out, secs = sys.argv[1], int(sys.argv[2])
base = json.load(open(f"{out}/base-metrics.json"))
tuned = json.load(open(f"{out}/lora/results.json"))["final"]["metrics"]["generation"]
print(f"test split, {base['n']} rows; wall time {secs // 60} min {secs % 60} s")
print(f"{'model':<28}{'ROUGE-L':>9}{'ROUGE-1':>9}{'BLEU':>8}{'chrF':>8}")
for name, m in [("pretrained base", base), ("LoRA fine-tuned", tuned)]:
    print(f"{name:<28}{m['rouge_l']:>9.4f}{m['rouge1']:>9.4f}{m['bleu']:>8.2f}{m['chrf']:>8.2f}")
PY
