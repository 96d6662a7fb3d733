#!/usr/bin/env python3
"""Writes crates/lmforge/tests/data/squad.json: reference values for the Rust port of the SQuAD
metrics (exact match / F1 "exactly as the official SQuAD evaluation scripts"), computed by the
official scripts themselves, vendored verbatim in scripts/squad_official/:
  evaluate_v1_1.py  (official evaluate-v1.1.py; via huggingface/datasets metrics/squad/evaluate.py)
  evaluate_v2_0.py  (official evaluate-v2.0.py; via huggingface/datasets metrics/squad_v2/evaluate.py)
Standard library only (the v2 script imports numpy at module level for a plot helper that is
never called here; when numpy is missing an empty stand-in module is put in sys.modules).

Output keys:
  normalize: {text, v1, v2} = normalize_answer of each script (they are the same function).
  pairs:     {gold, pred, v1_exact (0/1), v1_f1, v2_exact, v2_f1}: v1 = exact_match_score /
             f1_score(prediction, ground_truth), v2 = compute_exact / compute_f1(a_gold, a_pred).
             F1 values are floats exactly as Python computes them (an integer 0 / 1 that a script
             returns is written as 0.0 / 1.0).
  datasets:  {version, data, predictions, result}: result = v1 `evaluate(data, predictions)`, or
             for v2 what main() prints with no na-prob file and the default na_prob_thresh 1.0
             (make_eval_dict over all, merge_eval HasAns_ / NoAns_ when present).

Cases: hand-made ones (articles inside words, all of string.punctuation, unicode punctuation that
is kept, case, every whitespace kind str.split() knows plus some it does not, empty and
whitespace-only strings, repeated tokens, unicode letters and combining marks) and seeded random
pairs / datasets over a small vocabulary of pieces (SEED below).

    python3 scripts/make_squad_expected.py
"""

import collections
import importlib.util
import json
import os
import random
import string
import sys
import types

SEED = 20240611
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "lmforge", "tests", "data", "squad.json")


