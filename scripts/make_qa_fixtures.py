#!/usr/bin/env python3
"""Writes the extractive-QA parity fixtures in crates/lmforge/tests/fixtures/:
`bert-qa-tiny/` (BertForQuestionAnswering) and `gpt2-qa-tiny/` (GPT2ForQuestionAnswering),
made as ../shared/fixtures were made (its README): PyTorch fp32 on the CPU, deterministic, from
the shared `bert-tiny` / `gpt2-tiny` backbones with a seeded random `qa_outputs` head, saved with
`save_pretrained` (Hugging Face's names).

The inputs are `run_qa.py`'s: a transformers fast tokenizer (the folder's tokenizer.json) on
(question, context) with truncation="only_second", max_length=MAX_LEN, stride=STRIDE,
return_overflowing_tokens=True, return_offsets_mapping=True; the training targets are
prepare_train_features' start / end positions. The batch is the first window that holds the
answer and the one before it (both MAX_LEN tokens, so no padding enters the loss).

Each folder holds the model (config.json, model.safetensors, tokenizer.json) and
  expected.safetensors  input_ids, token_type_ids, attention_mask [2, MAX_LEN],
                        start_positions, end_positions [2], start_logits, end_logits [2, MAX_LEN]
  expected.json         loss ((CE(start) + CE(end)) / 2), the question, context, answer, and per
                        window the context offsets (None outside the context) and targets
  grads.safetensors     d loss / d parameter, Hugging Face names

Also `minilm_qa_windows.json`: the shared real MiniLM tokenizer (WordPiece, [CLS] q [SEP] c
[SEP]) on a few question / context pairs (accents, a long context): every window's ids, type
ids, context offsets and run_qa.py's targets, for the window test.

Regenerate:
    PY=$(bash scripts/install-hf-reference.sh) && $PY scripts/make_qa_fixtures.py
"""

import json
import os
import shutil
from importlib.metadata import version

import torch
from safetensors.torch import save_file
from transformers import AutoModelForQuestionAnswering, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("LMFORGE_FIXTURES", os.path.join(HERE, "..", "..", "shared", "fixtures"))
OUT = os.path.join(HERE, "..", "crates", "lmforge", "tests", "fixtures")
MAX_LEN, STRIDE = 48, 16

QUESTION = "  Where did the committee meet in 1998?"
CONTEXT = (
    "The committee was founded in 1985 by a group of engineers. For its first decade it met in a "
    "rented room above a bakery in Ghent. In 1998 the committee met in the old town hall of "
    "Bruges, and it has met there every spring since. Its archive, however, stayed in Ghent "
    "until 2004, when the university library offered to keep it."
)
ANSWER = "the old town hall of Bruges"


def targets(ids, seq, offsets, cls_token_id, start_char, end_char):
    """run_qa.py's prepare_train_features for one window: the answer's first and last token, or
    the [CLS] index (0 without one) when there is no answer or the window does not hold it all."""
    cls_index = ids.index(cls_token_id) if cls_token_id in ids else 0
    if start_char is None:
        return cls_index, cls_index
    ts = 0
    while seq[ts] != 1:
        ts += 1
    te = len(ids) - 1
    while seq[te] != 1:
        te -= 1
    if not (offsets[ts][0] <= start_char and offsets[te][1] >= end_char):
        return cls_index, cls_index
    while ts < len(offsets) and offsets[ts][0] <= start_char:
        ts += 1
    while offsets[te][1] >= end_char:
        te -= 1
    return ts - 1, te + 1


def windows(tok, question, context, answer, max_len, stride):
    """run_qa.py's prepare_train_features and prepare_validation_features for one pair."""
    question = question.lstrip()
    enc = tok(question, context, truncation="only_second", max_length=max_len, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True)
    start_char = context.index(answer) if answer else None
    end_char = start_char + len(answer) if answer else None
    out = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ids = enc["input_ids"][i]
        seq = enc.sequence_ids(i)
        start, end = targets(ids, seq, offsets, tok.cls_token_id, start_char, end_char)
        out.append({
            "ids": ids,
            # The tokenizer's segment ids (BertTokenizerFast returns them as token_type_ids).
            "type_ids": enc.encodings[i].type_ids,
            "context_offsets": [list(o) if seq[k] == 1 else None for k, o in enumerate(offsets)],
            "start": start,
            "end": end,
        })
    return question, out


