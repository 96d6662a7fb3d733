#!/usr/bin/env python3
"""Writes crates/lmforge/tests/data/multilingual/ from text installed on this Debian machine
(Python standard library only; PROVENANCE.md next to the data says where each file comes from):

  - translated manual pages /usr/share/man/LANG/man*/*.gz and the English ones
    /usr/share/man/man*/*.gz, rendered to plain text with `groff -K utf8 -t -Tutf8 -mandoc` and
    `col -bx`;
  - the AppStream metadata of the Debian archive, /var/lib/app-info/yaml/*.yml.gz (DEP-11 YAML,
    read by the small YAML-subset parser below, which gives PyYAML's values on every Summary /
    Description of the bookworm file);
  - the Chinese message catalogues /usr/share/locale/{zh_CN,zh_TW}/LC_MESSAGES/*.mo (their long
    translated help texts, such as bash's `help cd`).

  zh_docs.jsonl  Chinese documents {"id", "source", "text"}: runs of translated paragraphs of the
                 zh_CN / zh_TW manual pages, the Chinese AppStream summaries and descriptions of
                 one binary package's components, and long translated help texts of the message
                 catalogues; every one at least ZH_MIN_UNITS units long (see `units`)
  en_docs.jsonl  English documents of the same form: DESCRIPTION sections of English pages
  langid.jsonl   {"lang", "text", "source"}: up to 40 prose paragraphs of 80-600 characters per
                 language, labelled by the manual page's directory (pt_BR -> pt, zh_CN / zh_TW ->
                 zh)

Deterministic: inputs are read in sorted order and every choice uses random.Random(SEED).

    python3 scripts/make_multilingual_data.py [OUT_DIR]
"""

import concurrent.futures
import glob
import gzip
import html
import json
import os
import random
import re
import struct
import subprocess
import sys

SEED = 0
MAN = "/usr/share/man"
APPSTREAM = "/var/lib/app-info/yaml"
LOCALE = "/usr/share/locale"
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "crates", "lmforge", "tests", "data", "multilingual")

# Manual page directory -> ISO 639-1 label. Every sr page here is in Cyrillic (`in_script` asks
# for it), so sr is Serbian Cyrillic.
LANGS = {"cs": "cs", "da": "da", "de": "de", "es": "es", "fi": "fi", "fr": "fr", "hr": "hr", "hu": "hu",
         "id": "id", "it": "it", "ja": "ja", "ko": "ko", "nl": "nl", "pl": "pl", "pt": "pt", "pt_BR": "pt",
         "ro": "ro", "ru": "ru", "sl": "sl", "sr": "sr", "sv": "sv", "tr": "tr", "uk": "uk", "zh_CN": "zh",
         "zh_TW": "zh"}
LANGID_PER_LANG = 40      # rows per language in langid.jsonl
LANGID_MIN_ROWS = 20      # a language with fewer distinct paragraphs is left out
LANGID_PER_PAGE = 4       # rows of one page, before pages run out
ZH_DOCS = 150
EN_DOCS = 50
EN_PAGES = 600            # English pages (other than gcloud_*) drawn for en_docs and English langid
# A Chinese document has at least ZH_MIN_UNITS units (Han characters and spaced words), so that
# tests/api/multilingual.rs's copies with three characters changed stay near duplicates that MinHash
# LSH at lmforge's defaults (128 permutations in 9 bands of 13 rows, threshold 0.8) finds: three
# changes touch up to 15 5-unit shingles, which leaves a 250-unit document's copy a Jaccard
# similarity of about 0.885 (found ~87% of the time) and a 500-unit one's 0.94 (~99.6%).
ZH_MIN_UNITS = 250
ZH_CHUNK_UNITS = 300      # manual-page paragraph runs are cut once they reach this many units

# AppStream language keys of Simplified and of Traditional Chinese, in order of preference.
SIMPLIFIED = ["zh_CN", "zh-CN", "zh_Hans", "zh-Hans", "zh-HANS", "zh_Hans_CN", "zh-Hans-CN"]
TRADITIONAL = ["zh_TW", "zh-TW", "zh_HK", "zh-HK", "zh_Hant", "zh-Hant"]
CATALOGUES = ["zh_CN", "zh_TW"]   # Simplified, Traditional

