#!/usr/bin/env python3
"""The reference for `lmforge bench serve`: Hugging Face transformers `generate` on the same
model folder and load — a prompt of about PROMPT_LEN tokens (the same filler text), exactly
MAX_TOKENS greedy tokens out — at batch 1 (one request after another) and batched (all of a
level at once, left-padded), on the CPU with the same thread count. Prints output tokens/s.
Run with the venv of scripts/install-hf-reference.sh:
  bench_serve_hf.py HF_DIR [--prompt-len 64] [--max-tokens 64] [--batch 1,16] [--requests 4] [--threads 2]"""
import argparse, json, time, torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--prompt-len", type=int, default=64)
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--batch", default="1,16")
ap.add_argument("--requests", type=int, default=4, help="batches per level, as lmforge's requests per client")
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
tok = PreTrainedTokenizerFast(tokenizer_file=a.model + "/tokenizer.json")
model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32).eval()
filler = "the quick brown fox jumps over the lazy dog while the river runs to the sea "
text = filler
while len(tok.encode(text)) < a.prompt_len:
    text += filler
ids = tok.encode(text)[: a.prompt_len]
eos = model.config.eos_token_id
out = {"model": a.model, "parameters": sum(p.numel() for p in model.parameters()), "prompt_tokens": len(ids),
       "max_tokens": a.max_tokens, "torch": torch.__version__, "threads": a.threads, "levels": []}
with torch.inference_mode():
    x = torch.tensor([ids])
    model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=4, do_sample=False, pad_token_id=eos)  # warm-up
    for b in [int(v) for v in a.batch.split(",")]:
        x = torch.tensor([ids] * b)
        mask = torch.ones_like(x)
        start = time.perf_counter()
        for _ in range(a.requests):
            y = model.generate(x, attention_mask=mask, max_new_tokens=a.max_tokens, min_new_tokens=a.max_tokens,
                               do_sample=False, pad_token_id=eos)
            assert y.shape[1] - x.shape[1] == a.max_tokens
        secs = time.perf_counter() - start
        n = b * a.requests * a.max_tokens
        out["levels"].append({"batch": b, "requests": b * a.requests, "output_tokens": n, "seconds": secs,
                              "output_tokens_per_s": n / secs})
        print(f"transformers generate, batch {b:>3}: {n / secs:9.1f} out tok/s ({b * a.requests} requests, {secs:.2f} s)")
print(json.dumps(out))
