//! The plan against published figures (sources in `plan/README.md`) and its own logic.

use super::*;
use crate::train::RunConfig;

fn request(preset: &str, gpu: &str, extra: impl FnOnce(&mut PlanOptions)) -> PlanRequest {
    let cfg = RunConfig::resolve(None, &[format!("model.preset={preset}")]).unwrap();
    let mut o = PlanOptions { gpu: Some(gpu.into()), peak_tflops: (gpu == "cpu").then_some(1.0), ..Default::default() };
    extra(&mut o);
    PlanRequest::from_config(&cfg, &o).unwrap()
}

#[test]
fn published_parameter_counts() {
    assert_eq!(plan(&request("llama-7b", "a100-80gb", |_| {})).unwrap().parameters, 6_738_415_616);
    assert_eq!(plan(&request("gpt2-124m", "a100-80gb", |_| {})).unwrap().parameters, 124_439_808);
}

/// AdamW keeps 16 bytes per parameter before activations — f32 weights (the master copy) and
/// gradients, two f32 moments — ~112 GB for "7B" (16 × 7e9); Llama-2-7B's exact 6.74B
/// parameters give 107.8 GB. bf16-mixed adds the bf16 working copies of the weights: through
/// the fused sublayers (no dropout) one matrix at a time, the largest (the MLP's 11008 × 4096);
/// through the composed layers (dropout) every one while a step's graph lives (2 bytes a
/// parameter; with checkpointing only outside the layers and one layer's). ZeRO shards what
/// lmforge's trainer shards: the moments (1), the accumulated gradients (2), the layers'
/// weights and gradients (3).
#[test]
fn sixteen_bytes_per_parameter_with_adamw_and_the_working_copies() {
    let psi = 6_738_415_616u64;
    let one_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096;
    let outside = psi - 32 * one_layer;
    assert_eq!(outside, 2 * 32000 * 4096 + 4096, "embeddings, head, final norm");
    let mlp_matrix = 4096 * 11008;
    let (off, all, half) = (Checkpointing::Off, Checkpointing::All, Checkpointing::First(16));
    for (precision, dropout, checkpointing, copies) in [
        ("fp32", false, off, 0),
        ("fp32", true, off, 0),
        ("bf16-mixed", false, off, 2 * mlp_matrix),
        ("bf16-mixed", false, all, 2 * mlp_matrix),
        ("bf16-mixed", false, half, 2 * mlp_matrix),
        ("bf16-mixed", true, off, 2 * psi),
        ("bf16-mixed", true, all, 2 * (outside + one_layer)),
        // The 16 blocks not recomputed keep theirs, one recomputed block has them again.
        ("bf16-mixed", true, half, 2 * (outside + 17 * one_layer)),
    ] {
        let mut req = request("llama-7b", "h200-141gb", |o| {
            o.precision = Some(precision.into());
            o.checkpointing = Some(checkpointing)
        });
        req.dropout = dropout;
        let m = memory(&req);
        let label = format!("{precision}, dropout {dropout}, {checkpointing}");
        assert_eq!((m.weights, m.gradients, m.optimizer_state), (4 * psi + copies, 4 * psi, 8 * psi), "{label}");
        assert_eq!(working_copies(&req), copies, "{label}");
        assert!((16.0 * psi as f64 / 112e9 - 1.0).abs() < 0.05);
    }
    let on_8 = |zero: u8| {
        memory(&request("llama-7b", "h200-141gb", |o| {
            o.zero = Some(zero);
            o.gpus = Some(8);
            o.precision = Some("fp32".into())
        }))
    };
    let states = |m: MemoryBreakdown| (m.weights, m.gradients, m.optimizer_state);
    assert_eq!(states(on_8(1)), (4 * psi, 4 * psi, (8 * psi).div_ceil(8)));
    // ZeRO-2 on a GPU: a micro-batch's full gradients exist before they are reduce-scattered.
    assert_eq!(states(on_8(2)), (4 * psi, 4 * psi + (4 * psi).div_ceil(8), (8 * psi).div_ceil(8)));
    let sharded = 4 * outside + 4 * (32 * one_layer).div_ceil(8);
    assert_eq!(states(on_8(3)), (sharded + 2 * 4 * one_layer, sharded + 3 * 4 * one_layer, (8 * psi).div_ceil(8)));
}

