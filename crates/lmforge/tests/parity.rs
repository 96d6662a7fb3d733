//! Numerical parity with the Hugging Face / PyTorch reference outputs in `../shared/fixtures`:
//! logits, loss and every parameter's gradient for GPT-2 and Llama, perplexity, the AdamW
//! trajectory, global-norm clipping and the learning-rate schedules.

use candle_core::{DType, Device, Tensor, Var};
use lmforge::checkpoint::LoadedModel;
use lmforge::config::{OptimConfig, ScheduleConfig};
use lmforge::optim::{clip_grad_norm, named_grads, AdamW, Schedule};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures");
    assert!(
        p.join("README.md").is_file(),
        "reference fixtures not found at {} (CI places shared/ beside the checkout)",
        p.display()
    );
    p
}

fn load(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: PathBuf) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// max |a - b| / max |b|: the relative error scale used by the fixture README.
fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let s = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    d / s.max(1e-30)
}

/// ||a - b|| / ||b||.
fn norm_rel(a: &Tensor, b: &Tensor) -> f64 {
    let n = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    (n(&(a - b).unwrap()) / n(b).max(1e-30)).sqrt()
}

fn check_causal_lm(name: &str) {
    let dir = fixtures().join(name);
    let model = LoadedModel::load(&dir, &Device::Cpu).unwrap();
    let expected = load(dir.join("expected.safetensors"));
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
    let (_b, t) = ids.dims2().unwrap();

    let logits = model.decoder.forward(&ids, 0, None).unwrap();
    let rel = max_rel(&logits, &expected["logits"]);
    assert!(rel <= 1e-5, "{name}: logits max rel error {rel:e}");

    // HF: labels = input_ids, shifted inside the model (T-1 predictions per row).
    let inputs = ids.narrow(1, 0, t - 1).unwrap();
    let targets = ids.narrow(1, 1, t - 1).unwrap();
    let loss = model.decoder.loss(&inputs, &targets, None).unwrap();
    let want = json(dir.join("expected.json"))["loss"].as_f64().unwrap();
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(((got - want) / want).abs() <= 1e-5, "{name}: loss {got} vs {want}");

    let grads = named_grads(model.params.vars(), &loss.backward().unwrap()).unwrap();
    let reference = load(dir.join("grads.safetensors"));
    assert_eq!(grads.len(), reference.len(), "{name}: one gradient per parameter");
    for (pname, want) in &reference {
        let got = grads.get(pname).unwrap_or_else(|| panic!("{name}: no gradient for {pname}"));
        let (m, n) = (max_rel(got, want), norm_rel(got, want));
        assert!(m <= 1e-4 && n <= 1e-4, "{name}: grad {pname}: max rel {m:e}, norm rel {n:e}");
    }

    let exp = json(dir.join("expected.json"));
    let r = lmforge::eval::perplexity(&model, exp["ppl_text"].as_str().unwrap(), None).unwrap();
    assert_eq!(r.tokens as u64, exp["ppl_token_count"].as_u64().unwrap());
    let (want_loss, want_ppl) = (exp["ppl_loss"].as_f64().unwrap(), exp["ppl"].as_f64().unwrap());
    assert!(((r.loss - want_loss) / want_loss).abs() <= 1e-5, "{name}: ppl loss {} vs {want_loss}", r.loss);
    assert!(((r.ppl - want_ppl) / want_ppl).abs() <= 1e-4, "{name}: ppl {} vs {want_ppl}", r.ppl);
}

#[test]
fn gpt2_tiny_matches_transformers() {
    check_causal_lm("gpt2-tiny");
}

#[test]
fn llama_tiny_matches_transformers() {
    check_causal_lm("llama-tiny");
}

/// The kv-cached decode and a full recomputation pick the same tokens (greedy and sampled).
#[test]
fn kv_cache_generation_equals_full_recompute() {
    use lmforge::generate::{generate_ids, SamplingConfig};
    for name in ["gpt2-tiny", "llama-tiny"] {
        let model = LoadedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        for temperature in [0.0, 1.0] {
            let cfg = SamplingConfig { max_new_tokens: 60, temperature, top_k: 50, top_p: 0.95, seed: 5, eos_id: None };
            let prompt = [17u32, 400, 9, 250, 3];
            let cached = generate_ids(&model.decoder, &Device::Cpu, &prompt, &cfg, true, |_| Ok(())).unwrap();
            let full = generate_ids(&model.decoder, &Device::Cpu, &prompt, &cfg, false, |_| Ok(())).unwrap();
            assert_eq!(cached.len(), 60);
            assert_eq!(cached, full, "{name} at temperature {temperature}");
        }
    }
}

