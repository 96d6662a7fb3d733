#!/usr/bin/env python3
"""Writes crates/lmforge/tests/fixtures/bert-regression-tiny/: a BertForSequenceClassification
with num_labels = 1 and problem_type = "regression" (transformers' MSELoss on the single logit),
made as ../shared/fixtures were made: PyTorch fp32 on the CPU, deterministic, the shared
`bert-tiny` backbone with a seeded head, saved with save_pretrained. The inputs are the shared
`bert-cls-tiny` fixture's (a padded row included) with float targets.

  expected.safetensors  input_ids, token_type_ids, attention_mask, labels (float), logits [B, 1]
  expected.json         loss (mean squared error)
  grads.safetensors     d loss / d parameter, Hugging Face names

    PY=$(bash scripts/install-hf-reference.sh) && $PY scripts/make_regression_fixture.py
"""

import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("LMFORGE_FIXTURES", os.path.join(HERE, "..", "..", "shared", "fixtures"))
OUT = os.path.join(HERE, "..", "crates", "lmforge", "tests", "fixtures", "bert-regression-tiny")

torch.manual_seed(3)
torch.use_deterministic_algorithms(True)
model = AutoModelForSequenceClassification.from_pretrained(
    os.path.join(SHARED, "bert-tiny"), num_labels=1, problem_type="regression", dtype=torch.float32
)
with torch.no_grad():
    model.classifier.weight.normal_(0.0, 0.5)
    model.classifier.bias.fill_(2.5)
model.eval()
x = load_file(os.path.join(SHARED, "bert-cls-tiny", "expected.safetensors"))
inputs = {k: x[k] for k in ("input_ids", "token_type_ids", "attention_mask")}
labels = torch.linspace(0.0, 5.0, inputs["input_ids"].shape[0])
out = model(**inputs, labels=labels)
out.loss.backward()
os.makedirs(OUT, exist_ok=True)
model.save_pretrained(OUT, safe_serialization=True)
shutil.copy(os.path.join(SHARED, "bert-tiny", "tokenizer.json"), os.path.join(OUT, "tokenizer.json"))
save_file({**{k: v.contiguous() for k, v in inputs.items()}, "labels": labels, "logits": out.logits.detach()},
          os.path.join(OUT, "expected.safetensors"))
save_file({n: p.grad.detach().contiguous() for n, p in model.named_parameters() if p.grad is not None},
          os.path.join(OUT, "grads.safetensors"))
with open(os.path.join(OUT, "expected.json"), "w") as f:
    json.dump({"loss": out.loss.item(), "torch": torch.__version__}, f, indent=1)
    f.write("\n")
print(f"loss {out.loss.item():.6f}, logits {out.logits.squeeze(-1).tolist()}")
