#!/usr/bin/env python3
"""Writes crates/lmforge/tests/data/seqeval.json: reference values for the Rust port in
crates/lmforge/src/metrics/seqeval.rs, computed by the `seqeval` package itself (default mode,
the conlleval rules that Hugging Face's run_ner.py reports).

Cases: hand-made ones (seqeval's README example, I- after O, type changes, BIOES, no entities,
nothing predicted) and seeded random ones over BIO and BIOES tag sets with several types, some
with odd tags (`B`, `I-`, a type with a dash). For each: per-type precision / recall / F1 /
support (classification_report(output_dict=True)), the micro, macro and weighted averages,
accuracy_score, and get_entities of the gold side.

Regenerate (the hf-ref venv has seqeval):
    PY=$(bash scripts/install-hf-reference.sh) && $PY scripts/make_seqeval_expected.py
"""

import json
import math
import os
import random
import warnings
from importlib.metadata import version

from seqeval.metrics import accuracy_score, classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "lmforge", "tests", "data", "seqeval.json")

HAND = [
    ("readme", [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]],
     [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]),
    ("i_after_o_and_type_change", [["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]],
     [["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "I-ORG"]]),
    ("bioes", [["S-PER", "B-ORG", "I-ORG", "E-ORG", "O", "B-LOC", "E-LOC"]],
     [["S-PER", "B-ORG", "E-ORG", "S-ORG", "O", "B-LOC", "I-LOC"]]),
    ("no_entities_predicted", [["B-PER", "O", "B-LOC"], ["O"]], [["O", "O", "O"], ["O"]]),
    ("spurious_only", [["O", "O", "O"]], [["B-PER", "O", "I-LOC"]]),
    ("odd_tags", [["B", "I", "O", "B-A-B", "I-A-B", "I-", "B-X"]], [["B", "O", "O", "B-A-B", "I-A-B", "B-", "B-X"]]),
    ("entity_at_sentence_end", [["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["B-PER", "O"]]),
]

BIO = ["O", "O", "O"] + [f"{p}-{t}" for t in ["PER", "ORG", "LOC", "MISC"] for p in "BI"]
BIOES = ["O", "O"] + [f"{p}-{t}" for t in ["PER", "ORG", "LOC"] for p in "BIES"]
MANY = ["O"] + [f"{p}-T{i}" for i in range(12) for p in "BI"]


def random_case(rng, alphabet, sentences, max_len, noise):
    gold, pred = [], []
    for _ in range(sentences):
        n = rng.randint(1, max_len)
        g = [rng.choice(alphabet) for _ in range(n)]
        p = [t if rng.random() > noise else rng.choice(alphabet) for t in g]
        gold.append(g)
        pred.append(p)
    return gold, pred


def clean(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def expected(gold, pred):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = classification_report(gold, pred, output_dict=True, zero_division=0)
        out = {
            "accuracy": accuracy_score(gold, pred),
            "f1": f1_score(gold, pred),
            "precision": precision_score(gold, pred),
            "recall": recall_score(gold, pred),
            "gold_entities": [list(e) for e in get_entities(gold)],
            "per_type": {},
            "averages": {},
        }
    for name, v in report.items():
        entry = {k: clean(float(v[k])) for k in ("precision", "recall", "f1-score")}
        entry["support"] = int(v["support"])
        if name.endswith(" avg"):
            out["averages"][name.split()[0]] = entry
        else:
            out["per_type"][name] = entry
    return out


def main():
    rng = random.Random(20261205)
    cases = []
    for name, gold, pred in HAND:
        cases.append({"name": name, "gold": gold, "pred": pred, "expected": expected(gold, pred)})
    for i in range(12):
        alphabet = [BIO, BIOES, MANY][i % 3]
        gold, pred = random_case(rng, alphabet, rng.randint(1, 40), 25, [0.1, 0.3, 0.6][i % 3])
        cases.append({"name": f"random_{i}", "gold": gold, "pred": pred, "expected": expected(gold, pred)})
    doc = {"seqeval": version("seqeval"), "numpy": version("numpy"), "cases": cases}
    with open(OUT, "w") as f:
        # One case per line: small diffs when a case changes.
        head = {k: v for k, v in doc.items() if k != "cases"}
        f.write(json.dumps(head)[:-1] + ', "cases": [\n')
        f.write(",\n".join(json.dumps(c) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {len(cases)} cases to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
