#!/usr/bin/env python3
"""LoRA and prefix-tuning adapter parity between Hugging Face PEFT and lmforge, judged by the mean
token cross-entropy on a fixed text (the base folder's tokenizer.json, labels = input ids, HF shift),
relative tolerance 1e-4:
  a. PEFT -> lmforge, twice: a seeded r=4 LoRA (lora_B made non-zero) and a seeded prefix
     (PrefixTuningConfig CAUSAL_LM, num_virtual_tokens=4, prefix_projection=True,
     encoder_hidden_size=16; every prompt-encoder parameter set to seeded values), each built and
     saved with peft, have the same loss in transformers+peft as
     `lmforge eval ppl --model BASE_DIR --adapter DIR --json`.
  b. lmforge -> PEFT (--lmforge-adapter DIR, a LORA or PREFIX_TUNING folder, e.g. RUN/model of a
     causal `finetune.method = "lora"` or `"prefix"` run): `PeftModel.from_pretrained` on it has the
     same loss as lmforge on it; prints its peft_type, task_type and target_modules (or the prefix
     settings).
  c. --merged DIR (base with that adapter folded in): transformers' loss on it equals (b)'s. LoRA
     only: a prefix cannot be merged into the weights, so --merged with a prefix adapter is an error.
Each PASS / FAIL line names the method (lora or prefix) that its check used.
--hf-only prints the Hugging Face losses and skips every lmforge call. Run with the venv that
scripts/install-hf-reference.sh prints:
  check_peft_interop.py LMFORGE_BINARY BASE_DIR [--lmforge-adapter DIR] [--merged DIR] [--hf-only]
Exit status 0 = every check passed."""
import argparse, json, os, subprocess, sys, tempfile, warnings, torch, transformers
from peft import LoraConfig, PeftModel, PrefixTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

TEXT = "ROMEO:\nWhat light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n"
TARGETS = {"llama": dict(target_modules=["q_proj", "v_proj"]),
           "gpt2": dict(target_modules=["c_attn"], fan_in_fan_out=True)}
transformers.logging.set_verbosity_error(); transformers.logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)
ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("lmforge"); ap.add_argument("base")
ap.add_argument("--lmforge-adapter"); ap.add_argument("--merged"); ap.add_argument("--hf-only", action="store_true")
args = ap.parse_args()
if args.merged and not args.lmforge_adapter:
    ap.error("--merged needs --lmforge-adapter (the adapter that was folded in)")
lm_cfg = None
if args.lmforge_adapter:
    cfg_file = os.path.join(args.lmforge_adapter, "adapter_config.json")
    if not os.path.isfile(cfg_file) and os.path.isfile(os.path.join(args.lmforge_adapter, "model", "adapter_config.json")):
        args.lmforge_adapter = os.path.join(args.lmforge_adapter, "model")  # a run dir: its model folder
        cfg_file = os.path.join(args.lmforge_adapter, "adapter_config.json")
    lm_cfg = json.load(open(cfg_file))
    if args.merged and lm_cfg.get("peft_type") == "PREFIX_TUNING":
        ap.error(f"--merged: {args.lmforge_adapter} is a prefix (PREFIX_TUNING), and a prefix cannot be merged "
                 "into the weights; leave --merged out")
METHODS = {"LORA": "lora", "PREFIX_TUNING": "prefix"}

tmp = tempfile.mkdtemp(prefix="peft-interop-")
text_file = os.path.join(tmp, "text.txt")
open(text_file, "w").write(TEXT)
ids = torch.tensor([PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.base, "tokenizer.json")).encode(TEXT)])
load = lambda d: AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()

def loss(model):
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)

failures = []
def check(name, hf, other, other_name):
    if other is None:
        print(f"SKIP {name}: peft/transformers loss {hf:.6f}")
        return
    ok = abs(hf - other) <= 1e-4 * abs(hf)
    print(f"{'PASS' if ok else 'FAIL'} {name}: peft/transformers loss {hf:.6f} {other_name} loss {other:.6f} (diff {hf - other:+.2e})")
    if not ok: failures.append(name)

