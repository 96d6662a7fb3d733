//! Numerical parity with the Hugging Face / PyTorch reference outputs in `../shared/fixtures`:
//! logits, loss and every parameter's gradient for GPT-2, Llama and BERT (MLM + NSP), the
//! pretrained all-MiniLM-L6-v2 encoder's hidden states, perplexity, the AdamW
//! trajectory, global-norm clipping and the learning-rate schedules. The model, optimizer
//! trajectory and clipping checks run on the device `LMFORGE_TEST_DEVICE` names (default the
//! CPU; `scripts/gpu-check.sh` runs them on CUDA: AdamW's multi-tensor kernel, the composed
//! optimizers and the gradient norm against torch / transformers), the rest on the CPU.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{fixtures, json, load, max_rel, norm_rel};
use lmforge::checkpoint::LoadedModel;
use lmforge::ops::{Kernels, KernelsGuard};
use lmforge::optim::groups::uniform_groups;
use lmforge::optim::{clip_grad_norm, named_grads, Optimizer, Schedule};
use lmforge::optim::{ScheduleConfig, ScheduleKind};
use lmforge::train::RunConfig;
use std::collections::{BTreeMap, HashMap};

/// Runs the fixture checks with the fused kernels and with the reference ops.
fn check_causal_lm(name: &str) {
    for k in [Kernels::Fused, Kernels::Reference] {
        let _k = KernelsGuard::set(k);
        check_causal_lm_with(&format!("{name} ({})", k.name()), name);
    }
}

fn check_causal_lm_with(label: &str, name: &str) {
    let dir = fixtures().join(name);
    let device = common::device();
    let model = LoadedModel::load(&dir, &device).unwrap();
    let expected = load(dir.join("expected.safetensors"));
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap().to_device(&device).unwrap();
    let (_b, t) = ids.dims2().unwrap();

    let logits = model.decoder().unwrap().forward(&ids, 0, None).unwrap();
    let rel = max_rel(&logits, &expected["logits"]);
    assert!(rel <= 1e-5, "{label}: logits max rel error {rel:e}");

    // HF: labels = input_ids, shifted inside the model (T-1 predictions per row).
    let inputs = ids.narrow(1, 0, t - 1).unwrap();
    let targets = ids.narrow(1, 1, t - 1).unwrap();
    let loss = model.decoder().unwrap().loss(&inputs, &targets, None).unwrap();
    let want = json(dir.join("expected.json"))["loss"].as_f64().unwrap();
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(((got - want) / want).abs() <= 1e-5, "{label}: loss {got} vs {want}");

    let grads = named_grads(model.params.vars(), &loss.backward().unwrap()).unwrap();
    let reference = load(dir.join("grads.safetensors"));
    assert_eq!(grads.len(), reference.len(), "{label}: one gradient per parameter");
    for (pname, want) in &reference {
        let got = grads.get(pname).unwrap_or_else(|| panic!("{label}: no gradient for {pname}"));
        let (m, n) = (max_rel(got, want), norm_rel(got, want));
        assert!(m <= 1e-4 && n <= 1e-4, "{label}: grad {pname}: max rel {m:e}, norm rel {n:e}");
    }

    let exp = json(dir.join("expected.json"));
    let r = lmforge::eval::perplexity(&model, exp["ppl_text"].as_str().unwrap(), None).unwrap();
    assert_eq!(r.tokens as u64, exp["ppl_token_count"].as_u64().unwrap());
    let (want_loss, want_ppl) = (exp["ppl_loss"].as_f64().unwrap(), exp["ppl"].as_f64().unwrap());
    assert!(((r.loss - want_loss) / want_loss).abs() <= 1e-5, "{label}: ppl loss {} vs {want_loss}", r.loss);
    assert!(((r.ppl - want_ppl) / want_ppl).abs() <= 1e-4, "{label}: ppl {} vs {want_ppl}", r.ppl);
}

#[test]
fn gpt2_tiny_matches_transformers() {
    check_causal_lm("gpt2-tiny");
}

#[test]
fn llama_tiny_matches_transformers() {
    check_causal_lm("llama-tiny");
}