def make(base_name, out_name, seed):
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    base = os.path.join(SHARED, base_name)
    model = AutoModelForQuestionAnswering.from_pretrained(base)
    with torch.no_grad():
        model.qa_outputs.weight.normal_(0.0, 0.5)
        model.qa_outputs.bias.uniform_(-0.5, 0.5)
    model.eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(base, "tokenizer.json"))
    question, wins = windows(tok, QUESTION, CONTEXT, ANSWER, MAX_LEN, STRIDE)
    # The first window that holds the answer and the one before it (a "no answer" target), both
    # MAX_LEN long: no padding enters the loss.
    k = next(i for i, w in enumerate(wins) if w["start"] != 0)
    batch = wins[k - 1:k + 1]
    assert k >= 1 and all(len(w["ids"]) == MAX_LEN for w in batch), [len(w["ids"]) for w in wins]
    x = {
        "input_ids": torch.tensor([w["ids"] for w in batch]),
        "token_type_ids": torch.tensor([w["type_ids"] for w in batch]),
        "attention_mask": torch.ones(2, MAX_LEN, dtype=torch.long),
        "start_positions": torch.tensor([w["start"] for w in batch]),
        "end_positions": torch.tensor([w["end"] for w in batch]),
    }
    kwargs = {k: v for k, v in x.items() if k != "token_type_ids" or model.config.model_type == "bert"}
    out = model(**kwargs)
    out.loss.backward()

    folder = os.path.join(OUT, out_name)
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    shutil.copy(os.path.join(base, "tokenizer.json"), os.path.join(folder, "tokenizer.json"))
    expected = {k: v.contiguous() for k, v in x.items()}
    expected["start_logits"] = out.start_logits.detach().contiguous()
    expected["end_logits"] = out.end_logits.detach().contiguous()
    save_file(expected, os.path.join(folder, "expected.safetensors"))
    grads = {n: p.grad.detach().contiguous() for n, p in model.named_parameters() if p.grad is not None}
    save_file(grads, os.path.join(folder, "grads.safetensors"))
    meta = {
        "loss": out.loss.item(),
        "question": question,
        "context": CONTEXT,
        "answer": ANSWER,
        "answer_start": CONTEXT.index(ANSWER),
        "max_length": MAX_LEN,
        "stride": STRIDE,
        "windows": wins,
        "batch": [k - 1, k],
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "tokenizers": version("tokenizers"),
    }
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{out_name}: loss {out.loss.item():.6f}, {len(grads)} gradients, {len(wins)} windows")


def minilm_windows():
    path = os.path.join(SHARED, "..", "data", "models", "all-minilm-l6-v2", "tokenizer.json")
    tok = PreTrainedTokenizerFast(tokenizer_file=path, cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]")
    cases = []
    pairs = [
        (QUESTION, CONTEXT, ANSWER, 48, 16),
        ("Who wrote it?", "Das Buch wurde von Zoë Müller-Lüdenscheidt geschrieben, naïvely.", "Zoë Müller-Lüdenscheidt", 64, 8),
        ("When?", "Short context, ends at 2004", "2004", 40, 4),
        ("A very long question that leaves little room for the context at all, really?", CONTEXT, "Ghent", 28, 2),
        ("Unanswerable here?", CONTEXT, "", 40, 10),
    ]
    for question, context, answer, max_len, stride in pairs:
        q, wins = windows(tok, question, context, answer, max_len, stride)
        cases.append({"question": question, "context": context, "answer": answer,
                      "answer_start": context.index(answer) if answer else None,
                      "max_length": max_len, "stride": stride, "windows": wins})
    with open(os.path.join(OUT, "minilm_qa_windows.json"), "w") as f:
        json.dump({"tokenizers": version("tokenizers"), "cases": cases}, f, ensure_ascii=False)
        f.write("\n")


if __name__ == "__main__":
    make("bert-tiny", "bert-qa-tiny", 3)
    make("gpt2-tiny", "gpt2-qa-tiny", 4)
    minilm_windows()