/// Accumulating micro-batches without ZeRO-2/3's per-micro-batch reductions holds a second
/// copy of the gradients candle's store returns — Llama-7B's embeddings, head and final norm —
/// while the layers' are summed in place as the backward produces them; all of them with
/// dropout (the composed layers) unless the layers are checkpointed, and for BERT (no fused
/// sublayers).
#[test]
fn accumulating_micro_batches_holds_the_stores_gradients_twice() {
    let psi = 6_738_415_616u64;
    let outside = 2 * 32000 * 4096 + 4096;
    let grads = |accum: usize, dropout: bool, checkpointing: Checkpointing, zero: u8, gpus: usize| {
        let mut req = request("llama-7b", "h200-141gb", |o| {
            o.grad_accum = Some(accum);
            o.checkpointing = Some(checkpointing);
            o.zero = Some(zero);
            o.gpus = Some(gpus)
        });
        req.dropout = dropout;
        (accumulation_bytes(&req), memory(&req).gradients - accumulation_bytes(&req))
    };
    let (off, all) = (Checkpointing::Off, Checkpointing::All);
    assert_eq!(grads(1, false, off, 0, 1), (0, 4 * psi));
    assert_eq!(grads(4, false, off, 0, 1), (4 * outside, 4 * psi));
    assert_eq!(grads(4, true, off, 0, 1), (4 * psi, 4 * psi));
    assert_eq!(grads(4, true, all, 0, 1).0, 4 * outside);
    // With dropout, the blocks not recomputed come in the store: 8 of 32 recomputed.
    let one_layer = (psi - outside) / 32;
    assert_eq!(grads(4, true, Checkpointing::First(8), 0, 1).0, 4 * (outside + 24 * one_layer));
    // One process runs no ZeRO; more reduce-scatter every micro-batch at stage 2.
    assert_eq!(grads(4, false, off, 2, 1).0, 4 * outside);
    assert_eq!(grads(4, false, off, 2, 8).0, 0);
    assert_eq!(grads(4, false, off, 1, 8).0, 4 * outside);
    let mut req = request("llama-7b", "h200-141gb", |o| o.grad_accum = Some(2));
    req.spec = ModelSpec::preset("bert-base").unwrap();
    assert_eq!(accumulation_bytes(&req), 4 * req.spec.num_params());
}

/// The chunked LM loss keeps d hidden (compute dtype) and d head (f32), never the (s·b, v)
/// logits; its transient peak is a chunk's logits and gradient plus the head's bf16 copy (each
/// chunk's d head product is added into the kept sum in place).
#[test]
fn the_lm_loss_keeps_no_logits() {
    let spec = ModelSpec::preset("gpt2-124m").unwrap();
    let (tokens, h, v) = (16 * 1024u64, 768u64, 50257u64);
    let (kept, transient) = lm_loss_bytes(&spec, tokens, 2);
    assert_eq!(kept, 2 * tokens * h + 4 * v * h);
    // Chunks of 2^27 / 50257 = 2670 rows.
    assert_eq!(transient, 2 * 2 * 2670 * v + 2 * v * h);
    assert!(kept + transient < 4 * tokens * v / 2, "half the f32 logits' 3.3 GB");
    // Fewer tokens than a chunk: the chunk is all of them.
    let (_, small) = lm_loss_bytes(&spec, 100, 2);
    assert_eq!(small, 2 * 2 * 100 * v + 2 * v * h);
}

/// The temporary buffers are the larger of the loss's transient and the optimizer update's:
/// none for AdamW's in-place kernel, Adafactor's fused kernels' partial sums (1/64 + 1/256 of
/// the largest parameter, Llama-7B's 32000 × 4096 embedding), the composed updates' full-size
/// temporaries of it for the others (Lion: 4).
#[test]
fn the_optimizer_update_needs_its_temporaries() {
    let spec = ModelSpec::preset("llama-7b").unwrap();
    let at = |optim: &str| {
        memory(&request("llama-7b", "h200-141gb", |o| {
            o.micro_batch = Some(1);
            o.seq_len = Some(2048);
            o.checkpointing = Some(Checkpointing::All);
            o.optim = Some(optim.into())
        }))
        .temporary_buffers
    };
    let loss = lm_loss_bytes(&spec, 2048, 2).1;
    assert_eq!(at("adamw"), loss);
    let largest = 32000 * 4096;
    assert_eq!(at("adafactor"), loss.max(4 * largest / 64 + 4 * largest / 256));
    assert_eq!(at("lion"), 4 * 4 * largest);
    assert!(at("lion") > loss);
}

