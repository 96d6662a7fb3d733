#!/usr/bin/env python3
"""Checks a LoRA classifier that `lmforge finetune` wrote (sequence or token head) against
Hugging Face: PEFT's `PeftModel.from_pretrained(<base with the head's class>, RUN/model/adapter)`
and transformers' `from_pretrained(RUN/model)` (the merged folder) must give the same logits on a
few inputs. Prints both relative differences; exits 1 above 1e-4.

    PY=$(bash scripts/install-hf-reference.sh)
    $PY scripts/check_peft_classifier.py RUN_DIR BASE_FOLDER
"""

import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer


def main():
    run, base = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{run}/model/config.json"))
    token = cfg["architectures"][0].endswith("ForTokenClassification")
    auto = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    id2label = {int(k): v for k, v in cfg["id2label"].items()}
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = ["Copyright 2010 Free Software Foundation , Inc .", "-- Simon McVittie <smcv@debian.org>", "a fine movie"]
    enc = tok([t.split() for t in texts], is_split_into_words=True, padding=True, return_tensors="pt") if token \
        else tok(texts, padding=True, return_tensors="pt")
    kwargs = {"num_labels": len(id2label), "id2label": id2label, "dtype": torch.float32}
    if cfg.get("problem_type"):
        kwargs["problem_type"] = cfg["problem_type"]
    peft = PeftModel.from_pretrained(auto.from_pretrained(base, **kwargs), f"{run}/model/adapter").eval()
    merged = auto.from_pretrained(f"{run}/model", dtype=torch.float32).eval()
    with torch.no_grad():
        a, b = peft(**enc).logits, merged(**enc).logits
    mask = enc["attention_mask"].bool() if token else torch.ones(a.shape[0], dtype=torch.bool)
    rel = ((a - b).abs()[mask].max() / b.abs()[mask].max()).item()
    print(f"{'token' if token else 'sequence'} classifier: PEFT (base + RUN/model/adapter) vs transformers (RUN/model): max rel {rel:.2e}")
    sys.exit(0 if rel <= 1e-4 else 1)


if __name__ == "__main__":
    main()
