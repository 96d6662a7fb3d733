#!/usr/bin/env python3
"""A SentencePiece-style (Llama-2 layout) tokenizer.json for the GGUF export tests.

usage: make_spm_tokenizer.py OUT_DIR   (needs the `tokenizers` package; the HF reference venv
       of scripts/install-hf-reference.sh has it)

Llama-2's tokenizer.json shape, trained with `tokenizers` on data/tinyshakespeare.txt to 1,000
tokens (the llama-tiny fixture's vocabulary): <unk> <s> </s> at ids 0-2, the byte-fallback
tokens <0x00>..<0xFF> at 3-258, then characters and merges; BPE with byte_fallback, a
normalizer that prepends "▁" and writes spaces as "▁", no pre-tokenizer, a decoder that undoes
both, and a post-processor that adds <s>. Deterministic (one thread).
"""
import json
import os
import pathlib
import sys

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

out = pathlib.Path(sys.argv[1])
root = pathlib.Path(__file__).resolve().parent.parent
text = (root / "data/tinyshakespeare.txt").read_text(encoding="utf-8")
lines = [l for l in text.splitlines() if l.strip()]
byte_tokens = [f"<0x{b:02X}>" for b in range(256)]

tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
# Training splits at spaces (SentencePiece never merges across them); the saved tokenizer, like
# Llama-2's, has no pre-tokenizer: no learned piece spans a "▁" after its first character.
tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False)
tok.train_from_iterator(lines, trainer)

spec = json.loads(tok.to_str())
spec["added_tokens"] = [a for a in spec["added_tokens"] if a["content"] in ("<unk>", "<s>", "</s>")]
spec["normalizer"] = {
    "type": "Sequence",
    "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}],
}
spec["pre_tokenizer"] = None
spec["decoder"] = json.loads(
    decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    ).__getstate__()
)
spec["post_processor"] = json.loads(
    processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]).__getstate__()
)
out.mkdir(parents=True, exist_ok=True)
(out / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
check = Tokenizer.from_file(str(out / "tokenizer.json"))
sample = "ROMEO: What light through yonder window breaks? Ünïcødé 中文"
enc = check.encode(sample)
assert check.get_vocab_size() == 1000, check.get_vocab_size()
assert [check.id_to_token(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
assert check.id_to_token(3) == "<0x00>" and check.id_to_token(258) == "<0xFF>"
assert check.decode(enc.ids) == sample, check.decode(enc.ids)
print(f"{out / 'tokenizer.json'}: {check.get_vocab_size()} tokens; {sample!r} -> {enc.tokens}")
