//! What data parallelism sends: bytes per process per optimizer step, by the ring algorithms'
//! counts (an all-reduce sends 2(N−1)/N of its buffer, a reduce-scatter or an all-gather
//! (N−1)/N), for each ZeRO stage and gradient compression as `distributed` runs them. The
//! trainer measures the same counts (`comm_bytes` in `metrics.jsonl`); they differ by the few
//! scalars a step also reduces (loss, gradient norm) and per-message rounding.

use crate::distributed::compress::low_rank_shape;
use crate::distributed::zero3::layer_index;
use crate::distributed::Compression;
use crate::models::ModelSpec;

/// How the processes share a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CommRequest {
    pub processes: u64,
    pub zero: u8,
    pub grad_accum: u64,
    pub compress: Compression,
    pub powersgd_rank: usize,
}

/// Bytes each process sends per optimizer step.
pub fn bytes_per_step(spec: &ModelSpec, c: &CommRequest) -> u64 {
    let n = c.processes.max(1);
    if n == 1 {
        return 0;
    }
    let params = spec.params();
    let total: u64 = params.iter().map(|p| p.numel() as u64).sum();
    let layers: u64 = params.iter().filter(|p| layer_index(&p.name).is_some()).map(|p| p.numel() as u64).sum();
    // Values PowerSGD sends for the whole model: vectors and small matrices as they are, the
    // others as their two rank-r factors.
    let powersgd: u64 = params
        .iter()
        .map(|p| match low_rank_shape(&p.shape, c.powersgd_rank) {
            Some((rows, cols)) => ((rows + cols) * c.powersgd_rank) as u64,
            None => p.numel() as u64,
        })
        .sum();
    let ring = |elems: u64| (n - 1) as f64 / n as f64 * elems as f64 * 4.0;
    let all_reduce = |elems: u64| match c.compress {
        Compression::None => 2.0 * ring(elems),
        // An all-to-all and an all-gather of bf16: each half of an fp32 reduce-scatter.
        Compression::Bf16 => ring(elems),
        Compression::PowerSgd => 2.0 * ring(powersgd),
    };
    let reduce_scatter = |elems: u64| match c.compress {
        Compression::Bf16 => ring(elems) / 2.0,
        _ => ring(elems),
    };
    let a = c.grad_accum.max(1) as f64;
    let bytes = match (c.zero, c.compress) {
        (0, _) => all_reduce(total),
        // ZeRO-1, and ZeRO-2 with PowerSGD (an all-reduce): then the parameters all-gathered.
        (1, _) | (2, Compression::PowerSgd) => all_reduce(total) + ring(total),
        (2, _) => a * reduce_scatter(total) + ring(total),
        // ZeRO-3: per micro-batch the rest's gradients reduce-scattered, each layer gathered
        // for the forward and again for the backward and its gradients reduce-scattered; the
        // rest's parameters all-gathered after the update.
        _ => a * (reduce_scatter(total - layers) + 2.0 * ring(layers) + reduce_scatter(layers)) + ring(total - layers),
    };
    bytes.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_and_compression_scale_as_their_algorithms() {
        let spec = ModelSpec::preset("gpt2-124m").unwrap();
        let psi = spec.num_params() as f64;
        let at = |zero, compress, n, a| {
            bytes_per_step(&spec, &CommRequest { processes: n, zero, grad_accum: a, compress, powersgd_rank: 4 }) as f64
        };
        assert_eq!(at(0, Compression::None, 1, 1), 0.0);
        // Plain data parallelism on 4 processes: 2·3/4 of the fp32 gradients.
        assert!((at(0, Compression::None, 4, 1) / (1.5 * 4.0 * psi) - 1.0).abs() < 1e-9);
        // ZeRO-1 and ZeRO-2 (one micro-batch): 1.5x plain.
        assert!((at(1, Compression::None, 4, 1) / at(0, Compression::None, 4, 1) - 1.5).abs() < 1e-9);
        assert!((at(2, Compression::None, 4, 1) / at(0, Compression::None, 4, 1) - 1.0).abs() < 1e-9);
        assert!(at(2, Compression::None, 4, 4) > at(1, Compression::None, 4, 4), "ZeRO-2 reduces each micro-batch");
        assert!((at(0, Compression::Bf16, 4, 1) / at(0, Compression::None, 4, 1) - 0.5).abs() < 1e-9);
        assert!(at(0, Compression::PowerSgd, 4, 1) < 0.1 * at(0, Compression::None, 4, 1));
        // ZeRO-3: 1.5x ZeRO-2's gradient traffic for the layers (two gathers and a reduce-scatter).
        assert!(at(3, Compression::None, 4, 1) > at(2, Compression::None, 4, 1));
    }
}