def lmforge_loss(adapter):
    if args.hf_only: return None
    out = subprocess.check_output([args.lmforge, "eval", "ppl", "--model", args.base, "--adapter", adapter, "--text", text_file, "--json"])
    return float(json.loads(out)["loss"])

base = load(args.base)
base_loss = loss(base)
print(f"{args.base}: {type(base).__name__}, {ids.shape[1]} tokens, base loss {base_loss:.6f}")

# a. PEFT -> lmforge (lora, then prefix), each on a fresh base
def peft_to_lmforge(method, model):
    peft_dir = os.path.join(tmp, f"peft-{method}")
    model.save_pretrained(peft_dir)
    peft_loss = loss(model)
    if abs(peft_loss - base_loss) <= 1e-3 * abs(base_loss):  # else an adapter-blind lmforge would pass
        print(f"FAIL a peft->lmforge ({method}): the adapter moves the loss only {base_loss:.6f} -> {peft_loss:.6f}")
        failures.append(f"a ({method}): adapter too weak")
    check(f"a peft->lmforge ({method})", peft_loss, lmforge_loss(peft_dir), "lmforge")

torch.manual_seed(0)
model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", **TARGETS[base.config.model_type]))
for n, p in model.named_parameters():
    if "lora_B" in n:
        torch.nn.init.normal_(p, std=0.1)  # large enough to move the loss far past the tolerance
peft_to_lmforge("lora", model.eval())

torch.manual_seed(0)
model = get_peft_model(load(args.base), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                                           prefix_projection=True, encoder_hidden_size=16))
g = torch.Generator().manual_seed(104)  # seeded values that make the prefix matter (cf. make_prefix_fixtures.py)
enc = model.prompt_encoder["default"]
with torch.no_grad():
    enc.embedding.weight.copy_(torch.randn(enc.embedding.weight.shape, generator=g))
    for i in (0, 2):
        lin = enc.transform[i]
        lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.5)
        lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.2)
peft_to_lmforge("prefix", model.eval())

# b. lmforge -> PEFT
if args.lmforge_adapter:
    cfg = lm_cfg
    method = METHODS.get(cfg.get("peft_type"), str(cfg.get("peft_type")).lower())
    if method == "prefix":
        detail = (f"num_virtual_tokens {cfg.get('num_virtual_tokens')} prefix_projection {cfg.get('prefix_projection')} "
                  f"token_dim {cfg.get('token_dim')} num_layers {cfg.get('num_layers')} "
                  f"num_attention_heads {cfg.get('num_attention_heads')}")
    else:
        detail = f"target_modules {cfg.get('target_modules')}"
    print(f"{args.lmforge_adapter}: peft_type {cfg.get('peft_type')} task_type {cfg.get('task_type')} {detail}")
    with warnings.catch_warnings(record=True) as caught:  # peft only warns on misnamed tensors
        warnings.simplefilter("always")
        adapted = loss(PeftModel.from_pretrained(load(args.base), args.lmforge_adapter).eval())
    for w in caught:
        if "adapter keys" in str(w.message):
            print(f"FAIL b lmforge->peft ({method}): {str(w.message)[:300]}")
            failures.append(f"b ({method}): tensor names")
    if abs(adapted - base_loss) <= 1e-6 * abs(base_loss):
        print(f"NOTE b lmforge->peft ({method}): peft's loss with the adapter equals the base loss {base_loss:.6f}")
    check(f"b lmforge->peft ({method})", adapted, lmforge_loss(args.lmforge_adapter), "lmforge")
    # c. merged folder == base + adapter (LoRA only; a prefix was refused above)
    if args.merged:
        check(f"c merged ({method})", adapted, loss(load(args.merged)), "merged")

print(f"{len(failures)} failed" + (": " + ", ".join(failures) if failures else "") + f" (temp files in {tmp})")
sys.exit(1 if failures else 0)