/// Korthikanti et al. 2022, eq. (1): a GPT layer keeps sbh(34 + 5as/h) bytes in 16-bit with
/// dropout; full recomputation keeps 2sbh per layer.
#[test]
fn activations_reproduce_korthikanti() {
    let spec = ModelSpec::preset("gpt2-124m").unwrap();
    let (s, b, h, a) = (1024u64, 4u64, 768u64, 12u64);
    let want = s * b * h * 34 + 5 * a * s * s * b;
    assert_eq!(layer_activation_bytes(&spec, b, s, 2, true), want);
    // Without dropout the fused attention keeps no scores, only an f32 log-sum-exp per row
    // (and no masks: 34 − 2 sbh).
    assert_eq!(layer_activation_bytes(&spec, b, s, 2, false), s * b * h * 32 + 4 * a * s * b);
    let req = request("gpt2-124m", "a100-80gb", |o| {
        o.micro_batch = Some(4);
        o.seq_len = Some(1024);
        o.checkpointing = Some(Checkpointing::All)
    });
    let m = memory(&req);
    let layer_no_dropout = layer_activation_bytes(&spec, b, s, 2, false);
    let output = 2 * 2 * s * b * h + lm_loss_bytes(&spec, s * b, 2).0;
    assert_eq!(m.activations_without_checkpointing, 12 * layer_no_dropout + output);
    assert_eq!(m.activations_with_checkpointing, 12 * 2 * s * b * h + layer_no_dropout + output);
    assert_eq!(m.activations, m.activations_with_checkpointing);
    // The first 5 blocks recomputed: their inputs, the other 7 whole, one rebuilt.
    let five = memory(&PlanRequest { checkpointing: Checkpointing::First(5), ..req });
    assert_eq!(five.activations, 5 * 2 * s * b * h + 8 * layer_no_dropout + output);
}

/// Llama 2 (Touvron et al. 2023, Table 2): 7B took 184,320 A100-80GB GPU-hours for 2.0T
/// tokens at sequence 4096. The MFU that implies, fed back, reproduces it; so does any MFU
/// in 0.40–0.50 within 15%.
#[test]
fn llama2_7b_gpu_hours() {
    let published = 184_320.0;
    let at = |mfu: f64| {
        let req = request("llama-7b", "a100-80gb", |o| {
            o.tokens = Some(2.0e12);
            o.seq_len = Some(4096);
            o.mfu = Some(mfu);
            o.gpus = Some(2048);
        });
        plan(&req).unwrap()
    };
    let p = at(0.4);
    let total_flops = p.flops_per_token * 2.0e12;
    let implied_mfu = total_flops / (published * 3600.0 * 312e12);
    println!("Llama-2-7B: {:.4e} FLOPs/token, implied MFU {implied_mfu:.4}", p.flops_per_token);
    assert!((0.43..0.46).contains(&implied_mfu), "{implied_mfu}");
    assert!((at(implied_mfu).gpu_hours / published - 1.0).abs() < 1e-9);
    for mfu in [0.40, 0.45, 0.50] {
        let rel = at(mfu).gpu_hours / published - 1.0;
        assert!(rel.abs() < 0.15, "MFU {mfu}: {} GPU-hours ({rel:+.3})", at(mfu).gpu_hours);
    }
    // GPU-hours do not depend on the GPU count; wall time does.
    assert!((p.gpu_hours - p.training_seconds * 2048.0 / 3600.0).abs() < 1e-6 * p.gpu_hours);
}

