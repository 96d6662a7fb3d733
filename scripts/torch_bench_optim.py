#!/usr/bin/env python3
"""Runs ../shared/bench/pytorch_gpt_bench.py with another optimizer in place of its AdamW.

usage: torch_bench_optim.py OPTIM BENCH_SCRIPT [the bench script's arguments]

OPTIM is adamw (the script as it is) or adafactor: torch.optim.Adafactor at the same lr and
weight decay (its factored second moment; PyTorch's own algorithm, close to but not exactly
Hugging Face's, which lmforge follows) - the PyTorch side of a model whose AdamW state does not
fit the GPU (Llama-7B on an 80 GB H100), as `lmforge bench train --optim adafactor` is
lmforge's. The bench script's step, timing and JSON are unchanged.
"""
import runpy
import sys

import torch

optim, bench = sys.argv[1], sys.argv[2]
sys.argv = [bench] + sys.argv[3:]
if optim == "adafactor":
    def adafactor(params, lr, weight_decay, fused=None):
        return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay, foreach=True)
    torch.optim.AdamW = adafactor
elif optim != "adamw":
    sys.exit(f"torch_bench_optim.py: unknown optimizer {optim!r} (adamw or adafactor)")
runpy.run_path(bench, run_name="__main__")
