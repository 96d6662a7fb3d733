#!/usr/bin/env python3
"""lmforge's main-text extraction (dom_smoothie) beside trafilatura's on the same HTML pages.

usage: check_html_extraction.py LMFORGE_BIN HTML_DIR [LIMIT]

Installs trafilatura and tokenizers into a throwaway venv under $WORK (default
/tmp/lmforge-html-check) on first use and re-runs itself there. Runs `lmforge data prepare` on
the pages (deduplication and splits off, no end-of-text token), decodes every kept document
from train.bin in the order train.docs.jsonl names its source file, extracts the same file with
trafilatura (its defaults: no comments, no tables' boilerplate), and prints per-page and mean
bag-of-words precision / recall / F1 of lmforge's text against trafilatura's, and how many
pages each kept.
"""
import collections
import json
import os
import pathlib
import re
import struct
import subprocess
import sys

WORK = pathlib.Path(os.environ.get("WORK", "/tmp/lmforge-html-check"))
VENV = WORK / "venv"
if pathlib.Path(sys.prefix).resolve() != VENV.resolve():
    if not (VENV / "bin" / "python").exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(VENV / "bin" / "pip"), "install", "-q", "trafilatura", "lxml_html_clean", "tokenizers"])
    os.execv(str(VENV / "bin" / "python"), [str(VENV / "bin" / "python"), *sys.argv])

import trafilatura  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

lmforge, html_dir = sys.argv[1], pathlib.Path(sys.argv[2])
limit = int(sys.argv[3]) if len(sys.argv) > 3 else 200
pages = sorted(p for p in html_dir.rglob("*") if p.suffix.lower() in (".html", ".htm"))[:limit]
inputs = WORK / "pages"
if inputs.exists():
    for p in inputs.iterdir():
        p.unlink()
inputs.mkdir(parents=True, exist_ok=True)
for i, p in enumerate(pages):
    (inputs / f"{i:05d}.html").write_bytes(p.read_bytes())
out = WORK / "prepared"
subprocess.run(["rm", "-rf", str(out)], check=True)
subprocess.check_call(
    [lmforge, "data", "prepare", "--input", str(inputs), "--out", str(out), "--set", "data.vocab_size=4096",
     "--set", "data.exact_dedup=false", "--set", "data.near_dedup=false", "--set", "data.val_fraction=0",
     "--set", "data.append_eos=false", "--set", "log.progress=off"],
    stdout=subprocess.DEVNULL,
)

tok = Tokenizer.from_file(str(out / "tokenizer.json"))
raw = (out / "train.bin").read_bytes()
width, n_tokens, n_docs = struct.unpack_from("<I", raw, 12)[0], *struct.unpack_from("<QQ", raw, 16)
ids = struct.unpack_from(f"<{n_tokens}{'H' if width == 2 else 'I'}", raw, 64)
offsets = struct.unpack_from(f"<{n_docs + 1}Q", raw, 64 + n_tokens * width)
sources = [json.loads(l)["source"] for l in (out / "train.docs.jsonl").read_text().splitlines()]
ours = {pathlib.Path(s).name: tok.decode(list(ids[offsets[d]:offsets[d + 1]])) for d, s in enumerate(sources)}


def words(text):
    return collections.Counter(re.findall(r"\w+", (text or "").lower()))


rows, both = [], 0
for i, p in enumerate(pages):
    name = f"{i:05d}.html"
    theirs = trafilatura.extract((inputs / name).read_text(errors="replace"))
    if name not in ours or not theirs:
        rows.append((p, name in ours, bool(theirs), None))
        continue
    a, b = words(ours[name]), words(theirs)
    common = sum((a & b).values())
    prec, rec = common / max(1, sum(a.values())), common / max(1, sum(b.values()))
    f1 = 2 * prec * rec / max(1e-9, prec + rec)
    rows.append((p, True, True, (prec, rec, f1)))
    both += 1
scored = [r[3] for r in rows if r[3]]
for p, kept_ours, kept_theirs, m in rows[:15]:
    shown = f"P {m[0]:.3f} R {m[1]:.3f} F1 {m[2]:.3f}" if m else f"lmforge kept {kept_ours}, trafilatura kept {kept_theirs}"
    print(f"{str(p.relative_to(html_dir)):60.60} {shown}")
mean = [sum(m[k] for m in scored) / max(1, len(scored)) for k in range(3)]
print(f"pages {len(pages)}: lmforge kept {len(ours)}, trafilatura {sum(1 for r in rows if r[2])}, both {both}")
print(f"bag-of-words vs trafilatura over {both} pages: precision {mean[0]:.3f} recall {mean[1]:.3f} F1 {mean[2]:.3f}")