# English words that are rare as words of the other languages here ("a", "in", "to", "on", "is",
# "for", "an", "as", "will", "die" are not: they are Spanish, German, Polish, Dutch, Danish ...).
EN_STOP = set("the and of with that this which are be from by you your when not it its can if should "
              "these there than been have has was were would into".split())

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
CYRILLIC = re.compile(r"[\u0400-\u04ff]")
# UTF-8 read as Latin-1 (the es fakeroot pages are encoded twice: "AsÃ­" for "Así").
MOJIBAKE = re.compile(r"[ÃÂ][\u0080-\u00bf]|â€")


# ---------------------------------------------------------------------------------------------
# Manual pages

def pages(lang_dir):
    """The pages of a language directory (the English ones for None), sorted; symbolic links
    (other names of a page, and /etc/alternatives choices such as editor.1) are left out."""
    root = os.path.join(MAN, lang_dir) if lang_dir else MAN
    out = []
    for sec in sorted(os.listdir(root)):
        d = os.path.join(root, sec)
        if sec.startswith("man") and os.path.isdir(d):
            out += [os.path.join(d, f) for f in sorted(os.listdir(d))
                    if f.endswith(".gz") and not os.path.islink(os.path.join(d, f))]
    return out


def render(path):
    """The page as plain UTF-8 text: groff with tbl for tables and a line length of 2000 ens,
    so that paragraphs are not wrapped (every line break is the page's own), then col -bx to
    drop the overstrike bold and underline. "" for a page that only sources another (`.so`)."""
    roff = gzip.open(path).read()
    if re.match(rb"(\.\\\".*\n|'\\\".*\n)*\.so ", roff):
        return ""
    env = dict(os.environ, GROFF_NO_SGR="1", LC_ALL="C.UTF-8")
    r = subprocess.run(["groff", "-K", "utf8", "-t", "-Tutf8", "-mandoc", "-rLL=2000n", "-rHY=0"], input=roff,
                       capture_output=True, env=env)
    text = subprocess.run(["col", "-bx"], input=r.stdout, capture_output=True, env=env).stdout.decode("utf8", "replace")
    # Big5-era zh_TW sources escape some characters ("功\能": 0x5C is the second byte of 功 in
    # Big5), which groff prints as \[u80FD]: the character itself.
    return re.sub(r"\\\[u([0-9A-F]{4,6})\]", lambda m: chr(int(m.group(1), 16)), text)


def render_all(paths):
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        return dict(zip(paths, ex.map(render, paths)))


def sections(text):
    """[(heading, [paragraph as a list of lines])] of a rendered page: headings start in column
    0, paragraphs are runs of indented lines separated by blank lines (white space inside a
    line collapsed). The running header and footer lines are dropped."""
    out, head, para, paras = [], None, [], []

    def flush():
        if para:
            paras.append(list(para))
            para.clear()

    for line in text.splitlines()[1:-1]:
        if line and not line[0].isspace():
            flush()
            if head is not None:
                out.append((head, paras))
            head, paras = line.strip(), []
        elif line.strip():
            para.append(" ".join(line.split()))
        else:
            flush()
    flush()
    if head is not None:
        out.append((head, paras))
    return out


def body(secs):
    """The sections after the first (NAME: the page's name and one-line summary)."""
    return secs[1:]


# ---------------------------------------------------------------------------------------------
# AppStream (DEP-11): the subset of YAML its files use

def _fold(lines, escapes):
    """Flow-scalar line folding (YAML 1.2, 7.3): the white space around a line break is dropped,
    one break is a space, each empty line after it a newline; in a double-quoted scalar a break
    after an odd number of backslashes is escaped (no space)."""
    out, empties, escaped = "", 0, False
    for k, line in enumerate(lines):
        last = k == len(lines) - 1
        if k:
            line = line.lstrip(" \t")
            if line == "" and not last:
                empties += 1
                continue
        esc = escapes and not last and (len(line) - len(line.rstrip("\\"))) % 2 == 1
        if esc:
            line = line[:-1]
        elif not last:
            line = line.rstrip(" \t")
        if k:
            out += "\n" * empties if empties else ("" if escaped else " ")
        out += line
        empties, escaped = 0, esc
    return out


