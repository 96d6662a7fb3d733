#!/usr/bin/env python3
"""Writes crates/lmforge/tests/data/generation_metrics.json: reference values for the Rust port in
crates/lmforge/src/metrics/generation.rs.

The values come from the reference implementations themselves:
  - sacrebleu (corpus_bleu, sentence_bleu, corpus_chrf, the 13a tokenizer),
  - rouge-score (RougeScorer.score_multi, its tokenizer, with and without stemming),
  - nltk (PorterStemmer in its default mode, the one rouge-score constructs),
  - the official SQuAD v1.1 evaluation script (its functions are copied verbatim below).

Regenerate with Python 3.11 (its Unicode database, 14.0, is what `python_word_chars` records
and what the Rust table NOT_PY_ALNUM mirrors):
    pip install --target /tmp/pyref "sacrebleu==2.6.0" "rouge-score==0.1.2" "nltk==3.10.4"
    PYTHONPATH=/tmp/pyref python3 scripts/make_generation_metrics_expected.py

Everything is deterministic (fixed seeds), so rerunning with the same versions rewrites the
same file.
"""

import json
import os
import random
import re
import string
import sys
import unicodedata
from collections import Counter
from importlib.metadata import version

import sacrebleu
from nltk.stem.porter import PorterStemmer
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize
from sacrebleu.metrics import BLEU

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "crates", "lmforge", "tests", "data", "generation_metrics.json")


# --- Official SQuAD v1.1 evaluation script (evaluate-v1.1.py), verbatim --------------------


def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""
    def remove_articles(text):
        return re.sub(r'\b(a|an|the)\b', ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return (normalize_answer(prediction) == normalize_answer(ground_truth))


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


# --- Reference computations ------------------------------------------------------------------

SCORERS = {
    stem: rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem)
    for stem in (False, True)
}
STEMMER = PorterStemmer()  # the construction rouge_score/tokenizers.py uses


def streams(references):
    """Per-hypothesis reference lists -> sacrebleu's reference streams (None-padded)."""
    k = max(len(refs) for refs in references)
    return [[refs[j] if j < len(refs) else None for refs in references] for j in range(k)]


def bleu_dict(score):
    return {
        "score": score.score,
        "precisions": list(score.precisions),
        "bp": score.bp,
        "sys_len": score.sys_len,
        "ref_len": score.ref_len,
    }


def score_dict(s):
    return {"precision": s.precision, "recall": s.recall, "fmeasure": s.fmeasure}


def rouge_dict(prediction, references, stem):
    scores = SCORERS[stem].score_multi(references, prediction)
    return {"rouge1": score_dict(scores["rouge1"]), "rouge2": score_dict(scores["rouge2"]),
            "rouge_l": score_dict(scores["rougeL"])}


def mean_rouge_dict(items, stem):
    per = [item["rouge"]["stemmed" if stem else "plain"] for item in items]
    return {kind: {field: sum(p[kind][field] for p in per) / len(per)
                   for field in ("precision", "recall", "fmeasure")}
            for kind in ("rouge1", "rouge2", "rouge_l")}


def corpus_case(name, predictions, references, with_items=True):
    """Corpus-level values, plus per-item values unless another case already has them."""
    assert len(predictions) == len(references) and all(references)
    items = []
    for prediction, refs in zip(predictions, references):
        items.append({
            "sentence_bleu": bleu_dict(sacrebleu.sentence_bleu(prediction, refs)),
            "chrf": sacrebleu.corpus_chrf([prediction], streams([refs])).score,
            "rouge": {"plain": rouge_dict(prediction, refs, False),
                      "stemmed": rouge_dict(prediction, refs, True)},
            "exact_match": float(metric_max_over_ground_truths(exact_match_score, prediction, refs)),
            "token_f1": float(metric_max_over_ground_truths(f1_score, prediction, refs)),
        })
    bleu = sacrebleu.corpus_bleu(predictions, streams(references))
    chrf = sacrebleu.corpus_chrf(predictions, streams(references)).score
    plain, stemmed = mean_rouge_dict(items, False), mean_rouge_dict(items, True)
    # As evaluate-v1.1.py: sum over questions, then 100 * sum / total.
    exact_match = f1 = 0
    for prediction, refs in zip(predictions, references):
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, refs)
        f1 += metric_max_over_ground_truths(f1_score, prediction, refs)
    n = len(predictions)
    case = {
        "name": name,
        "predictions": predictions,
        "references": references,
        "corpus_bleu": bleu_dict(bleu),
        "corpus_chrf": chrf,
        "mean_rouge": {"plain": plain, "stemmed": stemmed},
        "generation_metrics": {
            "n": n,
            "bleu": bleu.score,
            "bleu_precisions": list(bleu.precisions),
            "bleu_bp": bleu.bp,
            "chrf": chrf,
            "rouge1": plain["rouge1"]["fmeasure"],
            "rouge2": plain["rouge2"]["fmeasure"],
            "rouge_l": plain["rouge_l"]["fmeasure"],
            "rouge1_stemmed": stemmed["rouge1"]["fmeasure"],
            "rouge2_stemmed": stemmed["rouge2"]["fmeasure"],
            "rouge_l_stemmed": stemmed["rouge_l"]["fmeasure"],
            "exact_match": 100.0 * exact_match / n,
            "token_f1": 100.0 * f1 / n,
        },
        "items": items,
    }
    if not with_items:
        del case["items"]
    return case


