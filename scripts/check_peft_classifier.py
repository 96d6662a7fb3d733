#!/usr/bin/env python3
"""Checks a classifier that `lmforge finetune` wrote (LoRA: sequence, token or QA head; prefix
tuning: sequence head) against Hugging Face on a few inputs. Prints the relative difference; exits 1
above 1e-4.

LoRA (RUN/model/adapter is a LORA folder): PEFT's `PeftModel.from_pretrained(<base with the head's
class>, RUN/model/adapter)` and transformers' `from_pretrained(RUN/model)` (the merged folder) must
give the same logits.

Prefix tuning (RUN/model/adapter is a PREFIX_TUNING folder): the merged RUN/model does not carry the
prefix (lmforge keeps it under `prompt_encoder.*`, which transformers ignores), so PEFT's
`PeftModel.from_pretrained(<base>, RUN/model/adapter)` is compared with lmforge's own logits from
`--lmforge BIN` (required here): `BIN predict --model RUN --input IN.jsonl --output OUT.jsonl
--set data.format=jsonl --set data.text_column=text ...` on JSONL rows {"text": ...}, whose output
lines carry "logits". Both sides tokenize with RUN/model/tokenizer.json (lmforge's tokenizer,
post-processor included). Only the sequence-classification head is supported for prefix runs (token
and QA heads exit with an error). Also printed: how far the prefix moves the logits (PEFT vs
transformers on RUN/model, the same head without the prefix); under 1e-3 relative is a failure.
PEFT's SEQ_CLS prefix forward needs a `past_key_values` argument, which transformers 5's BERT lacks
(and which 5.25's GPT-2 and Llama call `cache`): under transformers >= 5 a prefix run re-runs this
script with PYTHONPATH = $LMFORGE_HF4 (default ~/.cache/lmforge/hf4, transformers 4.46.3), or fails
saying to run `bash scripts/install-hf-reference.sh --transformers4`.

    PY=$(bash scripts/install-hf-reference.sh --transformers4 | head -n 1)
    $PY scripts/check_peft_classifier.py RUN_DIR BASE_FOLDER [--lmforge target/release/lmforge]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HF4 = os.environ.get("LMFORGE_HF4", os.path.join(os.path.expanduser("~"), ".cache", "lmforge", "hf4"))
REEXEC = "LMFORGE_CHECK_PEFT_CLASSIFIER_HF4"  # set in the re-run, so it happens once


def takes_past_key_values(cls, model_type):
    """Whether PEFT can run a prefix on the head class `cls`: PEFT's SEQ_CLS prefix forward passes
    past_key_values to the head's forward, or else to its backbone's, and raises when neither names
    that argument."""
    import inspect

    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    for name in (cls, MODEL_MAPPING_NAMES.get(model_type)):
        c = getattr(transformers, name, None) if name else None
        if c is not None and "past_key_values" in inspect.signature(c.forward).parameters:
            return True
    return False


def ensure_transformers4(cls, model_type):
    """Re-runs this script under transformers 4.x when PEFT prefix tuning needs it: always on a BERT
    base (transformers 5's BERT takes no past_key_values), and on any head whose transformers 5
    forward takes no past_key_values (5.25 calls it `cache`: GPT-2 and Llama too)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    if major < 5 or (model_type != "bert" and takes_past_key_values(cls, model_type)):
        return
    what = "BERT" if model_type == "bert" else cls
    install = "bash scripts/install-hf-reference.sh --transformers4"
    if os.environ.get(REEXEC):
        sys.exit(f"PEFT prefix tuning on {what} needs transformers 4.x, but PYTHONPATH={HF4} still gives "
                 f"transformers {transformers.__version__}: run `{install}` (or set LMFORGE_HF4)")
    if not os.path.isdir(os.path.join(HF4, "transformers")):
        sys.exit(f"PEFT prefix tuning on {what} needs transformers 4.x (found {transformers.__version__}) and "
                 f"{HF4} does not hold it: run `{install}` (or set LMFORGE_HF4 to its folder)")
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != os.path.abspath(HF4)]
    env["PYTHONPATH"] = os.pathsep.join([HF4, *paths])
    env[REEXEC] = "1"
    print(f"(re-running under transformers 4.x for PEFT prefix tuning on {what}: PYTHONPATH={HF4})", flush=True)
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def lmforge_logits(binary, run, texts):
    """`lmforge predict` on JSONL {"text"} rows: each row's logits, in input order."""
    tmp = tempfile.mkdtemp(prefix="peft-classifier-")
    inp, out = os.path.join(tmp, "input.jsonl"), os.path.join(tmp, "predictions.jsonl")
    with open(inp, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    cmd = [binary, "predict", "--model", run, "--input", inp, "--output", out, "--device", "cpu",
           "--set", "data.format=jsonl", "--set", "data.text_column=text", "--set", "data.text_pair_column=",
           "--set", "data.bad_rows=fail"]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    rows = [json.loads(line) for line in open(out) if line.strip()]
    rows.sort(key=lambda r: r["line"])
    if len(rows) != len(texts):
        sys.exit(f"lmforge predict wrote {len(rows)} rows for {len(texts)} inputs ({out})")
    return [r["logits"] for r in rows]


def load_tokenizer(run, base, prefix, pad_id, probe, AutoTokenizer, PreTrainedTokenizerFast):
    """Prefix runs: RUN/model/tokenizer.json as it is (post-processor included), the tokenizer that
    lmforge predict uses. LoRA runs: AutoTokenizer on the base, as before, or that tokenizer.json
    when AutoTokenizer cannot encode the inputs (transformers' BertTokenizer on a byte-level BPE
    tokenizer.json such as bert-tiny's: "WordPiece error: Missing [UNK] token"). The pad token: the
    tokenizer's, else the one of RUN/model/config.json's pad_token_id, else EOS or UNK."""
    tok_file = os.path.join(run, "model", "tokenizer.json")
    tok = None
    if not prefix or not os.path.isfile(tok_file):
        try:
            tok = AutoTokenizer.from_pretrained(base)
            tok(probe)
        except Exception as e:  # noqa: BLE001 - any failure: fall back to the tokenizer.json
            if not os.path.isfile(tok_file):
                raise
            print(f"(AutoTokenizer on {base} failed: {str(e).splitlines()[0][:120]}; using {tok_file})")
            tok = None
    if tok is None:
        tok = PreTrainedTokenizerFast(tokenizer_file=tok_file)
    if tok.pad_token is None:
        named = tok.convert_ids_to_tokens(pad_id) if pad_id is not None else None
        tok.pad_token = named or tok.eos_token or tok.unk_token
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="the fine-tune run dir (RUN/model, RUN/model/adapter)")
    ap.add_argument("base", help="the base model folder the run started from")
    ap.add_argument("--lmforge", help="the lmforge binary (required for prefix-tuning runs)")
    args = ap.parse_args()
    run, base = args.run, args.base
    adapter_dir = f"{run}/model/adapter"
    peft_type = json.load(open(f"{adapter_dir}/adapter_config.json")).get("peft_type")
    prefix = peft_type == "PREFIX_TUNING"
    cfg = json.load(open(f"{run}/model/config.json"))
    cls = cfg["architectures"][0]
    kind = "token" if cls.endswith("ForTokenClassification") else "qa" if cls.endswith("ForQuestionAnswering") \
        else "sequence"
    if prefix:
        if kind != "sequence":
            sys.exit(f"{run}: a prefix-tuned {kind} model ({cls}); this script checks prefix tuning on the "
                     "sequence-classification head only")
        if not args.lmforge:
            ap.error("a prefix-tuning run (PREFIX_TUNING) needs --lmforge BIN: the merged RUN/model does not "
                     "carry the prefix, so PEFT is compared with `lmforge predict`")
        ensure_transformers4(cls, cfg.get("model_type"))

    import torch
    import transformers
    from peft import PeftModel
    from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification, AutoTokenizer, PreTrainedTokenizerFast)

    transformers.logging.set_verbosity_error()
    major = int(transformers.__version__.split(".")[0])
    auto = {"token": AutoModelForTokenClassification, "qa": AutoModelForQuestionAnswering}.get(
        kind, AutoModelForSequenceClassification)
    id2label = {int(k): v for k, v in cfg.get("id2label", {0: "LABEL_0", 1: "LABEL_1"}).items()}
    texts = ["Copyright 2010 Free Software Foundation , Inc .", "-- Simon McVittie <smcv@debian.org>", "a fine movie"]
    tok = load_tokenizer(run, base, prefix, cfg.get("pad_token_id"), texts + ["who holds the copyright?"],
                         AutoTokenizer, PreTrainedTokenizerFast)
    if kind == "token":
        enc = tok([t.split() for t in texts], is_split_into_words=True, padding=True, return_tensors="pt")
    elif kind == "qa":
        enc = tok(["who holds the copyright?"] * 3, texts, padding=True, return_tensors="pt")
    else:
        enc = tok(texts, padding=True, return_tensors="pt")
    if not cfg.get("type_vocab_size"):
        # PreTrainedTokenizerFast adds token_type_ids; GPT-2 would add wte(0) to every position
        enc.pop("token_type_ids", None)
    dtype = {"dtype": torch.float32} if major >= 5 else {"torch_dtype": torch.float32}
    kwargs = {"num_labels": len(id2label), "id2label": id2label, **dtype}
    if cfg.get("problem_type"):
        kwargs["problem_type"] = cfg["problem_type"]
    if tok.pad_token_id is not None:  # GPT-2 / Llama heads find each row's last token by it
        kwargs["pad_token_id"] = tok.pad_token_id
    peft = PeftModel.from_pretrained(auto.from_pretrained(base, **kwargs), adapter_dir).eval()
    logits = (lambda o: torch.stack([o.start_logits, o.end_logits], -1)) if kind == "qa" else (lambda o: o.logits)
    with torch.no_grad():
        a = logits(peft(**enc))
    if prefix:
        b = torch.tensor(lmforge_logits(args.lmforge, run, texts), dtype=a.dtype)
        if b.shape != a.shape:
            sys.exit(f"lmforge logits {tuple(b.shape)} vs PEFT {tuple(a.shape)}")
        # transformers on RUN/model: the base with the trained head and no prefix (prompt_encoder.*
        # is not a transformers weight), i.e. what the prefix changes
        with torch.no_grad():
            plain = logits(auto.from_pretrained(f"{run}/model", **dtype).eval()(**enc))
        moved_abs, a_max = (a - plain).abs().max().item(), a.abs().max().item()
        moved = moved_abs / a_max
        other = "lmforge predict (RUN)"
    else:
        merged = auto.from_pretrained(f"{run}/model", **dtype).eval()
        with torch.no_grad():
            b = logits(merged(**enc))
        other = "transformers (RUN/model)"
    mask = enc["attention_mask"].bool() if kind != "sequence" else torch.ones(a.shape[0], dtype=torch.bool)
    diff = (a - b).abs()[mask]
    rel = (diff.max() / b.abs()[mask].max()).item()
    method = "prefix" if prefix else str(peft_type).lower()
    ok = rel <= 1e-4
    print(f"{'PASS' if ok else 'FAIL'} {kind} model ({method}, transformers {transformers.__version__}): "
          f"PEFT (base + RUN/model/adapter) vs {other}: max rel {rel:.2e}")
    if prefix:
        print(f"  the prefix moves the logits by max |diff| {moved_abs:.4f} of max |logit| {a_max:.4f} (rel "
              f"{moved:.2e}; PEFT vs transformers on RUN/model, the same head without the prefix)")
        if moved <= 1e-3:
            print("FAIL the prefix barely moves the logits: an lmforge that ignored it would pass")
            ok = False
        if not ok:
            for i, t in enumerate(texts):
                print(f"  row {i} {t!r}: PEFT {[round(x, 6) for x in a[i].tolist()]} "
                      f"lmforge {[round(x, 6) for x in b[i].tolist()]} "
                      f"without the prefix {[round(x, 6) for x in plain[i].tolist()]}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