def _unquote_double(s):
    simple = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "/": "/", "0": "\0", "a": "\a", "b": "\b",
              "e": "\x1b", "f": "\f", "r": "\r", "v": "\v", " ": " ", "N": "\x85", "_": "\xa0",
              "L": "\u2028", "P": "\u2029", "\t": "\t"}
    out, i = [], 0
    while i < len(s):
        if s[i] != "\\":
            out.append(s[i])
            i += 1
        elif s[i + 1] in simple:
            out.append(simple[s[i + 1]])
            i += 2
        else:
            n = {"x": 2, "u": 4, "U": 8}[s[i + 1]]
            out.append(chr(int(s[i + 2:i + 2 + n], 16)))
            i += 2 + n
    return "".join(out)


def _block(style, lines):
    """A literal (|) or folded (>) block scalar's value (YAML 1.2, 8.1)."""
    indent = min((len(l) - len(l.lstrip(" ")) for l in lines if l.strip()), default=0)
    lines = [l[indent:] for l in lines]
    trailing = 0
    while lines and not lines[-1].strip():
        lines.pop()
        trailing += 1
    if style[0] == "|":
        text = "\n".join(lines)
    else:
        text, prev, empties = "", None, 0
        for line in lines:
            if not line.strip():
                empties += 1
                continue
            spaced = line[0] in " \t"
            if prev is None:
                text += "\n" * empties
            elif prev == "text" and not spaced:
                text += "\n" * empties if empties else " "
            else:
                text += "\n" * (empties + 1)
            text += line
            prev, empties = ("spaced" if spaced else "text"), 0
    if style.endswith("-") or not lines:
        return text
    return text + "\n" * (1 + trailing if style.endswith("+") else 1)


def _scalar(first, more):
    """The value of a `key: first` entry whose continuation lines are `more`."""
    if first[:1] in (">", "|"):
        return _block(first, more)
    if first.startswith('"'):
        text = _fold([first[1:]] + more, escapes=True).rstrip()
        assert text.endswith('"'), first
        return _unquote_double(text[:-1])
    if first.startswith("'"):
        text = _fold([first[1:]] + more, escapes=False).rstrip()
        assert text.endswith("'"), first
        return text[:-1].replace("''", "'")
    return _fold([first] + more, escapes=False).strip()


