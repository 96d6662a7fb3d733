#!/usr/bin/env python3
"""The tokenizer of a GGUF file written by lmforge, read by other tools, against its tokenizer.json.

usage: check_gguf_tokenizer.py FILE.gguf TOKENIZER_JSON [--llama-cpp]

1. transformers rebuilds the tokenizer from the file's `tokenizer.ggml.*` arrays alone
   (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, its own GGUF reader) and must encode a
   set of texts to the same ids as `tokenizers` does with TOKENIZER_JSON;
2. with --llama-cpp (llama-cpp-python; it compiles llama.cpp), llama.cpp's tokenizer must too.
Runs in the HF reference venv (scripts/install-hf-reference.sh) with `pip install gguf`. Exit 0 when all match."""
import pathlib
import sys

from gguf import GGUFReader
from tokenizers import Tokenizer

path, reference = pathlib.Path(sys.argv[1]), Tokenizer.from_file(sys.argv[2])
texts = [
    "ROMEO: What light through yonder window breaks?",
    "  two leading spaces, and the end. ",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "Ünïcødé, 中文 and 🦀 fall back to bytes",
    "KING RICHARD III: Now is the winter of our discontent",
]
failed = 0


def compare(name, encode, skip_leading_space=False):
    global failed
    for t in texts:
        if skip_leading_space and t.startswith(" "):
            # transformers rebuilds a `llama` vocabulary with a Metaspace pre-tokenizer, which
            # writes "  two" as ▁▁two where SentencePiece, llama.cpp and the tokenizer.json's
            # Prepend + Replace normalizer write ▁▁▁two (its phi3_tokenizer docstring says so).
            print(f"SKIP {name}: {t!r} (transformers' Metaspace rebuild differs on leading spaces)")
            continue
        want = reference.encode(t, add_special_tokens=False).ids
        got = encode(t)
        ok = got == want
        failed += not ok
        print(("PASS " if ok else "FAIL ") + f"{name}: {t!r}" + ("" if ok else f"\n  want {want}\n  got  {got}"))


field = GGUFReader(str(path)).fields["tokenizer.ggml.model"]
kind = bytes(field.parts[field.data[0]]).decode()
print(f"{path}: tokenizer.ggml.model = {kind}")
try:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
except ImportError as e:  # transformers' GGUF reader wants torch too
    print(f"SKIP transformers: {e}")
else:
    compare("transformers (from the GGUF arrays)", lambda t: hf.encode(t, add_special_tokens=False), kind == "llama")
if "--llama-cpp" in sys.argv:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    compare("llama.cpp", lambda t: llm.tokenize(t.encode(), add_bos=False, special=False))
sys.exit(1 if failed else 0)
