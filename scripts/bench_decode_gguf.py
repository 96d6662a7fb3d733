#!/usr/bin/env python3
"""Single-stream speed of one GGUF file in llama.cpp and in lmforge, on the same cores: prompt
processing and decode tokens/s of llama.cpp (llama-cpp-python, greedy, KV cache, `--threads`
threads) beside lmforge's `generate` (greedy, KV cache; decode tokens/s from the wall-time
difference of 1 + N and 1 new tokens). A `generate` that stops early at the end-of-text token
would overstate lmforge's rate (random-weight models rarely pick it); for a trained model use
`--method serve` (`lmforge bench serve --concurrency 1`: decode = 1 / median inter-token latency).
Run in the venv check_gguf.py uses (`pip install llama-cpp-python numpy`):
  bench_decode_gguf.py FILE.gguf --lmforge BINARY [--threads 2] [--prompt-len 64] [--tokens 128]
Prints one line per side and the ratio lmforge / llama.cpp of decode tokens/s."""
import argparse, json, os, subprocess, time
import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("file")
ap.add_argument("--lmforge", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--prompt-len", type=int, default=64)
ap.add_argument("--tokens", type=int, default=128)
ap.add_argument("--repeats", type=int, default=3)
ap.add_argument("--method", choices=["generate", "serve"], default="generate",
                help="serve: `lmforge bench serve --concurrency 1`, decode = 1 / median inter-token latency "
                     "(for trained models, whose `generate` stops at the end-of-text token)")
a = ap.parse_args()

llm = Llama(model_path=a.file, n_ctx=a.prompt_len + a.tokens + 8, n_threads=a.threads,
            n_threads_batch=a.threads, verbose=False)
text = "The quick brown fox jumps over the lazy dog. " * 64
prompt = llm.tokenize(text.encode(), add_bos=False)[: a.prompt_len]
prefill, decode = [], []
for _ in range(a.repeats):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    for _ in range(a.tokens):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    t2 = time.perf_counter()
    prefill.append(len(prompt) / (t1 - t0))
    decode.append(a.tokens / (t2 - t1))
llama = {"prefill_tokens_per_s": float(np.median(prefill)), "decode_tokens_per_s": float(np.median(decode))}
print(f"llama.cpp: prompt {llama['prefill_tokens_per_s']:.0f} tokens/s, decode {llama['decode_tokens_per_s']:.1f} tokens/s "
      f"({a.threads} threads, median of {a.repeats})")

# lmforge: `generate` (greedy, KV cache) for 1 and for 1 + N new tokens; the difference of the
# wall times is N tokens of decoding (loading and the prompt cost both runs the same). Counted
# in tokens, not streamed text pieces (a token may print nothing).
def wall(n):
    t0 = time.perf_counter()
    subprocess.run([a.lmforge, "generate", "--model", a.file, "--prompt", text[: 4 * a.prompt_len],
                    "--max-new-tokens", str(n), "--temperature", "0"], capture_output=True, check=True, env=env)
    return time.perf_counter() - t0
env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
if a.method == "serve":
    out = subprocess.run([a.lmforge, "bench", "serve", "--model", a.file, "--concurrency", "1", "--requests",
                          str(a.repeats), "--prompt-len", str(a.prompt_len), "--max-tokens", str(a.tokens), "--json"],
                         capture_output=True, text=True, env=env, check=True)
    level = json.loads(out.stdout)["levels"][0]
    ours = 1000.0 / level["itl_p50_ms"]
    print(f"lmforge:   decode {ours:.1f} tokens/s (bench serve, 1 / median inter-token latency)")
else:
    short = float(np.median([wall(1) for _ in range(a.repeats)]))
    long = float(np.median([wall(1 + a.tokens) for _ in range(a.repeats)]))
    ours = a.tokens / (long - short)
    print(f"lmforge:   decode {ours:.1f} tokens/s (generate 1 + {a.tokens} vs 1 new tokens, median of {a.repeats})")
print(f"decode lmforge / llama.cpp = {ours / llama['decode_tokens_per_s']:.2f}")