def appstream_components(path):
    """Each component (YAML document) of a DEP-11 file as {"ID", "Package", "Summary": {lang:
    text}, "Description": {lang: text}}. DEP-11 writes these as top-level keys and, for Summary
    and Description, a mapping of language keys indented by two spaces whose values are plain,
    quoted or block scalars continued on lines indented further (or empty)."""
    comps, cur, key, sub, first, more = [], None, None, None, None, []

    def end_value():
        nonlocal sub, first, more
        if sub is not None:
            cur[key][sub] = _scalar(first, more)
        sub, first, more = None, None, []

    with gzip.open(path, "rt", encoding="utf8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line == "---" or line.startswith("--- "):
                end_value()
                if cur:
                    comps.append(cur)
                cur, key = {}, None
                continue
            if cur is None:
                continue
            if sub is not None and (line.strip() == "" or line.startswith("   ")):
                more.append(line)
                continue
            end_value()
            if line and not line[0].isspace():
                k, _, v = line.partition(":")
                key = k if k in ("Summary", "Description") else None
                if key:
                    cur[key] = {}
                elif k in ("ID", "Package"):
                    cur[k] = _scalar(v.strip(), [])
                continue
            m = re.match(r"^  ([^\s:]+): ?(.*)$", line)
            if key and m:
                sub, first, more = _scalar(m.group(1), []), m.group(2), []
    end_value()
    if cur:
        comps.append(cur)
    return comps


def markup_to_text(markup):
    """AppStream description markup (<p>, <ul>/<ol> of <li>, <em>, <code>) as plain text:
    paragraphs separated by blank lines, the items of a list one a line after a bullet."""
    out, in_list = [], False
    for m in re.finditer(r"<(p|li)>(.*?)</\1>|<(/?)(ul|ol)>", markup, re.S):
        if m.group(4):
            in_list = not m.group(3)
            if in_list:
                out.append("")
            continue
        t = html.unescape(" ".join(re.sub(r"<[^>]+>", "", m.group(2)).split()))
        if not t:
            continue
        if m.group(1) == "li":
            out[-1] += ("\n" if out[-1] else "") + "• " + t
        else:
            out.append(t)
    return "\n\n".join(p for p in out if p)


# ---------------------------------------------------------------------------------------------
# Text measures

def is_unspaced(c):
    """corpus::units::is_unspaced: Han ideographs and kana."""
    o = ord(c)
    return (o in (0x3005, 0x3007) or 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF or 0x3400 <= o <= 0x4DBF
            or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0xFF66 <= o <= 0xFF9F or 0x20000 <= o <= 0x3134F)


def is_cjk_punct(c):
    o = ord(c)
    return (0x3000 <= o <= 0x3004 or 0x3008 <= o <= 0x3020 or o in (0x3030, 0x303D, 0x30FB) or 0xFE10 <= o <= 0xFE1F
            or 0xFE30 <= o <= 0xFE6F or 0xFF01 <= o <= 0xFF0F or 0xFF1A <= o <= 0xFF20 or 0xFF3B <= o <= 0xFF40
            or 0xFF5B <= o <= 0xFF65)


def units(text):
    """lmforge's script-aware units (corpus::units::units): whitespace-separated words, except
    that each Han / kana character is a unit of its own and CJK punctuation separates units."""
    out = []
    for w in text.split():
        if w.isascii() or not any(is_unspaced(c) or is_cjk_punct(c) for c in w):
            out.append(w)
            continue
        run = ""
        for c in w:
            if is_unspaced(c) or is_cjk_punct(c):
                if run:
                    out.append(run)
                    run = ""
                if is_unspaced(c):
                    out.append(c)
            else:
                run += c
        if run:
            out.append(run)
    return out


def shingles(text, n=5):
    """The lower-cased 5-unit shingles lmforge's MinHash hashes (corpus::dedup)."""
    u = [x.lower() for x in units(text)]
    return {tuple(u[i:i + n]) for i in range(max(1, len(u) - n + 1))}


CJK_CHAR = r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff01-\uff65]"


def despace(x):
    """Old zh_TW pages put a space between every two characters of their roff source (so that
    roff could break lines anywhere): in a paragraph where most Han characters are followed by a
    space, the spaces between two CJK characters are dropped."""
    han = len(HAN.findall(x))
    if han and len(re.findall(HAN.pattern + " ", x)) > 0.5 * han:
        return re.sub(f"(?<={CJK_CHAR}) +(?={CJK_CHAR})", "", x)
    return x


def letters(t):
    return sum(c.isalpha() for c in t)


def share(pattern, t):
    return len(pattern.findall(t)) / max(1, letters(t))


def en_stop_share(t):
    words = re.findall(r"[^\W\d_]+", t.lower())
    return sum(w in EN_STOP for w in words) / max(1, len(words))


def codeish(w):
    return (w.startswith(("-", "−", "‐")) or w.isdigit()
            or any(s in w for s in ("=", "::", "/", "$", "_", "{", "}", ";", "<", ">", "()", "[", "]", "*", "|", "\\")))


def prose(x):
    """A paragraph of running text: 80-600 characters, at least 60% of them letters, at most 10%
    of its units (words; a Han / kana character is one) command-line or code-like words, no URL,
    mail address or table markup, no mojibake."""
    return (80 <= len(x) <= 600 and letters(x) >= 0.6 * len(x)
            and sum(codeish(w) for w in x.split()) <= 0.1 * max(1, len(units(x)))
            and not re.search(r"https?:|www\.|@|⟨|T\{|T\}", x) and not MOJIBAKE.search(x))