def load(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, "squad_official", file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


try:
    import numpy  # noqa: F401
except ImportError:
    sys.modules["numpy"] = types.ModuleType("numpy")  # only histogram_na_prob uses it
v1 = load("squad_v1_1", "evaluate_v1_1.py")
v2 = load("squad_v2_0", "evaluate_v2_0.py")

WS_ALL = ["\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680",
          "\u2003", "\u2009", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_WS = ["\u200b", "\ufeff", "\u180e"]  # not whitespace for str.split()

HAND_TEXTS = [
    "", " ", "   ", "\t\n", "".join(WS_ALL), "The", "the", "THE", "a", "an", "A An The",
    "theater", "another", "Anthem", "a theater and another anthem", "the the the", "a a a",
    "thea", "athe", "the-end", "t.h.e", "a.", "(an)", "'the'", "the's", "a,b", "the_a", "a_the",
    "an apple a day", "The Beatles", "Denver Broncos", "in the year 1066.", "Seventy-two!",
    string.punctuation, "a" + string.punctuation + "b", "x" + string.punctuation.replace("'", "") + "y",
    "“quoted”", "‘single’", "it’s", "«guillemets»", "en–dash", "em—dash", "ellipsis…", "¡hola!",
    "¿qué?", "a · b", "price: 5€", "§ 3", "the “the” the", "—the—", "“the”", "the…", "«a»",
    "Hello,\tWorld\n!", "a\x0bb\x0cc", "x\x1cy\x1dz\x1ew\x1fv", "one\x85two", "non\xa0breaking",
    "em\u2003space", "ideo\u3000space", "line\u2028sep", "zero\u200bwidth", "bom\ufeffhere",
    "mongolian\u180evowel", "the\u200bend", "\u200bthe\u200b", "\xa0the\xa0", "\u3000a\u3000",
    "Café", "CAFÉ", "STRASSE straße", "ẞ", "ΟΔΟΣ", "Σ", "ΣΑΣ σας", "İstanbul", "ISTANBUL", "ǅ",
    "ﬁle", "東京タワー", "東京 タワー", "北京是中国的首都。", "한국어 텍스트", "مرحبا بالعالم", "Ω ω",
    "a\u0301 b", "the\u0301", "e\u0301", "ａｎ ｔｈｅ", "Ｔｈｅ", "the²", "a½", "the\u200dend",
    "a\u200db", "the\u203f", "①the", "the٣", "x the ٣", "tab\tthe\tend", "the\nthe", "A-a-A",
    "an’", "’the", "The end.", "  The  quick   brown\tfox  ", "O'Neil", "rock 'n' roll", "U.S.A.",
    "$1,000.00", "50%", "e-mail", "C++", "#hashtag", "@user", "a/b/c", "[the]", "{an}", "<a>",
    "🙂 the 🙂", "naïve résumé", "ℌ", "Ⅳ", "ⓐ", "the\u0300", "\u0300the",
]

HAND_PAIRS = [
    ("", ""), ("", "the"), ("the", ""), ("", "   "), (" ", ""), ("The", "a"), ("a", "an"), (".", ""),
    ("", "x"), ("x", ""), ("Denver Broncos", "denver broncos"), ("Denver Broncos", "The Denver Broncos!"),
    ("Denver Broncos", "Broncos"), ("Broncos", "Denver Broncos"), ("the cat sat", "sat the cat"),
    ("cat cat dog", "cat dog dog"), ("cat cat cat", "cat"), ("cat", "cat cat cat"), ("a b c d", "e f g"),
    ("one two three", "one two three four five six"), ("theater", "the ater"), ("another", "other"),
    ("“quoted”", "quoted"), ("it’s", "its"), ("it's", "its"), ("en–dash", "en dash"),
    ("non\xa0breaking", "non breaking"), ("x\x1cy", "x y"), ("zero\u200bwidth", "zero width"),
    ("Café", "cafe"), ("ΟΔΟΣ", "οδος"), ("ΟΔΟΣ", "οδοσ"), ("İstanbul", "istanbul"), ("ẞ", "ß"),
    ("東京タワー", "東京 タワー"), ("東京タワー", "東京タワー"), ("a\u0301 b", "b"), ("the²", ""),
    ("the²", "the²"), ("U.S.A.", "usa"), ("$1,000.00", "100000"), ("   ", "\t\n"), ("a an the", ""),
    ("a an the", "."), ("the", "the the"), ("1 2 3 4", "4 3 2 1"), ("x y", "x y z"), ("x y z", "x"),
]

PIECES = ["the", "The", "THE", "a", "A", "an", "An", "theater", "another", "and", "of", "in", "to",
          "Denver", "broncos", "cat", "cat", "dog", "1066", "2.5", "U.S.", "don't", "rock'n'roll",
          "e-mail", "café", "CAFÉ", "straße", "ΟΔΟΣ", "σας", "İ", "東京", "タワー", "北京", "é",
          "a\u0301", "the²", "naïve", ".", ",", "!", "?", "'", '"', "(", ")", "-", "--", ":", ";",
          "“", "”", "–", "—", "’", "«", "»", "…", "¿", "_", "/", "\\", "[", "]", "#", "$", "%", "&",
          "*", "+", "<", "=", ">", "@", "^", "`", "{", "|", "}", "~", "\u200b"]
SEPS = [" ", " ", " ", " ", "", "  ", "\t", "\n", "\xa0", "\u3000", "\u2003", "\x1c", "\x85", "\r\n",
        "\x0b", "\x0c", "\x1f"]


def rand_text(rng, lo=0, hi=8):
    n = rng.randint(lo, hi)
    out = ""
    for i in range(n):
        if i or rng.random() < 0.15:
            out += rng.choice(SEPS)
        out += rng.choice(PIECES)
    if rng.random() < 0.15:
        out += rng.choice(SEPS)
    return out


def mutate(rng, gold):
    """A prediction that overlaps the gold: drop / add / reorder pieces, change case."""
    r = rng.random()
    if r < 0.05:
        return ""
    if r < 0.12:
        return gold
    toks = gold.split(" ")
    ops = rng.randint(1, 3)
    for _ in range(ops):
        k = rng.random()
        if k < 0.3 and len(toks) > 1:
            del toks[rng.randrange(len(toks))]
        elif k < 0.55:
            toks.insert(rng.randint(0, len(toks)), rng.choice(PIECES))
        elif k < 0.7 and len(toks) > 1:
            i, j = rng.randrange(len(toks)), rng.randrange(len(toks))
            toks[i], toks[j] = toks[j], toks[i]
        elif k < 0.85:
            i = rng.randrange(len(toks))
            toks[i] = toks[i].upper() if rng.random() < 0.5 else toks[i].lower()
        else:
            toks.append(toks[rng.randrange(len(toks))])  # a repeated token
    return rng.choice([" ", "  ", "\t", "\xa0"]).join(toks)


def pair(gold, pred):
    return {
        "gold": gold,
        "pred": pred,
        "v1_exact": int(v1.exact_match_score(pred, gold)),
        "v1_f1": float(v1.f1_score(pred, gold)),
        "v2_exact": v2.compute_exact(gold, pred),
        "v2_f1": float(v2.compute_f1(gold, pred)),
    }


def make_dataset(rng, version, n_paragraphs, tag, missing=0):
    data = []
    preds = {}
    qn = 0
    for a in range(rng.randint(1, 2)):
        paragraphs = []
        for _ in range(n_paragraphs):
            context = rand_text(rng, 20, 60)
            qas = []
            for _ in range(rng.randint(1, 5)):
                qid = f"{tag}-q{qn}"
                qn += 1
                impossible = version == "2.0" and rng.random() < 0.35
                answers = []
                if not impossible:
                    for _ in range(rng.randint(1, 4)):
                        start = rng.randrange(len(context))
                        end = min(len(context), start + rng.randint(1, 30))
                        answers.append({"text": context[start:end], "answer_start": start})
                    if version == "2.0" and rng.random() < 0.15:
                        # a gold answer that normalizes to "" (the v2 script drops it)
                        for tok in ("the", "The", "a", ".", ","):
                            i = context.find(tok)
                            if i >= 0:
                                answers.append({"text": tok, "answer_start": i})
                                break
                qa = {"id": qid, "question": "What is " + rand_text(rng, 1, 4) + "?", "answers": answers}
                if version == "2.0":
                    qa["is_impossible"] = impossible
                qas.append(qa)
                r = rng.random()
                if r < 0.2:
                    preds[qid] = ""
                elif answers and r < 0.45:
                    preds[qid] = rng.choice(answers)["text"]
                elif answers and r < 0.85:
                    preds[qid] = mutate(rng, rng.choice(answers)["text"])
                else:
                    preds[qid] = rand_text(rng, 0, 6)
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"{tag}-article{a}", "paragraphs": paragraphs})
    ids = sorted(preds)
    for qid in rng.sample(ids, missing):
        del preds[qid]
    ds = {"version": version, "data": data, "predictions": preds, "result": None}
    if version == "1.1":
        ds["result"] = v1.evaluate(data, preds)
        return ds
    return make_dataset_result(ds)


