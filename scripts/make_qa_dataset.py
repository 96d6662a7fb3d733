#!/usr/bin/env python3
"""Builds a small real extractive question-answering set (SQuAD v2.0 JSON) from the manual pages
installed on this machine, for the question-answering recipe. Standard library only; the roff
source is parsed here (no `man` / `groff` needed).

Sources (real text written by people; questions and answers made by the stated rules, i.e. a
"silver" standard):
  /usr/share/man/man1/*.gz and /usr/share/man/man8/*.gz, the English pages only (the translated
  trees /usr/share/man/<lang>/ are not read; symlinks and `.so` redirections are skipped, mdoc
  pages (`.Dd` / `.Sh` / `.Fl`) are skipped). Sections whose heading contains OPTION or FLAG, or
  is DESCRIPTION, are read; in them each tagged paragraph (`.TP` tag line, `.IP "tag"`, with
  `.TQ` extra tags) whose tag starts with `-` or `+` is an option item: the tag ("-a, --all",
  "--block-size=SIZE") and its description (the text up to the next item at the same indent,
  `.PP`, or the next section; nested `.RS` lists are folded into the description). Fonts, sizes,
  named characters (\\(em, \\[aq], ...), pod2man's strings (\\*(C`, \\*(L", ...) and `.ds`
  strings are rendered as plain text; an item whose rendered text still holds an escape this
  script does not know, a table (`.TS`) or mostly non-ASCII letters is dropped.

Contexts: consecutive option items of one section, rendered "TAG\\nDESCRIPTION" and joined with
"\\n", cut into chunks of ~60-400 words (a random target per chunk, seeded by the command name,
so some contexts run well past 256 word pieces). Questions, each answer an exact span of its
context with the right character `answer_start` (asserted):
  - "What does the OPT option of CMD do?"  -> the first sentence of OPT's description (without
    its final period), or the whole description when it has no sentence break; only when that
    is 2-30 words and does not end with ":" (an introduction to a list).
  - "What argument does the OPT option of CMD take?"  -> the argument name in the tag, without
    brackets, e.g. "SIZE" in "--block-size=SIZE", "WHEN" in "--color[=WHEN]", "file" in
    "-o <file>", when the tag has that simple shape.
  - unanswerable (is_impossible, answers []): "What does the OPT option of CMD do?" where OPT is
    an option of another command (another split group) that the asked page does not have and
    that does not occur in this context; about one in three questions.
OPT is the longest name of the tag (a long option when there is one) and must name one item
only in the context. CMD is the page's file name ("ls", "git-commit", "openssl-req"; gcloud
pages "gcloud_compute_instances_create" become "gcloud compute instances create").

Deduplication and caps: an option item (tag + description) seen in an earlier page (file names
in sorted order) is dropped, as are repeated contexts; at most CAP_PER_COMMAND questions per
page and CAP_PER_FAMILY per family (the file name up to the first "-", "_" or "."; e.g. the
16 000 gcloud pages), so a few huge pages or families do not dominate. Split by group (the file
name without a trailing version number and without gcloud's alpha / beta tracks, so
"clang-14" / "clang" or "gcloud_beta_x" / "gcloud_x" stay together): sha1 of the group ->
80 / 10 / 10 train / validation / test; within a split, pages are taken in sha1 order until the
split's target is met. Writes OUT/train.json, OUT/validation.json, OUT/test.json ({"version":
"v2.0", "data": [...]}, one article per page, ids unique) and OUT/PROVENANCE.md.

    python3 scripts/make_qa_dataset.py runs/qa/data
"""

import gzip
import hashlib
import json
import os
import random
import re
import sys
from collections import Counter, defaultdict

MAN_DIRS = ["/usr/share/man/man1", "/usr/share/man/man8"]
TARGET = {"train": 4000, "validation": 450, "test": 450}
CAP_PER_COMMAND = 14
CAP_PER_FAMILY = 450
MIN_WORDS, MAX_WORDS = 60, 400
MAX_ANSWER_WORDS = 30

