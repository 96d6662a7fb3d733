#!/usr/bin/env python3
"""Loads lmforge-exported Hugging Face folders with transformers `from_pretrained` and compares
transformers' loss on a text with `lmforge eval ppl` on the same folder. Run in a venv with torch and
transformers (e.g. /tmp/torchref): check_hf_export.py LMFORGE_BINARY HF_DIR [HF_DIR ...]"""
import json, subprocess, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
for d in sys.argv[2:]:
    m = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=d + "/tokenizer.json")
    text = "ROMEO:\nWhat light through yonder window breaks?\n"
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        out = m(ids, labels=ids)
    open("/tmp/eval.txt", "w").write(text)
    ours = json.loads(subprocess.check_output([sys.argv[1], "eval", "ppl", "--model", d, "--text", "/tmp/eval.txt", "--json"]))
    print(d, type(m).__name__, "transformers loss", float(out.loss), "lmforge loss", ours["loss"])
