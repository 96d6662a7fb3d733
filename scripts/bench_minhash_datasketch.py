#!/usr/bin/env python3
"""datasketch MinHash + MinHashLSH near-duplicate removal with lmforge's default settings
(lower-cased word 5-gram shingles, 128 permutations, threshold 0.8, first of a cluster kept).
usage: bench_minhash_datasketch.py JSONL [MAX_DOCS]"""
import json, sys, time
from datasketch import MinHash, MinHashLSH

limit = int(sys.argv[2]) if len(sys.argv) > 2 else 10**12
docs = []
for line in open(sys.argv[1], encoding="utf-8"):
    docs.append(json.loads(line)["text"])
    if len(docs) >= limit:
        break
nbytes = sum(len(d.encode()) for d in docs)
t = time.perf_counter()
lsh = MinHashLSH(threshold=0.8, num_perm=128)
kept = {}
dups = 0
for i, d in enumerate(docs):
    w = d.lower().split()
    sh = {" ".join(w[j:j + 5]).encode() for j in range(max(1, len(w) - 4))}
    m = MinHash(num_perm=128)
    m.update_batch(list(sh))
    # Confirm LSH candidates by the estimated Jaccard, as lmforge does.
    if any(m.jaccard(kept[k]) >= 0.8 for k in lsh.query(m)):
        dups += 1
        continue
    lsh.insert(str(i), m)
    kept[str(i)] = m
dt = time.perf_counter() - t
print(json.dumps({"tool": "datasketch", "docs": len(docs), "mb": nbytes / 1e6, "near_duplicates": dups,
                  "seconds": dt, "mb_per_s": nbytes / 1e6 / dt}))