SPECIAL = {
    "em": "—", "en": "–", "hy": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
    "bu": "•", "co": "©", "rg": "®", "tm": "™", "mi": "-", "pl": "+", "mu": "×", "di": "÷", "ga": "`",
    "ti": "~", "ha": "^", "at": "@", "sh": "#", "rs": "\\", "sl": "/", "ba": "|", "br": "|", "bv": "|",
    "ua": "↑", "da": "↓", "->": "→", "<-": "←", "<>": "↔", "rA": "⇒", ">=": "≥", "<=": "≤", "!=": "≠",
    "==": "≡", "+-": "±", "de": "°", "ps": "¶", "sc": "§", "ss": "ß", "ul": "_", "lB": "[", "rB": "]",
    "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "ci": "○",
    "sq": "□", "ct": "¢", "Eu": "€", "eu": "€", "Po": "£", "Ye": "¥", "mc": "µ", "*m": "μ", "*a": "α",
    "*b": "β", "*p": "π", "*l": "λ", "'e": "é", "`e": "è", ":a": "ä", ":o": "ö", ":u": "ü", "'a": "á",
    "aa": "´", "ap": "~", "pc": "·", "md": "·", "dg": "†", "fm": "′", "sd": "″", "12": "½", "14": "¼",
    "34": "¾", "if": "∞", "no": "¬", "AE": "Æ", "ae": "æ", "-D": "Ð", "Sd": "ð", "TP": "Þ", "Tp": "þ",
    ",c": "ç", "~n": "ñ", "/o": "ø", "oa": "å", "lt": "<", "gt": ">", "em-": "—",
}
STRINGS = {"C`": "", "C'": "", 'L"': '"', 'R"': '"', "--": "--", "PI": "π", "Tm": "™", "lq": "“",
           "rq": "”", "R": "®", "Aq": "'", "dq": '"'}
FONT_MACROS = {"B", "I", "BR", "RB", "IR", "RI", "BI", "IB", "SB", "SM", "CW", "CR", "RC"}
IGNORED = {"br", "sp", "in", "ti", "ne", "ad", "na", "hy", "nh", "PD", "IX", "UC", "ft", "ps", "vs",
           "ll", "cs", "bp", "ns", "rs", "lf", "tr", "nr", "ta", "fam", "hw", "rm", "ce", "mso", "TH",
           "UE", "ME", "pc", "lt", "ss", "ev", "ul", "cu", "c2", "cc", "em", "ch", "wh", "blm", "ds1",
           "Vb", "Ve", "Sp", "HP", "YS", "OP", "SY", "EE", "EX", "SH_", "fi", "nf", "LO", "UN", "so"}
ESC = re.compile(
    r"\\(?:f(?:\[[^\]]*\]|\(..|.)|s(?:\[[^\]]*\]|'[^']*'|\(\d\d|[+-]?\(\d\d|[+-]?\d)|\*(?:\[[^\]]*\]|\(..|.)|"
    r"\((..)|\[([^\]]*)\]|[hvw]'[^']*'|N'\d+'|.)",
    re.S,
)
OPT_TAG = re.compile(r"^[-+]{1,2}[A-Za-z0-9?#@]")
OPT_NAME = re.compile(r"(?<![\w-])(--?[A-Za-z0-9?#@][\w.?#@+-]*|\+[A-Za-z][\w-]*)")
SIMPLE_ARG = re.compile(r"^(\s+|=|\[=|=\[|\s+\[)?(<)?([A-Za-z][\w-]{0,39})(>)?(\])?$")
SENT_END = re.compile(r"(?<=[\w)\]'\"”])(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)(?<!\bcf)(?<!\bNo)\.(?=\s+[A-Z(\"'“`]|\s*$)")