#[test]
fn fits_or_suggests_the_smallest_change() {
    // 7B on one A100-80GB: 16 bytes/param alone is 100 GiB. Checkpointing, ZeRO on one
    // device and micro-batch 1 cannot help; ZeRO-3 + checkpointing over 2 GPUs does (the
    // combinations recompute every block).
    let req = request("llama-7b", "a100-80gb", |o| o.micro_batch = Some(1));
    let p = plan(&req).unwrap();
    assert!(!p.fits);
    let s = p.suggestion.unwrap();
    assert_eq!(s.change, "--activation-checkpointing --zero 3 --gpus 2");
    assert!(s.memory_per_device_bytes <= req.hardware.memory_bytes);

    // GPT-2 124M with micro-batch 128 x 1024 on an A100-40GB: recomputing some of its 12
    // blocks suffices, and the suggestion names the fewest (one fewer does not fit).
    let req = request("gpt2-124m", "a100-40gb", |o| o.micro_batch = Some(128));
    let p = plan(&req).unwrap();
    assert!(!p.fits, "{}", report::gib(p.memory_per_device_bytes));
    let change = p.suggestion.unwrap().change;
    let n: usize = change.strip_prefix("--activation-checkpointing ").unwrap().parse().unwrap();
    assert!(n > 1 && n < 12, "{change}");
    let fitted = plan(&PlanRequest { checkpointing: Checkpointing::First(n), ..req.clone() }).unwrap();
    assert!(fitted.fits && fitted.suggestion.is_none());
    assert!(!plan(&PlanRequest { checkpointing: Checkpointing::First(n - 1), ..req.clone() }).unwrap().fits);
    // BERT is trained without recomputation and ZeRO-3 on every device: never suggested.
    let mut bert = request("gpt2-124m", "a100-40gb", |o| o.micro_batch = Some(256));
    bert.spec = ModelSpec::preset("bert-base").unwrap();
    let s = suggest(&bert).unwrap();
    assert!(!s.change.contains("--activation-checkpointing") && !s.change.contains("--zero 3"), "{}", s.change);

    // A smaller micro-batch keeps the global batch through accumulation.
    let req = request("gpt2-124m", "a100-40gb", |o| {
        o.micro_batch = Some(64);
        o.checkpointing = Some(Checkpointing::All);
        o.seq_len = Some(1024);
        o.gpus = Some(1)
    });
    let tight = PlanRequest { hardware: Hardware { memory_bytes: 6 << 30, ..req.hardware.clone() }, ..req };
    let s = suggest(&tight).unwrap();
    assert!(s.change.starts_with("--micro-batch"), "{}", s.change);
    assert_eq!(s.global_batch, 64);

    // Or, on one device: Adafactor's factored state (a few MB for 7B) instead of AdamW's 54 GB.
    let req = request("llama-7b", "h100-80gb", |o| {
        o.micro_batch = Some(1);
        o.seq_len = Some(4096)
    });
    let p = plan(&req).unwrap();
    let s = p.optimizer_suggestion.unwrap();
    assert_eq!(s.change, "--optim adafactor");
    let lighter = request("llama-7b", "h100-80gb", |o| {
        o.micro_batch = Some(1);
        o.seq_len = Some(4096);
        o.optim = Some("adafactor".into())
    });
    let fitted = plan(&lighter).unwrap();
    assert!(fitted.fits && fitted.optimizer_suggestion.is_none());
    assert_eq!(s.memory_per_device_bytes, fitted.memory_per_device_bytes);
    assert!(fitted.memory.optimizer_state < 20 << 20, "{}", fitted.memory.optimizer_state);
    // Nothing lighter to offer when the optimizer already is Adafactor.
    let tight = PlanRequest { hardware: Hardware { memory_bytes: 40 << 30, ..lighter.hardware.clone() }, ..lighter };
    assert!(suggest_optimizer(&tight).is_none());

    // Nothing fits a 7B model in 1 GiB per device, even at 1024 GPUs.
    let hopeless = PlanRequest {
        hardware: Hardware { memory_bytes: 1 << 30, ..tight.hardware.clone() },
        ..request("llama-7b", "a100-80gb", |_| {})
    };
    assert!(suggest(&hopeless).is_none());
}