fn check_bert_pretraining(label: &str) {
    let dir = fixtures().join("bert-tiny");
    let device = common::device();
    let model = LoadedModel::load(&dir, &device).unwrap();
    let enc = model.encoder().unwrap();
    let x = load(dir.join("expected.safetensors"));
    let on_device = |t: &Tensor| t.to_device(&device).unwrap();
    let input = lmforge::models::EncoderInput::from_mask(
        on_device(&x["input_ids"]),
        on_device(&x["token_type_ids"]),
        &x["attention_mask"],
    )
    .unwrap();
    assert!(input.lengths.iter().any(|&l| l < 20), "the fixture has a padded row");
    let hidden = enc.hidden(&input, None).unwrap();
    let rel = max_rel(&enc.mlm_logits(&hidden).unwrap(), &x["prediction_logits"]);
    assert!(rel <= 1e-5, "{label}: prediction logits max rel error {rel:e}");
    let nsp = enc.nsp_logits(&enc.pooled(&hidden).unwrap()).unwrap();
    let rel = max_rel(&nsp, &x["seq_relationship_logits"]);
    assert!(rel <= 1e-5, "{label}: seq relationship logits max rel error {rel:e}");

    // Labels -100 are ignored: the loss takes the other positions as flat (B·T) row indices.
    let labels = x["mlm_labels"].flatten_all().unwrap().to_vec1::<i64>().unwrap();
    let (pos, tgt): (Vec<u32>, Vec<u32>) =
        labels.iter().enumerate().filter(|(_, &l)| l >= 0).map(|(i, &l)| (i as u32, l as u32)).unzip();
    let n = pos.len();
    let (pos, tgt) = (Tensor::from_vec(pos, n, &device).unwrap(), Tensor::from_vec(tgt, n, &device).unwrap());
    let nsp_labels = on_device(&x["nsp_labels"].to_dtype(DType::U32).unwrap());
    let loss = enc.pretraining_loss(&input, &pos, &tgt, Some(&nsp_labels), None).unwrap().total;
    let want = json(dir.join("expected.json"))["loss"].as_f64().unwrap();
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!(((got - want) / want).abs() <= 1e-5, "{label}: loss {got} vs {want}");

    let grads = named_grads(model.params.vars(), &loss.backward().unwrap()).unwrap();
    let reference = load(dir.join("grads.safetensors"));
    assert_eq!(grads.len(), reference.len(), "{label}: one gradient per parameter");
    let max_abs = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let scale = reference.values().map(max_abs).fold(0.0, f64::max);
    let grads: BTreeMap<String, Tensor> =
        grads.into_iter().map(|(k, g)| (k, g.to_device(&Device::Cpu).unwrap())).collect();
    for (pname, want) in &reference {
        let got = grads.get(pname).unwrap_or_else(|| panic!("{label}: no gradient for {pname}"));
        if pname.ends_with("attention.self.key.bias") {
            // Adding b to every key adds q·b to a whole score row, which softmax cancels: the
            // true gradient is 0 and both sides hold only rounding noise, so compare absolutely.
            let d = max_abs(&(got - want).unwrap());
            assert!(d <= 1e-6 * scale, "{label}: grad {pname}: |diff| {d:e} vs gradient scale {scale:e}");
            continue;
        }
        let (m, n) = (max_rel(got, want), norm_rel(got, want));
        assert!(m <= 1e-4 && n <= 1e-4, "{label}: grad {pname}: max rel {m:e}, norm rel {n:e}");
    }
}

#[test]
fn bert_tiny_pretraining_matches_transformers() {
    for k in [Kernels::Fused, Kernels::Reference] {
        let _k = KernelsGuard::set(k);
        check_bert_pretraining(&format!("bert-tiny ({})", k.name()));
    }
}

