#!/usr/bin/env python3
"""Build a one-line summarization dataset from data every Debian machine has.

Pairs of (description -> one-line summary) are taken from two local sources:

* man pages under /usr/share/man/man1 .. man8 (English only, gzipped roff):
  the NAME section's one-line summary (text after ``\\-``) and the first
  prose paragraph(s) of the DESCRIPTION section;
* Debian AppStream metadata, /var/lib/apt/lists/*dep11_Components-*.yml.gz:
  the English (``C``) ``Summary`` and ``Description`` of each component.

Both are parsed with the standard library only (a heuristic roff/mdoc to text
converter and a minimal reader for the subset of YAML that DEP-11 uses).

Output (``--out``, default ``data/summaries``)::

    train.jsonl val.jsonl test.jsonl   {"prompt", "completion", "reference", "source"}
    descriptions.txt                   train descriptions only, blank-line separated
    README.md                          counts, command line, provenance

The split is deterministic: pairs that share a summary or a description are
grouped, each group is keyed by its smallest source key (``man:ls(1)``,
``appstream:<id>``) and placed by the SHA-1 of that key (5% test candidates,
5% val candidates, capped by --test-max / --val-max keeping the smallest
hashes; everything else goes to train).  Running it twice on the same machine
gives byte-identical files.

Usage::

    python3 scripts/make_summary_dataset.py --out data/summaries
    python3 scripts/make_summary_dataset.py --sources man --limit 500 --out /tmp/s
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import shlex
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from html.parser import HTMLParser

MAN_ROOT = "/usr/share/man"
APPSTREAM_GLOB = "/var/lib/apt/lists/*dep11_Components-*.yml.gz"
PROMPT_TEMPLATE = "Summarize in one line:\n{desc}\n"
MIN_DESC_CHARS = 80
MIN_SUMMARY_CHARS = 8
MAX_SUMMARY_CHARS = 200

# --------------------------------------------------------------------------
# text helpers
# --------------------------------------------------------------------------

_WS_RE = re.compile(r"\s+")
_CTRL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u00ad\u200b-\u200d\u2060\ufeff]")
_ABBREV = {
    "e.g", "i.e", "etc", "vs", "cf", "approx", "incl", "esp", "resp", "viz",
    "mr", "mrs", "ms", "dr", "prof", "st", "no", "vol", "fig", "al", "ca",
    "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec", "inc", "ltd", "co", "corp", "ver", "v",
}
_SENT_END_RE = re.compile(r"[.!?][\"')\]\u201d\u2019]*(?=\s)")


def clean_text(s: str) -> str:
    """Normalise to one line of plain text."""
    s = unicodedata.normalize("NFC", s)
    s = s.replace("\u00a0", " ").replace("\u2002", " ").replace("\u2003", " ")
    s = _CTRL_RE.sub("", s)
    s = _WS_RE.sub(" ", s).strip()
    return s


def normalise_summary(s: str) -> str:
    s = clean_text(s)
    s = s.strip(" \t-\u2013\u2014:;,")
    if len(s) > 2 and s[0] == s[-1] == '"' and '"' not in s[1:-1]:
        s = s[1:-1].strip()
    while s.endswith(".") and not s.endswith("..."):
        s = s[:-1].rstrip()
    return s


_SPACE_BEFORE_PUNCT_RE = re.compile(r"(?<=[\w)\]'\"])\s+([,;:]|\.(?=\s|$))(?=\s|$)")


def tidy_punct(s: str) -> str:
    """Undo roff-style 'word ,' spacing and '( x )' padding."""
    s = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", s)
    s = re.sub(r"\(\s+(?=\S)", "(", s)
    s = re.sub(r"(?<=\S)\s+\)", ")", s)
    s = re.sub(r"(?<=\s)\\(?=\s)", "", s)
    s = re.sub(r"``([^`']{1,200})''", r'"\1"', s)
    return clean_text(s)


def drop_trailing_colon(s: str) -> str:
    """A text ending in ':' introduced a display (list, example) that was
    not kept; drop that dangling last sentence (the caller's length filter
    then decides whether enough remains)."""
    if not s.endswith(":"):
        return s
    ends = [m.end() for m in _SENT_END_RE.finditer(s)]
    return s[:ends[-1]].rstrip() if ends else ""


def truncate_at_sentence(text: str, max_chars: int, min_chars: int = MIN_DESC_CHARS) -> str:
    """Keep at most max_chars, cutting at the last sentence end if one exists
    at or after min_chars; otherwise cut at a word boundary and add '...'."""
    if len(text) <= max_chars:
        return text
    window = text[: max_chars + 1]
    best = -1
    for m in _SENT_END_RE.finditer(window):
        end = m.end()
        if end > max_chars:
            break
        # word immediately before the punctuation
        j = m.start()
        k = j
        while k > 0 and not text[k - 1].isspace():
            k -= 1
        word = text[k:j].lstrip("(\"'[").lower()
        if text[j] == "." and (word in _ABBREV or len(word) == 1 or word.endswith(".")
                               or (word and "." in word and not word.endswith(")"))):
            continue
        nxt = text[end:].lstrip()[:1]
        if nxt and nxt.islower():
            continue
        best = end
    if best >= min_chars:
        return text[:best].rstrip()
    cut = window.rfind(" ", 0, max_chars - 3)
    if cut < min_chars:
        cut = max_chars - 3
    return text[:cut].rstrip(" ,;:-\u2013\u2014") + "..."


# --------------------------------------------------------------------------
# roff -> text
# --------------------------------------------------------------------------

SPECIAL_CHARS = {
    "em": "\u2014", "en": "\u2013", "hy": "-", "mi": "-", "\\-": "-", "-": "-",
    "lq": '"', "rq": '"', "oq": "'", "cq": "'", "aq": "'", "dq": '"',
    "Fo": "\u00ab", "Fc": "\u00bb", "fo": "\u2039", "fc": "\u203a", "bq": ",", "Bq": '"',
    "bu": "\u2022", "co": "\u00a9", "rg": "\u00ae", "tm": "\u2122", "mu": "\u00d7",
    "di": "\u00f7", "+-": "\u00b1", "<=": "\u2264", ">=": "\u2265", "!=": "\u2260",
    "==": "\u2261", "->": "\u2192", "<-": "\u2190", "<>": "\u2194", "=>": "\u21d2",
    "<=>": "\u21d4", "ua": "\u2191", "da": "\u2193", "ga": "`", "aa": "\u00b4",
    "ti": "~", "a~": "~", "ha": "^", "a^": "^", "rs": "\\", "sl": "/", "ba": "|",
    "br": "|", "or": "|", "bv": "|", "ct": "\u00a2", "de": "\u00b0", "fm": "\u2032",
    "sd": "\u2033", "sc": "\u00a7", "ps": "\u00b6", "dg": "\u2020", "dd": "\u2021",
    "pl": "+", "eq": "=", "~~": "\u2248", "~=": "\u2245", "if": "\u221e",
    "ss": "\u00df", "ae": "\u00e6", "AE": "\u00c6", "oe": "\u0153", "OE": "\u0152",
    "o/": "\u00f8", "O/": "\u00d8", "oa": "\u00e5", "oA": "\u00c5", "-D": "\u00d0",
    "Sd": "\u00f0", "TP": "\u00de", "Tp": "\u00fe", ".i": "\u0131", "fi": "fi",
    "fl": "fl", "ff": "ff", "Fi": "ffi", "Fl": "ffl", "at": "@", "sh": "#",
    "Do": "$", "Eu": "\u20ac", "eu": "\u20ac", "Po": "\u00a3", "Ye": "\u00a5",
    "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "\u27e8", "ra": "\u27e9",
    "sq": "\u25a1", "ul": "_", "ru": "_", "pc": "\u00b7", "md": "\u22c5",
    "OK": "\u2713", "%0": "\u2030", "12": "\u00bd", "14": "\u00bc", "34": "\u00be",
    "S1": "\u00b9", "S2": "\u00b2", "S3": "\u00b3", "r!": "\u00a1", "r?": "\u00bf",
    "pd": "\u2202", "no": "\u00ac", "AN": "\u2227", "OR": "\u2228", "fa": "\u2200",
    "te": "\u2203", "mo": "\u2208", "nm": "\u2209", "sb": "\u2282", "sp": "\u2283",
    "ca": "\u2229", "cu": "\u222a", "es": "\u2205", "is": "\u222b", "sr": "\u221a",
    "tf": "\u2234", "pt": "\u221d", "ap": "\u223c", "lh": "\u261c", "rh": "\u261e",
    "CR": "\u21b5", "an": "\u23af", "hA": "\u21d4", "lA": "\u21d0", "rA": "\u21d2",
    "uA": "\u21d1", "dA": "\u21d3", "ho": "\u02db", "ah": "\u02c7", "ao": "\u02da",
    "a-": "\u00af", "a.": "\u02d9", "a\"": "\u02dd", "ad": "\u00a8", "ac": "\u00b8",
    "vS": "\u0160", "vs": "\u0161", "vZ": "\u017d", "vz": "\u017e", "/L": "\u0141",
    "/l": "\u0142", "/O": "\u00d8", "/o": "\u00f8", "IJ": "\u0132", "ij": "\u0133",
    "Of": "\u00aa", "Om": "\u00ba", "nb": "\u2284", "nc": "\u2285",
    "product": "\u220f", "sum": "\u2211", "ne": "\u2262", "nn": "", "rn": "\u203e",
    "radicalex": "", "sqrtex": "", "bs": "\\",
}
# accented letters: \('e \(`a \(^o \(:u \(~n \(,c \(vs ...
_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", ":": "\u0308",
            "~": "\u0303", ",": "\u0327", "v": "\u030c", "o": "\u030a"}
for _acc, _comb in _ACCENTS.items():
    for _base in "aeiouyAEIOUYcCnNsSzZgGrR":
        _ch = unicodedata.normalize("NFC", _base + _comb)
        if len(_ch) == 1:
            SPECIAL_CHARS.setdefault(_acc + _base, _ch)
# Greek: \(*a .. \(*w
_GREEK = "abgdezyhiklmncoprsvtufxqw"
_GREEK_LOWER = "\u03b1\u03b2\u03b3\u03b4\u03b5\u03b6\u03b7\u03b8\u03b9\u03ba\u03bb\u03bc\u03bd\u03be\u03bf\u03c0\u03c1\u03c3\u03c2\u03c4\u03c5\u03c6\u03c7\u03c8\u03c9"
for _l, _g in zip(_GREEK, _GREEK_LOWER):
    SPECIAL_CHARS["*" + _l] = _g
    SPECIAL_CHARS["*" + _l.upper()] = _g.upper()
SPECIAL_CHARS["*W"] = "-"  # pod2man uses capital omega for unbreakable dashes (.tr \(*W-)

DEFAULT_STRINGS = {
    "lq": '"', "rq": '"', "Lq": '"', "Rq": '"', "R": "\u00ae", "Tm": "\u2122",
    "L\"": '"', "R\"": '"', "C`": '"', "C'": '"', "Aq": "'", "--": "\u2014",
    "PI": "pi", "C+": "C++", "S": "", "HF": "", "ga": "`", "aa": "'",
    "q": '"', "Q": '"', "U": "", "u": "", "D": "", "'": "'", "`": "`",
    "``": '"', "''": '"', "-": "\u2014", "dg": "\u2020", "tx": "TeX",
    # mdoc predefined strings
    "Gt": ">", "Lt": "<", "Am": "&", "Ba": "|", "Pm": "\u00b1", "Le": "\u2264",
    "Ge": "\u2265", "Ne": "\u2260", "Pi": "\u03c0", "If": "\u221e", "Na": "NaN",
    "Ua": "\u2191", "Ra": "\u2192", "La": "\u2190", "Lb": "[", "Rb": "]",
    # docbook-to-man font strings
    "T<": "", "T>": "",
}

# request names that only change layout/state and produce no text
_IGNORED_REQUESTS = {
    "TH", "Dd", "Dt", "Os", "ad", "na", "hy", "nh", "ne", "in", "ti", "ll", "ft",
    "ps", "vs", "ta", "so", "mso", "tr", "cc", "c2", "ec", "eo", "rm", "rr", "als",
    "ev", "bp", "pl", "ls", "lt", "nr", "ds", "ds1", "as", "PD", "IX", "UC", "AT",
    "DT", "hw", "hc", "hla", "hlm", "ss", "cs", "cu", "ul", "fam", "fp", "lf", "pc",
    "pn", "po", "wh", "ch", "it", "itc", "em", "tm", "ab", "ex", "mk", "rt", "sv",
    "os", "ns", "rs", "fl", "lg", "uf", "kern", "char", "fchar", "schar",
    "shc", "nroff", "troff", "vpt", "warn", "do", "blm", "lsm", "Bk",
    "Ek", "Xo", "Xc", "Ta", "Lb", "In", "Fd", "ce", "Ud", "br",
}
_PARA_REQUESTS = {"PP", "LP", "P", "Pp", "Lp", "HP", "PA"}
_SPACE_REQUESTS = {"sp", "Sp", "spacing"}
_ITEM_REQUESTS = {"TP", "TQ", "IP", "Ip", "It", "Item", "Bullet"}
_NOFILL_START = {"nf", "EX", "Vb", "DS", "SY", "Ex", "ES", "Ds"}
_NOFILL_END = {"fi", "EE", "Ve", "DE", "YS", "Ee"}
_BLOCK_START = {"Bd", "Bl", "Rs"}
_BLOCK_END = {"Ed", "El", "Re"}
_FONT_ONE = {"B", "I", "SM", "SB", "R", "CW", "CB", "CI"}
_FONT_ALT = {"BR", "RB", "BI", "IB", "IR", "RI"}
_SKIP_BLOCKS = {"TS": "TE", "EQ": "EN", "PS": "PE", "G1": "G2", "GS": "GE", "[": "]"}

_MDOC_CALLABLE = {
    "Ad", "An", "Ar", "Cd", "Cm", "Dv", "Er", "Ev", "Fa", "Fl", "Fn", "Ft", "Ic",
    "Li", "Nm", "Pa", "Sy", "Em", "Va", "Vt", "Xr", "Ql", "Dq", "Sq", "Pq", "Aq",
    "Bq", "Brq", "Qq", "Op", "Oo", "Oc", "Do", "Dc", "So", "Sc", "Po", "Pc", "Ao",
    "Ac", "Bo", "Bc", "Bro", "Brc", "Qo", "Qc", "Eo", "Ec", "Ns", "No", "Pf", "Sx",
    "Tn", "Ux", "Bx", "At", "Fx", "Nx", "Ox", "Dx", "Bsx", "St", "Lk", "Mt", "Ms",
    "Ot", "Ta", "Fo", "Fc", "Sm", "Es", "En", "Xo", "Xc", "Ek", "Bk", "Ap", "Lb",
    "In", "Nd", "Dl", "D1", "Cx", "Tx", "Hf", "Ud", "Db",
}
_MDOC_ENCLOSE = {"Dq": ('"', '"'), "Sq": ("'", "'"), "Pq": ("(", ")"), "Aq": ("<", ">"),
                 "Bq": ("[", "]"), "Brq": ("{", "}"), "Qq": ('"', '"'), "Op": ("[", "]"),
                 "Ql": ("'", "'")}
_MDOC_OPEN = {"Oo": "[", "Do": '"', "So": "'", "Po": "(", "Ao": "<", "Bo": "[",
              "Bro": "{", "Qo": '"'}
_MDOC_CLOSE = {"Oc": "]", "Dc": '"', "Sc": "'", "Pc": ")", "Ac": ">", "Bc": "]",
               "Brc": "}", "Qc": '"'}
_MDOC_FIXED = {"Ux": "UNIX", "At": "AT&T UNIX", "Fx": "FreeBSD", "Nx": "NetBSD",
               "Ox": "OpenBSD", "Dx": "DragonFly", "Bsx": "BSD/OS", "Bx": "BSD"}
_MDOC_STANDARDS = {
    "-p1003.1": "IEEE Std 1003.1 (\"POSIX.1\")",
    "-p1003.1-2001": "IEEE Std 1003.1-2001 (\"POSIX.1\")",
    "-p1003.1-2004": "IEEE Std 1003.1-2004 (\"POSIX.1\")",
    "-p1003.1-2008": "IEEE Std 1003.1-2008 (\"POSIX.1\")",
    "-p1003.2": "IEEE Std 1003.2 (\"POSIX.2\")",
    "-p1003.2-92": "IEEE Std 1003.2-1992 (\"POSIX.2\")",
    "-susv2": "Version 2 of the Single UNIX Specification (\"SUSv2\")",
    "-susv3": "Version 3 of the Single UNIX Specification (\"SUSv3\")",
    "-susv4": "Version 4 of the Single UNIX Specification (\"SUSv4\")",
    "-ansiC": "ANSI X3.159-1989 (\"ANSI C89\")",
    "-isoC": "ISO/IEC 9899:1990 (\"ISO C90\")",
    "-isoC-99": "ISO/IEC 9899:1999 (\"ISO C99\")",
    "-isoC-2011": "ISO/IEC 9899:2011 (\"ISO C11\")",
    "-xpg4": "X/Open Portability Guide Issue 4 (\"XPG4\")",
    "-xpg4.2": "X/Open Portability Guide Issue 4, Version 2 (\"XPG4.2\")",
    "-ieee754": "IEEE Std 754-1985",
}
_CLOSE_PUNCT = {".", ",", ";", ":", "?", "!", ")", "]", "}"}
_OPEN_PUNCT = {"(", "[", "{"}


def _parse_name(s: str, i: int) -> tuple[str, int]:
    """Parse an escape's name argument at s[i]: x, (xx or [xxx]."""
    if i >= len(s):
        return "", i
    c = s[i]
    if c == "(":
        return s[i + 1:i + 3], i + 3
    if c == "[":
        j = s.find("]", i + 1)
        if j < 0:
            return s[i + 1:], len(s)
        return s[i + 1:j], j + 1
    return c, i + 1