def render(s, strings):
    """Roff inline text -> plain text, or None when it holds something unknown."""
    bad = False

    def sub(m):
        nonlocal bad
        t = m.group(0)
        c = t[1] if len(t) > 1 else ""
        if c in ("f", "s") and len(t) > 2:
            return ""
        if c == "*" and len(t) > 2:
            name = t[2:]
            if name.startswith("("):
                name = name[1:]
            elif name.startswith("["):
                name = name[1:-1]
            if name in strings:
                return strings[name]
            bad = True
            return ""
        if c == "(":
            if m.group(1) in SPECIAL:
                return SPECIAL[m.group(1)]
            bad = True
            return ""
        if c == "[":
            name = m.group(2)
            if name in SPECIAL:
                return SPECIAL[name]
            if re.fullmatch(r"u[0-9A-F]{4,5}", name):
                return chr(int(name[1:], 16))
            bad = True
            return ""
        if c in "hv" and len(t) > 2:
            return ""
        if c == "-":
            return "-"
        if c in "e\\":
            return "\\"
        if c in "&|^,/):%c":
            return ""
        if c in " ~0":
            return " "
        if c == "t":
            return " "
        if c == "'":
            return "'"
        if c == "`":
            return "`"
        if c == ".":
            return "."
        bad = True
        return ""

    out = ESC.sub(sub, s)
    return None if bad else out


def split_args(s):
    """Macro arguments: blank-separated, double quotes group ("" inside is a quote)."""
    args, cur, inq, i, have = [], "", False, 0, False
    while i < len(s):
        ch = s[i]
        if inq:
            if ch == '"':
                if i + 1 < len(s) and s[i + 1] == '"':
                    cur += '"'
                    i += 1
                else:
                    inq = False
            else:
                cur += ch
        elif ch == '"' and not cur:
            inq, have = True, True
        elif ch in " \t":
            if cur or have:
                args.append(cur)
            cur, have = "", False
        else:
            cur += ch
            if ch == "\\" and i + 1 < len(s):
                cur += s[i + 1]
                i += 1
        i += 1
    if cur or have:
        args.append(cur)
    return args


def font_macro(name, rest):
    args = split_args(rest)
    if name in ("B", "I", "SB", "SM", "CW"):
        return " ".join(args)
    return "".join(args)


