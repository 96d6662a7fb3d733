#!/usr/bin/env bash
# Data-pipeline benchmark: builds a synthetic corpus (SIZE_MB, default 2000) from the bundled
# texts with injected duplicates and junk, runs `lmforge data prepare` on it under
# /usr/bin/time (peak RSS, MB/s per stage from the manifest), then compares, on the same
# documents and tokenizer, Hugging Face `tokenizers` (Python, encode_batch) and `datasketch`
# MinHash-LSH, installed in a throwaway venv under $WORK (never in the repo).
#
# usage: scripts/bench-data.sh [SIZE_MB]      (WORK=/tmp/lmforge-bench-data by default)
set -euo pipefail
SIZE_MB=${1:-2000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/lmforge-bench-data}
VENV=$WORK/venv
mkdir -p "$WORK"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q tokenizers datasketch
fi
SOURCES=("$ROOT/data/tinyshakespeare.txt")
[ -f "$ROOT/../shared/data/corpus/moby_dick_pg2701.txt" ] && SOURCES+=("$ROOT/../shared/data/corpus/moby_dick_pg2701.txt")
if [ ! -d "$WORK/corpus-$SIZE_MB" ]; then
  python3 "$ROOT/scripts/make_synthetic_corpus.py" "$WORK/corpus-$SIZE_MB" "$SIZE_MB" "${SOURCES[@]}"
fi
cargo build --release --manifest-path "$ROOT/Cargo.toml" -q
LMF="$ROOT/target/release/lmforge"

if [ -z "${SKIP_PREPARE:-}" ]; then
echo "== lmforge data prepare on $SIZE_MB MB"
rm -rf "$WORK/prepared"
/usr/bin/time -f "peak_rss_kb=%M wall_s=%e" "$LMF" data prepare --input "$WORK/corpus-$SIZE_MB" --out "$WORK/prepared" \
  --set data.vocab_size=8192 --set log.progress=lines 2>&1 | grep -v INFO
"$VENV/bin/python" - "$WORK/prepared/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({"mb_per_s": m["mb_per_s"], "timings_s": m["timings_s"], "counts": {k: m["counts"][k] for k in ("documents_in", "exact_duplicates", "near_duplicates", "documents_out")}}, indent=1))
PY
fi

# Same documents for the tool comparisons: the first N documents of the first part.
N=${N:-20000}
head -n "$N" "$WORK/corpus-$SIZE_MB/part-0000.jsonl" > "$WORK/sample.jsonl"
TOK="$WORK/prepared/tokenizer.json"
echo "== tokenization of the same $N documents with the same tokenizer (lmforge: filters and dedup off)"
"$VENV/bin/python" "$ROOT/scripts/bench_tokenize_hf.py" "$TOK" "$WORK/sample.jsonl"
rm -rf "$WORK/sample-tok"
"$LMF" data prepare --input "$WORK/sample.jsonl" --out "$WORK/sample-tok" --set data.tokenizer="\"$TOK\"" \
  --set data.val_fraction=0.0 --set data.exact_dedup=false --set data.near_dedup=false \
  --set data.max_non_alpha_frac=1.0 --set data.max_dup_line_frac=1.0 --set data.min_mean_word_len=0.0 \
  --set data.max_mean_word_len=1e9 --set log.progress=off --json | "$VENV/bin/python" -c \
  'import json,sys; m=json.load(sys.stdin); print(json.dumps({"tool":"lmforge","docs":m["counts"]["documents_out"],"tokenize_s":m["timings_s"]["tokenize"],"mb_per_s":m["mb_per_s"]["tokenize"]}))'
echo "== MinHash-LSH near-dedup of the same $N documents (lmforge: whole pass 1, datasketch: MinHash + LSH only)"
rm -rf "$WORK/sample-dedup"
"$LMF" data prepare --input "$WORK/sample.jsonl" --out "$WORK/sample-dedup" --set data.tokenizer="\"$TOK\"" \
  --set data.val_fraction=0.0 --set data.exact_dedup=false --set log.progress=off --json | "$VENV/bin/python" -c \
  'import json,sys; m=json.load(sys.stdin); print(json.dumps({"tool":"lmforge","pass1_s":m["timings_s"]["pass1"],"minhash_cpu_s":m["timings_s"]["minhash_cpu"],"mb_per_s":m["mb_per_s"]["pass1"],"near_duplicates":m["counts"]["near_duplicates"]}))'
"$VENV/bin/python" "$ROOT/scripts/bench_minhash_datasketch.py" "$WORK/sample.jsonl"
