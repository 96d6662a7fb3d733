#!/usr/bin/env python3
"""Checks a LoRA classifier that `lmforge finetune` wrote (sequence, token or QA head) against
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
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer)


def main():
    run, base = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{run}/model/config.json"))
    cls = cfg["architectures"][0]
    kind = "token" if cls.endswith("ForTokenClassification") else "qa" if cls.endswith("ForQuestionAnswering") \
        else "sequence"
    auto = {"token": AutoModelForTokenClassification, "qa": AutoModelForQuestionAnswering}.get(
        kind, AutoModelForSequenceClassification)
    id2label = {int(k): v for k, v in cfg.get("id2label", {0: "LABEL_0", 1: "LABEL_1"}).items()}
    tok = AutoTokenizer.from_pretrained(base)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = ["Copyright 2010 Free Software Foundation , Inc .", "-- Simon McVittie <smcv@debian.org>", "a fine movie"]
    if kind == "token":
        enc = tok([t.split() for t in texts], is_split_into_words=True, padding=True, return_tensors="pt")
    elif kind == "qa":
        enc = tok(["who holds the copyright?"] * 3, texts, padding=True, return_tensors="pt")
    else:
        enc = tok(texts, padding=True, return_tensors="pt")
    kwargs = {"num_labels": len(id2label), "id2label": id2label, "dtype": torch.float32}
    if cfg.get("problem_type"):
        kwargs["problem_type"] = cfg["problem_type"]
    peft = PeftModel.from_pretrained(auto.from_pretrained(base, **kwargs), f"{run}/model/adapter").eval()
    merged = auto.from_pretrained(f"{run}/model", dtype=torch.float32).eval()
    logits = (lambda o: torch.stack([o.start_logits, o.end_logits], -1)) if kind == "qa" else (lambda o: o.logits)
    with torch.no_grad():
        a, b = logits(peft(**enc)), logits(merged(**enc))
    mask = enc["attention_mask"].bool() if kind != "sequence" else torch.ones(a.shape[0], dtype=torch.bool)
    rel = ((a - b).abs()[mask].max() / b.abs()[mask].max()).item()
    print(f"{kind} model: PEFT (base + RUN/model/adapter) vs transformers (RUN/model): max rel {rel:.2e}")
    sys.exit(0 if rel <= 1e-4 else 1)


if __name__ == "__main__":
    main()
