#!/usr/bin/env bash
# The extractive-QA recipe end to end on data every Debian machine with manual pages has: builds a
# SQuAD v2.0 set from the OPTIONS sections of /usr/share/man (scripts/make_qa_dataset.py; split by
# command), fully fine-tunes all-MiniLM-L6-v2 as a BertForQuestionAnswering
# (configs/qa/minilm.toml) and prints the official SQuAD scores of the best model on the test
# split.
#   bash scripts/recipe-qa.sh [OUT_DIR]   (default runs/qa; LMFORGE=path/to/lmforge)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/qa}
lmforge=${LMFORGE:-target/release/lmforge}
[ -x "$lmforge" ] || cargo build --release -q
start=$(date +%s)
python3 scripts/make_qa_dataset.py "$out/data"
rm -rf "$out/minilm"
"$lmforge" finetune --config configs/qa/minilm.toml --run-dir "$out/minilm" \
    --set data.train="$out/data/train.json" --set data.validation="$out/data/validation.json" \
    --set data.test="$out/data/test.json"
"$lmforge" eval classification --model "$out/minilm" --data "$out/data/test.json"
echo "wall time $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
