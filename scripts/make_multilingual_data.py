#!/usr/bin/env python3
"""Writes crates/lmforge/tests/data/multilingual/ from the translated manual pages of this Debian
machine (/usr/share/man/LANG/man*/*.gz, rendered with `groff -K utf8 -Tutf8 -mandoc` and
`col -bx`): real prose in many languages for the data pipeline's tests.

  zh_docs.jsonl  Chinese documents {"id", "source", "text"}: each zh_CN / zh_TW page's text (its
                 paragraphs) with at least 200 Han characters, Han at least half of its letters
  en_docs.jsonl  English documents of the same form from the untranslated pages (man1, man8)
  langid.jsonl   {"lang", "text", "source"}: up to 40 paragraphs of 80-600 characters per language
                 directory (pt_BR -> pt, zh_CN / zh_TW -> zh), prose only: letters >= 60% of the
                 characters, at most 10% of the words command-line-like (`-x`, `a=b`, `a::b`, paths),
                 English with at least 8% stop words,
                 and, outside English, no paragraph that also appears in the English page of the
                 same name or that has more than 12% English stop words (untranslated leftovers)

Deterministic: inputs sorted, choices by random.Random(0).

    python3 scripts/make_multilingual_data.py [OUT_DIR]
"""

import gzip
import json
import os
import random
import re
import subprocess
import sys

MAN = "/usr/share/man"
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "lmforge", "tests", "data", "multilingual")
LANGS = {"de": "de", "fr": "fr", "es": "es", "it": "it", "pt": "pt", "pt_BR": "pt", "nl": "nl", "pl": "pl",
         "ru": "ru", "uk": "uk", "cs": "cs", "sv": "sv", "tr": "tr", "ja": "ja", "ko": "ko", "zh_CN": "zh",
         "zh_TW": "zh", "hu": "hu", "ro": "ro", "fi": "fi", "da": "da"}
STOP = set("the a an and or of to in is are be for with that this by on as it not from".split())
HAN = re.compile(r"[\u3400-\u9fff]")


def pages(lang_dir):
    root = os.path.join(MAN, lang_dir) if lang_dir else MAN
    out = []
    for sec in sorted(os.listdir(root)):
        d = os.path.join(root, sec)
        if sec.startswith("man") and os.path.isdir(d):
            out += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".gz")]
    return out


def render(path):
    roff = gzip.open(path).read()
    if b".so " in roff[:200]:
        return ""  # a link to another page
    r = subprocess.run(["groff", "-K", "utf8", "-Tutf8", "-mandoc", "-rLL=2000n"], input=roff,
                       capture_output=True)
    text = subprocess.run(["col", "-bx"], input=r.stdout, capture_output=True).stdout.decode("utf8", "replace")
    return text


def sections(text):
    """(heading, [paragraphs]) of a rendered page: headings start in column 0, paragraphs are
    runs of indented lines separated by blank lines, joined with spaces."""
    out, head, para, paras = [], None, [], []

    def flush():
        if para:
            paras.append(" ".join(para))
            para.clear()

    for line in text.splitlines()[1:-1]:
        if line and not line[0].isspace():
            flush()
            if head is not None:
                out.append((head, paras))
            head, paras = line.strip(), []
        elif line.strip():
            para.append(line.strip())
        else:
            flush()
    flush()
    if head is not None:
        out.append((head, paras))
    return out


def prose(x):
    words = x.split()
    code = sum(w.startswith("-") or "=" in w or "::" in w or "/" in w or "$" in w for w in words)
    return 80 <= len(x) <= 600 and letters_share(x) >= 0.6 and code <= 0.1 * max(1, len(words))


def han_share(t):
    return len(HAN.findall(t)) / max(1, sum(c.isalpha() for c in t))


def letters_share(t):
    return sum(c.isalpha() for c in t) / max(1, len(t))


def stop_share(t):
    words = re.findall(r"[A-Za-z]+", t.lower())
    return sum(w in STOP for w in words) / max(1, len(t.split()))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(0)
    english = {}
    for p in pages(None):
        english[os.path.basename(p)] = render(p)
    en_paras = {name: {x for _, ps in sections(t) for x in ps} for name, t in english.items()}

    zh_docs, langid = [], {}
    for lang_dir, lang in sorted(LANGS.items()):
        if not os.path.isdir(os.path.join(MAN, lang_dir)):
            continue
        for p in pages(lang_dir):
            source = os.path.relpath(p, MAN)
            secs = sections(render(p))
            orig = en_paras.get(os.path.basename(p), set())
            if lang == "zh":
                # The whole page as one document too (most sections are short).
                whole = "\n\n".join(x for _, ps in secs for x in ps)
                if len(HAN.findall(whole)) >= 200:
                    zh_docs.append({"id": source, "source": source, "text": whole})
            for head, paras in secs:
                for x in paras:
                    if not prose(x) or x in orig or stop_share(x) > 0.12:
                        continue
                    if lang in ("zh", "ja") and len(HAN.findall(x)) + sum("\u3040" <= c <= "\u30ff" for c in x) < 0.4 * len(x):
                        continue
                    if lang == "ko" and sum("\uac00" <= c <= "\ud7a3" for c in x) < 0.3 * len(x):
                        continue
                    langid.setdefault(lang, {}).setdefault(x, source)
    en_docs = []
    for name in sorted(english):
        for head, paras in sections(english[name]):
            text = "\n\n".join(paras)
            if len(text) >= 600 and letters_share(text) > 0.6 and head in ("DESCRIPTION", "OPTIONS"):
                en_docs.append({"id": f"{name}#{head}", "source": f"man/{name}", "text": text})
                break
        for x in {x for _, ps in sections(english[name]) for x in ps}:
            if prose(x) and stop_share(x) >= 0.08:
                langid.setdefault("en", {}).setdefault(x, f"man/{name}")

    def sample(rows, n):
        rows = sorted(rows, key=lambda r: r["id"] if "id" in r else r["text"])
        rng.shuffle(rows)
        return rows[:n]

    # Pages left mostly untranslated (useradd, login, ... in zh_CN) are not Chinese documents:
    # Han must be at least half the letters.
    zh_docs = [d for d in sample({d["text"]: d for d in zh_docs}.values(), 150) if han_share(d["text"]) >= 0.5]
    en_docs = sample({d["text"]: d for d in en_docs}.values(), 50)
    rows = []
    for lang in sorted(langid):
        items = [{"lang": lang, "text": t, "source": s} for t, s in sorted(langid[lang].items())]
        if len(items) >= 20:
            rows += sample(items, 40)
    for name, data in [("zh_docs.jsonl", zh_docs), ("en_docs.jsonl", en_docs), ("langid.jsonl", rows)]:
        with open(os.path.join(OUT, name), "w") as f:
            for r in data:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts = {}
    for r in rows:
        counts[r["lang"]] = counts.get(r["lang"], 0) + 1
    print(f"zh_docs {len(zh_docs)}, en_docs {len(en_docs)}, langid {len(rows)}: {counts}")


if __name__ == "__main__":
    main()
