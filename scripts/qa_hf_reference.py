#!/usr/bin/env python3
"""The QA recipe's run in PyTorch + transformers, for a side-by-side with lmforge: the same SQuAD
v2.0 files, base folder and settings as configs/qa/minilm.toml (seeded subset of 1,000 train
questions, BertForQuestionAnswering from the MiniLM BertModel folder, run_qa.py's windows with
max_length 256 and doc_stride 64, AdamW lr 1e-4 weight decay 0.01, linear schedule with 20
warm-up steps, batch 16 windows, 2 epochs, dropout 0.1), then run_qa.py's post-processing
(n_best 20, max_answer_length 64, null threshold 0) of the last model on the test file, scored
by the official SQuAD v2.0 script (scripts/squad_official/evaluate_v2_0.py), and the training
time. Prints one JSON object.

    PY=$(bash scripts/install-hf-reference.sh)
    $PY scripts/qa_hf_reference.py runs/qa/data ../shared/data/models/all-minilm-l6-v2
"""

import importlib.util
import json
import os
import random
import sys
import time

import numpy as np
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, get_linear_schedule_with_warmup

from make_qa_fixtures import targets  # run_qa.py's label scan, shared with the fixtures

MAX_LEN, STRIDE, BATCH, N_BEST, MAX_ANSWER = 256, 64, 16, 20, 64


def read_squad(path):
    out = []
    for article in json.load(open(path, encoding="utf-8"))["data"]:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                answers = [] if qa.get("is_impossible") else qa["answers"]
                out.append({"id": qa["id"], "question": qa["question"].lstrip(), "context": p["context"],
                            "answers": answers})
    return out


def features(tok, rows, train):
    """run_qa.py's prepare_train_features / prepare_validation_features."""
    enc = tok([r["question"] for r in rows], [r["context"] for r in rows], truncation="only_second",
              max_length=MAX_LEN, stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True)
    out = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids, seq, row = enc["input_ids"][i], enc.sequence_ids(i), rows[enc["overflow_to_sample_mapping"][i]]
        answer = row["answers"][0] if train and row["answers"] else None
        start_char = answer["answer_start"] if answer else None
        end_char = start_char + len(answer["text"]) if answer else None
        start, end = targets(ids, seq, offsets, tok.cls_token_id, start_char, end_char)
        out.append({"ids": ids, "types": enc["token_type_ids"][i], "start": start, "end": end, "row": row,
                    "offsets": [o if seq[k] == 1 else None for k, o in enumerate(offsets)]})
    return out


def tensors(feats, pad):
    width = max(len(f["ids"]) for f in feats)
    pad_row = lambda v, x: v + [x] * (width - len(v))
    return (torch.tensor([pad_row(f["ids"], pad) for f in feats]),
            torch.tensor([pad_row(f["types"], 0) for f in feats]),
            torch.tensor([pad_row([1] * len(f["ids"]), 0) for f in feats]))


def answer(feats, logits):
    """run_qa.py's postprocess_qa_predictions for one question (version_2_with_negative)."""
    prelim, min_null = [], None
    for f, (s, e) in zip(feats, logits):
        s, e = s[: len(f["ids"])], e[: len(f["ids"])]
        null = s[0] + e[0]
        if min_null is None or min_null["score"] > null:
            min_null = {"offsets": (0, 0), "score": null, "start_logit": s[0], "end_logit": e[0]}
        for si in np.argsort(s)[-1 : -N_BEST - 1 : -1].tolist():
            for ei in np.argsort(e)[-1 : -N_BEST - 1 : -1].tolist():
                o = f["offsets"]
                if si >= len(o) or ei >= len(o) or o[si] is None or o[ei] is None:
                    continue
                if ei < si or ei - si + 1 > MAX_ANSWER:
                    continue
                prelim.append({"offsets": (o[si][0], o[ei][1]), "score": s[si] + e[ei],
                               "start_logit": s[si], "end_logit": e[ei]})
    prelim.append(min_null)
    preds = sorted(prelim, key=lambda x: x["score"], reverse=True)[:N_BEST]
    if not any(p["offsets"] == (0, 0) for p in preds):
        preds.append(min_null)
    context = feats[0]["row"]["context"]
    for p in preds:
        p["text"] = context[p["offsets"][0] : p["offsets"][1]]
    if len(preds) == 0 or (len(preds) == 1 and preds[0]["text"] == ""):
        preds.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0, "score": 0.0})
    i = 0
    while preds[i]["text"] == "":
        i += 1
    best = preds[i]
    return "" if min_null["score"] - best["start_logit"] - best["end_logit"] > 0.0 else best["text"]


def main():
    data, base = sys.argv[1], sys.argv[2]
    torch.manual_seed(42)
    torch.set_num_threads(2)
    rng = random.Random(42)
    train = read_squad(f"{data}/train.json")
    train = [train[i] for i in sorted(rng.sample(range(len(train)), min(1000, len(train))))]
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForQuestionAnswering.from_pretrained(base, hidden_dropout_prob=0.1, dtype=torch.float32)
    feats = features(tok, train, True)
    steps = 2 * ((len(feats) + BATCH - 1) // BATCH)
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-4)
    sched = get_linear_schedule_with_warmup(opt, 20, steps)
    model.train()
    start = time.time()
    for _ in range(2):
        order = list(range(len(feats)))
        rng.shuffle(order)
        for k in range(0, len(order), BATCH):
            b = [feats[i] for i in order[k : k + BATCH]]
            ids, types, mask = tensors(b, tok.pad_token_id)
            loss = model(input_ids=ids, token_type_ids=types, attention_mask=mask,
                         start_positions=torch.tensor([f["start"] for f in b]),
                         end_positions=torch.tensor([f["end"] for f in b])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
    seconds = time.time() - start
    model.eval()
    test = read_squad(f"{data}/test.json")
    tfeats = features(tok, test, False)
    logits = []
    with torch.no_grad():
        for k in range(0, len(tfeats), 64):
            b = tfeats[k : k + 64]
            ids, types, mask = tensors(b, tok.pad_token_id)
            out = model(input_ids=ids, token_type_ids=types, attention_mask=mask)
            logits += list(zip(out.start_logits.tolist(), out.end_logits.tolist()))
    by_id = {}
    for f, l in zip(tfeats, logits):
        by_id.setdefault(f["row"]["id"], []).append((f, l))
    preds = {qid: answer([f for f, _ in fl], [l for _, l in fl]) for qid, fl in by_id.items()}
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("ev2", os.path.join(here, "squad_official", "evaluate_v2_0.py"))
    ev2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ev2)
    dataset = json.load(open(f"{data}/test.json", encoding="utf-8"))["data"]
    exact, f1 = ev2.get_raw_scores(dataset, preds)
    has_ans = ev2.make_qid_to_has_ans(dataset)
    scores = ev2.make_eval_dict(exact, f1)
    ev2.merge_eval(scores, ev2.make_eval_dict(exact, f1, qid_list=[k for k, v in has_ans.items() if v]), "HasAns")
    ev2.merge_eval(scores, ev2.make_eval_dict(exact, f1, qid_list=[k for k, v in has_ans.items() if not v]), "NoAns")
    print(json.dumps({
        "train_questions": len(train),
        "train_windows": len(feats),
        "steps": steps,
        "train_seconds": round(seconds, 1),
        "test": scores,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