def parse_page(text):
    """-> (name_line, [(section, [(tag, body), ...]), ...]) or None for pages not parsed."""
    if re.search(r"^\.(Dd|Sh|Nm)\b", text, re.M):
        return None
    strings = dict(STRINGS)
    lines = text.split("\n")
    # join continuation lines, drop comments
    joined, buf = [], ""
    for ln in lines:
        ln = re.sub(r'(?<!\\)\\".*$', "", ln)
        if ln.startswith(".\\#") or ln.startswith("'\\\""):
            continue
        if ln.endswith("\\") and not ln.endswith("\\\\"):
            buf += ln[:-1]
            continue
        joined.append(buf + ln)
        buf = ""
    sections = []
    section, items = None, []
    cur = None  # [tag, body_parts, depth]
    depth = 0
    pending_tag = None  # "TP" / "TQ" waiting for a tag line
    skip_block = 0
    in_de = False
    in_table = False
    name_line = ""
    unclean_items = False
    pp_cand = None  # DocBook style: .PP, a tag line, then .RS body .RE

    def close_item():
        nonlocal cur
        if cur is not None:
            items.append((cur[0], " ".join(p for p in cur[1] if p).strip(), cur[3]))
        cur = None

    def close_section():
        nonlocal items
        close_item()
        if section is not None:
            sections.append((section, items))
        items = []

    def add_text(t):
        nonlocal name_line, pp_cand
        if section == "NAME":
            name_line += " " + t
        if cur is not None:
            cur[1].append(t)
        elif pp_cand is not None and len(pp_cand) < 3:
            pp_cand.append(t)
        else:
            pp_cand = None

    def para_break():
        if cur is not None and cur[1] and cur[1][-1] != PARA:
            cur[1].append(PARA)

    for ln in joined:
        if in_de:
            if ln.startswith(".."):
                in_de = False
            continue
        if skip_block:
            skip_block += ln.count("\\{") - ln.count("\\}")
            if skip_block <= 0:
                skip_block = 0
            continue
        if in_table:
            if ln.startswith(".TE"):
                in_table = False
            continue
        if ln[:1] in (".", "'") and not ln.startswith("\\"):
            m = re.match(r"^[.']\s*(\S*)\s*(.*)$", ln)
            req, rest = m.group(1), m.group(2)
            if req in ("de", "de1", "am", "ig"):
                in_de = True
                continue
            if req in ("if", "ie", "el", "while"):
                n = rest.count("\\{") - rest.count("\\}")
                if n > 0:
                    skip_block = n
                continue
            if req == "ds":
                parts = rest.split(None, 1)
                if parts:
                    val = parts[1] if len(parts) > 1 else ""
                    if val.startswith('"'):
                        val = val[1:]
                    r = render(val, strings)
                    if r is not None:
                        strings[parts[0]] = r
                continue
            if req not in FONT_MACROS and req not in ("RS", "IX", "br"):
                pp_cand = [] if req in ("PP", "LP", "P") and (cur is None or depth <= cur[2]) else None
            if req in ("SH", "SS"):
                head = render(" ".join(split_args(rest)), strings) or ""
                if req == "SH":
                    close_section()
                    section = head.strip().upper() or "?"
                    depth = 0
                else:
                    close_item()
                pending_tag = None
                continue
            if req in ("TP", "TQ"):
                if req == "TP":
                    if cur is not None and depth > cur[2]:
                        para_break()
                        pending_tag = "NESTED"
                        continue
                    close_item()
                pending_tag = req
                continue
            if req == "IP":
                args = split_args(rest)
                tag = render(args[0], strings) if args else ""
                if cur is not None and depth > cur[2]:
                    para_break()
                    if tag and tag.strip() not in ("•", "—", "-", "*", "o", "·", "–"):
                        cur[1].append(tag)
                    continue
                if tag is None:
                    unclean_items = True
                    tag = ""
                if tag.strip():
                    close_item()
                    cur = [tag.strip(), [], depth, tag is None]
                continue
            if req in ("PP", "LP", "P"):
                if cur is not None and depth <= cur[2]:
                    close_item()
                para_break()
                continue
            if req == "sp":
                para_break()
                continue
            if req == "RS":
                if pp_cand and cur is None:
                    cur = [" ".join(pp_cand), [], depth, False]
                pp_cand = None
                para_break()
                depth += 1
                continue
            if req == "RE":
                depth = max(0, depth - 1)
                continue
            if req == "TS":
                in_table = True
                if cur is not None:
                    cur[3] = True
                continue
            if req in ("UR", "MT"):
                continue
            if req in FONT_MACROS:
                t = render(font_macro(req, rest), strings)
            elif req in IGNORED or req == "":
                continue
            else:
                continue
        else:
            t = render(ln, strings)
        # a text line (or a font macro line)
        if t is None:
            if pending_tag in ("TP", "TQ"):
                cur = ["", [], depth, True] if pending_tag == "TP" else cur
                pending_tag = None
            elif cur is not None:
                cur[3] = True
            continue
        t = t.strip()
        if not t:
            para_break()
            continue
        if pending_tag == "TP":
            cur = [t, [], depth, False]
            pending_tag = None
        elif pending_tag == "TQ" and cur is not None:
            cur[0] += ", " + t
            pending_tag = None
        elif pending_tag == "NESTED":
            cur[1].append(t)
            pending_tag = None
        else:
            add_text(t)
    close_section()
    return name_line.strip(), sections


WS = re.compile(r"\s+")
PARA = "\x00"


def clean(s):
    return WS.sub(" ", s).strip()


def english(s):
    letters = [c for c in s if c.isalpha()]
    return letters and sum(c.isascii() for c in letters) / len(letters) > 0.97


def option_names(tag):
    return OPT_NAME.findall(tag)


def display_name(tag):
    names = [n for n in option_names(tag.split(" ")[0] if False else tag)]
    if not names:
        return None
    longs = [n for n in names if n.startswith("--")]
    return max(longs or names, key=len)


def argument(tag):
    """(option, arg, offset of arg in tag) for simple tags, else None."""
    best = None
    pos = 0
    for part in re.split(r"(,\s+|\s+\|\s+|\s+or\s+)", tag):
        start = tag.find(part, pos)
        pos = start + len(part)
        m = re.match(r"^(--?[A-Za-z0-9?#@][\w.?#@+-]*?)(?=[=\[\s<]|$)", part)
        if not m:
            continue
        rest = part[m.end():]
        a = SIMPLE_ARG.match(rest)
        if not rest or not a:
            continue
        if bool(a.group(2)) != bool(a.group(4)):
            continue
        if a.group(5) and not (a.group(1) or "").strip().startswith("["):
            continue
        arg = a.group(3)
        off = start + m.end() + a.start(3)
        assert tag[off:off + len(arg)] == arg
        cand = (m.group(1), arg, off)
        if best is None or (cand[0].startswith("--") and not best[0].startswith("--")):
            best = cand
    return best