/// The real pretrained all-MiniLM-L6-v2 (an HF `BertModel` folder: fp16, no `bert.` prefix, no
/// heads) reproduces sentence-transformers' hidden states and mean-pooled embeddings.
#[test]
fn minilm_backbone_matches_sentence_transformers() {
    let dir = fixtures().join("../data/models/all-minilm-l6-v2");
    let model = LoadedModel::load(&dir, &Device::Cpu).unwrap();
    let enc = model.encoder().unwrap();
    let r = json(dir.join("reference_outputs.json"));
    let rows = |k: &str| -> Vec<Vec<u32>> {
        r[k].as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
            .collect()
    };
    let (ids, types, mask) = (rows("input_ids"), rows("token_type_ids"), rows("attention_mask"));
    let (b, t) = (ids.len(), ids[0].len());
    let flat = |m: &[Vec<u32>]| Tensor::from_vec(m.concat(), (b, t), &Device::Cpu).unwrap();
    let input = lmforge::models::EncoderInput::from_mask(flat(&ids), flat(&types), &flat(&mask)).unwrap();
    let hidden = enc.hidden(&input, None).unwrap();
    for (i, want) in r["last_hidden_state_first_token_first8"].as_array().unwrap().iter().enumerate() {
        let got = hidden.get(i).unwrap().get(0).unwrap().narrow(0, 0, 8).unwrap().to_vec1::<f32>().unwrap();
        for (g, w) in got.iter().zip(want.as_array().unwrap()) {
            let w = w.as_f64().unwrap();
            // The folder holds fp16 weights; the reference ran the same fp16 weights in fp32.
            assert!((*g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0), "row {i}: {g} vs {w}");
        }
    }
    for (i, want) in r["mean_pooled_l2_normalized_embeddings"].as_array().unwrap().iter().enumerate() {
        let len = input.lengths[i];
        let mean = hidden.get(i).unwrap().narrow(0, 0, len).unwrap().mean(0).unwrap();
        let norm = mean.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
        let emb = mean.broadcast_div(&norm).unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(emb.len(), want.len(), "row {i}: embedding width");
        let cos: f64 = emb.iter().zip(&want).map(|(a, b)| *a as f64 * b).sum();
        let max_diff = emb.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(cos > 0.99999 && max_diff < 1e-4, "row {i}: cosine {cos}, max |diff| {max_diff:e}");
    }

    // Exported (as a headless `BertModel`, with its WordPiece vocab.txt) and re-imported: the
    // same hidden states, bit for bit (fp16 weights became fp32 exactly).
    let out = tempfile::tempdir().unwrap();
    let folder = model.export_hf(&out.path().join("minilm")).unwrap();
    assert!(folder.join("vocab.txt").is_file());
    let cfg = json(folder.join("config.json"));
    assert_eq!(cfg["architectures"][0], "BertModel");
    let back = LoadedModel::load(&folder, &Device::Cpu).unwrap();
    let again = back.encoder().unwrap().hidden(&input, None).unwrap();
    assert_eq!(max_rel(&again, &hidden), 0.0);
}

