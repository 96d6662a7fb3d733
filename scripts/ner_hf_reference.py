#!/usr/bin/env python3
"""The NER recipe's run in PyTorch + transformers, for a side-by-side with lmforge: the same
CoNLL files, base folder and settings as configs/ner/minilm.toml (seeded subset of train
sentences, BertForTokenClassification from the MiniLM BertModel folder, AdamW lr 1e-4 weight
decay 0.01, linear schedule with 20 warm-up steps, batch 32, 2 epochs, dropout 0.1, first
sub-word labelled as run_ner.py), then seqeval's report of the last model on the test file and
the training time. Prints one JSON object.

    PY=$(bash scripts/install-hf-reference.sh)
    $PY scripts/ner_hf_reference.py runs/ner/data ../shared/data/models/all-minilm-l6-v2
"""

import json
import random
import sys
import time

import torch
from seqeval.metrics import classification_report, f1_score
from transformers import AutoModelForTokenClassification, AutoTokenizer, get_linear_schedule_with_warmup


def read_conll(path):
    out, words, tags = [], [], []
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        if not line.strip():
            if words:
                out.append((words, tags))
            words, tags = [], []
            continue
        cols = line.split()
        words.append(cols[0])
        tags.append(cols[-1])
    if words:
        out.append((words, tags))
    return out


def encode(tok, rows, label2id, max_len=128):
    enc = tok([w for w, _ in rows], is_split_into_words=True, truncation=True, max_length=max_len)
    labels = []
    for i, (_, tags) in enumerate(rows):
        prev, row = None, []
        for w in enc.word_ids(i):
            row.append(-100 if w is None or w == prev else label2id[tags[w]])
            prev = w
        labels.append(row)
    return enc, labels


def batches(enc, labels, idx, pad):
    for k in range(0, len(idx), 32):
        b = idx[k : k + 32]
        width = max(len(enc["input_ids"][i]) for i in b)
        ids = [enc["input_ids"][i] + [pad] * (width - len(enc["input_ids"][i])) for i in b]
        mask = [[1] * len(enc["input_ids"][i]) + [0] * (width - len(enc["input_ids"][i])) for i in b]
        lab = [labels[i] + [-100] * (width - len(labels[i])) for i in b]
        yield torch.tensor(ids), torch.tensor(mask), torch.tensor(lab)


def main():
    data, base = sys.argv[1], sys.argv[2]
    torch.manual_seed(42)
    torch.set_num_threads(2)
    rng = random.Random(42)
    train = read_conll(f"{data}/train.conll")
    keep = sorted(rng.sample(range(len(train)), min(4000, len(train))))
    train = [train[i] for i in keep]
    test = read_conll(f"{data}/test.conll")
    labels = sorted({t for _, tags in train for t in tags})
    label2id = {l: i for i, l in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForTokenClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=label2id, hidden_dropout_prob=0.1,
        dtype=torch.float32,  # the folder holds fp16 weights; lmforge trains in fp32 too
    )
    enc, lab = encode(tok, train, label2id)
    steps = 2 * ((len(train) + 31) // 32)
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-4)
    sched = get_linear_schedule_with_warmup(opt, 20, steps)
    model.train()
    start = time.time()
    for epoch in range(2):
        order = list(range(len(train)))
        rng.shuffle(order)
        for ids, mask, y in batches(enc, lab, order, tok.pad_token_id):
            loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    seconds = time.time() - start
    model.eval()
    tenc, tlab = encode(tok, test, label2id)
    gold, pred = [], []
    with torch.no_grad():
        for k, (ids, mask, y) in enumerate(batches(tenc, tlab, list(range(len(test))), tok.pad_token_id)):
            logits = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            for row, yrow in zip(logits.tolist(), y.tolist()):
                gold.append([labels[t] for t in yrow if t != -100])
                pred.append([labels[p] for p, t in zip(row, yrow) if t != -100])
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    print(json.dumps({
        "train_sentences": len(train),
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "test_f1": f1_score(gold, pred),
        "per_type_f1": {k: v["f1-score"] for k, v in report.items() if not k.endswith("avg")},
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