def in_script(lang, x):
    """Whether the letters of `x` are in the script of `lang` (English left untranslated in a
    Chinese, Japanese, Korean or Cyrillic page is not; Japanese always has some kana)."""
    if lang == "zh":
        return share(HAN, x) >= 0.5 and not KANA.search(x)
    if lang == "ja":
        return share(HAN, x) + share(KANA, x) >= 0.5 and share(KANA, x) >= 0.1
    if lang == "ko":
        return share(HANGUL, x) >= 0.5
    if lang in ("ru", "uk", "sr"):
        return share(CYRILLIC, x) >= 0.8
    return sum(c.isalpha() and c < "\u0250" for c in x) >= 0.95 * max(1, letters(x))


def page_text(secs):
    """A page's paragraphs (white space collapsed, lower case) and their word 3-grams."""
    paras = {" ".join(" ".join(p).split()).lower() for _, ps in secs for p in ps}
    tri = set()
    for p in paras:
        w = re.findall(r"[^\W\d_]+", p)
        tri |= {tuple(w[i:i + 3]) for i in range(len(w) - 2)}
    return paras, tri


def english_leftover(x, original):
    """Whether a paragraph of a translated page is (mostly) English: the text of a paragraph of
    the English page of the same name, half its word 3-grams found in that page, or more than
    8% of its words on the EN_STOP list."""
    paras, trigrams = original
    if " ".join(x.split()).lower() in paras:
        return True
    w = re.findall(r"[^\W\d_]+", x.lower())
    tri = {tuple(w[i:i + 3]) for i in range(len(w) - 2)}
    if tri and len(tri & trigrams) >= 0.5 * len(tri):
        return True
    return en_stop_share(x) > 0.08


def passes_filters(text):
    """lmforge's default quality filters (corpus::clean::check with DataConfig::default()),
    with a margin: at most 40% (not 50%) non-alphabetic visible characters and 30% (not 50%)
    repeated lines; mean length 1.5-20 of the spaced words when they are half the units."""
    visible = [c for c in text if not c.isspace()]
    if not visible or sum(not c.isalpha() for c in visible) > 0.4 * len(visible):
        return False
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if len(lines) - len(set(lines)) > 0.3 * len(lines):
        return False
    u = units(text)
    words = [x for x in u if not (len(x) == 1 and is_unspaced(x))]
    if words and 2 * len(words) >= len(u):
        if not 1.5 <= sum(len(x) for x in words) / len(words) <= 20:
            return False
    return True


def chinese(text):
    """Han at least half the letters and no kana (lmforge's language ID calls a text Chinese when
    Han and kana are a third of its letters and kana under a tenth of the Han)."""
    return share(HAN, text) >= 0.5 and not KANA.search(text)


def near_dedup(docs, threshold=0.5):
    """Drops each document whose shingles overlap an earlier kept one's with Jaccard similarity
    >= threshold (lmforge's near-duplicate threshold is an estimated 0.8)."""
    kept, sets = [], []
    for d in docs:
        s = shingles(d["text"])
        if all(len(s & t) / len(s | t) < threshold for t in sets):
            kept.append(d)
            sets.append(s)
    return kept


# ---------------------------------------------------------------------------------------------
# Chinese documents

def zh_man_docs(rendered, english):
    """Runs of translated paragraphs of each zh_CN / zh_TW page (NAME left out), cut once they
    reach ZH_CHUNK_UNITS units; a short rest joins the run before it."""
    docs = []
    for lang_dir in ("zh_CN", "zh_TW"):
        for p in pages(lang_dir):
            source = os.path.relpath(p, MAN)
            orig_paras = english.get(os.path.basename(p), (set(), set()))[0]
            chunks, cur = [], []
            for _, paras in body(sections(rendered[p])):
                for lines in paras:
                    x = despace("\n".join(lines))
                    # Chinese paragraphs only: English left untranslated and bare command lines
                    # are not.
                    if len(HAN.findall(x)) < 4 or share(HAN, x) < 0.3 or MOJIBAKE.search(x):
                        continue
                    if " ".join(x.split()).lower() in orig_paras:
                        continue
                    cur.append(x)
                    if len(units("\n\n".join(cur))) >= ZH_CHUNK_UNITS:
                        chunks.append(cur)
                        cur = []
            if cur:
                if chunks and len(units("\n\n".join(cur))) < ZH_MIN_UNITS:
                    chunks[-1] += cur
                else:
                    chunks.append(cur)
            for k, c in enumerate(chunks):
                docs.append({"id": f"man:{source}#{k + 1}", "source": source, "text": "\n\n".join(c)})
    return docs


