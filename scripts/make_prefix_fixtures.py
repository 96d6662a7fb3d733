#!/usr/bin/env python3
"""Writes crates/lmforge/tests/fixtures/prefix-{bert-cls,gpt2-lm,llama-lm}/: Hugging Face PEFT
prefix tuning (PEFT_TYPE PREFIX_TUNING) on the shared tiny models, made as ../shared/fixtures were
made: PyTorch fp32 on the CPU, deterministic algorithms, eval() (no dropout), seeded values.

  prefix-bert-cls/   BertForSequenceClassification on `bert-tiny`, num_labels = 3, seeded head;
                     PrefixTuningConfig(SEQ_CLS, num_virtual_tokens=5, prefix_projection=True,
                     encoder_hidden_size=32); the inputs and labels of the shared `bert-cls-tiny`
                     fixture (2 x 20, row 1 right-padded); cross-entropy loss. Needs transformers 4.x
                     (4.46.3): transformers 5's BERT takes no past_key_values, and PEFT then raises
                     "Model does not support past key values".
  prefix-gpt2-lm/    GPT2LMHeadModel `gpt2-tiny`; PrefixTuningConfig(CAUSAL_LM, num_virtual_tokens=4,
                     prefix_projection=False); input_ids [2, 7] with row 1's last 2 positions masked,
                     labels = input_ids with -100 where masked (transformers shifts them). transformers 5.
  prefix-llama-lm/   LlamaForCausalLM `llama-tiny` (4 query heads, 2 KV heads: PEFT's token_dim is
                     2 * 16 = 32 and num_attention_heads 2); CAUSAL_LM, num_virtual_tokens=3,
                     prefix_projection=True, encoder_hidden_size=24; inputs as for GPT-2. transformers 5.

Each folder holds

  peft/                     PEFT's own save_pretrained output (adapter_config.json,
                            adapter_model.safetensors: `prompt_embeddings` [num_virtual_tokens,
                            num_layers * 2 * token_dim] with the projection MLP already applied, plus the
                            modules_to_save head for SEQ_CLS); base_model_name_or_path is set to the
                            shared folder's name (e.g. "bert-tiny") so the output is machine independent,
                            and PEFT's README.md is removed
  prompt_encoder.safetensors  the trainable parameters (inference_mode = False) without the adapter
                            name: prompt_encoder.embedding.weight, with projection also
                            prompt_encoder.transform.{0,2}.{weight,bias}; for SEQ_CLS classifier.weight and
                            classifier.bias (the modules_to_save copy, i.e. the values used)
  grads.safetensors         d loss / d each of those tensors, same names
  expected.safetensors      input_ids, attention_mask, token_type_ids (BERT only), labels, logits
  expected.json             loss, the prefix config (num_virtual_tokens, prefix_projection,
                            encoder_hidden_size, token_dim, num_attention_heads, num_layers) and the
                            transformers / peft / torch versions

The script checks itself: the saved peft/ folder, loaded onto a fresh base with
PeftModel.from_pretrained, gives the same logits (1e-5); the prefix changes the logits; and a manual
run of the base model with the prefix cache and explicit position_ids shows which positions the real
tokens get (num_virtual_tokens .. num_virtual_tokens + T - 1 in all three cases, padding or not).

    out=$(bash scripts/install-hf-reference.sh --transformers4)
    PY=$(echo "$out" | head -n 1) && $PY scripts/make_prefix_fixtures.py --case all

`--case all` runs each case in its own python: bert with PYTHONPATH = the transformers 4.46.3 folder
($LMFORGE_HF4, default ~/.cache/lmforge/hf4), gpt2 and llama without it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("LMFORGE_FIXTURES", os.path.join(HERE, "..", "..", "shared", "fixtures"))
OUT_ROOT = os.path.join(HERE, "..", "crates", "lmforge", "tests", "fixtures")
HF4 = os.environ.get("LMFORGE_HF4", os.path.join(os.path.expanduser("~"), ".cache", "lmforge", "hf4"))
CASES = {"bert": "prefix-bert-cls", "gpt2": "prefix-gpt2-lm", "llama": "prefix-llama-lm"}


def run_all():
    for case in CASES:
        env = dict(os.environ)
        paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != os.path.abspath(HF4)]
        if case == "bert":
            paths.insert(0, HF4)
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        else:
            env.pop("PYTHONPATH", None)
        print(f"== {case} ({CASES[case]})", flush=True)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--case", case], env=env, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=[*CASES, "all"], default="all")
    args = ap.parse_args()
    if args.case == "all":
        run_all()
    else:
        Case(args.case).run()


class Case:
    def __init__(self, case):
        import torch
        import transformers

        self.case = case
        self.torch = torch
        self.major = int(transformers.__version__.split(".")[0])
        if case == "bert" and self.major >= 5:
            sys.exit(
                f"the bert case needs transformers 4.x (found {transformers.__version__}): run it with "
                f"PYTHONPATH={HF4} (bash scripts/install-hf-reference.sh --transformers4), or use --case all"
            )
        self.out = os.path.join(OUT_ROOT, CASES[case])
        self.base_name = {"bert": "bert-tiny", "gpt2": "gpt2-tiny", "llama": "llama-tiny"}[case]

    # ---------------------------------------------------------------- models and inputs

    def load_base(self):
        """The base model, fp32, eval(); the BERT head seeded (the same values every call)."""
        torch = self.torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        dtype_kw = {"torch_dtype": torch.float32} if self.major < 5 else {"dtype": torch.float32}
        path = os.path.join(SHARED, self.base_name)
        if self.case == "bert":
            model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3, **dtype_kw)
            g = torch.Generator().manual_seed(11)
            with torch.no_grad():
                model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=g) * 0.5)
                model.classifier.bias.copy_(torch.tensor([0.1, -0.2, 0.05]))
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **dtype_kw)
        return model.eval()

    def peft_config(self):
        from peft import PrefixTuningConfig, TaskType

        if self.case == "bert":
            return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=5, prefix_projection=True,
                                      encoder_hidden_size=32)
        if self.case == "gpt2":
            return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4, prefix_projection=False)
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3, prefix_projection=True,
                                  encoder_hidden_size=24)

    def inputs(self, vocab):
        """(model inputs, labels)."""
        torch = self.torch
        from safetensors.torch import load_file

        if self.case == "bert":
            x = load_file(os.path.join(SHARED, "bert-cls-tiny", "expected.safetensors"))
            return {k: x[k].contiguous() for k in ("input_ids", "token_type_ids", "attention_mask")}, x["labels"]
        g = torch.Generator().manual_seed(23 if self.case == "gpt2" else 29)
        input_ids = torch.randint(3, vocab, (2, 7), generator=g)
        attention_mask = torch.ones(2, 7, dtype=torch.long)
        attention_mask[1, -2:] = 0
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention_mask}, labels

    def seed_prompt_encoder(self, model):
        """Every prompt-encoder parameter to seeded values that make the prefix matter."""
        torch = self.torch
        g = torch.Generator().manual_seed({"bert": 101, "gpt2": 102, "llama": 103}[self.case])
        enc = model.prompt_encoder["default"]
        with torch.no_grad():
            enc.embedding.weight.copy_(torch.randn(enc.embedding.weight.shape, generator=g))
            if getattr(enc, "prefix_projection", False):
                for i in (0, 2):
                    lin = enc.transform[i]
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * 0.3)
                    lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)

    @staticmethod
    def short_name(name):
        """PEFT parameter name -> fixture name (no adapter name, no wrapper levels)."""
        for a, b in ((".modules_to_save.default.", "."), ("prompt_encoder.default.", "prompt_encoder.")):
            name = name.replace(a, b)
        while name.startswith("base_model."):
            name = name[len("base_model."):]
        return name

    # ---------------------------------------------------------------- the run

    def run(self):
        torch = self.torch
        import peft
        import transformers
        from peft import PeftModel, get_peft_model
        from safetensors.torch import load_file, save_file

        torch.manual_seed(0)
        torch.use_deterministic_algorithms(True)
        base = self.load_base()
        vocab = base.config.vocab_size
        model = get_peft_model(base, self.peft_config())
        self.seed_prompt_encoder(model)
        model.eval()
        cfg = model.peft_config["default"]
        P = cfg.num_virtual_tokens

        inputs, labels = self.inputs(vocab)
        out = model(**inputs, labels=labels)
        out.loss.backward()
        logits = out.logits.detach().contiguous()

        trainable = {self.short_name(n): p for n, p in model.named_parameters() if p.requires_grad}
        want = {"prompt_encoder.embedding.weight"}
        if cfg.prefix_projection:
            want |= {f"prompt_encoder.transform.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
        if self.case == "bert":
            want |= {"classifier.weight", "classifier.bias"}
        assert set(trainable) == want, sorted(trainable)
        params = {n: p.detach().clone().contiguous() for n, p in sorted(trainable.items())}
        grads = {n: p.grad.detach().clone().contiguous() for n, p in sorted(trainable.items())}

        # ---- write
        if os.path.isdir(self.out):
            shutil.rmtree(self.out)
        os.makedirs(self.out)
        peft_dir = os.path.join(self.out, "peft")
        cfg.base_model_name_or_path = self.base_name
        # save_embedding_layers=False: the embeddings are untouched, and "auto" would look the name up
        # on the Hub (the name is no longer a local path).
        model.save_pretrained(peft_dir, save_embedding_layers=False)
        readme = os.path.join(peft_dir, "README.md")
        if os.path.exists(readme):
            os.remove(readme)
        save_file(params, os.path.join(self.out, "prompt_encoder.safetensors"))
        save_file(grads, os.path.join(self.out, "grads.safetensors"))
        expected = {**{k: v.contiguous() for k, v in inputs.items()}, "labels": labels.contiguous(), "logits": logits}
        save_file(expected, os.path.join(self.out, "expected.safetensors"))
        with open(os.path.join(self.out, "expected.json"), "w") as f:
            json.dump({
                "loss": out.loss.item(),
                "num_virtual_tokens": P,
                "prefix_projection": cfg.prefix_projection,
                "encoder_hidden_size": cfg.encoder_hidden_size,
                "token_dim": cfg.token_dim,
                "num_attention_heads": cfg.num_attention_heads,
                "num_layers": cfg.num_layers,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
                "torch": torch.__version__,
            }, f, indent=1)
            f.write("\n")

        # ---- self-checks
        with torch.no_grad():
            # 1. the saved folder reproduces the logits on a fresh base (inference_mode: the saved
            #    prompt_embeddings are used as they are, no projection).
            torch.manual_seed(1)  # a different head init in the fresh base: the saved copy must win
            fresh = self.load_base()
            if self.case == "bert":
                fresh.classifier.weight.normal_()
            reloaded = PeftModel.from_pretrained(fresh, peft_dir).eval()
            logits_reloaded = reloaded(**inputs).logits
            d_reload = (logits_reloaded - logits).abs().max().item()
            print(f"reloaded peft/: max |logits diff| {d_reload:.3e}")
            assert d_reload <= 1e-5, d_reload
            saved = load_file(os.path.join(peft_dir, "adapter_model.safetensors"))
            d_emb = (saved["prompt_embeddings"] - model.get_prompt_embedding_to_save("default")).abs().max().item()
            assert d_emb == 0.0, d_emb

            # 2. the prefix matters.
            with model.disable_adapter():
                plain = model(**inputs).logits
            print(f"without the prefix: max |logits diff| {(plain - logits).abs().max().item():.3e}")
            assert (plain - logits).abs().max().item() > 1e-2

            # 3. positions: the base model run by hand with PEFT's prefix cache and explicit position_ids.
            T = inputs["input_ids"].shape[1]
            B = inputs["input_ids"].shape[0]
            offset = self.manual_logits(model, inputs, torch.arange(P, P + T).unsqueeze(0).expand(B, T))
            zero = self.manual_logits(model, inputs, torch.arange(T).unsqueeze(0).expand(B, T))
            d_off = (offset - logits).abs().max().item()
            d_zero = (zero - logits).abs().max().item()
            print(f"position_ids {P}..{P + T - 1}: max |diff| {d_off:.3e};  position_ids 0..{T - 1}: max |diff| {d_zero:.3e}")
            assert d_off <= 1e-6 and d_zero > 1e-3, (d_off, d_zero)
            # PEFT adds num_virtual_tokens to position_ids passed in explicitly.
            via_peft = model(**inputs, position_ids=torch.arange(T).unsqueeze(0).expand(B, T)).logits
            assert (via_peft - logits).abs().max().item() <= 1e-6

        # ---- summary
        print(f"{CASES[self.case]}: transformers {transformers.__version__}, peft {peft.__version__}, "
              f"token_dim {cfg.token_dim}, heads {cfg.num_attention_heads}, layers {cfg.num_layers}")
        print(f"loss {out.loss.item():.6f}, logits {tuple(logits.shape)} mean {logits.mean().item():.6f} "
              f"std {logits.std().item():.6f}" + (f" {logits.tolist()}" if self.case == "bert" else ""))
        for n in sorted(os.listdir(self.out)) + [os.path.join("peft", n) for n in sorted(os.listdir(peft_dir))]:
            p = os.path.join(self.out, n)
            if os.path.isfile(p):
                print(f"  {n}: {os.path.getsize(p)} bytes")

    def manual_logits(self, model, inputs, position_ids):
        """The base model with PEFT's prefix cache, the prefix-extended attention mask and explicit
        position_ids, bypassing PeftModel.forward."""
        torch = self.torch
        B = inputs["input_ids"].shape[0]
        P = model.peft_config["default"].num_virtual_tokens
        mask = torch.cat((torch.ones(B, P), inputs["attention_mask"]), dim=1)
        cache = model.get_prompt(B)
        base = model.get_base_model()
        if self.case == "bert":
            out = base.bert(input_ids=inputs["input_ids"], token_type_ids=inputs["token_type_ids"],
                            attention_mask=mask, past_key_values=cache, position_ids=position_ids)
            return base.classifier(base.dropout(out.pooler_output))
        return base(input_ids=inputs["input_ids"], attention_mask=mask, past_key_values=cache,
                    position_ids=position_ids).logits


if __name__ == "__main__":
    main()
