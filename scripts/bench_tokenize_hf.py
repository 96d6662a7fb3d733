#!/usr/bin/env python3
"""Hugging Face `tokenizers` (Python) encode_batch throughput on the same documents and tokenizer
as lmforge's tokenize stage. usage: bench_tokenize_hf.py TOKENIZER_JSON JSONL [MAX_DOCS]"""
import json, sys, time
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
limit = int(sys.argv[3]) if len(sys.argv) > 3 else 10**12
docs = []
for line in open(sys.argv[2], encoding="utf-8"):
    docs.append(json.loads(line)["text"])
    if len(docs) >= limit:
        break
nbytes = sum(len(d.encode()) for d in docs)
t = time.perf_counter()
tokens = 0
for i in range(0, len(docs), 4096):
    for e in tok.encode_batch(docs[i:i + 4096], add_special_tokens=False):
        tokens += len(e.ids)
dt = time.perf_counter() - t
print(json.dumps({"tool": "hf-tokenizers-python", "docs": len(docs), "mb": nbytes / 1e6, "tokens": tokens,
                  "seconds": dt, "mb_per_s": nbytes / 1e6 / dt}))
