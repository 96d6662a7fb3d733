#!/usr/bin/env bash
# The NER recipe end to end on data every Debian machine has: builds a PER / ORG / DATE set from
# /usr/share/doc's copyright files and changelogs (scripts/make_ner_dataset.py; split by
# package), fully fine-tunes all-MiniLM-L6-v2 as a token classifier (configs/ner/minilm.toml)
# and prints seqeval's entity report of the best model on the test split.
#   bash scripts/recipe-ner.sh [OUT_DIR]   (default runs/ner; LMFORGE=path/to/lmforge)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/ner}
lmforge=${LMFORGE:-target/release/lmforge}
[ -x "$lmforge" ] || cargo build --release -q
start=$(date +%s)
python3 scripts/make_ner_dataset.py "$out/data"
rm -rf "$out/minilm"
"$lmforge" finetune --config configs/ner/minilm.toml --run-dir "$out/minilm" \
    --set data.train="$out/data/train.conll" --set data.validation="$out/data/validation.conll" \
    --set data.test="$out/data/test.conll"
"$lmforge" eval classification --model "$out/minilm" --data "$out/data/test.conll"
echo "wall time $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
