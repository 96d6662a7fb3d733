//! Every fused kernel against its reference, forward (≤ 1e-5 relative) and backward
//! (≤ 1e-4 relative), on random inputs with odd sizes, strided and offset views.

use super::linear::Weight;
use super::*;
use candle_core::{Device, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn randn(shape: &[usize], std: f32, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let d = Normal::new(0.0f32, std).unwrap();
    let n = shape.iter().product();
    Tensor::from_vec((0..n).map(|_| d.sample(&mut rng)).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
}

/// max |a − b| / max |b| (in f32, on whatever device they are).
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (&a.to_dtype(DType::F32).unwrap(), &b.to_dtype(DType::F32).unwrap());
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let s = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    d / s.max(1e-30)
}

/// Runs `f` on fresh variables made from `inputs` with `k` kernels; returns the output and the
/// gradient of Σ output · r (r fixed random weights, so every gradient path is exercised).
fn run(k: Kernels, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> (Tensor, Vec<Tensor>) {
    let _g = KernelsGuard::set(k);
    let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    param_grads::clear();
    let y = f(&ts).unwrap();
    let r = randn(y.dims(), 1.0, 99).to_device(y.device()).unwrap().to_dtype(y.dtype()).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    // Fused sublayers leave their parameters' gradients beside the store.
    let g = vars
        .iter()
        .map(|v| param_grads::gradient(v.as_tensor(), &grads).unwrap().expect("gradient reaches every input"))
        .collect();
    (y, g)
}

fn check(name: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) {
    check_within(name, inputs, f, 1e-5, 1e-4);
}

/// [`check`] with other bounds (bf16 activations).
fn check_within(name: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>, forward: f64, backward: f64) {
    check_against(name, inputs, f, f, (forward, backward));
}

/// `f` under the fused kernels against `reference` under the reference kernels: the output
/// and every input's gradient within the relative bounds.
fn check_against(
    name: &str,
    inputs: &[Tensor],
    f: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    reference: &dyn Fn(&[Tensor]) -> Result<Tensor>,
    (forward, backward): (f64, f64),
) {
    let (yf, gf) = run(Kernels::Fused, inputs, f);
    let (yr, gr) = run(Kernels::Reference, inputs, reference);
    let e = rel(&yf, &yr);
    assert!(e <= forward, "{name}: forward rel error {e:e}");
    for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
        let e = rel(a, b);
        assert!(e <= backward, "{name}: gradient of input {i} rel error {e:e}");
    }
}

#[test]
fn linear_matches_reference_in_both_weight_layouts() {
    let x = randn(&[3, 5, 13], 1.0, 30);
    let (w_in_out, w_out_in, b) = (randn(&[13, 7], 0.3, 31), randn(&[7, 13], 0.3, 32), randn(&[7], 0.3, 33));
    check("linear in_out + bias", &[x.clone(), w_in_out.clone(), b.clone()], &|t| {
        linear(&t[0], &t[1], Some(&t[2]), false)
    });
    check("linear out_in + bias", &[x.clone(), w_out_in.clone(), b], &|t| linear(&t[0], &t[1], Some(&t[2]), true));
    check("linear in_out", &[x.clone(), w_in_out], &|t| linear(&t[0], &t[1], None, false));
    check("linear out_in", &[x, w_out_in], &|t| linear(&t[0], &t[1], None, true));
}

#[test]
fn linear_gelu_matches_linear_then_gelu() {
    let x = randn(&[3, 5, 13], 1.5, 43);
    let (w_in_out, w_out_in, b) = (randn(&[13, 7], 0.5, 44), randn(&[7, 13], 0.5, 45), randn(&[7], 0.5, 46));
    for form in [Gelu::Tanh, Gelu::Erf] {
        check("linear_gelu in_out + bias", &[x.clone(), w_in_out.clone(), b.clone()], &|t| {
            linear_gelu(&t[0], &t[1], Some(&t[2]), false, form)
        });
        check("linear_gelu out_in", &[x.clone(), w_out_in.clone()], &|t| linear_gelu(&t[0], &t[1], None, true, form));
        // And the fused op against the fused pair, which must agree to rounding.
        let _g = KernelsGuard::set(Kernels::Fused);
        let one = linear_gelu(&x, &w_in_out, Some(&b), false, form).unwrap();
        let two = gelu(&linear(&x, &w_in_out, Some(&b), false).unwrap(), form).unwrap();
        assert!(rel(&one, &two) <= 1e-6, "{form:?}: fused epilogue vs separate ops");
    }
}

#[test]
fn linear_swiglu_matches_two_linears_then_swiglu() {
    let x = randn(&[2, 7, 11], 1.5, 47);
    let (g, u) = (randn(&[9, 11], 0.5, 48), randn(&[9, 11], 0.5, 49));
    check("linear_swiglu out_in", &[x.clone(), g.clone(), u.clone()], &|t| linear_swiglu(&t[0], &t[1], &t[2], true));
    let (g2, u2) = (randn(&[11, 9], 0.5, 50), randn(&[11, 9], 0.5, 51));
    check("linear_swiglu in_out", &[x.clone(), g2, u2], &|t| linear_swiglu(&t[0], &t[1], &t[2], false));
    let _g = KernelsGuard::set(Kernels::Fused);
    let one = linear_swiglu(&x, &g, &u, true).unwrap();
    let two = swiglu(&linear(&x, &g, None, true).unwrap(), &linear(&x, &u, None, true).unwrap()).unwrap();
    assert!(rel(&one, &two) <= 1e-6, "fused gate/up vs separate ops");
    assert!(linear_swiglu(&x, &g, &randn(&[8, 11], 0.5, 52), true).is_err(), "mismatched weights are refused");
}

#[test]
fn layer_norm_matches_reference() {
    let x = (randn(&[3, 5, 37], 3.0, 1) + 1.0).unwrap();
    let (w, b) = ((randn(&[37], 0.5, 2) + 1.0).unwrap(), randn(&[37], 0.5, 3));
    check("layer_norm", &[x, w, b], &|t| layer_norm(&t[0], &t[1], &t[2], 1e-5));
}

#[test]
fn rms_norm_matches_reference() {
    let x = randn(&[7, 33], 2.0, 4);
    let w = (randn(&[33], 0.5, 5) + 1.0).unwrap();
    check("rms_norm", &[x, w], &|t| rms_norm(&t[0], &t[1], 1e-6));
}

#[test]
fn activations_match_reference() {
    check("gelu_tanh", &[randn(&[5, 101], 2.0, 6)], &|t| gelu_tanh(&t[0]));
    check("gelu_erf", &[randn(&[5, 101], 2.0, 12)], &|t| gelu_erf(&t[0]));
    check("swiglu", &[randn(&[4, 77], 2.0, 7), randn(&[4, 77], 1.0, 8)], &|t| swiglu(&t[0], &t[1]));
}

#[test]
fn causal_softmax_matches_reference_with_and_without_cache() {
    // T = S (training) and T < S (queries after 5 cached positions), odd sizes.
    check("causal_softmax T=S", &[randn(&[2, 3, 7, 7], 3.0, 9)], &|t| causal_softmax(&t[0], 0.35));
    check("causal_softmax T<S", &[randn(&[2, 3, 4, 9], 3.0, 10)], &|t| causal_softmax(&t[0], 0.35));
    let (p, _) = run(Kernels::Fused, &[randn(&[1, 1, 3, 3], 1.0, 11)], &|t| causal_softmax(&t[0], 1.0));
    let p = p.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!((p[0], p[1], p[2], p[5]), (1.0, 0.0, 0.0, 0.0), "future keys get exactly zero");
}

#[test]
fn rope_matches_reference() {
    let (cos, sin) = &super::rope_tables(6, 16, 10_000.0, &Device::Cpu).unwrap();
    let x = randn(&[2, 5, 18], 1.0, 34); // 3 heads of 6
    check("rope", std::slice::from_ref(&x), &|t| super::rope(&t[0], cos, sin, 3, 0));
    check("rope offset", &[x], &|t| super::rope(&t[0], cos, sin, 3, 7));
}

#[test]
fn the_cuda_attention_setting_is_auto_or_scalar() {
    use crate::sdpa::tensor_core_attention_allowed as allowed;
    assert!(allowed(None).unwrap() && allowed(Some("auto")).unwrap() && allowed(Some("")).unwrap());
    assert!(!allowed(Some("scalar")).unwrap() && !allowed(Some(" scalar\n")).unwrap());
    let e = allowed(Some("wmma")).unwrap_err().to_string();
    assert!(e.contains("LMFORGE_CUDA_ATTENTION=wmma") && e.contains("\"scalar\""), "{e}");
}

#[test]
fn causal_attention_matches_reference() {
    // Multi-head (H = K = 3) and grouped-query (H = 4, K = 2), odd T and D.
    let inputs = [randn(&[2, 7, 15], 1.0, 21), randn(&[2, 7, 15], 1.0, 22), randn(&[2, 7, 15], 1.0, 23)];
    check("attention mha", &inputs, &|t| causal_attention(&t[0], &t[1], &t[2], 3, 3, 0.4));
    let inputs = [randn(&[3, 9, 20], 1.0, 24), randn(&[3, 9, 10], 1.0, 25), randn(&[3, 9, 10], 1.0, 26)];
    check("attention gqa", &inputs, &|t| causal_attention(&t[0], &t[1], &t[2], 4, 2, 0.5));
    // q, k, v as narrows of one fused projection (B, T, 3·H·D), read in place.
    check("attention fused qkv", &[randn(&[2, 5, 18], 1.0, 27)], &|t| {
        let qkv = &t[0];
        causal_attention(&qkv.narrow(2, 0, 6)?, &qkv.narrow(2, 6, 6)?, &qkv.narrow(2, 12, 6)?, 2, 2, 0.6)
    });
    // The packed form, and T past one query block (64): blocks skip the keys they cannot see.
    check("attention packed", &[randn(&[2, 5, 18], 1.0, 29)], &|t| causal_attention_packed(&t[0], 2, 2, 0.6));
    check("attention packed gqa", &[randn(&[2, 7, 32], 1.0, 35)], &|t| causal_attention_packed(&t[0], 4, 2, 0.5));
    let inputs = [randn(&[2, 150, 8], 1.0, 36), randn(&[2, 150, 4], 1.0, 37), randn(&[2, 150, 4], 1.0, 38)];
    check("attention long gqa", &inputs, &|t| causal_attention(&t[0], &t[1], &t[2], 2, 1, 0.5));
    check("attention long packed", &[randn(&[1, 130, 12], 1.0, 39)], &|t| causal_attention_packed(&t[0], 2, 2, 0.5));
    // A transposed view (last dim strided) is copied first.
    check("attention strided", &[randn(&[2, 8, 5], 1.0, 28)], &|t| {
        let x = t[0].transpose(1, 2)?; // (2, 5, 8): T = 5, width 8
        causal_attention(&x, &x, &x, 2, 2, 0.3)
    });
}

/// The GPT-2 (LayerNorm, packed qkv with biases, Conv1D weights) or Llama (RMSNorm, split
/// GQA projections, RoPE, nn.Linear weights) sublayer over `t` = [x, params...].
fn attention_params(t: &[Tensor], llama: Option<(&Tensor, &Tensor)>, heads: (usize, usize)) -> AttentionSublayer {
    let p = |w: &Tensor, b: Option<&Tensor>| Proj { w: w.clone(), b: b.cloned() };
    let (norm, qkv, o) = match llama {
        None => (
            SublayerNorm::Layer { w: t[1].clone(), b: t[2].clone(), eps: 1e-5 },
            QkvProj::Packed(p(&t[3], Some(&t[4]))),
            p(&t[5], Some(&t[6])),
        ),
        Some(_) => (
            SublayerNorm::Rms { w: t[1].clone(), eps: 1e-6 },
            QkvProj::Split { q: p(&t[2], None), k: p(&t[3], None), v: p(&t[4], None) },
            p(&t[5], None),
        ),
    };
    let d = Weight::of(&o.w, llama.is_some()).unwrap().fan_in / heads.0;
    AttentionSublayer {
        norm,
        qkv,
        o,
        w_is_out_in: llama.is_some(),
        n_head: heads.0,
        n_kv_head: heads.1,
        scale: 1.0 / (d as f64).sqrt(),
        rope: llama.map(|(c, s)| (c.clone(), s.clone())),
    }
}

/// The attention sublayer composed from the single ops (what the decoder runs otherwise).
fn attention_composed(x: &Tensor, p: &AttentionSublayer) -> Result<Tensor> {
    let n = match &p.norm {
        SublayerNorm::Layer { w, b, eps } => layer_norm(x, w, b, *eps)?,
        SublayerNorm::Rms { w, eps } => rms_norm(x, w, *eps)?,
    };
    let lin = |z: &Tensor, pr: &Proj| linear(z, &pr.w, pr.b.as_ref(), p.w_is_out_in);
    let (h, kh) = (p.n_head, p.n_kv_head);
    let a = match &p.qkv {
        QkvProj::Packed(pr) => causal_attention_packed(&lin(&n, pr)?, h, kh, p.scale)?,
        QkvProj::Split { q, k, v } => {
            let (mut q, mut k, v) = (lin(&n, q)?, lin(&n, k)?, lin(&n, v)?);
            if let Some((cos, sin)) = &p.rope {
                q = rope(&q, cos, sin, h, 0)?;
                k = rope(&k, cos, sin, kh, 0)?;
            }
            causal_attention(&q, &k, &v, h, kh, p.scale)?
        }
    };
    x + lin(&a, &p.o)?
}

fn mlp_params(t: &[Tensor], llama: bool) -> MlpSublayer {
    let p = |w: &Tensor, b: Option<&Tensor>| Proj { w: w.clone(), b: b.cloned() };
    match llama {
        false => MlpSublayer {
            norm: SublayerNorm::Layer { w: t[1].clone(), b: t[2].clone(), eps: 1e-5 },
            mlp: MlpProj::Gelu { fc: p(&t[3], Some(&t[4])), proj: p(&t[5], Some(&t[6])), form: Gelu::Tanh },
            w_is_out_in: false,
        },
        true => MlpSublayer {
            norm: SublayerNorm::Rms { w: t[1].clone(), eps: 1e-6 },
            mlp: MlpProj::SwiGlu { gate: p(&t[2], None), up: p(&t[3], None), down: p(&t[4], None) },
            w_is_out_in: true,
        },
    }
}

fn mlp_composed(x: &Tensor, p: &MlpSublayer) -> Result<Tensor> {
    let n = match &p.norm {
        SublayerNorm::Layer { w, b, eps } => layer_norm(x, w, b, *eps)?,
        SublayerNorm::Rms { w, eps } => rms_norm(x, w, *eps)?,
    };
    let lin = |z: &Tensor, pr: &Proj| linear(z, &pr.w, pr.b.as_ref(), p.w_is_out_in);
    let m = match &p.mlp {
        MlpProj::Gelu { fc, proj, form } => lin(&gelu(&lin(&n, fc)?, *form)?, proj)?,
        MlpProj::SwiGlu { gate, up, down } => lin(&swiglu(&lin(&n, gate)?, &lin(&n, up)?)?, down)?,
    };
    x + m
}

/// Inputs of the four sublayers (GPT-2 and Llama attention, GPT-2 and Llama MLP): x, then the
/// parameters; and Llama's RoPE tables. T = 150 spans three query blocks; C = 24 is no multiple
/// of the SIMD width; Llama has 4 query heads sharing 2 key/value heads of D = 6.
struct SublayerInputs {
    gpt_attn: Vec<Tensor>,
    llama_attn: Vec<Tensor>,
    gpt_mlp: Vec<Tensor>,
    llama_mlp: Vec<Tensor>,
    rope: (Tensor, Tensor),
}

fn sublayer_inputs(dev: &Device) -> SublayerInputs {
    let on = |ts: Vec<Tensor>| ts.into_iter().map(|t| t.to_device(dev).unwrap()).collect::<Vec<_>>();
    let x = randn(&[2, 150, 24], 1.0, 60);
    SublayerInputs {
        gpt_attn: on(vec![
            x.clone(),
            (randn(&[24], 0.2, 61) + 1.0).unwrap(),
            randn(&[24], 0.2, 62),
            randn(&[24, 72], 0.2, 63),
            randn(&[72], 0.2, 64),
            randn(&[24, 24], 0.2, 65),
            randn(&[24], 0.2, 66),
        ]),
        llama_attn: on(vec![
            x.clone(),
            (randn(&[24], 0.2, 71) + 1.0).unwrap(),
            randn(&[24, 24], 0.2, 72),
            randn(&[12, 24], 0.2, 73),
            randn(&[12, 24], 0.2, 74),
            randn(&[24, 24], 0.2, 75),
        ]),
        gpt_mlp: on(vec![
            x.clone(),
            (randn(&[24], 0.2, 81) + 1.0).unwrap(),
            randn(&[24], 0.2, 82),
            randn(&[24, 40], 0.3, 83),
            randn(&[40], 0.2, 84),
            randn(&[40, 24], 0.3, 85),
            randn(&[24], 0.2, 86),
        ]),
        llama_mlp: on(vec![
            x,
            (randn(&[24], 0.2, 91) + 1.0).unwrap(),
            randn(&[44, 24], 0.3, 92),
            randn(&[44, 24], 0.3, 93),
            randn(&[24, 44], 0.3, 94),
        ]),
        rope: super::rope_tables(6, 160, 10_000.0, dev).unwrap(),
    }
}

/// The four sublayers as `attention` / `mlp` run them against their composition from the
/// single ops under the reference kernels; x cast to `dtype`.
fn check_sublayers(
    s: &SublayerInputs,
    dtype: DType,
    (forward, backward): (f64, f64),
    attention: &dyn Fn(&Tensor, &AttentionSublayer) -> Result<Tensor>,
    mlp: &dyn Fn(&Tensor, &MlpSublayer) -> Result<Tensor>,
) {
    let (cos, sin) = (&s.rope.0, &s.rope.1);
    let cast = |ts: &[Tensor]| -> Vec<Tensor> {
        let mut ts = ts.to_vec();
        ts[0] = ts[0].to_dtype(dtype).unwrap();
        ts
    };
    let name = |what: &str| format!("{what} {dtype:?}");
    check_against(
        &name("attention sublayer gpt-2"),
        &cast(&s.gpt_attn),
        &|t| attention(&t[0], &attention_params(t, None, (4, 4))),
        &|t| attention_composed(&t[0], &attention_params(t, None, (4, 4))),
        (forward, backward),
    );
    check_against(
        &name("attention sublayer llama"),
        &cast(&s.llama_attn),
        &|t| attention(&t[0], &attention_params(t, Some((cos, sin)), (4, 2))),
        &|t| attention_composed(&t[0], &attention_params(t, Some((cos, sin)), (4, 2))),
        (forward, backward),
    );
    check_against(
        &name("mlp sublayer gpt-2"),
        &cast(&s.gpt_mlp),
        &|t| mlp(&t[0], &mlp_params(t, false)),
        &|t| mlp_composed(&t[0], &mlp_params(t, false)),
        (forward, backward),
    );
    check_against(
        &name("mlp sublayer llama"),
        &cast(&s.llama_mlp),
        &|t| mlp(&t[0], &mlp_params(t, true)),
        &|t| mlp_composed(&t[0], &mlp_params(t, true)),
        (forward, backward),
    );
}

#[test]
fn sublayers_match_their_composition_from_single_ops() {
    let s = sublayer_inputs(&Device::Cpu);
    let attention = |x: &Tensor, p: &AttentionSublayer| -> Result<Tensor> {
        Ok(attention_sublayer(x, p)?.expect("the fused sublayer applies"))
    };
    let mlp = |x: &Tensor, p: &MlpSublayer| -> Result<Tensor> {
        Ok(mlp_sublayer(x, p)?.expect("the fused sublayer applies"))
    };
    check_sublayers(&s, DType::F32, (1e-5, 1e-4), &attention, &mlp);
}

/// `ops::profile`: spans recorded only while on, an inner span not at all, and the device
/// sublayers' pieces each under its name and pass.
#[test]
fn profile_spans_count_only_while_enabled_and_time_the_device_sublayers() {
    use crate::profile::{set_enabled, span, take, OpTime, Pass};
    // The only test touching the process-wide switch, so no other test races it.
    // Other tests' kernels may record while it is on: only this test's names are checked.
    let ours = |t: &OpTime| t.name.starts_with("profile-test");
    set_enabled(true);
    for _ in 0..3 {
        let _s = span("profile-test a", Pass::Forward);
    }
    drop(span("profile-test a", Pass::Backward));
    drop(span("profile-test b", Pass::Forward));
    let got: Vec<_> = take().into_iter().filter(ours).collect();
    assert_eq!(
        got.iter().map(|t| (t.name, t.pass, t.calls)).collect::<Vec<_>>(),
        [
            ("profile-test a", Pass::Forward, 3),
            ("profile-test a", Pass::Backward, 1),
            ("profile-test b", Pass::Forward, 1)
        ]
    );
    assert!(got.iter().all(|t| t.seconds >= 0.0));
    set_enabled(false);
    drop(span("profile-test a", Pass::Forward));
    assert!(!take().iter().any(ours));

    // A span opened inside another is not recorded: the outer one holds the time.
    set_enabled(true);
    {
        let _outer = span("profile-test outer", Pass::Backward);
        drop(span("profile-test inner", Pass::Backward));
    }
    drop(span("profile-test after", Pass::Backward));
    let got: Vec<_> = take().into_iter().filter(ours).map(|t| t.name).collect();
    assert_eq!(got, ["profile-test outer", "profile-test after"]);
    set_enabled(false);

    // The device sublayers' spans (on the CPU, wall time): each piece under its name and pass,
    // the ops' own spans inside them not recorded on this thread.
    set_enabled(true);
    let s = sublayer_inputs(&Device::Cpu);
    check_sublayers(&s, DType::F32, (1e-5, 1e-4), &device_sublayer::attention, &device_sublayer::mlp);
    let got = take();
    set_enabled(false);
    let both = ["norm", "matmul", "attention", "rope", "activation"]
        .into_iter()
        .flat_map(|n| [(n, Pass::Forward), (n, Pass::Backward)]);
    let one = [
        ("weight gradient", Pass::Backward),
        ("bias gradient", Pass::Backward),
        ("bias or residual add", Pass::Forward),
    ];
    for (name, pass) in both.chain(one) {
        assert!(
            got.iter().any(|t: &OpTime| t.name == name && t.pass == pass && t.calls > 0),
            "no {name} {pass:?}: {got:?}"
        );
    }
}

/// The device-generic sublayer nodes (what a GPU runs) on the CPU, where the ops inside run
/// their CPU kernels: the same node logic and the same op backwards as on the GPU.
#[test]
fn device_sublayers_match_their_composition_on_the_cpu() {
    let s = sublayer_inputs(&Device::Cpu);
    check_sublayers(&s, DType::F32, (1e-5, 1e-4), &device_sublayer::attention, &device_sublayer::mlp);
}

/// A weight gradient's product Pᵀ·Q on `dev` from operands of `dtype` — one a narrowed view
/// (an offset) — new and then added into in place twice, against the f32 product of the same
/// (rounded) operands on the CPU: both sum in f32, so they differ only in the order. Operands
/// that do not make a product are refused.
fn check_transposed_products(dev: &Device, dtype: DType) {
    let on = |t: Tensor| t.to_dtype(dtype).unwrap().to_device(dev).unwrap();
    let p = on(randn(&[300, 70], 1.0, 170));
    let q = on(randn(&[303, 130], 1.0, 171)).narrow(0, 3, 300).unwrap();
    let cpu_f32 = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().contiguous().unwrap();
    let want = cpu_f32(&p).t().unwrap().matmul(&cpu_f32(&q)).unwrap();
    let got = weight_grad::transposed_product(&p, &q).unwrap();
    assert_eq!(got.dtype(), DType::F32);
    let label = format!("transposed product {dtype:?} on {dev:?}");
    assert!(rel(&cpu_f32(&got), &want) < 1e-5, "{label}: {:e}", rel(&cpu_f32(&got), &want));
    weight_grad::add_transposed_product(&got, &p, &q).unwrap();
    weight_grad::add_transposed_product(&got, &p, &q).unwrap();
    let thrice = (want * 3.0).unwrap();
    assert!(rel(&cpu_f32(&got), &thrice) < 1e-5, "{label}, added in place: {:e}", rel(&cpu_f32(&got), &thrice));
    let other = Tensor::zeros((130, 70), DType::F32, dev).unwrap();
    assert!(weight_grad::add_transposed_product(&other, &p, &q).is_err(), "{label}: a sum of another shape");
    assert!(weight_grad::transposed_product(&p, &p.narrow(0, 0, 299).unwrap()).is_err(), "{label}: other rows");
}

#[test]
fn transposed_products_match_the_composed_product() {
    check_transposed_products(&Device::Cpu, DType::F32);
}

#[test]
fn the_cuda_weight_gradient_setting_is_auto_or_composed() {
    use crate::weight_grad::fused_allowed as allowed;
    assert!(allowed(None).unwrap() && allowed(Some("auto")).unwrap() && allowed(Some("")).unwrap());
    assert!(!allowed(Some("composed")).unwrap() && !allowed(Some(" composed\n")).unwrap());
    let e = allowed(Some("cublaslt")).unwrap_err().to_string();
    assert!(e.contains("LMFORGE_CUDA_WEIGHT_GRAD=cublaslt") && e.contains("\"composed\""), "{e}");
}

#[test]
fn sublayers_give_no_gradient_to_frozen_parameters_and_run_untracked() {
    let x = Var::from_tensor(&randn(&[2, 9, 8], 1.0, 100)).unwrap();
    let frozen_w = randn(&[8, 16], 0.3, 101); // plain tensors: frozen
    let (ln_w, ln_b) = (Var::from_tensor(&randn(&[8], 0.2, 102)).unwrap(), randn(&[8], 0.2, 103));
    let proj_w = Var::from_tensor(&randn(&[16, 8], 0.3, 104)).unwrap();
    let p = MlpSublayer {
        norm: SublayerNorm::Layer { w: ln_w.as_tensor().clone(), b: ln_b.clone(), eps: 1e-5 },
        mlp: MlpProj::Gelu {
            fc: Proj { w: frozen_w.clone(), b: None },
            proj: Proj { w: proj_w.as_tensor().clone(), b: None },
            form: Gelu::Tanh,
        },
        w_is_out_in: false,
    };
    param_grads::clear();
    let y = mlp_sublayer(x.as_tensor(), &p).unwrap().expect("fused kernels apply");
    let store = y.sum_all().unwrap().backward().unwrap();
    for (name, t, trained) in [
        ("ln w", ln_w.as_tensor(), true),
        ("proj w", proj_w.as_tensor(), true),
        ("ln b", &ln_b, false),
        ("fc w", &frozen_w, false),
    ] {
        assert_eq!(param_grads::gradient(t, &store).unwrap().is_some(), trained, "{name}");
    }
    // Nothing tracked (evaluation with plain tensors): the forward alone, the same values.
    let plain = MlpSublayer {
        norm: SublayerNorm::Layer { w: ln_w.as_tensor().detach(), b: ln_b, eps: 1e-5 },
        mlp: MlpProj::Gelu {
            fc: Proj { w: frozen_w, b: None },
            proj: Proj { w: proj_w.as_tensor().detach(), b: None },
            form: Gelu::Tanh,
        },
        w_is_out_in: false,
    };
    let y2 = mlp_sublayer(&x.as_tensor().detach(), &plain).unwrap().expect("fused kernels apply");
    assert_eq!(rel(&y2, &y), 0.0);
    // A node joins the graph only through x: with x untracked but trained parameters, the
    // caller must compose the sublayer instead.
    assert!(mlp_sublayer(&x.as_tensor().detach(), &p).unwrap().is_none());
}

#[test]
fn padded_attention_matches_reference_and_ignores_padding() {
    let inputs = [randn(&[3, 7, 15], 1.0, 41), randn(&[3, 7, 15], 1.0, 42), randn(&[3, 7, 15], 1.0, 43)];
    check("padded mha", &inputs, &|t| padded_attention(&t[0], &t[1], &t[2], 3, 3, 0.4, &[7, 4, 1]));
    let inputs = [randn(&[2, 6, 20], 1.0, 44), randn(&[2, 6, 10], 1.0, 45), randn(&[2, 6, 10], 1.0, 46)];
    check("padded gqa", &inputs, &|t| padded_attention(&t[0], &t[1], &t[2], 4, 2, 0.5, &[3, 6]));
    let inputs = [randn(&[3, 140, 6], 1.0, 40), randn(&[3, 140, 6], 1.0, 41), randn(&[3, 140, 6], 1.0, 42)];
    check("padded long", &inputs, &|t| padded_attention(&t[0], &t[1], &t[2], 2, 2, 0.4, &[140, 65, 3]));
    // Whatever sits in the padded keys and values, the output is the same.
    let (q, k, v) = (randn(&[1, 5, 8], 1.0, 47), randn(&[1, 5, 8], 1.0, 48), randn(&[1, 5, 8], 1.0, 49));
    let noisy = |x: &Tensor| Tensor::cat(&[x.narrow(1, 0, 3).unwrap(), randn(&[1, 2, 8], 9.0, 50)], 1).unwrap();
    for k_ in [Kernels::Fused, Kernels::Reference] {
        let _g = KernelsGuard::set(k_);
        let a = padded_attention(&q, &k, &v, 2, 2, 0.3, &[3]).unwrap();
        let b = padded_attention(&q, &noisy(&k), &noisy(&v), 2, 2, 0.3, &[3]).unwrap();
        assert!(rel(&a, &b) < 1e-6, "{k_:?}: padding leaked into the output");
    }
    assert!(padded_attention(&q, &k, &v, 2, 2, 0.3, &[0]).is_err(), "an all-padding row is refused");
    assert!(padded_attention(&q, &k, &v, 2, 2, 0.3, &[6]).is_err(), "a length past T is refused");
}

fn targets(n: usize, v: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let t: Vec<u32> = (0..n).map(|_| rand::Rng::random_range(&mut rng, 0..v as u32)).collect();
    Tensor::from_vec(t, n, &Device::Cpu).unwrap()
}

#[test]
fn cross_entropy_matches_reference() {
    let y = targets(13, 29, 12);
    check("cross_entropy", &[randn(&[13, 29], 3.0, 13)], &|t| cross_entropy(&t[0], &y));
}

#[test]
fn lm_head_cross_entropy_matches_reference_across_chunks() {
    // V = 40000 makes 52-row chunks: 70 rows take two, the second one short.
    let y = targets(70, 40_000, 14);
    let inputs = [randn(&[70, 8], 1.0, 15), randn(&[40_000, 8], 0.5, 16)];
    check("lm_head_cross_entropy", &inputs, &|t| lm_head_cross_entropy(&t[0], &t[1], &y));
    // A scaled loss (gradient accumulation) scales the precomputed gradients.
    check("lm_head_cross_entropy x0.25", &inputs, &|t| lm_head_cross_entropy(&t[0], &t[1], &y)? * 0.25);
    // Without a graph (evaluation) only the loss is computed; it is the same.
    let _g = KernelsGuard::set(Kernels::Fused);
    let plain = lm_head_cross_entropy(&inputs[0], &inputs[1], &y).unwrap();
    let _r = KernelsGuard::set(Kernels::Reference);
    let want = lm_head_cross_entropy(&inputs[0], &inputs[1], &y).unwrap();
    assert!(rel(&plain, &want) <= 1e-5);
}

/// The device-generic chunked loss (`lm_loss`, what a GPU and bf16 run) against the composed
/// reference: f32 to 1e-5 / 1e-4, bf16 activations to bf16's precision; several chunks, the
/// last one short, and a scaled loss (gradient accumulation).
#[test]
fn device_generic_lm_loss_matches_reference_in_f32_and_bf16() {
    let y = targets(70, 300, 41);
    let inputs = [randn(&[70, 8], 1.0, 42), randn(&[300, 8], 0.5, 43)];
    for (dtype, tol_y, tol_g) in [(DType::F32, 1e-5, 1e-4), (DType::BF16, 1e-2, 3e-2)] {
        for scale in [1.0, 0.25] {
            let chunked =
                |t: &[Tensor]| lm_loss::lm_head_cross_entropy_in(&t[0].to_dtype(dtype)?, &t[1], &y, 16)? * scale;
            let composed = |t: &[Tensor]| reference::lm_head_cross_entropy(&t[0].to_dtype(dtype)?, &t[1], &y)? * scale;
            let (ya, ga) = run(Kernels::Reference, &inputs, &chunked);
            let (yb, gb) = run(Kernels::Reference, &inputs, &composed);
            assert_eq!(ya.dtype(), DType::F32);
            let e = rel(&ya, &yb);
            assert!(e <= tol_y, "{dtype:?} x{scale}: loss rel error {e:e}");
            for (i, (a, b)) in ga.iter().zip(&gb).enumerate() {
                let e = rel(a, b);
                assert!(e <= tol_g, "{dtype:?} x{scale}: gradient of input {i} rel error {e:e}");
            }
        }
    }
    // Without a graph only the loss is computed; it is the same.
    let plain = lm_loss::lm_head_cross_entropy_in(&inputs[0], &inputs[1], &y, 16).unwrap();
    let want = reference::lm_head_cross_entropy(&inputs[0], &inputs[1], &y).unwrap();
    assert!(rel(&plain, &want) <= 1e-5);
}

#[test]
fn strided_and_offset_inputs_match_reference() {
    // A transposed view (copied to contiguous first) and a narrow at a storage offset (read in
    // place from the offset).
    let base = randn(&[4, 37, 6], 2.0, 17);
    let (w, b) = (randn(&[6], 0.5, 18), randn(&[6], 0.5, 19));
    check("layer_norm strided", &[base.clone(), w.clone(), b.clone()], &|t| {
        layer_norm(&t[0].transpose(0, 1)?, &t[1], &t[2], 1e-5)
    });
    check("layer_norm offset", &[base, w, b], &|t| layer_norm(&t[0].narrow(0, 1, 2)?, &t[1], &t[2], 1e-5));
    let g = randn(&[5, 6, 9], 2.0, 20);
    check("gelu offset", std::slice::from_ref(&g), &|t| gelu_tanh(&t[0].narrow(0, 2, 3)?));
    check("swiglu strided", &[g.clone(), g], &|t| swiglu(&t[0].transpose(1, 2)?, &t[1].transpose(1, 2)?));
}

#[test]
fn clipping_pieces_match_reference() {
    for n in [0usize, 1, 17, 40_000] {
        let x = randn(&[n], 1.5, 110 + n as u64);
        let (fused, composed) = {
            let _f = KernelsGuard::set(Kernels::Fused);
            let a = (sum_squares(&x).unwrap(), scale(&x, 0.37).unwrap());
            let _r = KernelsGuard::set(Kernels::Reference);
            (a, (sum_squares(&x).unwrap(), scale(&x, 0.37).unwrap()))
        };
        let exact: f64 = x.to_vec1::<f32>().unwrap().iter().map(|&v| v as f64 * v as f64).sum();
        assert!((fused.0 - exact).abs() <= 1e-6 * exact.max(1.0), "n={n}: {} vs {exact}", fused.0);
        assert!((composed.0 - exact).abs() <= 1e-5 * exact.max(1.0), "n={n}");
        assert_eq!(fused.1.to_vec1::<f32>().unwrap(), composed.1.to_vec1::<f32>().unwrap(), "n={n}");
    }
}

/// The global norm's Σ g² over several gradients is the sum of each one's.
#[test]
fn sum_squares_over_all_gradients_adds_each_ones() {
    let xs: Vec<Tensor> =
        [3usize, 0, 40_000, 17].iter().enumerate().map(|(i, &n)| randn(&[n], 0.7, 120 + i as u64)).collect();
    let each: f64 = xs.iter().map(|x| sum_squares(x).unwrap()).sum();
    assert_eq!(sum_squares_all(&xs).unwrap(), each);
    assert_eq!(sum_squares_all(std::iter::empty()).unwrap(), 0.0);
}

#[test]
fn kernels_guard_restores_the_previous_choice() {
    assert_eq!(kernels(), Kernels::Fused);
    {
        let _g = KernelsGuard::set(Kernels::Reference);
        assert_eq!(kernels(), Kernels::Reference);
    }
    assert_eq!(kernels(), Kernels::Fused);
}

/// The embedding's table gradient through `f` (rows of `table` for `ids`), for Σ out · r.
fn embedding_grad(
    k: Kernels,
    table: &Tensor,
    ids: &Tensor,
    f: &dyn Fn(&Tensor, &Tensor) -> Result<Tensor>,
) -> (Tensor, Tensor) {
    let _g = KernelsGuard::set(k);
    let var = Var::from_tensor(table).unwrap();
    let y = f(var.as_tensor(), ids).unwrap();
    let r = randn(y.dims(), 1.0, 98).to_device(y.device()).unwrap().to_dtype(y.dtype()).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (y, grads.get(var.as_tensor()).expect("the table's gradient").clone())
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// Token ids (b, t) drawn from `distinct` tokens of a table of `v` (runs of repeats).
fn token_ids(b: usize, t: usize, v: usize, distinct: usize, device: &Device) -> Tensor {
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 7919 + i / 3) % distinct * (v / distinct)) as u32).collect();
    Tensor::from_vec(ids, (b, t), device).unwrap()
}