def _parse_delimited(s: str, i: int) -> tuple[str, int]:
    """Parse a delimited escape argument: 'xxx' (any delimiter)."""
    if i >= len(s):
        return "", i
    d = s[i]
    j = s.find(d, i + 1)
    if j < 0:
        return s[i + 1:], len(s)
    return s[i + 1:j], j + 1


def _special(name: str, unknown: Counter | None) -> str:
    if name in SPECIAL_CHARS:
        return SPECIAL_CHARS[name]
    m = re.fullmatch(r"u([0-9A-Fa-f]{4,6})((?:_[0-9A-Fa-f]{4,6})*)", name)
    if m:
        cps = [m.group(1)] + [x for x in m.group(2).split("_") if x]
        try:
            return unicodedata.normalize("NFC", "".join(chr(int(x, 16)) for x in cps))
        except ValueError:
            return ""
    m = re.fullmatch(r"char(\d+)", name)
    if m:
        return chr(int(m.group(1)))
    if len(name) == 2 and name[0] in _ACCENTS:
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    if unknown is not None:
        unknown["\\(" + name] += 1
    return ""


class Roff:
    """Escape-sequence expansion with per-page string definitions."""

    def __init__(self, unknown: Counter | None = None):
        self.strings = dict(DEFAULT_STRINGS)
        self.unknown = unknown
        self.page_name = ""

    def text(self, s: str, depth: int = 0) -> str:
        if "\\" not in s:
            return s
        out: list[str] = []
        i, n = 0, len(s)
        while i < n:
            j = s.find("\\", i)
            if j < 0:
                out.append(s[i:])
                break
            out.append(s[i:j])
            i = j + 1
            if i >= n:
                break
            e = s[i]
            i += 1
            if e in "fF":
                _, i = _parse_name(s, i)
            elif e == "s":
                if i < n and s[i] in "+-":
                    i += 1
                if i < n and s[i] in "(['":
                    if s[i] == "'":
                        _, i = _parse_delimited(s, i)
                    else:
                        _, i = _parse_name(s, i)
                elif i < n and s[i].isdigit():
                    if s[i] in "123" and i + 1 < n and s[i + 1].isdigit():
                        i += 2
                    else:
                        i += 1
            elif e == "(":
                name = s[i:i + 2]
                i += 2
                out.append(_special(name, self.unknown))
            elif e == "[":
                j = s.find("]", i)
                if j < 0:
                    j = n
                name = s[i:j]
                i = j + 1
                out.append(_special(name.split()[0] if name.strip() else "", self.unknown))
            elif e == "C":
                name, i = _parse_delimited(s, i)
                out.append(_special(name, self.unknown))
            elif e == "N":
                arg, i = _parse_delimited(s, i)
                if arg.isdigit() and 31 < int(arg) < 0x110000:
                    out.append(chr(int(arg)))
            elif e == "*":
                name, i = _parse_name(s, i)
                val = self.strings.get(name)
                if val is None:
                    if self.unknown is not None:
                        self.unknown["\\*" + name] += 1
                    val = ""
                if depth < 5:
                    out.append(self.text(val, depth + 1))
            elif e == "n":
                if i < n and s[i] in "+-":
                    i += 1
                _, i = _parse_name(s, i)
            elif e in "gkmMVYFO":
                _, i = _parse_name(s, i)
            elif e == "$":
                if i < n and s[i] in "*@":
                    i += 1
                else:
                    _, i = _parse_name(s, i)
            elif e in "hvwlLDXZobxRABSHT?":
                arg, i = _parse_delimited(s, i)
                if e in "Zo" and depth < 5:
                    out.append(self.text(arg, depth + 1))
            elif e in "\"#":
                break  # comment to end of line
            elif e == "!":
                break
            elif e in "e\\E":
                out.append("\\")
            elif e == "-":
                out.append("-")
            elif e in " ~0":
                out.append(" ")
            elif e in "|^&)%:,/cdurpatz{}\n":
                if e == "t":
                    out.append(" ")
            elif e == "'":
                out.append("'")
            elif e == "`":
                out.append("`")
            elif e == "_":
                out.append("_")
            else:
                out.append(e)
        return "".join(out)


