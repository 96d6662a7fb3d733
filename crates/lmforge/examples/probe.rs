use candle_core::{Device, Tensor, Var};
use std::time::Instant;
fn main() {
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
    let dev = Device::Cpu;
    let qkv = Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 256, 768), &dev).unwrap()).unwrap();
    let dy = Tensor::randn(0f32, 1.0, (8, 256, 256), &dev).unwrap();
    let (mut bf, mut bb) = (f64::MAX, f64::MAX);
    for _ in 0..40 {
        let s = Instant::now();
        let y = lmforge::ops::causal_attention_packed(qkv.as_tensor(), 4, 4, 0.125).unwrap();
        bf = bf.min(s.elapsed().as_secs_f64());
        let l = (y * &dy).unwrap().sum_all().unwrap();
        lmforge::ops::profile::set_enabled(true);
        let g = l.backward().unwrap();
        std::hint::black_box(g);
        let t = lmforge::ops::profile::take();
        lmforge::ops::profile::set_enabled(false);
        for o in t {
            if o.name.contains("sdpa") {
                bb = bb.min(o.seconds);
            }
        }
    }
    println!("sdpa fwd {:.2} ms bwd {:.2} ms (per layer; x4 per step)", bf * 1e3, bb * 1e3);
}