def first_sentence(body):
    """(start, text) of the answer inside body (its first paragraph), or None."""
    m = SENT_END.search(body)
    if m:
        sent = body[: m.start()]
    elif re.search(r"[\w)\]'\"”]\.$", body) and not body.endswith(".."):
        sent = body[:-1]
    else:
        sent = body
    sent = sent.strip()
    n = len(sent.split())
    if n < 2 or n > MAX_ANSWER_WORDS or sent.endswith(":") or sent.endswith(","):
        return None
    return 0, sent


def stem_of(fname):
    return re.sub(r"\.[0-9][\w]*\.gz$", "", fname)


def group_of(stem):
    g = re.sub(r"^gcloud_(alpha|beta)_", "gcloud_", stem)
    g = re.sub(r"^(x86_64|aarch64|i686)-linux-gnu-", "", g)
    g = re.sub(r"[-.]?\d+(\.\d+)*$", "", g)
    return g or stem


def family_of(stem):
    return re.split(r"[-_.]", stem)[0]


def sha(s):
    return hashlib.sha1(s.encode("utf-8")).hexdigest()


def split_of(group):
    h = int(sha(group)[:8], 16) % 10
    return "train" if h < 8 else ("validation" if h == 8 else "test")


def command_of(stem):
    return stem.replace("_", " ") if stem.startswith("gcloud_") else stem


def load_pages():
    pages = []
    skipped = Counter()
    for d in MAN_DIRS:
        if not os.path.isdir(d):
            continue
        for fname in sorted(os.listdir(d)):
            path = os.path.join(d, fname)
            if not fname.endswith(".gz") or os.path.islink(path):
                skipped["symlink"] += 1
                continue
            try:
                raw = gzip.open(path).read()
            except OSError:
                skipped["unreadable"] += 1
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            if re.match(r"^\s*\.so\s", text) and text.count("\n") < 5:
                skipped["so_redirect"] += 1
                continue
            parsed = parse_page(text)
            if parsed is None:
                skipped["mdoc"] += 1
                continue
            pages.append((d, fname, parsed))
    return pages, skipped


def page_items(sections, seen_items):
    """Option items per usable section: lists of (tag, body)."""
    out = []
    for name, items in sections:
        if not ("OPTION" in name or "FLAG" in name or name == "DESCRIPTION"):
            continue
        run = []
        for tag, body, unclean in items:
            first_para = clean(body.split(PARA)[0])
            tag, body = clean(tag), clean(body.replace(PARA, " "))
            ok = (
                not unclean and OPT_TAG.match(tag) and len(tag) <= 80 and body and "\\" not in tag
                and not re.search(r"\\[a-zA-Z(*\[]", body) and english(tag + " " + body)
                and len(body.split()) + len(tag.split()) <= MAX_WORDS - 20
            )
            key = (tag, body)
            if ok and key in seen_items:
                ok = False
            if ok:
                seen_items.add(key)
                run.append((tag, body, first_para))
            elif run:
                out.append(run)
                run = []
        if run:
            out.append(run)
    return out


def chunks(runs, rng):
    for run in runs:
        i = 0
        while i < len(run):
            target = rng.randint(80, 380)
            chunk, words = [], 0
            while i < len(run):
                w = len(run[i][0].split()) + len(run[i][1].split()) + 1
                if chunk and words + w > target:
                    break
                chunk.append(run[i])
                words += w
                i += 1
            if MIN_WORDS <= words <= MAX_WORDS:
                yield chunk


def build_context(chunk):
    parts, spans, pos = [], [], 0
    for tag, body, _ in chunk:
        spans.append((pos, pos + len(tag) + 1))  # tag offset, body offset
        piece = tag + "\n" + body
        parts.append(piece)
        pos += len(piece) + 1
    return "\n".join(parts), spans


