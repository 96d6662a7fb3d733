#!/usr/bin/env python3
"""Single-stream speed of one GGUF file in llama.cpp and in lmforge, on the same cores: prompt
processing and decode tokens/s of llama.cpp (llama-cpp-python, greedy, KV cache, `--threads`
threads) beside lmforge's `generate` (greedy, KV cache; decode tokens/s from the wall-time
difference of 1 + N and 1 new tokens). A `generate` that stops early at the end-of-text token
would overstate lmforge's rate (random-weight models rarely pick it); for a trained model use
`--method serve` (`lmforge bench serve --concurrency 1`: decode = 1 / median inter-token latency).
Run in the venv check_gguf.py uses (`pip install llama-cpp-python numpy`):
  bench_decode_gguf.py FILE.gguf --lmforge BINARY [--threads 2] [--prompt-len 64] [--tokens 128]
The two sides alternate round by round (`--repeats` rounds); prints one line per side and the
median of the rounds' ratios lmforge / llama.cpp of decode tokens/s."""
import argparse, json, os, subprocess, time
import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("file")
ap.add_argument("--lmforge", required=True)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--prompt-len", type=int, default=64)
ap.add_argument("--tokens", type=int, default=128)
ap.add_argument("--repeats", type=int, default=5)
ap.add_argument("--no-repack", action="store_true",
                help="llama.cpp without its extra weight buffers (repacked / AMX layouts): on machines where "
                     "they crash (AMX tiles the sandbox does not grant), this is llama.cpp's fastest working path")
ap.add_argument("--method", choices=["generate", "serve"], default="generate",
                help="serve: `lmforge bench serve --concurrency 1`, decode = 1 / median inter-token latency "
                     "(for trained models, whose `generate` stops at the end-of-text token)")
a = ap.parse_args()
if a.no_repack:
    import llama_cpp, llama_cpp.llama
    _defaults = llama_cpp.llama_model_default_params
    def _no_extra_buffers():
        p = _defaults()
        p.use_extra_bufts = False
        return p
    llama_cpp.llama.llama_cpp.llama_model_default_params = _no_extra_buffers

llm = Llama(model_path=a.file, n_ctx=a.prompt_len + a.tokens + 8, n_threads=a.threads,
            n_threads_batch=a.threads, verbose=False)
text = "The quick brown fox jumps over the lazy dog. " * 64
prompt = llm.tokenize(text.encode(), add_bos=False)[: a.prompt_len]
env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))


def llama_round():
    """llama.cpp's prompt and decode tokens/s, once."""
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    for _ in range(a.tokens):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([tok])
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), a.tokens / (t2 - t1)


# lmforge: `generate` (greedy, KV cache) for 1 and for 1 + N new tokens; the difference of the
# wall times is N tokens of decoding (loading and the prompt cost both runs the same). Counted
# in tokens, not streamed text pieces (a token may print nothing).
def wall(n):
    t0 = time.perf_counter()
    subprocess.run([a.lmforge, "generate", "--model", a.file, "--prompt", text[: 4 * a.prompt_len],
                    "--max-new-tokens", str(n), "--temperature", "0"], capture_output=True, check=True, env=env)
    return time.perf_counter() - t0


def lmforge_round():
    """lmforge's decode tokens/s, once."""
    if a.method == "serve":
        out = subprocess.run([a.lmforge, "bench", "serve", "--model", a.file, "--concurrency", "1", "--requests",
                              "3", "--prompt-len", str(a.prompt_len), "--max-tokens", str(a.tokens), "--json"],
                             capture_output=True, text=True, env=env, check=True)
        return 1000.0 / json.loads(out.stdout)["levels"][0]["itl_p50_ms"]
    return a.tokens / (wall(1 + a.tokens) - wall(1))


# The two sides alternate, round by round, and each round's ratio is taken on its own: on a
# shared machine whose speed drifts, a ratio of two measurements minutes apart would measure the
# drift.
prefill, decode, ours, ratios = [], [], [], []
for _ in range(a.repeats):
    p, d = llama_round()
    o = lmforge_round()
    prefill.append(p)
    decode.append(d)
    ours.append(o)
    ratios.append(o / d)
print(f"llama.cpp: prompt {np.median(prefill):.0f} tokens/s, decode {np.median(decode):.1f} tokens/s "
      f"({a.threads} threads, median of {a.repeats})")
how = "bench serve, 1 / median inter-token latency" if a.method == "serve" else f"generate 1 + {a.tokens} vs 1 new tokens"
print(f"lmforge:   decode {np.median(ours):.1f} tokens/s ({how}, median of {a.repeats})")
print(f"decode lmforge / llama.cpp = {np.median(ratios):.2f} (median of the rounds' ratios; "
      f"rounds {', '.join(f'{r:.2f}' for r in ratios)})")
