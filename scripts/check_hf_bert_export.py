#!/usr/bin/env python3
"""Loads an lmforge-exported BERT folder with transformers' BertForPreTraining.from_pretrained and
scores a text the way `lmforge eval mlm` does (chunks of context-2 tokens as [CLS] chunk [SEP],
chunk tokens 0, N, 2N, ... replaced by [MASK]); prints both losses. Run in a venv with torch and
transformers (e.g. /tmp/torchref): check_hf_bert_export.py LMFORGE_BINARY HF_DIR TEXT_FILE"""
import json, subprocess, sys, torch
from tokenizers import Tokenizer
from transformers import BertForPreTraining

binary, d, text_file, every = sys.argv[1], sys.argv[2], sys.argv[3], 7
m = BertForPreTraining.from_pretrained(d).eval()
tok = Tokenizer.from_file(d + "/tokenizer.json")
ids = tok.encode(open(text_file).read(), add_special_tokens=False).ids
cls, sep, mask = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]"))
chunk = m.config.max_position_embeddings - 2
total, hits, n = 0.0, 0, 0
for s in range(0, len(ids), chunk):
    part = ids[s:s + chunk]
    x = [cls] + part + [sep]
    pos = list(range(0, len(part), every))
    for i in pos:
        x[i + 1] = mask
    with torch.no_grad():
        logits = m(torch.tensor([x])).prediction_logits[0]
    sel = logits[[i + 1 for i in pos]]
    tgt = torch.tensor([part[i] for i in pos])
    total += float(torch.nn.functional.cross_entropy(sel, tgt, reduction="sum"))
    hits += int((sel.argmax(-1) == tgt).sum())
    n += len(pos)
ours = json.loads(subprocess.check_output([binary, "eval", "mlm", "--model", d, "--text", text_file, "--json"]))
print(f"{d}: transformers mlm loss {total / n:.6f} acc {hits / n:.4f} | lmforge {ours['loss']:.6f} acc {ours['accuracy']:.4f}")
