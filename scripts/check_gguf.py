#!/usr/bin/env python3
"""Checks a GGUF file written by `lmforge quantize` / `lmforge export gguf` with llama.cpp's own
tools:
  1. the `gguf` package (llama.cpp's reader, from PyPI) reads it: architecture keys, tokenizer
     arrays, every tensor's shape against the metadata;
  2. with --llama-cpp (llama-cpp-python from PyPI, which compiles llama.cpp: minutes), llama.cpp
     loads it, and its greedy continuation of a prompt and its mean next-token loss on a text are
     compared with `lmforge generate` / `lmforge eval ppl` on the same file.
Run in a venv with `pip install gguf numpy` (and `llama-cpp-python` for 2):
  check_gguf.py FILE.gguf [--lmforge BINARY --llama-cpp] [--prompt TEXT] [--text FILE]
Exit status 0 when every check passed."""
import argparse, json, math, subprocess, sys
import numpy as np
from gguf import GGUFReader

ap = argparse.ArgumentParser()
ap.add_argument("file")
ap.add_argument("--lmforge")
ap.add_argument("--llama-cpp", action="store_true")
ap.add_argument("--prompt", default="The quick brown fox")
ap.add_argument("--text")
a = ap.parse_args()
failed = 0

def check(ok, what):
    global failed
    print(("PASS " if ok else "FAIL ") + what)
    failed += not ok

r = GGUFReader(a.file)
def field(k):
    f = r.fields.get(k)
    if f is None:
        return None
    if f.types and f.types[0].name == "ARRAY":
        return [f.parts[i] for i in f.data]
    v = f.parts[f.data[0]]
    return bytes(v).decode() if f.types[0].name == "STRING" else v.item()

arch = field("general.architecture")
n_embd, n_layer = field(f"{arch}.embedding_length"), field(f"{arch}.block_count")
tokens = field("tokenizer.ggml.tokens")
print(f"{a.file}: {arch}, {len(r.tensors)} tensors, {n_layer} layers, d {n_embd}, context {field(f'{arch}.context_length')}, "
      f"file_type {field('general.file_type')}, tokenizer {field('tokenizer.ggml.model')} ({len(tokens)} tokens, "
      f"{len(field('tokenizer.ggml.merges') or [])} merges)")
types = {}
for t in r.tensors:
    types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
print("tensor types:", ", ".join(f"{k} x{v}" for k, v in sorted(types.items())))
shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
check(shapes["token_embd.weight"] == [n_embd, len(tokens)], f"token_embd.weight {shapes['token_embd.weight']} = [n_embd, n_vocab]")
check(all(f"blk.{i}.attn_norm.weight" in shapes for i in range(n_layer)), "every block's tensors are named as llama.cpp names them")
ff = field(f"{arch}.feed_forward_length")
check(shapes["blk.0.ffn_up.weight"] == [n_embd, ff], f"blk.0.ffn_up.weight {shapes['blk.0.ffn_up.weight']} = [n_embd, n_ff]")
check(len(field("tokenizer.ggml.token_type")) == len(tokens), "token types for every token")

if a.llama_cpp:
    from llama_cpp import Llama
    ctx = field(f"{arch}.context_length")
    llm = Llama(model_path=a.file, n_ctx=ctx, logits_all=True, verbose=False, n_threads=2)
    ids = llm.tokenize(a.prompt.encode(), add_bos=False, special=True)
    out = llm.create_completion(a.prompt, max_tokens=16, temperature=0.0, top_k=1)["choices"][0]["text"]
    ours = subprocess.run([a.lmforge, "generate", "--model", a.file, "--prompt", a.prompt, "--max-new-tokens", "16",
                           "--temperature", "0"], capture_output=True, text=True, check=True).stdout
    ours = ours[len(a.prompt):].rstrip("\n")
    print(f"llama.cpp greedy: {out!r}\nlmforge   greedy: {ours!r}")
    # llama.cpp multiplies 4/5/6-bit weights with 8-bit-quantized activations; lmforge dequantizes
    # the weights and keeps fp32 activations: the same file, slightly different arithmetic.
    low_bits = field("general.file_type") not in (0, 1, 7, 32)
    tol = 1e-2 if low_bits else 1e-3
    if low_bits:
        print(f"{'SAME' if out == ours else 'DIFFERENT'} greedy continuation (not required below 8 bits)")
    else:
        check(out == ours, "the same greedy continuation")
    if a.text:
        text = open(a.text).read()
        toks = llm.tokenize(text.encode(), add_bos=False, special=True)[:ctx]
        llm.reset()
        llm.eval(toks)
        logits = np.array(llm.scores[: len(toks)])
        lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        nll = float(np.mean(lse[:-1] - logits[np.arange(len(toks) - 1), toks[1:]]))
        clip = a.text + ".clip.txt"
        open(clip, "w").write(llm.detokenize(toks).decode(errors="replace"))
        v = json.loads(subprocess.run([a.lmforge, "eval", "ppl", "--model", a.file, "--text", clip, "--json",
                                       "--stride", str(ctx - 1)], capture_output=True, text=True, check=True).stdout)
        print(f"mean next-token loss over {len(toks)} tokens: llama.cpp {nll:.6f}, lmforge {v['loss']:.6f}")
        check(abs(nll - v["loss"]) <= tol * max(1.0, nll), f"the same loss ({tol:g} relative)")
print(f"{failed} failed")
sys.exit(1 if failed else 0)