/// Exported Hugging Face folders load back to bit-identical logits.
#[test]
fn export_reimport_round_trip_is_exact() {
    for name in ["gpt2-tiny", "llama-tiny"] {
        let model = LoadedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        let out = tempfile::tempdir().unwrap();
        let dir = model.export_hf(&out.path().join("hf")).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            assert!(dir.join(f).is_file(), "{f} exported");
        }
        let back = LoadedModel::load(&dir, &Device::Cpu).unwrap();
        assert_eq!(back.spec, model.spec);
        let ids = Tensor::new(&[[1u32, 5, 900, 33, 7]], &Device::Cpu).unwrap();
        let a = model.decoder.forward(&ids, 0, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = back.decoder.forward(&ids, 0, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn adamw_trajectory_matches_torch() {
    let dir = fixtures().join("optim");
    let t = load(dir.join("trajectories.safetensors"));
    let meta = json(dir.join("trajectories.json"));
    let kw = &meta["optimizers"]["adamw"]["kwargs"];
    let cfg = OptimConfig {
        lr: kw["lr"].as_f64().unwrap(),
        beta1: kw["betas"][0].as_f64().unwrap(),
        beta2: kw["betas"][1].as_f64().unwrap(),
        eps: kw["eps"].as_f64().unwrap(),
        weight_decay: kw["weight_decay"].as_f64().unwrap(),
        ..Default::default()
    };
    let vars: BTreeMap<String, Var> =
        ["w", "b", "v"].iter().map(|k| (k.to_string(), Var::from_tensor(&t[&format!("init.{k}")]).unwrap())).collect();
    // torch applies weight decay to every tensor it is given.
    let mut opt = AdamW::new(&cfg, &vars, |_, _| true).unwrap();
    for step in 0..meta["steps"].as_u64().unwrap() {
        let grads: BTreeMap<String, Tensor> =
            vars.keys().map(|k| (k.clone(), t[&format!("grad.{step}.{k}")].clone())).collect();
        opt.step(&vars, &grads, cfg.lr).unwrap();
        for (k, v) in &vars {
            let want = &t[&format!("adamw.{step}.{k}")];
            let rel = max_rel(v.as_tensor(), want);
            assert!(rel <= 1e-5, "adamw step {step} tensor {k}: max rel {rel:e}");
        }
    }
}

#[test]
fn global_norm_clipping_matches_torch() {
    let dir = fixtures().join("optim");
    let t = load(dir.join("trajectories.safetensors"));
    let meta = json(dir.join("trajectories.json"));
    let mut grads: BTreeMap<String, Tensor> =
        ["w", "b", "v"].iter().map(|k| (k.to_string(), t[&format!("grad.3.{k}")].clone())).collect();
    let norm = clip_grad_norm(&mut grads, meta["clip"]["max_norm"].as_f64().unwrap()).unwrap();
    let want = meta["clip"]["total_norm_before"].as_f64().unwrap();
    assert!(((norm - want) / want).abs() < 1e-5, "norm {norm} vs {want}");
    for (k, g) in &grads {
        let rel = max_rel(g, &t[&format!("clip.{k}")]);
        assert!(rel <= 1e-5, "clip {k}: {rel:e}");
    }
}

#[test]
fn schedules_match_transformers() {
    let s = json(fixtures().join("schedules.json"));
    let total = s["total_steps"].as_u64().unwrap();
    let warmup = s["warmup_steps"].as_u64().unwrap();
    let cases = [
        ("constant_with_warmup", "constant", 0.0),
        ("linear_with_warmup", "linear", 0.0),
        ("cosine_with_warmup", "cosine", 0.0),
        ("cosine_with_min_lr", "cosine", 0.1),
        ("inverse_sqrt", "inverse_sqrt", 0.0),
        ("wsd", "wsd", 0.0),
    ];
    for (fixture, kind, min_ratio) in cases {
        let cfg =
            ScheduleConfig { kind: kind.into(), warmup_steps: warmup, min_lr_ratio: min_ratio, decay_fraction: 0.2 };
        let sched = Schedule::new(&cfg, total);
        for (i, want) in s["values"][fixture].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = sched.multiplier(i as u64);
            assert!((got - want).abs() <= 1e-9, "{fixture} step {i}: {got} vs {want}");
        }
    }
}