/// The kv-cached decode and a full recomputation pick the same tokens (greedy and sampled).
#[test]
fn kv_cache_generation_equals_full_recompute() {
    use lmforge::generate::{generate_ids, SamplingConfig};
    for name in ["gpt2-tiny", "llama-tiny"] {
        let model = LoadedModel::load(&fixtures().join(name), &Device::Cpu).unwrap();
        for temperature in [0.0, 1.0] {
            let cfg = SamplingConfig {
                max_new_tokens: 60,
                temperature,
                top_k: 50,
                top_p: 0.95,
                seed: 5,
                ..Default::default()
            };
            let prompt = [17u32, 400, 9, 250, 3];
            let cached = generate_ids(model.decoder().unwrap(), &Device::Cpu, &prompt, &cfg, true, |_| Ok(())).unwrap();
            let full = generate_ids(model.decoder().unwrap(), &Device::Cpu, &prompt, &cfg, false, |_| Ok(())).unwrap();
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
        let a =
            model.decoder().unwrap().forward(&ids, 0, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b =
            back.decoder().unwrap().forward(&ids, 0, None).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b, "{name}");
    }
}

/// Replays fixture trajectory `fixture` (10 steps on `w`, `b`, `v`) with the optimizer that
/// `optim_toml` configures (through the config path, so the keys are validated as a user's
/// are), at learning rate `lr`, checking every tensor after every step.
fn check_trajectory(fixture: &str, optim_toml: &str, lr: f64) {
    // AdamW has an in-place fused update; every optimizer is checked on both settings.
    for k in [Kernels::Fused, Kernels::Reference] {
        let _k = KernelsGuard::set(k);
        check_trajectory_with(fixture, optim_toml, lr);
    }
}

fn check_trajectory_with(fixture: &str, optim_toml: &str, lr: f64) {
    let dir = fixtures().join("optim");
    let t = load(dir.join("trajectories.safetensors"));
    let meta = json(dir.join("trajectories.json"));
    assert!(meta["optimizers"][fixture].is_object(), "fixture {fixture} missing from trajectories.json");
    let cfg = RunConfig::from_toml_str(&format!("[optim]\n{optim_toml}"), &[]).unwrap().optim;
    let device = common::device();
    let on_device = |name: &str| t[name].to_device(&device).unwrap();
    let vars: BTreeMap<String, Var> = ["w", "b", "v"]
        .iter()
        .map(|k| (k.to_string(), Var::from_tensor(&on_device(&format!("init.{k}"))).unwrap()))
        .collect();
    // torch applies a group's weight decay to every tensor it is given.
    let mut opt = Optimizer::from_config(&cfg, &vars, uniform_groups(&vars, cfg.weight_decay)).unwrap();
    for step in 0..meta["steps"].as_u64().unwrap() {
        let grads: BTreeMap<String, Tensor> =
            vars.keys().map(|k| (k.clone(), on_device(&format!("grad.{step}.{k}")))).collect();
        opt.step(&vars, &grads, lr).unwrap();
        for (k, v) in &vars {
            let want = &t[&format!("{fixture}.{step}.{k}")];
            let got = v.as_tensor().to_device(&Device::Cpu).unwrap();
            let rel = max_rel(&got, want);
            let label = common::device_name();
            assert!(rel <= 1e-5, "{fixture} on {label} step {step} tensor {k}: max rel {rel:e}");
            // Some trajectories barely move (Adafactor's warmup-init relative step: ~2e-5 of the
            // weights in 10 steps), so the update itself must match too: the error within 1% of
            // the distance travelled from init.
            let init = &t[&format!("init.{k}")];
            let err = max_abs(&(got - want).unwrap());
            let moved = max_abs(&(want - init).unwrap());
            assert!(err <= 1e-2 * moved, "{fixture} step {step} tensor {k}: error {err:e} vs displacement {moved:e}");
        }
    }
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64
}

#[test]
fn adamw_trajectory_matches_torch() {
    check_trajectory("adamw", "name = \"adamw\"\nbeta1 = 0.9\nbeta2 = 0.95\neps = 1e-8\nweight_decay = 0.1", 0.01);
}

#[test]
fn adam_trajectory_matches_torch() {
    check_trajectory("adam", "name = \"adam\"\nbeta1 = 0.9\nbeta2 = 0.999\neps = 1e-8\nweight_decay = 0.0", 0.01);
}

#[test]
fn sgd_trajectories_match_torch() {
    check_trajectory("sgd", "name = \"sgd\"\nmomentum = 0.0\nweight_decay = 0.0", 0.1);
    check_trajectory("sgd_nesterov", "name = \"sgd\"\nmomentum = 0.9\nnesterov = true\nweight_decay = 0.001", 0.05);
}

#[test]
fn adafactor_trajectories_match_transformers() {
    check_trajectory(
        "adafactor_fixed_lr",
        "name = \"adafactor\"\nrelative_step = false\nscale_parameter = false\nwarmup_init = false\nweight_decay = 0.0",
        0.01,
    );
    // relative_step ignores the scheduled lr: any value must give the same trajectory.
    check_trajectory(
        "adafactor_relative",
        "name = \"adafactor\"\nrelative_step = true\nscale_parameter = true\nwarmup_init = true\nweight_decay = 0.0",
        123.0,
    );
}

#[test]
fn lamb_trajectory_matches_torch_optimizer() {
    check_trajectory("lamb", "name = \"lamb\"\nbeta1 = 0.9\nbeta2 = 0.999\neps = 1e-6\nweight_decay = 0.01", 0.01);
}

/// Optimizer state survives a save / load round trip exactly: 5 steps, save, restore into a
/// fresh optimizer, 5 more steps equal 10 uninterrupted steps to the bit, for every optimizer.
#[test]
fn optimizer_state_round_trips_exactly() {
    let dir = fixtures().join("optim");
    let t = load(dir.join("trajectories.safetensors"));
    let configs = [
        "name = \"adamw\"\namsgrad = true",
        "name = \"adam\"",
        "name = \"sgd\"\nmomentum = 0.9\nnesterov = true",
        "name = \"adafactor\"\nbeta1 = 0.9",
        "name = \"adafactor\"\nrelative_step = true\nwarmup_init = true",
        "name = \"lamb\"",
        "name = \"lion\"",
        "name = \"muon\"",
    ];
    for optim_toml in configs {
        let cfg = RunConfig::from_toml_str(&format!("[optim]\n{optim_toml}"), &[]).unwrap().optim;
        let fresh = || -> (BTreeMap<String, Var>, Optimizer) {
            let vars: BTreeMap<String, Var> = ["w", "b", "v"]
                .iter()
                .map(|k| (k.to_string(), Var::from_tensor(&t[&format!("init.{k}")]).unwrap()))
                .collect();
            let opt = Optimizer::from_config(&cfg, &vars, uniform_groups(&vars, 0.01)).unwrap();
            (vars, opt)
        };
        let run = |vars: &BTreeMap<String, Var>, opt: &mut Optimizer, steps: std::ops::Range<u64>| {
            for step in steps {
                let grads = vars.keys().map(|k| (k.clone(), t[&format!("grad.{step}.{k}")].clone())).collect();
                opt.step(vars, &grads, 0.01).unwrap();
            }
        };
        let (full_vars, mut full) = fresh();
        run(&full_vars, &mut full, 0..10);

        let (vars, mut first) = fresh();
        run(&vars, &mut first, 0..5);
        let saved: HashMap<String, Tensor> = first.state_tensors().into_iter().collect();
        let bytes = lmforge::nn::serialize_tensors(first.state_tensors().into_iter()).unwrap();
        let saved_from_disk = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
        assert_eq!(saved.len(), saved_from_disk.len());
        let weights: BTreeMap<String, Var> =
            vars.iter().map(|(k, v)| (k.clone(), Var::from_tensor(&v.as_tensor().copy().unwrap()).unwrap())).collect();
        let (_, mut second) = fresh();
        second.load_state(saved_from_disk, first.t).unwrap();
        run(&weights, &mut second, 5..10);
        for (k, v) in &full_vars {
            let a = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = weights[k].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(a, b, "{optim_toml}: tensor {k} after resume");
        }
        // State from another optimizer is refused, naming what is wrong.
        let other = if cfg.name == "sgd" { "name = \"lion\"" } else { "name = \"sgd\"\nmomentum = 0.5" };
        let other = RunConfig::from_toml_str(&format!("[optim]\n{other}"), &[]).unwrap().optim;
        let mut foreign = Optimizer::from_config(&other, &full_vars, uniform_groups(&full_vars, 0.0)).unwrap();
        assert!(foreign.load_state(saved, 5).is_err(), "{optim_toml}: foreign state accepted");
    }
}

/// Memory per parameter: AdamW keeps two fp32 moments (8 bytes); Adafactor keeps row and
/// column statistics for matrices (here 8 + 16 floats for the 8×16 `w` instead of 128).
#[test]
fn optimizer_state_sizes() {
    let dir = fixtures().join("optim");
    let t = load(dir.join("trajectories.safetensors"));
    let vars: BTreeMap<String, Var> =
        ["w", "b", "v"].iter().map(|k| (k.to_string(), Var::from_tensor(&t[&format!("init.{k}")]).unwrap())).collect();
    let n: usize = vars.values().map(|v| v.elem_count()).sum();
    let bytes = |toml: &str| {
        let cfg = RunConfig::from_toml_str(&format!("[optim]\n{toml}"), &[]).unwrap().optim;
        Optimizer::from_config(&cfg, &vars, uniform_groups(&vars, 0.0)).unwrap().state_bytes()
    };
    assert_eq!(bytes("name = \"adamw\""), 8 * n);
    assert_eq!(bytes("name = \"adamw\"\namsgrad = true"), 12 * n);
    assert_eq!(bytes("name = \"sgd\""), 0);
    assert_eq!(bytes("name = \"sgd\"\nmomentum = 0.9"), 4 * n);
    assert_eq!(bytes("name = \"adafactor\""), 4 * (8 + 16 + 16 + 3));
    assert_eq!(bytes("name = \"lion\""), 4 * n);
}

#[test]
fn global_norm_clipping_matches_torch() {
    let dir = fixtures().join("optim");
    let t = load(dir.join("trajectories.safetensors"));
    let meta = json(dir.join("trajectories.json"));
    let device = common::device();
    let mut grads: BTreeMap<String, Tensor> = ["w", "b", "v"]
        .iter()
        .map(|k| (k.to_string(), t[&format!("grad.3.{k}")].to_device(&device).unwrap()))
        .collect();
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
        ("constant_with_warmup", ScheduleKind::Constant, 0.0),
        ("linear_with_warmup", ScheduleKind::Linear, 0.0),
        ("cosine_with_warmup", ScheduleKind::Cosine, 0.0),
        ("cosine_with_min_lr", ScheduleKind::Cosine, 0.1),
        ("inverse_sqrt", ScheduleKind::InverseSqrt, 0.0),
        ("wsd", ScheduleKind::Wsd, 0.0),
    ];
    for (fixture, kind, min_ratio) in cases {
        let cfg = ScheduleConfig {
            kind,
            warmup_steps: warmup,
            min_lr_ratio: min_ratio,
            decay_fraction: 0.2,
            ..Default::default()
        };
        let sched = Schedule::new(&cfg, total);
        for (i, want) in s["values"][fixture].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = sched.multiplier(i as u64);
            assert!((got - want).abs() <= 1e-9, "{fixture} step {i}: {got} vs {want}");
        }
    }
}