def split_args(s: str) -> list[tuple[str, bool]]:
    """Split a request's argument string roff-style; returns (raw, quoted)."""
    args: list[tuple[str, bool]] = []
    i, n = 0, len(s)
    while i < n:
        while i < n and s[i] in " \t":
            i += 1
        if i >= n:
            break
        buf: list[str] = []
        if s[i] == '"':
            i += 1
            while i < n:
                c = s[i]
                if c == '"':
                    if i + 1 < n and s[i + 1] == '"':
                        buf.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                if c == "\\" and i + 1 < n:
                    buf.append(s[i:i + 2])
                    i += 2
                    continue
                buf.append(c)
                i += 1
            args.append(("".join(buf), True))
        else:
            while i < n and s[i] not in " \t":
                if s[i] == "\\" and i + 1 < n:
                    buf.append(s[i:i + 2])
                    i += 2
                    continue
                buf.append(s[i])
                i += 1
            args.append(("".join(buf), False))
    return args


def strip_comment(line: str) -> str:
    """Remove an unescaped \\" or \\# comment."""
    if "\\\"" not in line and "\\#" not in line:
        return line
    i, n = 0, len(line)
    while i < n:
        if line[i] == "\\" and i + 1 < n:
            if line[i + 1] in "\"#":
                return line[:i]
            i += 2
            continue
        i += 1
    return line


