#!/usr/bin/env python3
"""Writes a synthetic web-like corpus for the data-pipeline benchmark: documents of 5-15 random
paragraphs from the bundled/shared public-domain texts, with injected exact repeats (10%),
near duplicates (10%: a few words changed) and junk (5%: symbols, repeated lines, tiny docs).
Output: JSONL files ({"text": ...}) in OUT_DIR, about TARGET_MB megabytes in total.

usage: make_synthetic_corpus.py OUT_DIR TARGET_MB SOURCE_TXT [SOURCE_TXT ...]
"""
import json, os, random, sys

out_dir, target_mb, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
rng = random.Random(1234)
paras = []
for s in sources:
    text = open(s, encoding="utf-8", errors="replace").read().replace("\r\n", "\n")
    paras += [p.strip() for p in text.split("\n\n") if len(p.split()) >= 5]
os.makedirs(out_dir, exist_ok=True)
target = target_mb * 1_000_000
written, n_file, docs, recent = 0, 0, 0, []
f = None
while written < target:
    if f is None or f.tell() > 256_000_000:
        if f:
            f.close()
        f = open(os.path.join(out_dir, f"part-{n_file:04d}.jsonl"), "w", encoding="utf-8")
        n_file += 1
    r = rng.random()
    if r < 0.10 and recent:
        text = rng.choice(recent)  # exact repeat
    elif r < 0.20 and recent:
        words = rng.choice(recent).split(" ")
        for _ in range(3):
            i = rng.randrange(len(words))
            words[i] = words[i][::-1]
        text = " ".join(words)  # near duplicate
    elif r < 0.25:
        kind = rng.randrange(3)
        if kind == 0:
            text = "".join(rng.choice("#$%&*@!0123456789") for _ in range(rng.randrange(50, 2000)))
        elif kind == 1:
            text = "\n".join(["click here to subscribe now"] * rng.randrange(5, 50))
        else:
            text = "ok"
    else:
        text = "\n\n".join(rng.choice(paras) for _ in range(rng.randrange(5, 15)))
        recent.append(text)
        if len(recent) > 2000:
            recent.pop(rng.randrange(len(recent)))
    line = json.dumps({"text": text}) + "\n"
    f.write(line)
    written += len(line.encode())
    docs += 1
f.close()
print(f"{docs} documents, {written / 1e6:.0f} MB in {n_file} files under {out_dir}")