def tokenization(text):
    """What each metric makes of one string (checked exactly, to locate any mismatch)."""
    bleu = BLEU()
    return {
        "text": text,
        "tokens_13a": bleu._preprocess_segment(text).split(),
        "rouge_tokens": rouge_tokenize.tokenize(text, None),
        "rouge_tokens_stemmed": rouge_tokenize.tokenize(text, STEMMER),
        "squad_normalized": normalize_answer(text),
    }


# --- Inputs ----------------------------------------------------------------------------------

STEMMER_WORDS = (
    "caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated "
    "troubled sized hopping tanned falling hissing fizzed failing filing happy sky relational "
    "conditional rational valenci hesitanci digitizer conformabli radicalli differentli vileli "
    "analogousli vietnamization predication operator feudalism decisiveness hopefulness "
    "callousness formaliti sensitiviti sensibiliti triplicate formative formalize electriciti "
    "electrical hopeful goodness revival allowance inference airliner gyroscopic adjustable "
    "defensible irritant replacement adjustment dependent adoption homologou communism activate "
    "angulariti homologous effective bowdlerize probate rate cease controll roll generously "
    "dying lying tying news innings outings cannings howe proceed exceed succeed"
).split()

COMMON_WORDS = (
    "the a an of and to in is was it for on with as at by from this that be are were he she "
    "they we you i not but or if then than so cat dog mat sat fox jumps jumped quick brown lazy "
    "over under running runs ran studies studying studied flies flying cities city policy "
    "policies generalization generalizations organization organizing nationality national "
    "hopelessness connection connections connected connecting computer computers computing "
    "compute university universe universal model models modeling modelled train training "
    "trained language languages evaluation evaluating generation generated generative metric "
    "metrics score scores scoring"
).split()

ODD_TOKENS = [
    "3.14", "1,000", "2021-05-06", "10-20", "well-known", "don't", "it's", "rock'n'roll",
    "U.S.A.", "$5.00", "50%", "e-mail", "(see", "below)", "\"quoted\"", "end.", "comma,",
    "semi;", "colon:", "wow!", "why?", "café", "naïve", "Zürich", "東京", "🙂", "<b>", "&amp;",
    "x86_64", "C++", "#hashtag", "@user", "a/b", "A", "The", "AN",
]


def random_sentence(rng, length):
    words = []
    for _ in range(length):
        r = rng.random()
        if r < 0.35:
            word = rng.choice(STEMMER_WORDS)
        elif r < 0.85:
            word = rng.choice(COMMON_WORDS)
        else:
            word = rng.choice(ODD_TOKENS)
        if rng.random() < 0.1:
            word = word.capitalize()
        if rng.random() < 0.08:
            word += rng.choice([",", ".", "!", "?", ";", ":"])
        words.append(word)
    return " ".join(words)


def perturb(rng, sentence):
    """A reference that overlaps the prediction partly: words dropped, replaced, inserted."""
    out = []
    for word in sentence.split():
        r = rng.random()
        if r < 0.15:
            continue
        if r < 0.3:
            out.append(random_sentence(rng, 1))
        else:
            out.append(word)
        if rng.random() < 0.1:
            out.append(random_sentence(rng, 1))
    return " ".join(out)


def random_cases(seed, count):
    rng = random.Random(seed)
    predictions, references = [], []
    for _ in range(count):
        prediction = "" if rng.random() < 0.03 else random_sentence(rng, rng.randint(1, 30))
        refs = []
        for _ in range(rng.randint(1, 4)):
            r = rng.random()
            if r < 0.03:
                refs.append("")
            elif r < 0.15:
                refs.append(random_sentence(rng, rng.randint(1, 30)))
            elif r < 0.2:
                refs.append(prediction)
            else:
                refs.append(perturb(rng, prediction) or random_sentence(rng, 3))
        predictions.append(prediction)
        references.append(refs)
    return predictions, references


LONG_RNG = random.Random(7)
LONG_PREDICTION = random_sentence(LONG_RNG, 2500)
LONG_REFERENCE = perturb(LONG_RNG, LONG_PREDICTION)

