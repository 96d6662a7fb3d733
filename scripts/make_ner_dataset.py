#!/usr/bin/env python3
"""Builds a small real named-entity set (CoNLL, BIO tags PER / ORG / DATE) from the Debian
package documentation on this machine, for the token-classification recipe
(configs/ner/minilm.toml). Standard library only.

Sources (real text written by people, labelled by stated rules, i.e. a "silver" standard):
  1. /usr/share/doc/*/copyright (DEP-5 files): each holder of a `Copyright:` field, e.g.
     "© 1995-2003, 2010 Jean-loup Gailly, Mark Adler". Years are DATE; a holder is ORG when it
     names an organisation (Inc., Foundation, Ltd, GmbH, Project, Team, University, ... see
     ORG_WORDS), PER when it is 2-4 capitalised words (particles such as "van", "de" allowed)
     without those words, otherwise O (e.g. "the adduser's copyright holder", "others").
  2. /usr/share/doc/*/changelog.Debian.gz: the trailer of each entry, " -- NAME <EMAIL>  Tue,
     20 Sep 2022 12:17:15 -0400": NAME is PER, "Tue, 20 Sep 2022" is DATE.
  3. The same changelogs' bullet lines that mention a person or an organisation found in 1 and 2
     (a gazetteer, longest match first), e.g. "Thanks to Simon McVittie for the patch": the
     mentions are tagged, everything else O. These are free-running sentences.

Sentences are deduplicated (exact text), capped per source so the formulaic trailers do not
dominate, and split by package name (sha1 of the package, 80 / 10 / 10), so no package's lines
straddle splits. Writes OUT/train.conll, OUT/validation.conll, OUT/test.conll and
OUT/PROVENANCE.md (sources, counts, the rules above).

    python3 scripts/make_ner_dataset.py runs/ner/data
"""

import gzip
import hashlib
import os
import random
import re
import sys
from collections import Counter

DOC = "/usr/share/doc"
ORG_WORDS = re.compile(
    r"\b(Inc|Incorporated|Foundation|Ltd|Limited|LLC|L\.L\.C|GmbH|AG|S\.A|SA|B\.V|BV|Oy|AB|Corp|Corporation|"
    r"Company|Co|Project|Projects|Team|Association|University|Universit\w+|Institute|Consortium|Council|"
    r"Software in the Public Interest|Authors|Developers|Contributors|Community|Organi[sz]ation|Labs|"
    r"Laboratories|Group|Society|Centre|Center|Technologies|Systems|Software|Networks|Microsystems|"
    r"Debian|Ubuntu|Canonical|Google|Microsoft|Apple|IBM|Intel|Oracle|Red Hat|Mozilla|Python|Apache|"
    r"Unicode|X Consortium|GNOME|KDE|OpenSSL)\b"
)
PARTICLES = {"van", "von", "de", "der", "den", "da", "di", "del", "la", "le", "du", "dos", "das", "bin", "al", "y"}
YEAR = re.compile(r"^(19|20)\d\d(-(19|20)?\d\d)?$")
TOKEN = re.compile(r"<[^<>\s]+@[^<>\s]+>|[\w@.+'&/-]+(?:\.(?=\s|$))?|[^\w\s]", re.UNICODE)
CAPS = {"copyright": 6000, "trailer": 2500, "mention": 6000}


def tokens(text):
    """Words and punctuation; an e-mail in angle brackets stays one token; a final period is
    split off unless it ends an abbreviation (`Inc.`)."""
    out = []
    for t in TOKEN.findall(text):
        if t.startswith("<") and t.endswith(">") and "@" in t:
            out += ["<", t[1:-1], ">"]
        elif len(t) > 1 and t.endswith(".") and not re.search(r"\b(Inc|Ltd|Co|Corp|Jr|Sr|S\.A|B\.V|[A-Z])\.$", t):
            out += [t[:-1], "."]
        else:
            out.append(t)
    return out


def is_person(words):
    caps = [w for w in words if w not in PARTICLES]
    return (
        2 <= len(words) <= 4
        and len(caps) >= 2
        and all(re.match(r"^[A-ZÀ-ÖØ-Þ][\w'.-]*$", w) for w in caps)
        and not any(ch.isdigit() for w in words for ch in w)
        and not ORG_WORDS.search(" ".join(words))
    )


def tag_span(n, kind):
    return [f"B-{kind}"] + [f"I-{kind}"] * (n - 1)


def holder_sentence(text):
    """One `Copyright:` line: (words, tags), or None when nothing in it is tagged. Years are
    DATE anywhere; the holders between separators (",", "and", "&", an e-mail, a year, a final
    ".") are each ORG, PER or left O by the rules of the module doc ("Foo, Inc." stays one)."""
    text = re.sub(r"^(Copyright\s*)?(\(c\)|\(C\)|©)?\s*", "", text.strip())
    if not text or len(text) > 200:
        return None
    words = tokens(text)
    tags = ["O"] * len(words)

    def close(a, b):
        seg = words[a:b]
        if not seg:
            return
        if ORG_WORDS.search(" ".join(seg)) and len(seg) <= 8:
            tags[a:b] = tag_span(len(seg), "ORG")
        elif is_person(seg):
            tags[a:b] = tag_span(len(seg), "PER")

    start, j = 0, 0
    while j < len(words):
        w = words[j]
        if w == "," and j + 1 < len(words) and words[j + 1] in {"Inc.", "Inc", "Ltd", "Ltd.", "LLC"}:
            j += 2
            continue
        if YEAR.match(w) or w in {",", "and", "&", "(", ")", ";", ".", "<", ">", "-"} or "@" in w:
            close(start, j)
            if YEAR.match(w):
                tags[j] = "B-DATE"
            j += 1
            start = j
            continue
        j += 1
    close(start, len(words))
    if all(t == "O" for t in tags):
        return None
    return words, tags