def _join_words(parts: list[tuple[str, bool, bool]], spacing: bool = True) -> str:
    """parts: (text, glue_left, glue_right)."""
    if not spacing:
        return "".join(p[0] for p in parts)
    out = []
    glue_next = True
    for text, gl, gr in parts:
        if text == "":
            if gr:
                glue_next = True
            continue
        if out and not (gl or glue_next):
            out.append(" ")
        out.append(text)
        glue_next = gr
    return "".join(out)


_NAME_ENTRY_RE = re.compile(r"^[^\s,]+(?:,\s*[^\s,]+)*\s+(?:-+|\u2014|\u2013)\s")
_NAME_LIST_PREFIX_RE = re.compile(r"^[\w.:+-]+(?:,\s*[\w.:+-]+)+\s+(?:-+|\u2014|\u2013)\s+")


class ManPage:
    """Heuristic roff (man and mdoc) to text converter.

    Keeps, for the NAME and DESCRIPTION sections, a list of paragraphs tagged
    'prose' (running text) or 'other' (lists, displays, examples, headings)."""

    WANTED = ("NAME", "DESCRIPTION")

    def __init__(self, page_name: str, unknown: Counter | None = None):
        self.roff = Roff(unknown)
        self.page_name = page_name
        self.sections: dict[str, list[list]] = {}
        self.section = ""
        self.seen_done: set[str] = set()
        self.rs_depth = 0
        self.block_depth = 0
        self.nofill = False
        self.glue = False
        self.heading_next = False
        self.skip_next_text = False
        self.mdoc_name = ""
        self.nd: str | None = None
        self.nd_open = False
        self.is_redirect = False
        self.is_mdoc = False
        self.indented = False
        self.sm_off = False  # mdoc .Sm off: no spaces between macro output
        self.sm_first = True

    # -- paragraph bookkeeping -------------------------------------------
    def _collecting(self) -> bool:
        return self.section in self.WANTED and self.section not in self.seen_done

    def _base_kind(self) -> str:
        if self.rs_depth or self.block_depth or self.nofill:
            return "other"
        return "prose"

    def new_para(self, kind: str | None = None) -> None:
        if not self._collecting():
            return
        kind = kind or self._base_kind()
        paras = self.sections.setdefault(self.section, [])
        if paras and not paras[-1][1] and paras[-1][0] != "heading":
            paras[-1][0] = kind
        else:
            paras.append([kind, []])
        self.glue = False
        self.indented = False

    def add_text(self, text: str) -> None:
        if not self._collecting():
            return
        if self.nd is not None and self.section == "NAME" and self.nd_open:
            # mdoc: .Nd runs to the end of the NAME section
            self.nd = self.nd + ("" if self.glue else " ") + text
        paras = self.sections.setdefault(self.section, [])
        if not paras or paras[-1][0] == "heading":
            paras.append([self._base_kind(), []])
        parts = paras[-1][1]
        if self.glue and parts:
            parts[-1] += text
        else:
            parts.append(text)

    # -- mdoc inline ------------------------------------------------------
    def mdoc(self, toks: list[tuple[str, bool]]) -> str:
        return _join_words(self._mdoc_parts(toks))

    def _mdoc_parts(self, toks: list[tuple[str, bool]]) -> list[tuple[str, bool, bool]]:
        T = self.roff.text
        parts: list[tuple[str, bool, bool]] = []
        i, n = 0, len(toks)

        def is_macro(k: int) -> bool:
            return k < n and not toks[k][1] and toks[k][0] in _MDOC_CALLABLE

        def is_punct(k: int) -> bool:
            return k < n and not toks[k][1] and toks[k][0] in (_CLOSE_PUNCT | _OPEN_PUNCT | {"|"})

        def take_args(k: int) -> tuple[list[str], int]:
            got = []
            while k < n and not is_macro(k) and not is_punct(k):
                got.append(toks[k][0])
                k += 1
            return got, k

        while i < n:
            raw, quoted = toks[i]
            if quoted or raw not in _MDOC_CALLABLE:
                if not quoted and raw in _CLOSE_PUNCT:
                    parts.append((raw, True, False))
                elif not quoted and raw in _OPEN_PUNCT:
                    parts.append((raw, False, True))
                else:
                    parts.append((T(raw), False, False))
                i += 1
                continue
            m = raw
            i += 1
            if m in _MDOC_ENCLOSE:
                j = n
                while j > i and not toks[j - 1][1] and toks[j - 1][0] in _CLOSE_PUNCT:
                    j -= 1
                inner = _join_words(self._mdoc_parts(toks[i:j]), spacing=not self.sm_off)
                o, c = _MDOC_ENCLOSE[m]
                parts.append((o + inner + c, False, False))
                i = j
            elif m in _MDOC_OPEN:
                parts.append((_MDOC_OPEN[m], False, True))
            elif m in _MDOC_CLOSE:
                parts.append((_MDOC_CLOSE[m], True, False))
            elif m == "Ns":
                parts.append(("", False, True))
            elif m == "Ap":
                parts.append(("'", True, True))
            elif m == "Pf":
                if i < n:
                    parts.append((T(toks[i][0]), False, True))
                    i += 1
            elif m == "Xr":
                args, i = take_args(i)
                if len(args) >= 2:
                    parts.append((T(args[0]) + "(" + T(args[1]) + ")", False, False))
                    parts.extend((T(a), False, False) for a in args[2:])
                elif args:
                    parts.append((T(args[0]), False, False))
            elif m == "Fl":
                args, i = take_args(i)
                if not args:
                    parts.append(("-", False, is_macro(i) or (i < n and not is_punct(i))))
                for a in args:
                    parts.append(("-" + T(a), False, False))
            elif m == "Nm":
                args, i = take_args(i)
                if args:
                    for a in args:
                        parts.append((T(a), False, False))
                else:
                    parts.append((self.mdoc_name or self.page_name, False, False))
            elif m == "Ar":
                args, i = take_args(i)
                if args:
                    parts.extend((T(a), False, False) for a in args)
                else:
                    parts.append(("file ...", False, False))
            elif m in _MDOC_FIXED:
                args, i = take_args(i)
                txt = _MDOC_FIXED[m]
                if args:
                    if m == "Bx":
                        txt = T(args[0]) + "BSD" + (" " + " ".join(T(a) for a in args[1:]) if args[1:] else "")
                    elif m == "At":
                        txt = "Version " + T(args[0]).lstrip("v") + " AT&T UNIX"
                    else:
                        txt = txt + " " + " ".join(T(a) for a in args)
                parts.append((txt, False, False))
            elif m == "St":
                args, i = take_args(i)
                if args:
                    parts.append((_MDOC_STANDARDS.get(args[0], T(args[0]).lstrip("-")), False, False))
                    parts.extend((T(a), False, False) for a in args[1:])
            elif m == "Fn":
                args, i = take_args(i)
                if args:
                    parts.append((T(args[0]) + "(" + ", ".join(T(a) for a in args[1:]) + ")",
                                  False, False))
            elif m == "Fo":
                args, i = take_args(i)
                if args:
                    parts.append((T(args[0]) + "(", False, True))
            elif m == "Fc":
                parts.append((")", True, False))
            elif m == "Lk":
                args, i = take_args(i)
                if len(args) >= 2:
                    parts.append((" ".join(T(a) for a in args[1:]), False, False))
                elif args:
                    parts.append((T(args[0]), False, False))
            elif m in ("Sm", "Bk", "Ek", "Xo", "Xc", "Ta", "Es", "En", "Eo", "Ec", "Db"):
                if m in ("Sm", "Bk", "Db", "Es") and i < n and not is_macro(i):
                    i += 1 if m != "Es" else 2
            else:  # generic formatting macro: words until next macro/punct
                args, i = take_args(i)
                parts.extend((T(a), False, False) for a in args)
        return parts

    # -- driver -----------------------------------------------------------
    def _set_section(self, name: str) -> None:
        if self.section in self.WANTED and self.section in self.sections:
            self.seen_done.add(self.section)
        self.section = clean_text(name).upper().strip('"')
        self.rs_depth = self.block_depth = 0
        self.nofill = False
        self.glue = False
        self.skip_next_text = False
        if self._collecting():
            self.new_para("prose")

    def done(self) -> bool:
        return all(s in self.seen_done for s in self.WANTED)

    def feed(self, text: str) -> None:
        lines = text.split("\n")
        T = self.roff.text
        skip_until: set[str] | None = None
        brace_skip = 0
        n = len(lines)
        i = 0
        first_request = True
        while i < n:
            line = lines[i]
            i += 1
            # continuation lines (odd number of trailing backslashes)
            while line.endswith("\\") and (len(line) - len(line.rstrip("\\"))) % 2 == 1 and i < n:
                line = line[:-1] + lines[i]
                i += 1
            if brace_skip > 0:
                brace_skip += line.count("\\{") - line.count("\\}")
                continue
            is_ctrl = line[:1] in (".", "'")
            if skip_until is not None:
                if is_ctrl:
                    name = line[1:].strip().split(" ")[0] if line[1:].strip() else ""
                    if name in skip_until:
                        skip_until = None
                continue
            if is_ctrl:
                body = line[1:].lstrip(" \t")
                if body.startswith('\\"') or body.startswith("\\#") or not body:
                    continue
                m = re.match(r"(\S+)\s*(.*)$", body)
                req, rest = (m.group(1), m.group(2)) if m else (body, "")
                if req.startswith("\\}") or req == "\\}":
                    continue
                if first_request and req == "so":
                    self.is_redirect = True
                    return
                first_request = False
                if not self._handle_request(req, rest):
                    # block-introducing requests handled here
                    if req in ("de", "de1", "am", "am1", "dei", "ami", "ig"):
                        a = split_args(strip_comment(rest))
                        if req == "ig":
                            skip_until = {a[0][0]} if a else {"."}
                        else:
                            skip_until = {a[1][0]} if len(a) > 1 else {"."}
                        if "." in skip_until:
                            skip_until = {"."}
                    elif req in ("if", "ie", "el", "while"):
                        depth = rest.count("\\{") - rest.count("\\}")
                        if depth > 0:
                            brace_skip = depth
                    elif req in _SKIP_BLOCKS:
                        skip_until = {_SKIP_BLOCKS[req]}
                if self.done():
                    return
                continue
            # text line
            if not self.section:
                continue
            if self.heading_next:
                self.heading_next = False
                if line.strip():
                    self._set_section(T(strip_comment(line)))
                    continue
            if self.skip_next_text:
                self.skip_next_text = False
                continue
            if not self._collecting():
                continue
            if not line.strip():
                if not self.nofill:
                    self.new_para(self._current_kind())
                continue
            raw = strip_comment(line)
            if not self.nofill:
                if raw[:1] in (" ", "\t"):
                    # leading blank: a break; runs of such lines are preformatted
                    if not self.indented:
                        self.new_para("other")
                        self.indented = True
                elif self.indented:
                    self.indented = False
                    self.new_para()
            txt = T(raw)
            self.add_text(txt)
            self.glue = raw.rstrip().endswith("\\c")
        if self.section in self.WANTED and self.section in self.sections:
            self.seen_done.add(self.section)

    def _current_kind(self) -> str:
        paras = self.sections.get(self.section)
        if paras:
            return paras[-1][0]
        return self._base_kind()

    def _handle_request(self, req: str, rest: str) -> bool:
        """Returns True if the request was fully handled."""
        T = self.roff.text
        if req in ("SH", "Sh", "sh"):
            args = split_args(strip_comment(rest))
            if req == "Sh":
                self.is_mdoc = True
            if args:
                self._set_section(" ".join(T(a) for a, _ in args))
            else:
                self.heading_next = True
            return True
        if req == "ds" or req == "ds1":
            m = re.match(r"(\S+)\s?(.*)$", rest)
            if m:
                val = m.group(2)
                if val.startswith('"'):
                    val = val[1:]
                self.roff.strings[m.group(1)] = strip_comment(val)
            return True
        if req in _IGNORED_REQUESTS:
            return True
        if not self.section:
            # before the first section only block-skipping requests matter
            return req not in ("de", "de1", "am", "am1", "dei", "ami", "ig",
                               "if", "ie", "el", "while") and req not in _SKIP_BLOCKS
        if req in ("SS", "Ss"):
            # a subsection heading ends the leading prose; its text is not kept
            if self._collecting():
                paras = self.sections.setdefault(self.section, [])
                if paras and not paras[-1][1]:
                    paras.pop()
                paras.append(["heading", []])
                paras.append([self._base_kind(), []])
                self.glue = self.indented = False
            if not rest.strip():
                self.skip_next_text = True
            return True
        if req in _PARA_REQUESTS:
            self.new_para()
            return True
        if req in _SPACE_REQUESTS:
            self.new_para(self._current_kind())
            return True
        if req in _ITEM_REQUESTS:
            self.new_para("other")
            if req in ("IP", "Ip") and rest.strip():
                pass  # tag is not prose
            return True
        if req == "RS":
            self.rs_depth += 1
            self.new_para("other")
            return True
        if req == "RE":
            self.rs_depth = max(0, self.rs_depth - 1)
            self.new_para()
            return True
        if req in _NOFILL_START:
            self.nofill = True
            self.new_para("other")
            return True
        if req in _NOFILL_END:
            self.nofill = False
            self.new_para()
            return True
        if req in _BLOCK_START:
            self.block_depth += 1
            self.new_para("other")
            return True
        if req in _BLOCK_END:
            self.block_depth = max(0, self.block_depth - 1)
            self.new_para()
            return True
        if req in _FONT_ONE:
            args = split_args(strip_comment(rest))
            if args:
                self.add_text(" ".join(T(a) for a, _ in args))
                self.glue = rest.rstrip().endswith("\\c")
            return True
        if req in _FONT_ALT:
            args = split_args(strip_comment(rest))
            if args:
                self.add_text("".join(T(a) for a, _ in args))
                self.glue = rest.rstrip().endswith("\\c")
            return True
        if req in ("UR", "MT"):
            return True
        if req in ("UE", "ME"):
            args = split_args(strip_comment(rest))
            if args:
                txt = "".join(T(a) for a, _ in args)
                paras = self.sections.get(self.section)
                if self._collecting() and paras and paras[-1][1]:
                    paras[-1][1][-1] += txt
                else:
                    self.add_text(txt)
            return True
        if req in ("OP",):
            args = split_args(strip_comment(rest))
            if args:
                self.add_text("[" + " ".join(T(a) for a, _ in args) + "]")
            return True
        # ---- mdoc ----
        if req == "Nd":
            toks = split_args(strip_comment(rest))
            txt = self.mdoc(toks)
            self.add_text(txt)
            if self.section == "NAME":
                self.nd = txt
                self.nd_open = True
            return True
        if req == "Nm" and self.section == "NAME":
            toks = split_args(strip_comment(rest))
            if toks and not self.mdoc_name:
                self.mdoc_name = self.roff.text(toks[0][0]).rstrip(",")
            self.add_text(self.mdoc([("Nm", False)] + toks) if toks else self.mdoc_name)
            return True
        if req in ("D1", "Dl"):
            kind = self._current_kind()
            self.new_para("other")
            self.add_text(self.mdoc(split_args(strip_comment(rest))))
            self.new_para(kind)
            return True
        if req == "Sm":
            a = rest.split()
            self.sm_off = (a[0] == "off") if a else not self.sm_off
            self.sm_first = True
            return True
        if req in _MDOC_CALLABLE:
            toks = split_args(strip_comment(rest))
            if self.sm_off:
                txt = _join_words(self._mdoc_parts([(req, False)] + toks), spacing=False)
                self.glue = not self.sm_first
                self.sm_first = False
            else:
                txt = self.mdoc([(req, False)] + toks)
            self.add_text(txt)
            return True
        return False

    # -- results ----------------------------------------------------------
    def summary(self) -> str | None:
        if self.nd is not None:
            return self.nd
        paras = self.sections.get("NAME")
        if not paras:
            return None
        sep = re.compile(r"\s+(?:-+|\u2014|\u2013)\s+|\s(?:-+|\u2014|\u2013)\s*|\s*(?:-+|\u2014|\u2013)\s")
        for kind, parts in paras:
            if kind == "heading":
                continue
            lines = [t for t in (clean_text(x) for x in parts) if t]
            for k, line in enumerate(lines):
                m = sep.search(line)
                if not m:
                    continue
                out = [line[m.end():]]
                # the rest of this paragraph, up to a further "name - summary"
                # entry (bzip2: "bzcat - ..."); later paragraphs are not used
                for nxt in lines[k + 1:]:
                    if _NAME_ENTRY_RE.match(nxt):
                        break
                    out.append(nxt)
                text = clean_text(" ".join(out))
                # "lz4 - lz4, unlz4, lz4cat - Compress ..."
                return _NAME_LIST_PREFIX_RE.sub("", text)
        return None

    def description(self, max_chars: int) -> str | None:
        paras = self.sections.get("DESCRIPTION")
        if not paras:
            return None
        got: list[str] = []
        total = 0
        for kind, parts in paras:
            txt = clean_text(" ".join(parts))
            if not txt and kind != "heading":
                continue
            if kind != "prose":
                if got:
                    break
                continue
            got.append(txt)
            total += len(txt) + 1
            if total >= max_chars or txt.endswith(":"):
                break  # enough, or the paragraph introduces a display/list
        if not got:
            return None
        text = tidy_punct(clean_text(" ".join(got)))
        return drop_trailing_colon(truncate_at_sentence(text, max_chars))