def main():
    rng = random.Random(SEED)
    normalize = []
    seen = set()
    texts = list(HAND_TEXTS) + [ws + "x" + ws + "the" + ws for ws in WS_ALL + NOT_WS]
    texts += [rand_text(rng, 0, 10) for _ in range(80)]
    for t in texts:
        if t in seen:
            continue
        seen.add(t)
        a, b = v1.normalize_answer(t), v2.normalize_answer(t)
        assert a == b
        normalize.append({"text": t, "v1": a, "v2": b})

    pairs = [pair(g, p) for g, p in HAND_PAIRS]
    pairs += [pair(t, t.upper()) for t in HAND_TEXTS[:40]]
    for _ in range(300):
        gold = rand_text(rng, 0, 9)
        pred = mutate(rng, gold) if rng.random() < 0.85 else rand_text(rng, 0, 6)
        pairs.append(pair(gold, pred))
    seen_pairs = set()
    pairs = [p for p in pairs if not ((p["gold"], p["pred"]) in seen_pairs or seen_pairs.add((p["gold"], p["pred"])))]

    datasets = [
        make_dataset(rng, "1.1", 2, "v1a"),
        make_dataset(rng, "1.1", 3, "v1b"),
        make_dataset(rng, "1.1", 2, "v1c", missing=1),
        make_dataset(rng, "1.1", 4, "v1d", missing=2),
        make_dataset(rng, "2.0", 2, "v2a"),
        make_dataset(rng, "2.0", 3, "v2b"),
        make_dataset(rng, "2.0", 4, "v2c"),
    ]
    # a v2 set where every question is impossible, and one where all are answerable
    only_no = make_dataset(random.Random(SEED + 1), "2.0", 2, "v2none")
    for art in only_no["data"]:
        for p in art["paragraphs"]:
            for qa in p["qas"]:
                qa["answers"], qa["is_impossible"] = [], True
    datasets.append(make_dataset_result(only_no))
    all_yes = make_dataset(random.Random(SEED + 2), "2.0", 2, "v2all")
    for art in all_yes["data"]:
        for p in art["paragraphs"]:
            for qa in p["qas"]:
                if not qa["answers"]:
                    qa["answers"] = [{"text": p["context"][:10], "answer_start": 0}]
                qa["is_impossible"] = False
    datasets.append(make_dataset_result(all_yes))

    doc = {
        "about": (
            "Made by scripts/make_squad_expected.py (random seed %d) with the official SQuAD evaluation "
            "scripts vendored verbatim in scripts/squad_official/ (evaluate-v1.1.py and evaluate-v2.0.py, "
            "via huggingface/datasets metrics/squad/evaluate.py and metrics/squad_v2/evaluate.py). "
            "pairs: v1_exact = int(exact_match_score(pred, gold)), v1_f1 = float(f1_score(pred, gold)), "
            "v2_exact = compute_exact(gold, pred), v2_f1 = float(compute_f1(gold, pred)). datasets: v1 result "
            "= evaluate(data, predictions) (a question missing from predictions counts 0); v2 result = what "
            "the v2 main() prints with no na-prob file and na_prob_thresh 1.0." % SEED
        ),
        "normalize": normalize,
        "pairs": pairs,
        "datasets": datasets,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {os.path.normpath(OUT)}: {len(normalize)} normalize, {len(pairs)} pairs, {len(datasets)} datasets",
          file=sys.stderr)


def make_dataset_result(ds):
    """Recompute `result` after a dataset was edited in place."""
    data, preds = ds["data"], ds["predictions"]
    qid_to_has_ans = v2.make_qid_to_has_ans(data)
    has_ans = [k for k, v in qid_to_has_ans.items() if v]
    no_ans = [k for k, v in qid_to_has_ans.items() if not v]
    na_probs = {k: 0.0 for k in preds}
    exact_raw, f1_raw = v2.get_raw_scores(data, preds)
    exact_t = v2.apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, 1.0)
    f1_t = v2.apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, 1.0)
    result = v2.make_eval_dict(exact_t, f1_t)
    if has_ans:
        v2.merge_eval(result, v2.make_eval_dict(exact_t, f1_t, qid_list=has_ans), "HasAns")
    if no_ans:
        v2.merge_eval(result, v2.make_eval_dict(exact_t, f1_t, qid_list=no_ans), "NoAns")
    ds["result"] = dict(result)
    return ds


if __name__ == "__main__":
    main()