#[test]
fn cpu_plan_is_the_trainers_estimate() {
    let req = request("quickstart", "cpu", |o| o.micro_batch = Some(8));
    let p = plan(&req).unwrap();
    let spec = ModelSpec::preset("quickstart").unwrap();
    let cpu = spec.cpu_train_memory(8, 128, 8 * spec.num_params(), Checkpointing::Off);
    assert_eq!(p.memory_per_device_bytes, cpu.total());
    assert_eq!(p.memory.optimizer_state, 8 * 2_001_024, "AdamW: two fp32 moments");
    // The optimizer changes the state: SGD without momentum keeps none.
    let cfg = RunConfig::resolve(None, &["model.preset=quickstart".into(), "optim.name=sgd".into()]).unwrap();
    let o = PlanOptions { gpu: Some("cpu".into()), peak_tflops: Some(0.1), ..Default::default() };
    assert_eq!(memory(&PlanRequest::from_config(&cfg, &o).unwrap()).optimizer_state, 0);
    // `--optim` swaps the optimizer, keeping the config's lr and decay but not the old
    // optimizer's own keys (Lion reads no eps); a wrong name is its error.
    let cfg = RunConfig::resolve(None, &["model.preset=quickstart".into(), "optim.eps=1e-6".into()]).unwrap();
    let lion = PlanRequest::from_config(&cfg, &PlanOptions { optim: Some("lion".into()), ..o.clone() }).unwrap();
    assert_eq!((lion.optim.name(), memory(&lion).optimizer_state), ("lion", 4 * 2_001_024));
    let e = PlanRequest::from_config(&cfg, &PlanOptions { optim: Some("adamx".into()), ..o.clone() }).unwrap_err();
    assert!(e.to_string().contains("--optim") && e.to_string().contains("adamx"), "{e}");
    // What the trainer does not do is refused, naming the flag.
    let cfg = RunConfig::resolve(None, &["model.preset=tiny".into()]).unwrap();
    let bert = RunConfig::resolve(None, &["model.preset=bert-tiny".into(), "train.objective=mlm".into()]).unwrap();
    for (cfg, o, flag) in [
        (&cfg, PlanOptions { precision: Some("bf16-mixed".into()), ..o.clone() }, "--precision"),
        (&bert, PlanOptions { zero: Some(3), gpus: Some(2), ..o.clone() }, "--zero"),
        (&bert, PlanOptions { checkpointing: Some(Checkpointing::All), ..o.clone() }, "--activation-checkpointing"),
        (&bert, PlanOptions { zero: Some(3), gpus: Some(2), gpu: Some("h100-80gb".into()), ..o.clone() }, "--zero"),
        (
            &bert,
            PlanOptions { checkpointing: Some(Checkpointing::All), gpu: Some("h100-80gb".into()), ..o.clone() },
            "--activation-checkpointing",
        ),
        (&cfg, PlanOptions { checkpointing: Some(Checkpointing::First(3)), ..o.clone() }, "--activation-checkpointing"),
        (&cfg, PlanOptions { gpu: Some("tpu".into()), ..o.clone() }, "--gpu"),
        (&cfg, PlanOptions { mfu: Some(1.5), ..o.clone() }, "--mfu"),
    ] {
        let e = PlanRequest::from_config(cfg, &o).unwrap_err().to_string();
        assert!(e.contains(flag), "{e}");
    }
}

/// Processes on the CPU (`--gpus N`): each computes its share of the micro-batch's rows; the
/// ZeRO stages shard the optimizer state, then the gradients' accumulation, then the layers.
#[test]
fn cpu_processes_shard_model_states_by_zero_stage() {
    let cfg = RunConfig::resolve(None, &["model.preset=gpt2-124m".into(), "train.batch_size=4".into()]).unwrap();
    let at = |zero: u8, gpus: usize| {
        let o = PlanOptions {
            gpu: Some("cpu".into()),
            peak_tflops: Some(0.1),
            zero: Some(zero),
            gpus: Some(gpus),
            ..Default::default()
        };
        plan(&PlanRequest::from_config(&cfg, &o).unwrap()).unwrap()
    };
    let psi = ModelSpec::preset("gpt2-124m").unwrap().num_params();
    let (z0, z1, z2, z3) = (at(0, 4), at(1, 4), at(2, 4), at(3, 4));
    assert_eq!(z0.memory.optimizer_state, 8 * psi);
    assert_eq!(z1.memory.optimizer_state, (8 * psi).div_ceil(4));
    assert_eq!(z0.memory.gradients, 4 * psi);
    // ZeRO-2 reducing during the backward: the share, the embeddings' and final norm's full
    // gradients (they come last), two layers' in flight; without overlap one micro-batch's all.
    let layers = psi - 39_383_808 - 2 * 768;
    assert_eq!(z2.memory.gradients, 4 * (psi - layers) + 8 * (layers / 12) + (4 * psi).div_ceil(4));
    let serial = RunConfig::resolve(
        None,
        &["model.preset=gpt2-124m".into(), "train.batch_size=4".into(), "distributed.overlap=false".into()],
    )
    .unwrap();
    let o = PlanOptions {
        gpu: Some("cpu".into()),
        peak_tflops: Some(0.1),
        zero: Some(2),
        gpus: Some(4),
        ..Default::default()
    };
    let z2_serial = plan(&PlanRequest::from_config(&serial, &o).unwrap()).unwrap();
    assert_eq!(z2_serial.memory.gradients, 4 * psi + (4 * psi).div_ceil(4));
    // ZeRO-3: the embeddings whole, the 12 layers' 85M parameters a quarter each, two layers'
    // weights gathered (in use, next), three layers' full gradients (computed, two waiting).
    let sharded = 4 * (psi - layers) + 4 * layers.div_ceil(4);
    let layer = 4 * (layers / 12);
    assert_eq!((z3.memory.weights, z3.memory.gradients), (sharded + 2 * layer, sharded + 3 * layer));
    assert!(z3.memory.activations < z0.memory.activations, "ZeRO-3 checkpoints every layer");
    assert!(z3.memory_per_device_bytes < z1.memory_per_device_bytes);
    // One process: no communication, no message buffers; each process computes 1 of 4 rows.
    let one = at(0, 1);
    assert_eq!(one.communication_bytes_per_step, 0);
    assert!(z0.memory.temporary_buffers > one.memory.temporary_buffers);
    assert!(z0.memory.activations < one.memory.activations);
    assert_eq!(z0.global_batch, 4, "the processes split train.batch_size");
    assert!(report::table(&z2).contains("sent per step (none)"));
}

