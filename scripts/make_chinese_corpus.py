#!/usr/bin/env python3
"""Synthetic Chinese corpus for the data-pipeline benchmark (Chinese throughput).

usage: make_chinese_corpus.py OUT_DIR SIZE_MB

Sentences (cut after 。！？ and at line ends) of the real Chinese documents in
crates/lmforge/tests/data/multilingual/zh_docs.jsonl (this machine's zh_CN / zh_TW manual pages,
AppStream descriptions and message catalogues; its PROVENANCE.md) are recombined by
random.Random(0) into documents of 5-40 sentences, one JSON line each, in 8 files. Every 20th
document repeats an earlier one with three Han characters changed (near duplicates to find).
"""
import json
import pathlib
import random
import re
import sys

out, size_mb = pathlib.Path(sys.argv[1]), int(sys.argv[2])
src = pathlib.Path(__file__).resolve().parent.parent / "crates/lmforge/tests/data/multilingual/zh_docs.jsonl"
sentences = []
for line in src.read_text(encoding="utf-8").splitlines():
    text = json.loads(line)["text"]
    for s in re.split(r"(?<=[。！？])|\n", text):
        s = s.strip()
        if len(s) >= 8:
            sentences.append(s)
rng = random.Random(0)
out.mkdir(parents=True, exist_ok=True)
target, written, docs, kept = size_mb * 1_000_000, 0, 0, []
files = [open(out / f"part-{i}.jsonl", "w", encoding="utf-8") for i in range(8)]
while written < target:
    if kept and docs % 20 == 19:
        chars = list(rng.choice(kept))
        han = [i for i, c in enumerate(chars) if "\u4e00" <= c <= "\u9fa5"]
        for i in rng.sample(han, min(3, len(han))):
            chars[i] = chr(rng.randrange(0x4E00, 0x9FA5))
        doc = "".join(chars)
    else:
        doc = "".join(rng.choice(sentences) for _ in range(rng.randint(5, 40)))
        if len(kept) < 10000:
            kept.append(doc)
    line = json.dumps({"text": doc}, ensure_ascii=False) + "\n"
    files[docs % 8].write(line)
    written += len(line.encode("utf-8"))
    docs += 1
for f in files:
    f.close()
print(f"{docs} documents, {written / 1e6:.0f} MB from {len(sentences)} sentences under {out}")