def zh_appstream_docs():
    """Per binary package and script: the Chinese summary and description of each of its
    components (in the order of their IDs), one after the other."""
    docs = []
    for path in sorted(glob.glob(os.path.join(APPSTREAM, "*.yml.gz"))):
        by_pkg = {}
        for c in appstream_components(path):
            if "Package" in c:
                by_pkg.setdefault(c["Package"], []).append(c)
        for pkg in sorted(by_pkg):
            for script, keys in (("zh-Hans", SIMPLIFIED), ("zh-Hant", TRADITIONAL)):
                parts, used = [], []
                for c in sorted(by_pkg[pkg], key=lambda c: c.get("ID", "")):
                    key = next((k for k in keys if k in c.get("Description", {})), None)
                    if key is None:
                        continue
                    summary = " ".join(c.get("Summary", {}).get(key, "").split())
                    parts.append((summary + "\n\n" if summary else "") + markup_to_text(c["Description"][key]))
                    used.append(f"{c.get('ID', '')} [{key}]")
                if parts:
                    docs.append({"id": f"appstream:{pkg}:{script}",
                                 "source": f"{os.path.realpath(path)}: Package {pkg}: {', '.join(used)}",
                                 "text": "\n\n".join(parts)})
    return docs


def mo_messages(path):
    """The (msgid, msgstr) pairs of a GNU message catalogue (.mo): the first plural form of each,
    without its context, decoded by the charset its header names."""
    data = open(path, "rb").read()
    e = "<" if struct.unpack("<I", data[:4])[0] == 0x950412DE else ">"
    n, orig, trans = struct.unpack(e + "3I", data[8:20])
    raw = []
    for i in range(n):
        ln, off = struct.unpack(e + "2I", data[orig + 8 * i:orig + 8 * i + 8])
        tl, toff = struct.unpack(e + "2I", data[trans + 8 * i:trans + 8 * i + 8])
        raw.append((data[off:off + ln], data[toff:toff + tl]))
    header = dict(raw).get(b"", b"").decode("ascii", "replace")
    m = re.search(r"charset=([\w.-]+)", header)
    charset = m.group(1) if m else "utf-8"
    out = []
    for msgid, msgstr in raw:
        if msgid:
            msgid = msgid.split(b"\x04")[-1].split(b"\0")[0].decode(charset, "replace")
            out.append((msgid, msgstr.split(b"\0")[0].decode(charset, "replace")))
    return out


def zh_catalogue_docs():
    """The long translations (help texts) of the zh_CN / zh_TW gettext message catalogues, each
    line's white space collapsed."""
    docs = []
    for locale in CATALOGUES:
        for path in sorted(glob.glob(os.path.join(LOCALE, locale, "LC_MESSAGES", "*.mo"))):
            domain = os.path.basename(path)[:-3]
            for msgid, msgstr in sorted(mo_messages(path)):
                if len(HAN.findall(msgstr)) < 100:
                    continue
                text = "\n".join(" ".join(l.split()) for l in msgstr.strip().splitlines())
                text = re.sub(r"\n{3,}", "\n\n", text)
                first = " ".join(msgid.split())[:60]
                docs.append({"id": f"mo:{locale}/{domain}:{first}", "source": f"{path}: msgid \"{first}...\"",
                             "text": text})
    return docs


# ---------------------------------------------------------------------------------------------