def mentions(name, context):
    return re.search(r"(?<![\w-])" + re.escape(name) + r"(?![\w-])", context) is not None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out_dir = sys.argv[1]
    pages, skipped = load_pages()
    seen_items, seen_contexts = set(), set()
    per_page = []  # (stem, group, family, command, [(context, [qa_raw...])], option names)
    all_options = defaultdict(set)  # group -> display names
    n_pages_with_items = 0
    for d, fname, (name_line, sections) in pages:
        stem = stem_of(fname)
        runs = page_items(sections, seen_items)
        if not runs:
            continue
        n_pages_with_items += 1
        rng = random.Random(sha(fname))
        group = group_of(stem)
        paras = []
        for chunk in chunks(runs, rng):
            context, spans = build_context(chunk)
            if context in seen_contexts:
                continue
            seen_contexts.add(context)
            names = [display_name(tag) for tag, _, _ in chunk]
            counts = Counter(n for tag, _, _ in chunk for n in set(option_names(tag)))
            qs = []
            for (tag, body, first_para), (toff, boff), name in zip(chunk, spans, names):
                if not name or counts[name] != 1:
                    continue
                all_options[group].add(name)
                fs = first_sentence(first_para)
                if fs and body.startswith(fs[1]):
                    s0, sent = fs
                    qs.append(("do", name, sent, boff + s0))
                arg = argument(tag)
                if arg and counts.get(arg[0], 0) == 1:
                    qs.append(("arg", arg[0], arg[1], toff + arg[2]))
            if qs:
                paras.append((context, qs))
        if paras:
            own = {n for run in runs for tag, _, _ in run for n in option_names(tag)}
            per_page.append((d, fname, stem, group, family_of(stem), command_of(stem), paras, own))

    pool = sorted((n, g) for g, ns in all_options.items() for n in ns)
    splits = {"train": [], "validation": [], "test": []}
    counts = {k: Counter() for k in splits}
    family_used = Counter()
    order = sorted(per_page, key=lambda p: sha(p[1]))
    qid = 0
    for d, fname, stem, group, family, command, paras, own in order:
        split = split_of(group)
        if counts[split]["questions"] >= TARGET[split] or family_used[family] >= CAP_PER_FAMILY:
            continue
        rng = random.Random("q" + sha(fname))
        n_ans_cap = (CAP_PER_COMMAND * 2) // 3
        answerable = [(pi, q) for pi, (_, qs) in enumerate(paras) for q in qs]
        rng.shuffle(answerable)
        answerable = answerable[:n_ans_cap]
        n_imp = (len(answerable) + 1) // 2
        by_para = defaultdict(list)
        for pi, q in answerable:
            by_para[pi].append(q)
        imp_paras = [rng.randrange(len(paras)) for _ in range(n_imp)]
        for pi in imp_paras:
            for _ in range(20):
                name, g = pool[rng.randrange(len(pool))]
                if g != group and name not in own and not mentions(name, paras[pi][0]) and not any(
                        q[0] == "imp" and q[1] == name for q in by_para[pi]):
                    by_para[pi].append(("imp", name, None, None))
                    break
        article = {"title": command, "paragraphs": []}
        for pi in sorted(by_para):
            context = paras[pi][0]
            qas = []
            for kind, name, text, start in sorted(by_para[pi], key=lambda q: (q[3] is None, q[3] or 0, q[0])):
                if kind == "arg":
                    question = f"What argument does the {name} option of {command} take?"
                else:
                    question = f"What does the {name} option of {command} do?"
                answers = [] if kind == "imp" else [{"text": text, "answer_start": start}]
                for a in answers:
                    assert context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"], (fname, a)
                qas.append({"id": f"manqa-{qid:06d}", "question": question, "answers": answers,
                            "is_impossible": kind == "imp"})
                qid += 1
                counts[split]["questions"] += 1
                counts[split][kind] += 1
                family_used[family] += 1
            article["paragraphs"].append({"context": context, "qas": qas})
            counts[split]["contexts"] += 1
            counts[split]["context_words_over_200"] += len(context.split()) > 200
        counts[split]["pages"] += 1
        article["source"] = os.path.join(d, fname)
        splits[split].append(article)

    os.makedirs(out_dir, exist_ok=True)
    ids = set()
    for split, arts in splits.items():
        for a in arts:
            for p in a["paragraphs"]:
                for q in p["qas"]:
                    assert q["id"] not in ids
                    ids.add(q["id"])
                    for ans in q["answers"]:
                        assert p["context"][ans["answer_start"]:ans["answer_start"] + len(ans["text"])] == ans["text"]
        with open(os.path.join(out_dir, f"{split}.json"), "w", encoding="utf-8") as f:
            json.dump({"version": "v2.0", "data": arts}, f, ensure_ascii=False)
    write_provenance(out_dir, splits, counts, skipped, len(pages), n_pages_with_items, family_used)
    for split in splits:
        c = counts[split]
        print(f"{split}: {c['pages']} pages, {c['contexts']} contexts, {c['questions']} questions "
              f"({c['do']} what-does, {c['arg']} argument, {c['imp']} impossible)", file=sys.stderr)


