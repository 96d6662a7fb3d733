//! The devices `lmforge plan` knows: memory and dense peak throughput per precision (sources
//! in `plan/README.md`), and the CPU this process runs on (its available RAM and a measured
//! fp32 matmul rate).

use crate::error::Result;
use serde::Serialize;

/// One device of a training job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hardware {
    pub name: String,
    /// Memory one device offers to a training process (bytes).
    pub memory_bytes: u64,
    /// Dense 16-bit (bf16) tensor-core peak, FLOP/s.
    pub peak_bf16_flops: f64,
    /// Dense fp32-precision peak used for fp32 training, FLOP/s (TF32 tensor cores on GPUs).
    pub peak_fp32_flops: f64,
    /// The host CPU: lmforge's own fp32 trainer, one device, no ZeRO.
    pub is_cpu: bool,
}

const MIB: u64 = 1 << 20;

/// `--gpu` names, in the order `--help` lists them.
pub const GPU_NAMES: [&str; 4] = ["h100-80gb", "a100-80gb", "a100-40gb", "h200-141gb"];

impl Hardware {
    /// A data-centre GPU by `--gpu` name (SXM parts; dense, i.e. without 2:4 sparsity). The
    /// memory is what `nvidia-smi` reports as the card's total where one has been read (the
    /// H100's and H200's: the product names' "80 GB" and "141 GB" are 79.6 and 140.4 GiB),
    /// the nominal binary size otherwise (`plan/README.md`).
    pub fn gpu(name: &str) -> Option<Self> {
        let (memory_mib, bf16_tflops, tf32_tflops) = match name {
            "a100-80gb" => (80 << 10, 312.0, 156.0),
            "a100-40gb" => (40 << 10, 312.0, 156.0),
            "h100-80gb" => (81_559, 989.4, 494.7),
            "h200-141gb" => (143_771, 989.4, 494.7),
            _ => return None,
        };
        Some(Self {
            name: name.to_string(),
            memory_bytes: memory_mib * MIB,
            peak_bf16_flops: bf16_tflops * 1e12,
            peak_fp32_flops: tf32_tflops * 1e12,
            is_cpu: false,
        })
    }

    /// This machine's CPU: memory = `MemAvailable` (what the trainer's check uses), peak = the
    /// given fp32 FLOP/s (bf16 is not offered: lmforge trains in fp32 on the CPU).
    pub fn cpu(peak_flops: f64) -> Self {
        Self {
            name: "cpu".into(),
            memory_bytes: crate::train::available_memory_bytes().unwrap_or(0),
            peak_bf16_flops: peak_flops,
            peak_fp32_flops: peak_flops,
            is_cpu: true,
        }
    }
}

/// Sustained fp32 matmul FLOP/s of this CPU through candle (1024² × 1024² products for about
/// 0.3 s, all cores): the "peak" a CPU plan's MFU is relative to. Costs ~0.5 s.
pub fn measure_cpu_matmul_flops() -> Result<f64> {
    use candle_core::{DType, Device, Tensor};
    let n = 1024usize;
    let a = Tensor::ones((n, n), DType::F32, &Device::Cpu)?;
    let b = Tensor::ones((n, n), DType::F32, &Device::Cpu)?;
    let _warm = a.matmul(&b)?;
    let started = std::time::Instant::now();
    let mut runs = 0u32;
    while runs < 3 || started.elapsed().as_secs_f64() < 0.3 {
        let _c = a.matmul(&b)?;
        runs += 1;
    }
    Ok(2.0 * (n * n * n) as f64 * runs as f64 / started.elapsed().as_secs_f64())
}