EDGE_CASES = [
    ("empty prediction", [""], [["the cat sat on the mat"]]),
    ("empty reference", ["hello world"], [[""]]),
    ("both empty", [""], [[""]]),
    ("whitespace only", [" \t\n "], [["  "]]),
    ("no overlap", ["alpha beta gamma delta"], [["epsilon zeta eta theta iota"]]),
    ("identical", ["The quick brown fox jumps over the lazy dog."],
     [["The quick brown fox jumps over the lazy dog."]]),
    ("case differs", ["HELLO World, The End"], [["hello world, the end"]]),
    ("short hypotheses", ["yes", "no way", "of course not"],
     [["yes"], ["no"], ["of course"]]),
    ("multiple references", [
        "the cat is on the mat",
        "there is a cat on the mat today",
        "a b c d e",
        "on the mat",
        "one two three four",
    ], [
        ["the cat is on the mat", "there is a cat on the mat"],
        ["a cat is on the mat", "the cat sat on a mat", "there is a cat on the mat"],
        ["a b c d", "a b c d e f", "x y z", "a b"],  # closest lengths 4 and 6 tie: shorter
        ["the mat", "on the mat there", "the cat is on the mat", "mat"],
        ["one two three four five", "one two three"],  # a tie again, the longer one first
    ]),
    ("unicode", [
        "Café crème brûlée à la carte",
        "Cafe\u0301 cre\u0300me",
        "我爱北京天安门",
        "東京は日本の首都です。",
        "I ❤️ 🍕 pizza 👍🏽 a lot",
        "the\u0301 cat and a\u0363 dog and the\u0345 an\u093e ⓐ the",
        "ΟΔΟΣ ΣΑΣ Σ σοφία",
        "İstanbul KELVIN \u212a ﬁne",
        "नमस्ते दुनिया the",
        "ｔｈｅ　ｃａｔ\u00a0sat\u2003here",
        "sep\x1carated\x1dby\x1einfo\x1fseparators",
    ], [
        ["Cafe creme brulee a la carte", "Café crème brûlée à la carte!"],
        ["Café crème"],
        ["我爱北京", "北京天安门"],
        ["東京は日本の首都である。"],
        ["I ❤️ pizza 👍 a lot"],
        ["cat and dog and ⓐ", "the\u0301 cat"],
        ["οδος σας σ ΣΟΦΙΑ"],
        ["istanbul kelvin k fine", "i̇stanbul"],
        ["नमस्ते दुनिया"],
        ["the cat sat here"],
        ["sep arated by info separators"],
    ]),
    ("punctuation heavy", [
        "Hello, world!!! (yes) -- 'quoted' \"double\"; semi: colon... ?!",
        "...,,,;;;!!!",
        "a.b,c.d 1.2,3 x.,y",
        "{[(<>)]} ~`^|\\ @#$%&*+=/",
    ], [
        ["Hello world yes quoted double semi colon", "hello, world! (yes)"],
        ["!!!"],
        ["a . b , c . d 1.2,3 x . , y"],
        ["{ [ ( < > ) ] }"],
    ]),
    ("numbers dates hyphens apostrophes", [
        "On 2021-05-06, 3.14 and 1,000,000 people; well-known don't it's rock'n'roll 10-20",
        "$5.00 costs 50% more in the U.S.A. on 12/25/2020 at 10:30",
        "the 3-year-old's toys aren't the children's",
    ], [
        ["On 2021-05-06 , 3.14 and 1,000,000 people ; well known do not it is rock and roll 10 - 20"],
        ["5 dollars costs 50 % more in the USA on 12/25/2020 at 10:30", "$5.00 costs 50%"],
        ["The three year old's toys are not the childrens", "3-year-old"],
    ]),
    ("html entities and markup", [
        "&quot;Tom &amp; Jerry&quot; &lt;3 &gt; &amp;lt; &#39;x&#39;",
        "<b>bold</b> and <i>italic</i>",
    ], [
        ["\"Tom & Jerry\" <3 > &lt; 'x'"],
        ["bold and italic"],
    ]),
    ("skipped and newlines", [
        "this is <skipped> text",
        "multi-\nline hyphen-\nated words\nand newlines",
        "trailing hyphen-\n",
        "windows\r\nline\rends\ttabs  and   spaces  ",
    ], [
        ["this is text", "this is <skipped>"],
        ["multiline hyphenated words and newlines"],
        ["trailing hyphen-"],
        ["windows line ends tabs and spaces"],
    ]),
    ("articles", [
        "The a an the answer",
        "Theater anthem another",
        "an apple a day",
        "the_the a-b the's",
    ], [
        ["answer"],
        ["theater anthem another"],
        ["apple day"],
        ["thethe ab thes", "the the a b the s"],
    ]),
    ("stemmer words", [
        " ".join(STEMMER_WORDS[:40]),
        " ".join(STEMMER_WORDS[40:]),
        "The studies flies generalizations connected running hopefully",
    ], [
        [" ".join(STEMMER_WORDS[20:60])],
        [" ".join(reversed(STEMMER_WORDS[40:]))],
        ["a study fly generalization connecting runs hopeful"],
    ]),
    ("very long lines", [LONG_PREDICTION], [[LONG_REFERENCE, LONG_PREDICTION[:5000]]]),
]