def write_provenance(out_dir, splits, counts, skipped, n_pages, n_with_items, family_used):
    lines = ["# Manual-page extractive QA (SQuAD v2.0 format)", "",
             "Made by `python3 scripts/make_qa_dataset.py OUT_DIR` (standard library only) from the manual "
             "pages installed on the machine that ran it. The rules are in that script's docstring; in short:", "",
             "- Sources: " + ", ".join(f"`{d}/*.gz`" for d in MAN_DIRS) + " (English pages only; translated "
             "trees not read; symlinks, `.so` redirections and mdoc pages skipped). Roff parsed by the script.",
             "- Contexts: consecutive option items (tag line + description) of an OPTIONS / FLAGS / "
             f"DESCRIPTION section, {MIN_WORDS}-{MAX_WORDS} words, items joined by newlines.",
             "- Questions: \"What does the OPT option of CMD do?\" (answer: the first sentence of the "
             f"description, 2-{MAX_ANSWER_WORDS} words, final period left out); \"What argument does the OPT "
             "option of CMD take?\" (answer: the argument name in the tag); unanswerable: the first kind "
             "asked about an option of another command that does not occur in the context (about 1/3).",
             f"- Caps: {CAP_PER_COMMAND} questions per page, {CAP_PER_FAMILY} per family (name up to the "
             "first -, _ or .); option items and contexts deduplicated across pages.",
             "- Split by group (name without version suffix / gcloud alpha-beta track), sha1 -> 80/10/10.",
             "- Every answer is checked: context[answer_start:answer_start+len(text)] == text.",
             "- A silver standard: the answers follow the rules above, not human annotation.", "",
             f"Pages read: {n_pages} (skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) +
             f"); pages with usable option items: {n_with_items}.", "",
             "| split | pages | contexts | questions | what-does | argument | impossible | impossible share | contexts > 200 words |",
             "|---|---|---|---|---|---|---|---|---|"]
    for split in splits:
        c = counts[split]
        share = c["imp"] / c["questions"] if c["questions"] else 0
        lines.append(f"| {split} | {c['pages']} | {c['contexts']} | {c['questions']} | {c['do']} | {c['arg']} | "
                     f"{c['imp']} | {share:.1%} | {c['context_words_over_200']} |")
    lines += ["", "Largest families: " + ", ".join(f"{k} {v}" for k, v in family_used.most_common(12)), "",
              "## Examples", ""]
    rng = random.Random(0)
    arts = splits["validation"] or splits["train"]
    for a in rng.sample(arts, min(4, len(arts))):
        p = a["paragraphs"][0]
        ctx = p["context"] if len(p["context"]) < 600 else p["context"][:600] + " ..."
        lines += [f"Source `{a['source']}`, context:", "", "```", ctx, "```", ""]
        for q in p["qas"][:3]:
            ans = q["answers"][0]["text"] if q["answers"] else "(impossible)"
            lines.append(f"- Q: {q['question']} A: {ans}")
        lines.append("")
    with open(os.path.join(out_dir, "PROVENANCE.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