def _read_gz_text(path: str) -> str:
    with gzip.open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_PLACEHOLDER_SUMMARY = re.compile(
    r"^(manual page for\b|man ?page for\b|no description\b|undocumented\b|"
    r"\(?unknown subject\)?$|todo\b|fixme\b|short description\b|program to do something|"
    r"a program$|description$|-$)",
    re.I,
)


def man_page_list(root: str = MAN_ROOT) -> list[tuple[str, str, str]]:
    """(path, name, section) for English pages, one per real file."""
    files = []
    for sec in range(1, 9):
        files.extend(sorted(glob.glob(os.path.join(root, f"man{sec}", "*.gz"))))
    by_real: dict[str, list[str]] = defaultdict(list)
    for p in files:
        by_real[os.path.realpath(p)].append(p)
    keep = set()
    for real, group in by_real.items():
        keep.add(real if real in group else min(group))
    out = []
    for p in files:
        if p not in keep:
            continue
        base = os.path.basename(p)[:-3]
        m = re.match(r"^(.*)\.(\d[A-Za-z0-9_+-]*)$", base)
        if not m:
            continue
        out.append((p, m.group(1), m.group(2)))
    return out


def collect_man(max_chars: int, stats: Counter, unknown: Counter) -> list[dict]:
    rows = []
    for path, name, sec in man_page_list():
        try:
            text = _read_gz_text(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            stats["man: unreadable"] += 1
            continue
        page = ManPage(name, unknown)
        try:
            page.feed(text)
        except RecursionError:
            stats["man: parse error"] += 1
            continue
        if page.is_redirect:
            stats["man: .so redirect"] += 1
            continue
        summ = page.summary()
        if summ is None:
            stats["man: no NAME summary"] += 1
            continue
        summ = normalise_summary(tidy_punct(re.split(r"\s#+\s+[A-Z]{3,}", summ)[0]))
        if len(summ) < MIN_SUMMARY_CHARS or _PLACEHOLDER_SUMMARY.search(summ):
            stats["man: summary too short/placeholder"] += 1
            continue
        if len(summ) > MAX_SUMMARY_CHARS:
            stats["man: summary too long"] += 1
            continue
        desc = page.description(max_chars)
        if desc is None:
            stats["man: no DESCRIPTION prose"] += 1
            continue
        if len(desc) < MIN_DESC_CHARS:
            stats["man: description too short"] += 1
            continue
        rows.append({"source": f"man:{name}({sec})", "summary": summ, "description": desc})
    return rows


# --------------------------------------------------------------------------
# AppStream (DEP-11 YAML subset) -> text
# --------------------------------------------------------------------------

def _fold_lines(lines: list[str], quote: str) -> str:
    """Fold the physical lines of a multi-line quoted YAML scalar."""
    out: list[str] = []
    for k, ln in enumerate(lines):
        if k == 0:
            cur = ln.rstrip(" \t") if len(lines) > 1 else ln
            out.append(cur)
            continue
        s = ln.strip(" \t") if k < len(lines) - 1 else ln.lstrip(" \t")
        prev = out[-1] if out else ""
        if quote == '"' and prev.endswith("\\") and (len(prev) - len(prev.rstrip("\\"))) % 2 == 1:
            out[-1] = prev[:-1]
            out.append(s)
        elif s == "":
            out.append("\n")
        else:
            if out and out[-1] != "\n":
                out.append(" ")
            out.append(s)
    return "".join(out)


_YAML_ESC = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "/": "/", "0": "\0", "a": "\a",
             "b": "\b", "e": "\x1b", "f": "\f", "r": "\r", "v": "\v", " ": " ",
             "_": "\u00a0", "N": "\u0085", "L": "\u2028", "P": "\u2029", "\t": "\t"}