def main():
    os.makedirs(OUT, exist_ok=True)
    rng = random.Random(SEED)

    translated = {d: pages(d) for d in sorted(LANGS) if os.path.isdir(os.path.join(MAN, d))}
    names = {os.path.basename(p) for ps in translated.values() for p in ps}
    all_english = pages(None)
    originals = [p for p in all_english if os.path.basename(p) in names]
    # gcloud_*: 16,600 generated reference pages of one tool; the English sample is of the rest.
    sample = sorted(p for p in all_english if not os.path.basename(p).startswith("gcloud"))
    rng.shuffle(sample)
    sample = sample[:EN_PAGES]
    rendered = render_all(sorted(set(originals) | set(sample) | {p for ps in translated.values() for p in ps}))

    english = {}
    for p in originals:
        paras, tri = page_text(sections(rendered[p]))
        e = english.setdefault(os.path.basename(p), (set(), set()))
        e[0].update(paras)
        e[1].update(tri)

    # Chinese documents
    zh = [d for d in zh_man_docs(rendered, english) + zh_appstream_docs() + zh_catalogue_docs()
          if len(units(d["text"])) >= ZH_MIN_UNITS and chinese(d["text"]) and passes_filters(d["text"])]
    zh = near_dedup(sorted({d["text"]: d for d in zh}.values(), key=lambda d: d["id"]))
    rng.shuffle(zh)
    zh = zh[:ZH_DOCS]

    # English documents
    en = []
    for p in sorted(sample):
        for head, paras in body(sections(rendered[p])):
            if head == "DESCRIPTION":
                text = "\n\n".join("\n".join(lines) for lines in paras)
                if 600 <= len(text) <= 20000 and passes_filters(text) and en_stop_share(text) >= 0.1 \
                        and not MOJIBAKE.search(text):
                    en.append({"id": f"{os.path.basename(p)}#DESCRIPTION", "source": os.path.relpath(p, MAN),
                               "text": text})
                break
    en = near_dedup(sorted({d["text"]: d for d in en}.values(), key=lambda d: d["id"]))
    rng.shuffle(en)
    en = en[:EN_DOCS]

    # Language identification
    candidates = {}
    for lang_dir, ps in translated.items():
        lang = LANGS[lang_dir]
        for p in ps:
            original = english.get(os.path.basename(p), (set(), set()))
            for _, paras in body(sections(rendered[p])):
                for lines in paras:
                    x = despace(" ".join(lines)) if lang == "zh" else " ".join(lines)
                    if prose(x) and in_script(lang, x) and (lang in ("zh", "ja", "ko") or not english_leftover(x, original)):
                        candidates.setdefault(lang, {}).setdefault(x, os.path.relpath(p, MAN))
    for p in sample:
        for _, paras in body(sections(rendered[p])):
            for lines in paras:
                x = " ".join(lines)
                if prose(x) and in_script("en", x) and en_stop_share(x) >= 0.1:
                    candidates.setdefault("en", {}).setdefault(x, os.path.relpath(p, MAN))
    rows = []
    for lang in sorted(candidates):
        items = sorted(candidates[lang].items(), key=lambda kv: (kv[1], kv[0]))
        if len(items) < LANGID_MIN_ROWS:
            continue
        rng.shuffle(items)
        per_page, chosen, rest = {}, [], []
        for text, source in items:
            if per_page.get(source, 0) < LANGID_PER_PAGE:
                per_page[source] = per_page.get(source, 0) + 1
                chosen.append({"lang": lang, "text": text, "source": source})
            else:
                rest.append({"lang": lang, "text": text, "source": source})
        rows += (chosen + rest)[:LANGID_PER_LANG]

    for name, data in [("zh_docs.jsonl", zh), ("en_docs.jsonl", en), ("langid.jsonl", rows)]:
        with open(os.path.join(OUT, name), "w", encoding="utf8") as f:
            for r in data:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts = {}
    for r in rows:
        counts[r["lang"]] = counts.get(r["lang"], 0) + 1
    kinds = {}
    for d in zh:
        kind = d["id"].split(":")[0]
        script = "zh-Hans" if any(s in d["id"] for s in ("zh_CN", "zh-Hans")) else "zh-Hant"
        kinds[(kind, script)] = kinds.get((kind, script), 0) + 1
    print(f"zh_docs {len(zh)} {sorted(kinds.items())}, en_docs {len(en)}, langid {len(rows)}: {counts}")


if __name__ == "__main__":
    main()
