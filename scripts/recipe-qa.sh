#!/usr/bin/env bash
# The extractive-QA recipe end to end on data every Debian machine with manual pages has: builds a
# SQuAD v2.0 set from the OPTIONS sections of /usr/share/man (scripts/make_qa_dataset.py; split by
# command), fully fine-tunes all-MiniLM-L6-v2 as a BertForQuestionAnswering
# (configs/qa/minilm.toml) and prints the official SQuAD scores of the best model on the test
# split. With --v1, the same set less its unanswerable questions (SPLIT-v1.json, SQuAD v1.1
# rules) and configs/qa/minilm-v1.toml.
#   bash scripts/recipe-qa.sh [--v1] [OUT_DIR]   (default runs/qa; LMFORGE=path/to/lmforge)
set -euo pipefail
cd "$(dirname "$0")/.."
v1=""
if [ "${1:-}" = "--v1" ]; then v1="-v1"; shift; fi
out=${1:-runs/qa}
lmforge=${LMFORGE:-target/release/lmforge}
[ -x "$lmforge" ] || cargo build --release -q
start=$(date +%s)
python3 scripts/make_qa_dataset.py "$out/data"
# The v1.1 subsets: answerable questions only.
python3 - "$out/data" <<'PY'
import json, sys
for split in ("train", "validation", "test"):
    d = json.load(open(f"{sys.argv[1]}/{split}.json"))
    for article in d["data"]:
        for p in article["paragraphs"]:
            p["qas"] = [q for q in p["qas"] if not q.get("is_impossible")]
            for q in p["qas"]:
                q.pop("is_impossible", None)
    d["version"] = "1.1"
    json.dump(d, open(f"{sys.argv[1]}/{split}-v1.json", "w"))
PY
run="$out/minilm$v1"
rm -rf "$run"
"$lmforge" finetune --config "configs/qa/minilm$v1.toml" --run-dir "$run" \
    --set data.train="$out/data/train$v1.json" --set data.validation="$out/data/validation$v1.json" \
    --set data.test="$out/data/test$v1.json"
"$lmforge" eval classification --model "$run" --data "$out/data/test$v1.json"
echo "wall time $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