def _yaml_double(s: str) -> str:
    out = []
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n:
            e = s[i + 1]
            if e in _YAML_ESC:
                out.append(_YAML_ESC[e])
                i += 2
                continue
            width = {"x": 2, "u": 4, "U": 8}.get(e)
            if width:
                try:
                    out.append(chr(int(s[i + 2:i + 2 + width], 16)))
                    i += 2 + width
                    continue
                except ValueError:
                    pass
            out.append(e)
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def yaml_scalar(first: str, cont: list[str]) -> str:
    """Value of a YAML scalar whose first line (after 'key:') is `first` and
    whose continuation lines (more indented or blank) are `cont`."""
    first = first.strip()
    if first[:1] in ("|", ">"):
        body = [ln for ln in cont]
        while body and not body[-1].strip():
            body.pop()
        indent = min((len(ln) - len(ln.lstrip(" ")) for ln in body if ln.strip()), default=0)
        body = [ln[indent:] for ln in body]
        if first[0] == "|":
            return "\n".join(body)
        # folded: join runs of non-empty lines with spaces, blank line -> newline
        out, para = [], []
        for ln in body:
            if ln.strip():
                para.append(ln)
            else:
                out.append(" ".join(para))
                para = []
        out.append(" ".join(para))
        return "\n".join(out)
    if first.startswith('"'):
        lines = [first[1:]] + cont
        folded = _fold_lines(lines, '"')
        # find the closing quote (unescaped)
        i = 0
        while i < len(folded):
            if folded[i] == "\\":
                i += 2
                continue
            if folded[i] == '"':
                folded = folded[:i]
                break
            i += 1
        return _yaml_double(folded)
    if first.startswith("'"):
        lines = [first[1:]] + cont
        folded = _fold_lines(lines, "'")
        i = 0
        while i < len(folded):
            if folded[i] == "'":
                if folded[i + 1:i + 2] == "'":
                    i += 2
                    continue
                folded = folded[:i]
                break
            i += 1
        return folded.replace("''", "'")
    # plain scalar
    parts = [first] + [ln.strip() for ln in cont]
    return _fold_lines(parts, "") if cont else first


def _top_level_blocks(doc_lines: list[str]) -> dict[str, tuple[str, list[str]]]:
    blocks: dict[str, tuple[str, list[str]]] = {}
    key = None
    for ln in doc_lines:
        if ln and not ln[0].isspace() and not ln.startswith("#") and not ln.startswith("-"):
            m = re.match(r"^([^:\s][^:]*):(?:\s(.*)|)$", ln)
            if m:
                key = m.group(1)
                blocks[key] = (m.group(2) or "", [])
                continue
        if key is not None:
            blocks[key][1].append(ln)
    return blocks