#[test]
fn report_table_shows_every_section() {
    let p = plan(&request("llama-7b", "a100-80gb", |o| o.price_per_gpu_hour = Some(2.0))).unwrap();
    let t = report::table(&p);
    for needle in ["6,738,415,616", "attention", "optimizer state", "activations", "fits: NO", "GPU-hours", "cost"] {
        assert!(t.contains(needle), "{needle} missing from\n{t}");
    }
    assert_eq!(report::thousands(124_439_808), "124,439,808");
}

/// Llama-7B at 2 × 4096 on an H200 fits with every block recomputed; the plan names the fewest
/// blocks it can recompute and still fit — the first count that fits, so one fewer does not —
/// and none when nothing is recomputed or ZeRO-3 recomputes every block anyway; asked for none,
/// the smallest change that fits is that count. At 1 × 4096 it fits (by the plan) recomputing
/// none.
#[test]
fn fewest_recomputed_blocks_that_still_fit() {
    let at = |batch: usize, c: Checkpointing, zero: u8| {
        plan(&request("llama-7b", "h200-141gb", |o| {
            o.micro_batch = Some(batch);
            o.seq_len = Some(4096);
            o.checkpointing = Some(c);
            o.zero = Some(zero)
        }))
        .unwrap()
    };
    let all = at(2, Checkpointing::All, 0);
    assert!(all.fits);
    let fewer = all.fewer_recomputed.clone().unwrap();
    let n: usize = fewer.change.strip_prefix("--activation-checkpointing ").unwrap().parse().unwrap();
    assert!((1..32).contains(&n), "{}", fewer.change);
    let (just, short) = (at(2, Checkpointing::First(n), 0), at(2, Checkpointing::first(n - 1), 0));
    assert!(just.fits && !short.fits, "{n} blocks fit, {} do not", n - 1);
    assert_eq!(fewer.memory_per_device_bytes, just.memory_per_device_bytes);
    assert!(just.memory_per_device_bytes > all.memory_per_device_bytes);
    assert!(just.fewer_recomputed.is_none(), "already the fewest");
    // Asked for none, it does not fit, and the smallest change is that same count.
    let none = at(2, Checkpointing::Off, 0);
    assert!(!none.fits);
    assert_eq!(none.suggestion.unwrap().change, fewer.change);
    assert!(at(2, Checkpointing::All, 3).fewer_recomputed.is_none());
    assert!(report::table(&all).contains(&fewer.change));
    assert!(report::table(&just).contains(&format!("activation checkpointing of {n} blocks")));
    let one = at(1, Checkpointing::All, 0).fewer_recomputed.unwrap();
    assert_eq!(one.change, "--activation-checkpointing off");
    assert!(at(1, Checkpointing::Off, 0).fits);
}

/// A suggestion's global batch counts sequences as the plan's does: on the CPU the processes
/// split `train.batch_size`, so it is micro-batch × accumulation, not × processes.
#[test]
fn suggestions_count_the_global_batch_as_the_plan_does() {
    let cfg = RunConfig::resolve(None, &["model.preset=gpt2-124m".into(), "train.batch_size=8".into()]).unwrap();
    let o = PlanOptions { gpu: Some("cpu".into()), peak_tflops: Some(0.1), gpus: Some(4), ..Default::default() };
    let req = PlanRequest::from_config(&cfg, &o).unwrap();
    let without_checkpointing = memory(&req).total();
    let tight = PlanRequest {
        hardware: Hardware { memory_bytes: without_checkpointing - 1, ..req.hardware.clone() },
        ..req.clone()
    };
    let s = suggest(&tight).unwrap();
    assert!(s.change.starts_with("--activation-checkpointing"), "{}", s.change);
    assert_eq!((s.global_batch, plan(&tight).unwrap().global_batch), (8, 8));
}
