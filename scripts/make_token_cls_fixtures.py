#!/usr/bin/env python3
"""Writes the token-classification parity fixtures in crates/lmforge/tests/fixtures/:
`bert-token-cls-tiny/` (BertForTokenClassification) and `gpt2-token-cls-tiny/`
(GPT2ForTokenClassification), made as ../shared/fixtures were made (its README): PyTorch fp32 on
the CPU, deterministic, from the shared `bert-tiny` / `gpt2-tiny` backbones with a seeded random
head (bias perturbed so it is not 0), saved with `save_pretrained` (Hugging Face's names).

Each folder holds the model (config.json with id2label, model.safetensors, tokenizer.json) and
  expected.safetensors  input_ids, token_type_ids, attention_mask [2, T] (right padding),
                        labels [2, T] (the tag of each word's first sub-word, -100 elsewhere, as
                        run_ner.py with label_all_tokens=False), logits [2, T, 5]
  expected.json         loss (CrossEntropyLoss over the labels that are not -100), the words
                        and word tags of both sentences, the word_ids of each token
  grads.safetensors     d loss / d parameter, Hugging Face names

The inputs come from the `tokenizers` library with the sentences given as words
(is_pretokenized=True) and a byte-level pre-tokenizer set to add_prefix_space=True, which is what
transformers' fast tokenizers do for `tokenizer(words, is_split_into_words=True)` with
`add_prefix_space=True` (run_ner.py's setting for byte-level BPE models).

Also `minilm_alignment.json`: the shared real MiniLM tokenizer (WordPiece, [CLS] / [SEP]) on
a few word-split sentences: ids and word_ids, for the alignment test.

Regenerate:
    PY=$(bash scripts/install-hf-reference.sh) && $PY scripts/make_token_cls_fixtures.py
"""

import json
import os
import random
import shutil
from importlib.metadata import version

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, pre_tokenizers
from transformers import AutoModelForTokenClassification

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("LMFORGE_FIXTURES", os.path.join(HERE, "..", "..", "shared", "fixtures"))
OUT = os.path.join(HERE, "..", "crates", "lmforge", "tests", "fixtures")
LABELS = ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
SENTENCES = [
    "Peter Blackburn flew from Brussels to Lisbonne yesterday , unannounced .".split(),
    "Zürich's mayor met Anna-Lena".split(),
]


def tagger(path):
    tok = Tokenizer.from_file(path)
    if isinstance(tok.pre_tokenizer, pre_tokenizers.ByteLevel):
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    return tok


def make(base_name, out_name, seed):
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    base = os.path.join(SHARED, base_name)
    model = AutoModelForTokenClassification.from_pretrained(
        base,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={l: i for i, l in enumerate(LABELS)},
    )
    head = model.classifier if hasattr(model, "classifier") else model.score
    with torch.no_grad():
        head.weight.normal_(0.0, 0.5)
        head.bias.uniform_(-0.5, 0.5)
    model.eval()

    tok = tagger(os.path.join(base, "tokenizer.json"))
    encs = [tok.encode(words, is_pretokenized=True) for words in SENTENCES]
    rng = random.Random(seed)
    tags = [[rng.randrange(len(LABELS)) for _ in words] for words in SENTENCES]
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    width = max(len(e.ids) for e in encs)
    ids, types, mask, labels, word_ids = [], [], [], [], []
    for e, t in zip(encs, tags):
        n = len(e.ids)
        ids.append(e.ids + [pad] * (width - n))
        types.append(e.type_ids + [0] * (width - n))
        mask.append([1] * n + [0] * (width - n))
        row, prev = [], None
        for w in e.word_ids:
            row.append(-100 if w is None or w == prev else t[w])
            prev = w
        labels.append(row + [-100] * (width - n))
        word_ids.append(e.word_ids)
    x = {k: torch.tensor(v) for k, v in
         dict(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels).items()}
    kwargs = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"], labels=x["labels"])
    if model.config.model_type == "bert":
        kwargs["token_type_ids"] = x["token_type_ids"]
    out = model(**kwargs)
    out.loss.backward()

    folder = os.path.join(OUT, out_name)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    shutil.copy(os.path.join(base, "tokenizer.json"), os.path.join(folder, "tokenizer.json"))
    expected = {k: v.contiguous() for k, v in x.items()}
    expected["logits"] = out.logits.detach().contiguous()
    save_file(expected, os.path.join(folder, "expected.safetensors"))
    grads = {n: p.grad.detach().contiguous() for n, p in model.named_parameters() if p.grad is not None}
    save_file(grads, os.path.join(folder, "grads.safetensors"))
    meta = {
        "loss": out.loss.item(),
        "words": SENTENCES,
        "tags": [[LABELS[i] for i in t] for t in tags],
        "word_ids": word_ids,
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "tokenizers": version("tokenizers"),
    }
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{out_name}: loss {out.loss.item():.6f}, {len(grads)} gradients, width {width}")


def minilm_alignment():
    path = os.path.join(SHARED, "..", "data", "models", "all-minilm-l6-v2", "tokenizer.json")
    tok = tagger(path)
    tok.no_truncation()
    tok.no_padding()
    cases = []
    for words in SENTENCES + [["Unbelievably", "short", "x"], ["naïve", "café", "übermäßig", "!"]]:
        e = tok.encode(words, is_pretokenized=True)
        cases.append({"words": words, "ids": e.ids, "word_ids": e.word_ids})
    with open(os.path.join(OUT, "minilm_alignment.json"), "w") as f:
        json.dump({"tokenizers": version("tokenizers"), "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    make("bert-tiny", "bert-token-cls-tiny", 1)
    make("gpt2-tiny", "gpt2-token-cls-tiny", 2)
    minilm_alignment()