/// The embedding op (its CPU side: the GPU kernels' arithmetic in plain loops) against candle's
/// index_select: the same rows, and the table's gradient to the bit (index_add's additions in
/// its order); an id past the table is an error naming it.
#[test]
fn embedding_matches_index_select_to_the_bit() {
    for (b, t, v, c, distinct) in [(2, 9, 11, 5, 3), (3, 40, 500, 24, 500), (1, 64, 50, 3, 2)] {
        let table = randn(&[v, c], 1.0, 71);
        let ids = token_ids(b, t, v, distinct, &Device::Cpu);
        let (y_op, g_op) = embedding_grad(Kernels::Fused, &table, &ids, &|w, i| embedding::apply(w, i));
        let (y_ref, g_ref) = embedding_grad(Kernels::Reference, &table, &ids, &|w, i| {
            w.index_select(&i.flatten_all()?, 0)?.reshape((b, t, c))
        });
        assert_eq!(y_op.dims(), &[b, t, c]);
        assert_eq!(bits(&y_op), bits(&y_ref), "rows B{b} T{t} V{v}");
        assert_eq!(bits(&g_op), bits(&g_ref), "table gradient B{b} T{t} V{v}");
    }
    let ids = Tensor::new(&[1u32, 11], &Device::Cpu).unwrap();
    let e = embedding::apply(&randn(&[11, 4], 1.0, 72), &ids).unwrap_err().to_string();
    assert!(e.contains("11") && e.contains("past the table"), "{e}");
}