def _lang_value(block: list[str], lang: str = "C") -> str | None:
    """From the lines of a mapping nested under a top-level key, return the
    scalar value of `lang:` (two-space indented)."""
    for idx, ln in enumerate(block):
        if ln.startswith("  " + lang + ":") and not ln.startswith("   "):
            first = ln[len(lang) + 3:]
            cont = []
            for nxt in block[idx + 1:]:
                if nxt.strip() == "" or nxt.startswith("   "):
                    cont.append(nxt)
                else:
                    break
            # block scalars keep their own indentation
            while cont and not cont[-1].strip():
                cont.pop()
            return yaml_scalar(first, cont)
    return None


class _HTMLToText(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks: list[tuple[str, object]] = []
        self.cur: list[str] = []
        self.items: list[str] | None = None
        self.in_li = False

    def _flush_para(self):
        txt = clean_text("".join(self.cur))
        self.cur = []
        if txt:
            if self.items is not None:
                self.items.append(txt)
            else:
                self.blocks.append(("p", txt))

    def handle_starttag(self, tag, attrs):
        if tag in ("p", "br", "div", "h1", "h2", "h3", "h4"):
            if not self.in_li:
                self._flush_para()
            else:
                self.cur.append(" ")
        elif tag in ("ul", "ol"):
            self._flush_para()
            self.items = []
        elif tag == "li":
            self._flush_para()
            self.in_li = True

    def handle_endtag(self, tag):
        if tag == "p" and not self.in_li:
            self._flush_para()
        elif tag == "li":
            self._flush_para()
            self.in_li = False
        elif tag in ("ul", "ol"):
            self._flush_para()
            if self.items:
                self.blocks.append(("list", self.items))
            self.items = None

    def handle_data(self, data):
        self.cur.append(data)

    def result(self) -> str:
        self._flush_para()
        if self.items:
            self.blocks.append(("list", self.items))
            self.items = None
        out = []
        for kind, val in self.blocks:
            if kind == "p":
                out.append(val)
            else:
                items = [v.rstrip(" .;,") for v in val if v.rstrip(" .;,")]
                if items:
                    out.append("; ".join(items) + ".")
        return clean_text(" ".join(out))


def html_to_text(s: str) -> str:
    p = _HTMLToText()
    p.feed(s)
    p.close()
    return p.result()


def collect_appstream(max_chars: int, stats: Counter) -> list[dict]:
    rows = []
    seen_keys: set[str] = set()
    for path in sorted(glob.glob(APPSTREAM_GLOB)):
        try:
            text = _read_gz_text(path)
        except (OSError, EOFError, gzip.BadGzipFile):
            stats["appstream: unreadable"] += 1
            continue
        doc: list[str] = []
        docs: list[list[str]] = []
        for ln in text.split("\n"):
            if ln.rstrip() == "---":
                docs.append(doc)
                doc = []
            else:
                doc.append(ln)
        docs.append(doc)
        for doc in docs:
            blocks = _top_level_blocks(doc)
            if "ID" not in blocks or "Type" not in blocks:
                continue
            cid = yaml_scalar(blocks["ID"][0], blocks["ID"][1]).strip()
            pkg = yaml_scalar(*blocks["Package"]).strip() if "Package" in blocks else ""
            summ = _lang_value(blocks["Summary"][1]) if "Summary" in blocks else None
            desc_html = _lang_value(blocks["Description"][1]) if "Description" in blocks else None
            if not summ:
                stats["appstream: no C summary"] += 1
                continue
            if not desc_html:
                stats["appstream: no C description"] += 1
                continue
            summ = normalise_summary(summ)
            if len(summ) < MIN_SUMMARY_CHARS:
                stats["appstream: summary too short"] += 1
                continue
            desc = html_to_text(desc_html)
            desc = truncate_at_sentence(desc, max_chars)
            if len(desc) < MIN_DESC_CHARS:
                stats["appstream: description too short"] += 1
                continue
            key = f"appstream:{cid}"
            if key in seen_keys:
                key = f"appstream:{cid}@{pkg}"
            if key in seen_keys:
                stats["appstream: duplicate id"] += 1
                continue
            seen_keys.add(key)
            rows.append({"source": key, "summary": summ, "description": desc, "package": pkg})
    return rows


# --------------------------------------------------------------------------
# dedupe, grouping, split
# --------------------------------------------------------------------------

def _sha1_int(s: str) -> int:
    return int.from_bytes(hashlib.sha1(s.encode("utf-8")).digest(), "big")


def _norm_key(s: str) -> str:
    return re.sub(r"[^0-9a-z]+", " ", s.lower()).strip()


class _UnionFind:
    def __init__(self, n: int):
        self.p = list(range(n))

    def find(self, x: int) -> int:
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                self.p[rb] = ra
            else:
                self.p[ra] = rb


_STAGE_RE = re.compile(r"^(?:\((?:ALPHA|BETA|PREVIEW|DEPRECATED|EXPERIMENTAL)\)\s*)+")
_STAGE_WORD_RE = re.compile(r"\b(?:alpha|beta|preview)\b")


def _dedupe_desc_key(desc: str) -> str:
    """Description key that ignores release-stage markers, so that e.g.
    'gcloud alpha X' / 'gcloud beta X' / 'gcloud X' pages count as one."""
    return _norm_key(_STAGE_WORD_RE.sub(" ", _STAGE_RE.sub("", desc).lower()))


def dedupe(rows: list[dict], stats: Counter) -> list[dict]:
    """Drop pairs whose summary and (stage-insensitive) description repeat an
    earlier one; the shortest source key wins (the GA page over alpha/beta)."""
    rows = sorted(rows, key=lambda r: (len(r["source"]), r["source"]))
    seen = set()
    out = []
    for r in rows:
        k = (_norm_key(r["summary"]), _dedupe_desc_key(r["description"]))
        if k in seen:
            stats["duplicate summary+description"] += 1
            continue
        seen.add(k)
        out.append(r)
    out.sort(key=lambda r: r["source"])
    return out


def group_rows(rows: list[dict]) -> list[list[dict]]:
    """Rows sharing a (normalised) summary or description form one group, so
    near-duplicates never straddle splits. Groups are keyed by their smallest
    source key."""
    uf = _UnionFind(len(rows))
    first_by: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        for kind in ("summary", "description"):
            k = (kind, _norm_key(r[kind]))
            if k in first_by:
                uf.union(first_by[k], i)
            else:
                first_by[k] = i
    groups: dict[int, list[dict]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[uf.find(i)].append(r)
    out = []
    for g in groups.values():
        g.sort(key=lambda r: r["source"])
        out.append(g)
    out.sort(key=lambda g: g[0]["source"])
    return out


def split_groups(groups: list[list[dict]], val_frac: float, test_frac: float,
                 val_max: int, test_max: int) -> dict[str, list[dict]]:
    scale = float(1 << 160)
    cands: dict[str, list[tuple[int, list[dict]]]] = {"test": [], "val": [], "train": []}
    for g in groups:
        h = _sha1_int(g[0]["source"])
        u = h / scale
        if u < test_frac:
            cands["test"].append((h, g))
        elif u < test_frac + val_frac:
            cands["val"].append((h, g))
        else:
            cands["train"].append((h, g))
    splits: dict[str, list[tuple[int, dict]]] = {"train": [], "val": [], "test": []}
    for name, cap in (("test", test_max), ("val", val_max)):
        count = 0
        full = False
        for h, g in sorted(cands[name], key=lambda x: (x[0], x[1][0]["source"])):
            if not full and count + len(g) <= cap:
                splits[name].extend((h, r) for r in g)
                count += len(g)
            else:
                full = True
                splits["train"].extend((h, r) for r in g)
    for h, g in cands["train"]:
        splits["train"].extend((h, r) for r in g)
    # deterministic row order: by (group hash, source key) -- a fixed shuffle
    return {k: [r for _, r in sorted(v, key=lambda x: (x[0], x[1]["source"]))]
            for k, v in splits.items()}


def apply_limit(groups: list[list[dict]], limit: int) -> list[list[dict]]:
    """Keep `limit` rows, choosing whole groups in a salted-hash order that is
    independent of the split hash."""
    order = sorted(groups, key=lambda g: (_sha1_int("limit:" + g[0]["source"]), g[0]["source"]))
    out, count = [], 0
    for g in order:
        if count >= limit:
            break
        g = g[: limit - count]
        out.append(g)
        count += len(g)
    out.sort(key=lambda g: g[0]["source"])
    return out


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------

def _write_atomic(path: str, data: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(data)
    os.replace(tmp, path)


def _record(r: dict) -> str:
    obj = {
        "prompt": PROMPT_TEMPLATE.format(desc=r["description"]),
        "completion": r["summary"],
        "reference": r["summary"],
        "source": r["source"],
    }
    return json.dumps(obj, ensure_ascii=False)


def _source_kind(r: dict) -> str:
    return r["source"].split(":", 1)[0]


def _debian_version() -> str:
    try:
        with open("/etc/debian_version", encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def write_readme(path: str, splits: dict[str, list[dict]], args, command: str,
                 appstream_files: list[str]) -> None:
    kinds = ["man", "appstream"]
    lines = [
        "# One-line summarization dataset (man pages + AppStream)",
        "",
        "Generated by `scripts/make_summary_dataset.py` from data installed on a Debian",
        f"machine (debian_version: {_debian_version()}). Do not edit by hand; re-run the command:",
        "",
        "```",
        command,
        "```",
        "",
        "## Counts",
        "",
        "| source | train | val | test | total |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in kinds + ["total"]:
        c = {s: sum(1 for r in rows if k == "total" or _source_kind(r) == k)
             for s, rows in splits.items()}
        lines.append(f"| {k} | {c['train']} | {c['val']} | {c['test']} | "
                     f"{c['train'] + c['val'] + c['test']} |")
    lines += [
        "",
        "## Format",
        "",
        "`train.jsonl`, `val.jsonl`, `test.jsonl`: one JSON object per line:",
        "",
        "```",
        '{"prompt": "Summarize in one line:\\n<description>\\n", "completion": "<summary>",',
        ' "reference": "<summary>", "source": "man:ls(1)" | "appstream:<component id>"}',
        "```",
        "",
        f"Descriptions are plain text on one line, at most {args.max_desc_chars} characters,",
        "cut at a sentence boundary where possible (otherwise at a word, ending in `...`).",
        "Summaries are stripped, with no trailing period.",
        "`descriptions.txt` holds the train descriptions only (one document per paragraph,",
        "separated by blank lines) for continued pretraining; no val/test text is in it.",
        "",
        "## Split",
        "",
        "Exact duplicates (summary+description) are dropped. Pairs that share a",
        "normalised summary or description are grouped, and each group is placed by the",
        "SHA-1 of its smallest source key: 5% test candidates, 5% val candidates, capped",
        f"at {args.test_max} (test) and {args.val_max} (val) rows keeping the smallest hashes;",
        "the rest is train. The same machine gives byte-identical output.",
        "",
        "## Provenance and licences",
        "",
        f"* Man pages: `{MAN_ROOT}/man1` .. `man8` (English pages only), the NAME line and",
        "  the first prose paragraph(s) of DESCRIPTION, converted from roff heuristically.",
        "  `source` is `man:<name>(<section>)`; `dpkg -S` on the page finds its package.",
        "* AppStream: Debian DEP-11 component metadata, the English (`C`) Summary and",
        "  Description of each component. `source` is `appstream:<component id>`.",
    ]
    for f in appstream_files:
        lines.append(f"  - `{f}`")
    lines += [
        "",
        "Each text keeps the licence of the package it comes from: man pages are under the",
        "package's documentation licence (see /usr/share/doc/<package>/copyright); AppStream",
        "summaries/descriptions come from upstream metainfo files, whose metadata licence is",
        "usually CC0-1.0 or another permissive one (not recorded in the DEP-11 data;",
        "`ProjectLicense` there is the project's own licence). Check them before",
        "redistributing the dataset.",
        "",
    ]
    _write_atomic(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/summaries", help="output folder")
    ap.add_argument("--sources", default="man,appstream",
                    help="comma-separated: man, appstream (default both)")
    ap.add_argument("--max-desc-chars", type=int, default=600)
    ap.add_argument("--limit", type=int, default=0, help="keep at most N pairs in total (0: all)")
    ap.add_argument("--val-max", type=int, default=300)
    ap.add_argument("--test-max", type=int, default=300)
    ap.add_argument("--val-frac", type=float, default=0.05)
    ap.add_argument("--test-frac", type=float, default=0.05)
    ap.add_argument("--man-exclude", default="",
                    help="regex; skip man pages whose name matches (e.g. '^gcloud_(alpha|beta)_')")
    ap.add_argument("--verbose", action="store_true", help="print skip reasons and unknown escapes")
    args = ap.parse_args(argv)

    t0 = time.time()
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    for s in sources:
        if s not in ("man", "appstream"):
            ap.error(f"unknown source {s!r}")
    stats: Counter = Counter()
    unknown: Counter = Counter()
    rows: list[dict] = []
    if "man" in sources:
        man_rows = collect_man(args.max_desc_chars, stats, unknown)
        if args.man_exclude:
            rx = re.compile(args.man_exclude)
            before = len(man_rows)
            man_rows = [r for r in man_rows if not rx.search(r["source"][4:].rsplit("(", 1)[0])]
            stats["man: excluded by --man-exclude"] += before - len(man_rows)
        stats["man: pairs"] = len(man_rows)
        rows += man_rows
    appstream_files = sorted(glob.glob(APPSTREAM_GLOB)) if "appstream" in sources else []
    if "appstream" in sources:
        as_rows = collect_appstream(args.max_desc_chars, stats)
        stats["appstream: pairs"] = len(as_rows)
        rows += as_rows
    rows = dedupe(rows, stats)
    groups = group_rows(rows)
    if args.limit and args.limit > 0:
        groups = apply_limit(groups, args.limit)
    splits = split_groups(groups, args.val_frac, args.test_frac, args.val_max, args.test_max)

    os.makedirs(args.out, exist_ok=True)
    for name in ("train", "val", "test"):
        data = "".join(_record(r) + "\n" for r in splits[name])
        _write_atomic(os.path.join(args.out, f"{name}.jsonl"), data)
    _write_atomic(os.path.join(args.out, "descriptions.txt"),
                  "\n\n".join(r["description"] for r in splits["train"]) + "\n")
    script = os.path.relpath(os.path.abspath(__file__))
    if script.startswith(".."):
        script = os.path.abspath(__file__)
    command = shlex.join(["python3", script] + (sys.argv[1:] if argv is None else argv))
    write_readme(os.path.join(args.out, "README.md"), splits, args, command, appstream_files)

    if args.verbose:
        for k, v in sorted(stats.items()):
            print(f"  {k}: {v}")
        if unknown:
            print("  unknown roff escapes (top 20):",
                  ", ".join(f"{k}={v}" for k, v in unknown.most_common(20)))
    print(f"wrote {args.out}/{{train,val,test}}.jsonl, descriptions.txt, README.md")
    print(f"{'source':<10} {'train':>7} {'val':>5} {'test':>5} {'total':>7}")
    for k in ("man", "appstream", "total"):
        c = {s: sum(1 for r in v if k == "total" or _source_kind(r) == k) for s, v in splits.items()}
        print(f"{k:<10} {c['train']:>7} {c['val']:>5} {c['test']:>5} "
              f"{c['train'] + c['val'] + c['test']:>7}")
    print(f"done in {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
