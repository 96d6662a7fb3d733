#!/usr/bin/env python3
"""LoRA adapter parity between Hugging Face PEFT and lmforge, judged by the mean token cross-entropy
on a fixed text (the base folder's tokenizer.json, labels = input ids, HF shift), relative tolerance
1e-4:
  a. PEFT -> lmforge: a seeded r=4 LoRA built and saved with peft (lora_B made non-zero) has the
     same loss in transformers+peft as `lmforge eval ppl --model BASE_DIR --adapter DIR --json`.
  b. lmforge -> PEFT (--lmforge-adapter DIR): `PeftModel.from_pretrained` on an lmforge-saved
     adapter has the same loss as lmforge on it; prints its task_type and target_modules.
  c. --merged DIR (base with that adapter folded in): transformers' loss on it equals (b)'s.
--hf-only prints the Hugging Face losses and skips every lmforge call. Run with the venv that
scripts/install-hf-reference.sh prints:
  check_peft_interop.py LMFORGE_BINARY BASE_DIR [--lmforge-adapter DIR] [--merged DIR] [--hf-only]
Exit status 0 = every check passed."""
import argparse, json, os, subprocess, sys, tempfile, warnings, torch, transformers
from peft import LoraConfig, PeftModel, get_peft_model
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

# a. PEFT -> lmforge
torch.manual_seed(0)
model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", **TARGETS[base.config.model_type]))
for n, p in model.named_parameters():
    if "lora_B" in n:
        torch.nn.init.normal_(p, std=0.1)  # large enough to move the loss far past the tolerance
peft_dir = os.path.join(tmp, "peft-adapter")
model.save_pretrained(peft_dir)
peft_loss = loss(model)
if abs(peft_loss - base_loss) <= 1e-3 * abs(base_loss):  # else an adapter-blind lmforge would pass
    print(f"FAIL a: the adapter moves the loss only {base_loss:.6f} -> {peft_loss:.6f}")
    failures.append("a: adapter too weak")
check("a peft->lmforge", peft_loss, lmforge_loss(peft_dir), "lmforge")

# b. lmforge -> PEFT
if args.lmforge_adapter:
    cfg = json.load(open(os.path.join(args.lmforge_adapter, "adapter_config.json")))
    print(f"{args.lmforge_adapter}: task_type {cfg.get('task_type')} target_modules {cfg.get('target_modules')}")
    with warnings.catch_warnings(record=True) as caught:  # peft only warns on misnamed tensors
        warnings.simplefilter("always")
        adapted = loss(PeftModel.from_pretrained(load(args.base), args.lmforge_adapter).eval())
    for w in caught:
        if "adapter keys" in str(w.message):
            print(f"FAIL b lmforge->peft: {str(w.message)[:300]}")
            failures.append("b: tensor names")
    check("b lmforge->peft", adapted, lmforge_loss(args.lmforge_adapter), "lmforge")
    # c. merged folder == base + adapter
    if args.merged:
        check("c merged", adapted, loss(load(args.merged)), "merged")

print(f"{len(failures)} failed" + (": " + ", ".join(failures) if failures else "") + f" (temp files in {tmp})")
sys.exit(1 if failures else 0)
