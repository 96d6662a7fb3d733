//! Every fused kernel against its reference, forward (≤ 1e-5 relative) and backward
//! (≤ 1e-4 relative), on random inputs with odd sizes, strided and offset views.

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

/// max |a − b| / max |b|.
fn rel(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
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
    let y = f(&ts).unwrap();
    let r = randn(y.dims(), 1.0, 99);
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g = vars.iter().map(|v| grads.get(v.as_tensor()).expect("gradient reaches every input").clone()).collect();
    (y, g)
}

fn check(name: &str, inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) {
    let (yf, gf) = run(Kernels::Fused, inputs, f);
    let (yr, gr) = run(Kernels::Reference, inputs, f);
    let e = rel(&yf, &yr);
    assert!(e <= 1e-5, "{name}: forward rel error {e:e}");
    for (i, (a, b)) in gf.iter().zip(&gr).enumerate() {
        let e = rel(a, b);
        assert!(e <= 1e-4, "{name}: gradient of input {i} rel error {e:e}");
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
    let rope = crate::nn::Rope::new(6, 16, 10_000.0, &Device::Cpu).unwrap();
    let (cos, sin) = rope.tables();
    let x = randn(&[2, 5, 18], 1.0, 34); // 3 heads of 6
    check("rope", std::slice::from_ref(&x), &|t| super::rope(&t[0], cos, sin, 3, 0));
    check("rope offset", &[x], &|t| super::rope(&t[0], cos, sin, 3, 7));
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
fn kernels_guard_restores_the_previous_choice() {
    assert_eq!(kernels(), Kernels::Fused);
    {
        let _g = KernelsGuard::set(Kernels::Reference);
        assert_eq!(kernels(), Kernels::Reference);
    }
    assert_eq!(kernels(), Kernels::Fused);
}