/// lmforge's CUDA kernels on the GPU (`--features cuda`; run by `scripts/gpu-check.sh`): the
/// norms against the reference ops, f32 to the CPU kernels' bounds and bf16 activations (f32
/// weights) to bf16's rounding, at widths below, at and above four columns per thread of a
/// 1024-thread block and over several blocks of rows of the weight's column sums, the same
/// bits twice (no atomics), a residual's gradient added in the dx kernel; the column sums
/// against candle's; AdamW against the CPU kernel.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::*;

    fn gpu() -> Device {
        Device::new_cuda(0).expect("the CUDA kernel tests need a GPU")
    }

    /// Every kernel image the library embeds holds machine code for the GPU it was built for
    /// (`CUDA_COMPUTE_CAP`, sm_90 by default) and PTX, so no kernel depends on the driver's JIT
    /// compiler (build.rs checks this as it builds; this checks what was embedded). No GPU needed.
    #[test]
    fn kernel_images_hold_machine_code_and_ptx() {
        let arch: u32 = env!("LMFORGE_CUDA_ARCH").parse().unwrap();
        for image in crate::cuda::IMAGES {
            let entries = crate::fatbin::check(image.bytes, arch).unwrap_or_else(|e| panic!("{}: {e}", image.name));
            assert!(entries.len() >= 2, "{}: {entries:?}", image.name);
        }
    }

    /// The gradients' Σ x² in two launches on the GPU (cuda::sum_squares) against the CPU's, over
    /// tensors of odd sizes: one element, a block's worth and one either side, several blocks.
    #[test]
    fn sums_of_squares_match_the_cpu_on_the_gpu() {
        let dev = gpu();
        let cpu: Vec<Tensor> = [1, 4095, 4096, 4097, 70000, 3, 768 * 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| randn(&[n], 1.0, 90 + i as u64))
            .collect();
        let on_gpu: Vec<Tensor> = cpu.iter().map(|t| t.to_device(&dev).unwrap()).collect();
        let (want, got) = (crate::sum_squares_all(&cpu).unwrap(), crate::sum_squares_all(&on_gpu).unwrap());
        assert!((got - want).abs() <= 1e-6 * want, "GPU {got}, CPU {want}");
        // The same bits again (a fixed order of additions).
        assert_eq!(crate::sum_squares_all(&on_gpu).unwrap().to_bits(), got.to_bits());
        assert_eq!(crate::sum_squares_all(&on_gpu[..0]).unwrap(), 0.0);
    }

    /// A launch whose arguments do not fill the kernel's parameters is refused before the driver
    /// sees it (`cuda::Args` against the signatures build.rs read from the sources), and the
    /// same launch with the right arguments runs.
    #[test]
    fn a_launch_with_wrong_arguments_is_refused_before_it_runs() {
        if std::env::var(crate::cuda::launch::ARG_CHECK_VAR).is_ok_and(|v| v.trim() == "off") {
            eprintln!("skipped: {}=off turns the check off", crate::cuda::launch::ARG_CHECK_VAR);
            return;
        }
        let dev = gpu();
        let cuda = dev.as_cuda_device().unwrap();
        let kernel = crate::cuda::kernel(cuda, &crate::cuda::reduce::IMAGE, "column_partials_f32").unwrap();
        let x = cuda.alloc_zeros::<f32>(64).unwrap();
        let partials = cuda.alloc_zeros::<f32>(64).unwrap();
        let (rows, c, c_as_size) = (1i32, 64i32, 64usize);
        let cfg = crate::cuda::elementwise(64);
        let mut wrong = kernel.builder();
        wrong.arg(&x).arg(&partials).arg(&rows).arg(&c_as_size);
        // SAFETY: refused before it reaches the driver (the point of the test).
        let err = unsafe { wrong.launch(cfg) }.unwrap_err().to_string();
        assert!(err.contains("column_partials_f32: argument 3 is unsigned long long / size_t"), "{err}");
        let mut short = kernel.builder();
        short.arg(&x).arg(&partials).arg(&rows);
        // SAFETY: as above.
        let err = unsafe { short.launch(cfg) }.unwrap_err().to_string();
        assert!(err.contains("3 arguments pushed, the kernel takes 4"), "{err}");
        let mut right = kernel.builder();
        right.arg(&x).arg(&partials).arg(&rows).arg(&c);
        // SAFETY: x holds 1 × 64 f32, partials one row of 64 (one 64-row block of one row).
        unsafe { right.launch(cfg) }.unwrap();
        assert!(crate::cuda::kernel(cuda, &crate::cuda::reduce::IMAGE, "column_partials_f16").is_err());
    }

    #[test]
    fn norms_match_the_reference_on_the_gpu_in_f32_and_bf16() {
        let dev = gpu();
        for (rows, c) in [(15, 37), (6, 768), (3, 4099), (70, 96)] {
            let x = (randn(&[rows, c], 2.0, 61) + 0.5).unwrap().to_device(&dev).unwrap();
            let w = (randn(&[c], 0.5, 62) + 1.0).unwrap().to_device(&dev).unwrap();
            let b = randn(&[c], 0.5, 63).to_device(&dev).unwrap();
            let ln = |t: &[Tensor]| layer_norm(&t[0], &t[1], &t[2], 1e-5);
            let rms = |t: &[Tensor]| rms_norm(&t[0], &t[1], 1e-6);
            check(&format!("cuda layer_norm f32 {c}"), &[x.clone(), w.clone(), b.clone()], &ln);
            check(&format!("cuda rms_norm f32 {c}"), &[x.clone(), w.clone()], &rms);
            let xb = x.to_dtype(DType::BF16).unwrap();
            check_within(&format!("cuda layer_norm bf16 {c}"), &[xb.clone(), w.clone(), b], &ln, 1e-2, 2e-2);
            check_within(&format!("cuda rms_norm bf16 {c}"), &[xb, w.clone()], &rms, 1e-2, 2e-2);
            let (y1, g1) = run(Kernels::Fused, &[x.clone(), w.clone()], &rms);
            let (y2, g2) = run(Kernels::Fused, &[x.clone(), w.clone()], &rms);
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(bits(&y1), bits(&y2), "rms_norm {c}: the same bits twice");
            assert_eq!(bits(&g1[1]), bits(&g2[1]), "rms_norm {c}: the weight's gradient the same twice");
            // A frozen weight (a plain tensor, LoRA's norms): the same dx, no weight gradient.
            let xv = Var::from_tensor(&x).unwrap();
            let frozen = rms(&[xv.as_tensor().clone(), w.clone()]).unwrap();
            let r = randn(frozen.dims(), 1.0, 99).to_device(&dev).unwrap();
            let grads = (&frozen * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(grads.get(&w).is_none(), "rms_norm {c}: a frozen weight got a gradient");
            assert_eq!(bits(grads.get(xv.as_tensor()).unwrap()), bits(&g1[0]), "rms_norm {c}: dx with a frozen weight");
            // A residual's gradient added in the dx kernel (the device sublayers'): dx + r, one
            // rounding instead of two; in bf16 the weights' gradients are unchanged by it.
            let (xt, wt) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
            let (xt, wt) = (xt.as_tensor(), wt.as_tensor());
            let dy = randn(&[rows, c], 1.0, 64).to_device(&dev).unwrap();
            let res = randn(&[rows, c], 1.0, 65).to_device(&dev).unwrap();
            let op = crate::norm::RmsNorm { eps: 1e-6 };
            let (dx, dw) = op.grads(xt, wt, &dy, None).unwrap();
            let (dx_res, dw_res) = op.grads(xt, wt, &dy, Some(&res)).unwrap();
            let want = (dx.unwrap() + &res).unwrap();
            let e = rel(&dx_res.unwrap(), &want);
            assert!(e <= 1e-6, "rms_norm {c}: dx + residual, rel error {e:e}");
            assert_eq!(bits(&dw.unwrap()), bits(&dw_res.unwrap()), "rms_norm {c}: dw with a residual");
            let ln = crate::norm::LayerNorm { eps: 1e-5 };
            let bt = Var::from_tensor(&randn(&[c], 0.5, 63).to_device(&dev).unwrap()).unwrap();
            let (xb, dyb, rb) = [&x, &dy, &res].map(|t| t.to_dtype(DType::BF16).unwrap()).into();
            let xbv = Var::from_tensor(&xb).unwrap();
            let (dx, _, _) = ln.grads(xbv.as_tensor(), wt, bt.as_tensor(), &dyb, None).unwrap();
            let (dx_res, _, db) = ln.grads(xbv.as_tensor(), wt, bt.as_tensor(), &dyb, Some(&rb)).unwrap();
            let f32_of = |t: Tensor| t.to_dtype(DType::F32).unwrap();
            let want = (f32_of(dx.unwrap()) + f32_of(rb.clone())).unwrap();
            let e = rel(&f32_of(dx_res.unwrap()), &want);
            assert!(e <= 2e-2, "layer_norm bf16 {c}: dx + residual, rel error {e:e}");
            assert!(db.is_some(), "layer_norm {c}: the bias's gradient");
        }
    }

    /// Column sums (reduce.cu: the bias gradients) against candle's sum over rows of an f32
    /// copy, at one pass, three passes and a partial column tile, f32 and bf16 rows; the same
    /// bits twice.
    #[test]
    fn column_sums_match_candles_sum_on_the_gpu() {
        let dev = gpu();
        for (rows, c) in [(1, 7), (64, 256), (5000, 300), (16384, 768)] {
            let x = randn(&[rows, c], 1.0, 66).to_device(&dev).unwrap();
            for x in [x.clone(), x.to_dtype(DType::BF16).unwrap()] {
                let got = crate::cuda::reduce::column_sums(&x).unwrap();
                let want = x.to_dtype(DType::F32).unwrap().sum(0).unwrap();
                assert_eq!((got.dims(), got.dtype()), (&[c][..], DType::F32));
                let e = rel(&got, &want);
                assert!(e <= 1e-5, "rows {rows} C {c} {:?}: rel error {e:e}", x.dtype());
                let again = crate::cuda::reduce::column_sums(&x).unwrap();
                assert_eq!(super::bits(&got), super::bits(&again), "rows {rows} C {c}: the same bits twice");
            }
        }
    }

    /// The embedding on the GPU (embedding.cu: rows; positions sorted by token, each token's
    /// rows summed in order) against candle's index_select and its index_add backward on the
    /// GPU: the same rows and the same gradient bits, at sizes across several sort stages.
    #[test]
    fn embedding_matches_index_select_on_the_gpu_to_the_bit() {
        let dev = gpu();
        for (b, t, v, c, distinct) in [(2, 9, 11, 5, 3), (4, 1024, 1000, 64, 1000), (3, 333, 50257, 40, 7)] {
            let table = randn(&[v, c], 1.0, 73).to_device(&dev).unwrap();
            let ids = token_ids(b, t, v, distinct, &dev);
            let (y_op, g_op) = embedding_grad(Kernels::Fused, &table, &ids, &|w, i| embedding(w, i));
            let (y_ref, g_ref) = embedding_grad(Kernels::Reference, &table, &ids, &|w, i| embedding(w, i));
            assert_eq!(bits(&y_op), bits(&y_ref), "rows B{b} T{t} V{v}");
            assert_eq!(bits(&g_op), bits(&g_ref), "table gradient B{b} T{t} V{v}");
        }
        // Chosen rows of bf16 hidden states (each row once): copied through the f32 op.
        let hidden = randn(&[300, 48], 1.0, 74).to_device(&dev).unwrap().to_dtype(DType::BF16).unwrap();
        let rows: Vec<u32> = (0..300u32).rev().step_by(3).collect();
        let rows = Tensor::new(rows.as_slice(), &dev).unwrap();
        let (y_op, g_op) = embedding_grad(Kernels::Fused, &hidden, &rows, &|w, i| embedding(w, i));
        let (y_ref, g_ref) = embedding_grad(Kernels::Reference, &hidden, &rows, &|w, i| embedding(w, i));
        assert_eq!((y_op.dtype(), g_op.dtype()), (DType::BF16, DType::BF16));
        assert_eq!(bits(&y_op), bits(&y_ref), "bf16 rows");
        assert_eq!(bits(&g_op), bits(&g_ref), "bf16 rows' gradient");
    }

    /// Adafactor's step of one matrix or vector through the fused kernels (adafactor.cu)
    /// against its composition from candle ops on the GPU (transformers' arithmetic, as
    /// lmforge's composed update), at sizes across several row and column tiles and the
    /// row-stride grid's limit (a vector past it too), with and without β1, weight decay, the
    /// parameter scale, update clipping and a gradient scale (global-norm clipping's, folded
    /// in); the same bits twice (no atomics).
    #[test]
    fn adafactor_step_matches_its_composition_on_the_gpu() {
        use crate::adafactor::{AdafactorStep, AdafactorUpdate, SecondMoment};
        let dev = gpu();
        // Shape, scale_parameter, β1, weight decay, clip threshold, gradient scale.
        type Case = (&'static [usize], bool, Option<f64>, f64, f64, f64);
        let cases: [Case; 6] = [
            (&[70, 300], false, None, 0.0, 1.0, 1.0),
            (&[4100, 1000], true, Some(0.9), 0.1, 1.0, 0.3),
            (&[130, 2049], true, None, 0.0, 0.3, 1.0),
            (&[5], true, None, 0.0, 1.0, 0.3),
            (&[4096], true, Some(0.9), 0.1, 1.0, 0.3),
            (&[300_000], false, None, 0.0, 0.3, 1.0),
        ];
        for (shape, scale_parameter, beta1, weight_decay, clip_threshold, grad_scale) in cases {
            let h = AdafactorStep {
                eps1: 1e-30,
                eps2: 1e-3,
                beta2t: 1.0 - 3f64.powf(-0.8),
                rel: 0.01,
                lr_scale: 0.5,
                scale_parameter,
                clip_threshold,
                weight_decay,
                beta1,
                grad_scale,
            };
            let on = |t: Tensor| t.to_device(&dev).unwrap();
            let state = |len: usize, seed: u64| on((randn(&[len], 0.01, seed).abs().unwrap() + 1e-4).unwrap());
            // A vector's values ~0.1 (its 300,000 case steps by ~α unscaled: well above their
            // f32 rounding, the step check's resolution).
            let p0 = on(randn(shape, if shape.len() == 1 { 0.1 } else { 1.0 }, 81));
            let g = on(randn(shape, 0.5, 82));
            let m0 = on(randn(shape, 0.1, 85));
            // The second moment's state: a matrix's row and column factors, a vector's own.
            let moment0: Vec<Tensor> = match shape {
                [rows, cols] => vec![state(*rows, 83), state(*cols, 84)],
                _ => vec![state(shape[0], 83)],
            };
            // The composition, from the gradient scaled first.
            let n = p0.elem_count() as f64;
            let gs = (&g * grad_scale).unwrap();
            let rms = |t: &Tensor| (t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64 / n).sqrt();
            let u = (gs.sqr().unwrap() + h.eps1).unwrap();
            let mix = |state: &Tensor, mean: Tensor| {
                ((state * h.beta2t).unwrap() + (mean * (1.0 - h.beta2t)).unwrap()).unwrap()
            };
            let (moment_want, update) = if let [row0, col0] = moment0.as_slice() {
                let row_want = mix(row0, u.mean(1).unwrap());
                let col_want = mix(col0, u.mean(0).unwrap());
                let r = row_want
                    .broadcast_div(&row_want.mean_keepdim(0).unwrap())
                    .unwrap()
                    .sqrt()
                    .unwrap()
                    .recip()
                    .unwrap();
                let c = col_want.sqrt().unwrap().recip().unwrap();
                let update = (r.unsqueeze(1).unwrap().broadcast_mul(&c.unsqueeze(0).unwrap()).unwrap() * &gs).unwrap();
                (vec![row_want, col_want], update)
            } else {
                let v_want = mix(&moment0[0], u);
                let update = (v_want.sqrt().unwrap().recip().unwrap() * &gs).unwrap();
                (vec![v_want], update)
            };
            let scale = if scale_parameter { h.eps2.max(rms(&p0)) } else { 1.0 };
            let alpha = scale * h.rel * h.lr_scale;
            let clip = (rms(&update) / clip_threshold).max(1.0);
            let mut update = (update * (alpha / clip)).unwrap();
            let mut m_want = None;
            if let Some(b1) = beta1 {
                let m = ((&m0 * b1).unwrap() + (update * (1.0 - b1)).unwrap()).unwrap();
                update = m.clone();
                m_want = Some(m);
            }
            let p_want = ((&p0 + (&p0 * (-weight_decay * alpha)).unwrap()).unwrap() - update).unwrap();
            // The fused step, twice from the same start.
            let fused = || {
                let copy = |t: &Tensor| t.copy().unwrap();
                let (p, m) = (copy(&p0), copy(&m0));
                let moment: Vec<Tensor> = moment0.iter().map(copy).collect();
                let second = match moment.as_slice() {
                    [row, col] => SecondMoment::Factored { row, col },
                    [v] => SecondMoment::Full(v),
                    _ => unreachable!("one or two state tensors"),
                };
                let u = AdafactorUpdate { param: &p, grad: &g, moment: second, exp_avg: beta1.map(|_| &m), step: h };
                assert!(adafactor_in_place(&u).unwrap(), "the fused kernels did not apply");
                (p, moment, m)
            };
            let (p, moment, m) = fused();
            let label = format!("adafactor {shape:?}");
            for (i, (got, want)) in moment.iter().zip(&moment_want).enumerate() {
                assert!(rel(got, want) < 1e-5, "{label}: second-moment state {i} {:e}", rel(got, want));
            }
            assert!(rel(&p, &p_want) < 1e-6, "{label}: parameter {:e}", rel(&p, &p_want));
            let (step, step_want) = ((&p - &p0).unwrap(), (&p_want - &p0).unwrap());
            assert!(rel(&step, &step_want) < 1e-4, "{label}: step {:e}", rel(&step, &step_want));
            if let Some(m_want) = m_want {
                assert!(rel(&m, &m_want) < 1e-5, "{label}: first moment {:e}", rel(&m, &m_want));
            }
            let (p2, ..) = fused();
            assert_eq!(bits(&p), bits(&p2), "{label}: the same bits twice");
        }
    }

    type Op<'a> = dyn Fn(&[Tensor]) -> Result<Tensor> + 'a;

    /// The sublayer nodes on the GPU (the device-generic node over the CUDA kernels, as the
    /// decoder runs them) against their composition from the reference ops: f32 to the CPU
    /// kernels' bounds, bf16 to 2e-2 / 5e-2 (both round the products' operands to bf16).
    #[test]
    fn sublayers_match_their_composition_on_the_gpu_in_f32_and_bf16() {
        let s = sublayer_inputs(&gpu());
        let attention = |x: &Tensor, p: &AttentionSublayer| -> Result<Tensor> {
            Ok(attention_sublayer(x, p)?.expect("the GPU's sublayer node applies"))
        };
        let mlp = |x: &Tensor, p: &MlpSublayer| -> Result<Tensor> {
            Ok(mlp_sublayer(x, p)?.expect("the GPU's sublayer node applies"))
        };
        check_sublayers(&s, DType::F32, (1e-5, 1e-4), &attention, &mlp);
        check_sublayers(&s, DType::BF16, (2e-2, 5e-2), &attention, &mlp);
    }

    /// The weight gradients' cuBLAS product (f32 out, bf16 or f32 operands, β = 0 and 1).
    #[test]
    fn transposed_products_match_on_the_gpu_in_f32_and_bf16() {
        check_transposed_products(&gpu(), DType::F32);
        check_transposed_products(&gpu(), DType::BF16);
    }

    /// Under bf16 the sublayer nodes cast each f32 weight for its product and drop the copy
    /// (and cast it again in the backward), so what a node keeps for its backward — measured as
    /// the memory pool's bytes in use after its forward — is its activations, not a bf16 copy
    /// of its weights: Llama-shaped sublayers at C = 2048 over 16 positions keep well under
    /// half the 2 bytes a parameter a kept copy would hold (MLP 100 MB, attention 21 MB,
    /// against some 0.6 MB of activations). The backward still gives every weight its f32
    /// gradient.
    #[test]
    fn sublayers_keep_no_bf16_copy_of_their_weights_on_the_gpu() {
        let dev = gpu();
        let (c, f, h, kh, t) = (2048usize, 8192, 16, 4, 16);
        let var = |t: Tensor| Var::from_tensor(&t.to_device(&dev).unwrap()).unwrap().as_tensor().clone();
        let x = var(randn(&[1, t, c], 1.0, 150).to_dtype(DType::BF16).unwrap());
        let norm = var((randn(&[c], 0.1, 151) + 1.0).unwrap());
        let kv = c / h * kh;
        let attn = [x.clone(), norm.clone(), var(randn(&[c, c], 0.02, 152)), var(randn(&[kv, c], 0.02, 153))]
            .into_iter()
            .chain([var(randn(&[kv, c], 0.02, 154)), var(randn(&[c, c], 0.02, 155))])
            .collect::<Vec<_>>();
        let mlp = [x.clone(), norm, var(randn(&[f, c], 0.02, 156)), var(randn(&[f, c], 0.02, 157))]
            .into_iter()
            .chain([var(randn(&[c, f], 0.02, 158))])
            .collect::<Vec<_>>();
        let rope = super::rope_tables(c / h, t, 10_000.0, &dev).unwrap();
        let node = |name: &str, weights: &[Tensor], forward: &dyn Fn() -> Result<Tensor>| {
            let before = crate::pool::in_use(&dev).expect("the GPU's memory pool reports what it holds");
            let y = forward().unwrap();
            let kept = crate::pool::in_use(&dev).unwrap() - before;
            let copies: u64 = weights.iter().map(|w| 2 * w.elem_count() as u64).sum();
            assert!(kept < copies / 2, "{name}: the node keeps {kept} bytes; bf16 copies of its weights are {copies}");
            println!("{name}: the node keeps {kept} bytes (its weights' bf16 copies would be {copies})");
            let grads = y.to_dtype(DType::F32).unwrap().sum_all().unwrap().backward().unwrap();
            for w in weights {
                let g = param_grads::gradient(w, &grads).unwrap().expect("a weight's gradient");
                assert_eq!(g.dtype(), DType::F32, "{name}");
            }
        };
        let heads = (h, kh);
        node("llama attention bf16", &attn[2..], &|| {
            Ok(attention_sublayer(&x, &attention_params(&attn, Some((&rope.0, &rope.1)), heads))?.unwrap())
        });
        node("llama mlp bf16", &mlp[2..], &|| Ok(mlp_sublayer(&x, &mlp_params(&mlp, true))?.unwrap()));
    }

    /// Attention on the GPU (attention.cu: tiled, online softmax, no T×T tensor) against the
    /// reference ops, which form the (B, H, T, T) scores with cuBLAS: causal with grouped-query
    /// heads, GPT-2's packed qkv, and padded encoder rows; head dims under each kernel's bound
    /// (64, 128, 256; bf16 at 64 and 128 on the tensor-core kernels, or the scalar ones where
    /// the rows are not 16-byte aligned) and T across several tiles. f32 to the CPU kernels'
    /// bounds; bf16 to 2e-2 / 5e-2, since the reference also rounds its scores and
    /// probabilities to bf16. The same bits twice (no atomics).
    #[test]
    fn attention_matches_the_reference_on_the_gpu_in_f32_and_bf16() {
        let dev = gpu();
        let shapes =
            [(2, 70, 4, 2, 16), (1, 129, 2, 1, 64), (2, 97, 3, 3, 100), (2, 150, 4, 2, 128), (1, 12, 2, 1, 200)];
        for (b, t, h, kh, d) in shapes {
            let scale = 1.0 / (d as f64).sqrt();
            let on_gpu = |shape: &[usize], seed| randn(shape, 1.0, seed).to_device(&dev).unwrap();
            let qkv = [on_gpu(&[b, t, h * d], 81), on_gpu(&[b, t, kh * d], 82), on_gpu(&[b, t, kh * d], 83)];
            let packed = [on_gpu(&[b, t, (h + 2 * kh) * d], 84)];
            let lens: Vec<usize> = (0..b).map(|i| if i == 0 { t } else { (t / 3).max(1) }).collect();
            let causal = |x: &[Tensor]| causal_attention(&x[0], &x[1], &x[2], h, kh, scale);
            let packed_causal = |x: &[Tensor]| causal_attention_packed(&x[0], h, kh, scale);
            let padded = |x: &[Tensor]| padded_attention(&x[0], &x[1], &x[2], h, kh, scale, &lens);
            let cases: [(&str, &[Tensor], &Op); 3] =
                [("causal", &qkv, &causal), ("packed", &packed, &packed_causal), ("padded", &qkv, &padded)];
            for (name, inputs, f) in cases {
                let name = format!("cuda attention {name} B{b} T{t} H{h} K{kh} D{d}");
                check(&format!("{name} f32"), inputs, f);
                let bf16: Vec<Tensor> = inputs.iter().map(|x| x.to_dtype(DType::BF16).unwrap()).collect();
                check_within(&format!("{name} bf16"), &bf16, f, 2e-2, 5e-2);
                // The same bits twice, f32 and bf16 (at D = 64, 128 the tensor-core kernels).
                for inputs in [inputs, bf16.as_slice()] {
                    let (y1, g1) = run(Kernels::Fused, inputs, f);
                    let (y2, g2) = run(Kernels::Fused, inputs, f);
                    let bits =
                        |t: &Tensor| t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    assert_eq!(bits(&y1), bits(&y2), "{name}: the same output twice");
                    for (a, b) in g1.iter().zip(&g2) {
                        assert_eq!(bits(a), bits(b), "{name}: the same gradients twice");
                    }
                }
            }
        }
        // Query rows that start 8 bytes past a 16-byte boundary (a narrowed view): the tensor-core
        // kernels copy rows 16 bytes at a time, so bf16 at D = 64 takes the scalar kernels here.
        let (b, t, h, kh, d) = (2, 70, 2, 1, 64);
        let on_gpu = |shape: &[usize], seed| randn(shape, 1.0, seed).to_device(&dev).unwrap().to_dtype(DType::BF16);
        let inputs = [
            on_gpu(&[b, t, h * d + 4], 85).unwrap(),
            on_gpu(&[b, t, kh * d], 86).unwrap(),
            on_gpu(&[b, t, kh * d], 87).unwrap(),
        ];
        let narrowed = |x: &[Tensor]| causal_attention(&x[0].narrow(2, 4, h * d)?, &x[1], &x[2], h, kh, 0.125);
        check_within("cuda attention causal bf16 unaligned query rows", &inputs, &narrowed, 2e-2, 5e-2);
    }

    /// GELU (both forms, alone and as a linear layer's bias + GELU epilogue), SwiGLU and RoPE
    /// on the GPU (activation.cu) against the reference ops: f32 to the CPU kernels' bounds,
    /// bf16 to 1e-2 / 2e-2.
    #[test]
    fn activations_match_the_reference_on_the_gpu_in_f32_and_bf16() {
        let dev = gpu();
        let x = randn(&[3, 70, 200], 2.0, 91).to_device(&dev).unwrap();
        let up = randn(&[3, 70, 200], 1.0, 92).to_device(&dev).unwrap();
        let (cos, sin) = rope_tables(40, 80, 10_000.0, &dev).unwrap();
        let gelus: [(&str, &Op); 2] = [("gelu_tanh", &|t| gelu_tanh(&t[0])), ("gelu_erf", &|t| gelu_erf(&t[0]))];
        for (name, f) in gelus {
            check(&format!("cuda {name} f32"), std::slice::from_ref(&x), f);
            check_within(&format!("cuda {name} bf16"), &[x.to_dtype(DType::BF16).unwrap()], f, 1e-2, 2e-2);
        }
        // The linear layer's bias + GELU epilogue (fused: product, then one kernel; reference:
        // product, bias add, GELU), both weight layouts, gradients of x, W and the f32 bias.
        let (w, b) =
            (randn(&[200, 96], 0.1, 93).to_device(&dev).unwrap(), randn(&[96], 0.5, 94).to_device(&dev).unwrap());
        for form in [Gelu::Tanh, Gelu::Erf] {
            let lin = |t: &[Tensor]| linear_gelu(&t[0], &t[1], Some(&t[2]), false, form);
            check(&format!("cuda linear_gelu {form:?} f32"), &[x.clone(), w.clone(), b.clone()], &lin);
            let xb = x.to_dtype(DType::BF16).unwrap();
            check_within(&format!("cuda linear_gelu {form:?} bf16"), &[xb, w.clone(), b.clone()], &lin, 1e-2, 2e-2);
            let wt = w.t().unwrap().contiguous().unwrap();
            let lin_t = |t: &[Tensor]| linear_gelu(&t[0], &t[1], Some(&t[2]), true, form);
            check(&format!("cuda linear_gelu {form:?} out_in f32"), &[x.clone(), wt, b.clone()], &lin_t);
        }
        let swi = |t: &[Tensor]| swiglu(&t[0], &t[1]);
        check("cuda swiglu f32", &[x.clone(), up.clone()], &swi);
        let bf16 = [x.to_dtype(DType::BF16).unwrap(), up.to_dtype(DType::BF16).unwrap()];
        check_within("cuda swiglu bf16", &bf16, &swi, 1e-2, 2e-2);
        // 200 = 5 heads of 40, at positions 7..77 of the 80-row tables.
        let rot = |t: &[Tensor]| rope(&t[0], &cos, &sin, 5, 7);
        check("cuda rope f32", std::slice::from_ref(&x), &rot);
        check_within("cuda rope bf16", &[x.to_dtype(DType::BF16).unwrap()], &rot, 1e-2, 2e-2);
    }

    /// The LM head's chunked cross-entropy on the GPU (loss.cu's log-sum-exp and logit
    /// gradient) against the composed chunks, f32 and bf16 hidden states.
    #[test]
    fn lm_head_cross_entropy_matches_the_reference_on_the_gpu() {
        let dev = gpu();
        let (n, c, v) = (70usize, 48, 3001u32);
        let hidden = randn(&[n, c], 1.0, 141).to_device(&dev).unwrap();
        let head = randn(&[v as usize, c], 0.2, 142).to_device(&dev).unwrap();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % v).collect();
        let targets = Tensor::from_vec(targets, n, &dev).unwrap();
        let f = |t: &[Tensor]| lm_loss::lm_head_cross_entropy_in(&t[0], &t[1], &targets, 16);
        check("cuda lm_head_cross_entropy f32", &[hidden.clone(), head.clone()], &f);
        let bf16 = [hidden.to_dtype(DType::BF16).unwrap(), head];
        check_within("cuda lm_head_cross_entropy bf16", &bf16, &f, 1e-2, 2e-2);
    }

    /// Σ g² of gradients on the GPU (one device reduction, one read) against the CPU's.
    #[test]
    fn sum_squares_over_gpu_gradients_matches_the_cpu() {
        let dev = gpu();
        let xs: Vec<Tensor> =
            [5usize, 70_001, 33].iter().enumerate().map(|(i, &n)| randn(&[n], 1.3, 130 + i as u64)).collect();
        let on_gpu: Vec<Tensor> = xs.iter().map(|x| x.to_device(&dev).unwrap()).collect();
        let (cpu, gpu) = (sum_squares_all(&xs).unwrap(), sum_squares_all(&on_gpu).unwrap());
        assert!((gpu - cpu).abs() <= 1e-6 * cpu, "{gpu} vs {cpu}");
    }

    /// AdamW's in-place update on the GPU — every tensor in one launch, each with its own
    /// learning rate, decay (parameter groups) and gradient scale (clipping folded in) —
    /// against the CPU kernel a tensor at a time on gradients scaled first (the same arithmetic
    /// per element; nvcc may contract a multiply-add, so to an ulp or two), over three steps.
    #[test]
    fn adamw_in_place_on_the_gpu_matches_the_cpu_kernel() {
        let dev = gpu();
        let sizes = [37usize, 300_001, 2048, 1];
        // (lr, weight decay, gradient scale): the GPU applies the scale in the kernel, the CPU
        // kernel is given the gradient scaled first.
        let groups = [(1e-2, 0.1, 1.0), (3e-3, 0.0, 0.37), (1e-2, 0.1, 1.0), (5e-2, 0.01, 0.5)];
        let mut states = Vec::new();
        for device in [Device::Cpu, dev.clone()] {
            let tensors: Vec<[Tensor; 4]> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let (p, g) = (randn(&[n], 1.0, 71 + i as u64), randn(&[n], 0.1, 81 + i as u64));
                    let p = p.to_device(&device).unwrap();
                    let (m, v) = (p.zeros_like().unwrap(), p.zeros_like().unwrap());
                    [p, g.to_device(&device).unwrap(), m, v]
                })
                .collect();
            let scaled: Vec<Tensor> =
                tensors.iter().zip(groups).map(|([_, grad, ..], (_, _, scale))| (grad * scale).unwrap()).collect();
            for t in 1..=3 {
                let updates: Vec<adamw::AdamWUpdate> = tensors
                    .iter()
                    .zip(groups)
                    .zip(&scaled)
                    .map(|(([param, grad, m, v], (lr, weight_decay, scale)), scaled)| {
                        let (grad, grad_scale) = if device.is_cpu() { (scaled, 1.0) } else { (grad, scale) };
                        let step =
                            adamw::AdamWStep { lr, weight_decay, beta1: 0.9, beta2: 0.999, eps: 1e-8, t, grad_scale };
                        adamw::AdamWUpdate { param, grad, m, v, step }
                    })
                    .collect();
                if device.is_cpu() {
                    for u in &updates {
                        assert!(adamw_in_place_all(std::slice::from_ref(u)).unwrap());
                    }
                } else {
                    assert!(adamw_in_place_all(&updates).unwrap(), "the kernel ran on {device:?}");
                }
            }
            states.push(tensors);
        }
        for (i, (cpu, gpu)) in states[0].iter().zip(&states[1]).enumerate() {
            for (k, name) in [(0, "param"), (2, "m"), (3, "v")] {
                let e = rel(&gpu[k].to_device(&Device::Cpu).unwrap(), &cpu[k]);
                assert!(e <= 1e-6, "adamw tensor {i} ({}): {name} rel error {e:e}", sizes[i]);
            }
        }
    }
}