def porter_words():
    """About 1000 words: the paper's and NLTK's examples, oddities, and suffixed roots."""
    explicit = STEMMER_WORDS + COMMON_WORDS + (
        "a is as us Us I yy yyyy syzygy ay by toy enjoy enjoyment spy fly try flies dies died "
        "spied tried ies ied eed ed ing bring geology theology archaeology philology "
        "generously fully hopefully abli conformably sky skies dying news inning outing "
        "canning Caresses RUNNING Running café naïve résumé façades über straße ΣΟΦΙΑ "
        "abc123ing 123 x86 hopp*d ab*ding agreement agreeing feeding bleeding needed "
        "bowdlerization electrically oscillators crying cried criers"
    ).split()
    roots = (
        "act adapt add adjust agree allow analyz argu arriv attach bak believ box build call "
        "car cas chang charg civil class clean climb collect comfort communic condition connect "
        "construct control cool cover creat cross dat decid defend depend describ design destroy "
        "develop differ digit direct discover dress driv educat effect electr emot employ enjoy "
        "equal establish expect experiment fail fall feed fill fish fit fix form formal function "
        "general generat glori grow happ harm help hop hope imagin inform interest invent join "
        "judg kind lov manag mark mechan motor nation natur need norm observ operat organ own "
        "pass person plan play pleas politic possibl power predict prepar product profession "
        "protect rat ration react real relat remov repeat report respons rol run sens sign "
        "simpl sing sit spell stat stop strength structur success suggest support syst teach "
        "tell think tir travel treat trust understand us valu vari view visit walk want wash "
        "watch wonder work writ yell"
    ).split()
    suffixes = (
        " s es e ed ing ly y ies ied er ers ness ful fully fulness less lessness ation ations "
        "ational ationally ator ators izer ization izations ize izes ized izing ism ist ity iti "
        "ivity iviti ibility ment ments ement ence ences ance ances able ably ible ive ively "
        "iveness ous ously ousness al ally alism alize alization ic ical ically ate ates ating "
        "ation ant ent ently eli entli ousli alli bli logi ology ological ll"
    ).split(" ")
    rng = random.Random(1980)  # the year of Porter's paper
    words = list(dict.fromkeys(explicit))
    seen = set(words)
    while len(words) < 1000:
        word = rng.choice(roots) + rng.choice(suffixes)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return [[word, STEMMER.stem(word)] for word in words]


def ranges(code_points):
    out = []
    for c in code_points:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return out


def python_word_chars():
    """Python's `\\w` over the code points its Unicode database assigns (for is_py_word_char)."""
    assigned = [c for c in range(0x110000)
                if unicodedata.category(chr(c)) not in ("Cn", "Cs")]
    return {
        "unicode_version": unicodedata.unidata_version,
        "assigned": ranges(assigned),
        "word": ranges([c for c in assigned if chr(c).isalnum() or chr(c) == "_"]),
    }


def main():
    corpora = [corpus_case(name, preds, refs) for name, preds, refs in EDGE_CASES]
    all_preds = [p for _, preds, _ in EDGE_CASES for p in preds]
    all_refs = [r for _, _, refs in EDGE_CASES for r in refs]
    corpora.append(corpus_case("all edge cases", all_preds, all_refs, with_items=False))
    predictions, references = random_cases(seed=20240607, count=200)
    corpora.append(corpus_case("random (200)", predictions, references))
    for start in range(0, 200, 20):
        corpora.append(corpus_case(f"random [{start}, {start + 20})",
                                   predictions[start:start + 20], references[start:start + 20],
                                   with_items=False))

    # Every string of the edge cases but the very long ones, and those of 50 random cases.
    texts = all_preds + [r for refs in all_refs for r in refs]
    texts += predictions[:50] + [r for refs in references[:50] for r in refs]
    texts = [t for t in dict.fromkeys(texts) if len(t) < 1000]

    expected = {
        "generated_by": "make_expected.py",
        "versions": {
            "python": sys.version.split()[0],
            "sacrebleu": version("sacrebleu"),
            "rouge-score": version("rouge-score"),
            "nltk": version("nltk"),
        },
        "corpora": corpora,
        "tokenization": [tokenization(t) for t in texts],
        "porter": porter_words(),
        "python_word_chars": python_word_chars(),
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(corpora)} corpora, "
          f"{sum(len(c.get('items', [])) for c in corpora)} items, {len(texts)} tokenizations, "
          f"{len(expected['porter'])} stems")


if __name__ == "__main__":
    main()