def copyright_fields(path):
    """The `Copyright:` field values of a DEP-5 file, one per holder line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (UnicodeDecodeError, OSError):
        return []
    if not lines or not lines[0].startswith("Format:"):
        return []
    out, inside = [], False
    for line in lines:
        if line.startswith("Copyright:"):
            inside = True
            value = line[len("Copyright:") :].strip()
            if value:
                out.append(value)
        elif inside and line.startswith((" ", "\t")) and line.strip() not in {"", "."}:
            out.append(line.strip())
        else:
            inside = False
    return out


TRAILER = re.compile(r"^ -- (.+?) <([^>]+)>\s+(\w{3}, \s?\d{1,2} \w{3} \d{4}) ([\d:]+) ([+-]\d{4})")


def changelog(path):
    try:
        with gzip.open(path, "rt", encoding="utf-8", errors="strict") as f:
            return f.read().splitlines()
    except (UnicodeDecodeError, OSError, EOFError):
        return []


def trailer_sentence(m):
    name, email, date, time, zone = m.groups()
    nw, dw = tokens(name), tokens(date)
    words = ["--"] + nw + ["<", email, ">"] + dw + [time, zone]
    if not is_person(nw):
        return None, name
    tags = ["O"] + tag_span(len(nw), "PER") + ["O"] * 3 + tag_span(len(dw), "DATE") + ["O", "O"]
    return (words, tags), name


def mention_sentence(line, gazetteer, longest):
    text = re.sub(r"^\s*[*+-]\s*", "", line).strip()
    if len(text) < 20 or len(text) > 300:
        return None
    words = tokens(text)
    tags = ["O"] * len(words)
    i, found = 0, False
    while i < len(words):
        for n in range(min(longest, len(words) - i), 1, -1):
            kind = gazetteer.get(" ".join(words[i : i + n]))
            if kind:
                tags[i : i + n] = tag_span(n, kind)
                i += n
                found = True
                break
        else:
            i += 1
    return (words, tags) if found else None


def split_of(package):
    h = int(hashlib.sha1(package.encode()).hexdigest()[:8], 16) % 10
    return "test" if h == 0 else "validation" if h == 1 else "train"


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "runs/ner/data"
    packages = sorted(os.listdir(DOC))
    sentences = {"copyright": [], "trailer": [], "mention": []}
    gazetteer = {}
    logs = {}
    for p in packages:
        for value in copyright_fields(os.path.join(DOC, p, "copyright")):
            s = holder_sentence(value)
            if s:
                sentences["copyright"].append((p, s))
                words, tags = s
                j = 0
                while j < len(tags):
                    if tags[j].startswith("B-") and tags[j] != "B-DATE":
                        k = j + 1
                        while k < len(tags) and tags[k].startswith("I-"):
                            k += 1
                        gazetteer[" ".join(words[j:k])] = tags[j][2:]
                        j = k
                    else:
                        j += 1
        lines = changelog(os.path.join(DOC, p, "changelog.Debian.gz"))
        logs[p] = lines
        for line in lines:
            m = TRAILER.match(line)
            if m:
                s, name = trailer_sentence(m)
                if s:
                    sentences["trailer"].append((p, s))
                    gazetteer[" ".join(tokens(name))] = "PER"
    longest = max(len(k.split()) for k in gazetteer)
    for p in packages:
        for line in logs[p]:
            if line.startswith("  ") and not line.startswith(" -- "):
                s = mention_sentence(line, gazetteer, longest)
                if s:
                    sentences["mention"].append((p, s))
    rng = random.Random(20261205)
    seen = set()
    splits = {"train": [], "validation": [], "test": []}
    counts = Counter()
    for source, items in sentences.items():
        unique = []
        for p, (words, tags) in items:
            key = " ".join(words)
            if key not in seen:
                seen.add(key)
                unique.append((p, words, tags))
        rng.shuffle(unique)
        for p, words, tags in unique[: CAPS[source]]:
            split = split_of(p)
            splits[split].append((words, tags))
            counts[(split, source)] += 1
            for t in tags:
                if t.startswith("B-"):
                    counts[(split, t[2:])] += 1
    os.makedirs(out, exist_ok=True)
    for split, rows in splits.items():
        rng.shuffle(rows)
        tmp = os.path.join(out, f".{split}.conll.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for words, tags in rows:
                for w, t in zip(words, tags):
                    f.write(f"{w} {t}\n")
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(out, f"{split}.conll"))
    table = ["| split | sentences | copyright | trailer | mention | PER | ORG | DATE |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for split, rows in splits.items():
        c = [counts[(split, k)] for k in ("copyright", "trailer", "mention", "PER", "ORG", "DATE")]
        table.append(f"| {split} | {len(rows)} | " + " | ".join(str(x) for x in c) + " |")
    with open(os.path.join(out, "PROVENANCE.md"), "w", encoding="utf-8") as f:
        f.write("# Debian documentation NER set\n\nMade by `scripts/make_ner_dataset.py` from this machine's "
                f"{DOC} ({len(packages)} packages): see the script's docstring for the rules. Labels are "
                "rule-derived (silver), not hand-checked.\n\n" + "\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
