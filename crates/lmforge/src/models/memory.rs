//! What training a [`ModelSpec`] costs in memory on the CPU, as lmforge actually allocates it
//! (fp32 candle tensors), without allocating anything. One estimate, used by the trainer's
//! fits-in-memory check (`train::check_fits`) and by `lmforge plan --gpu cpu`.
//!
//! Candle's autograd keeps every forward intermediate that lies on a path from a parameter to
//! the loss until the loss tensor is dropped, so "activations" here means every tensor the
//! forward pass creates, counted op by op from `decoder.rs`, `ops/` and `nn.rs` (each
//! architecture's terms are in its file, `Architecture::cpu_layer_elems`) (views —
//! reshape of a contiguous tensor, narrow, transpose — are free; reshaping a non-contiguous
//! view copies). The counts were checked against a counting global allocator (forward live
//! bytes within 3% for tiny, llama-tiny, quickstart, gpt-small, llama-small, bench-gpt,
//! bench-llama). Dimension letters: N = B·T tokens, C d_model, Q = H·D query width, KV = K·D
//! key/value width, F d_ff, H heads, T sequence, V vocab.
//!
//! The backward pass adds, on top of the kept forward tensors, the gradients in flight, the
//! gradients candle computes for non-parameter leaves (the detached softmax max and the
//! causal mask broadcast to B·H·T·T, RoPE tables broadcast to B·H·T·D; kept until the
//! gradient store is dropped) and each op's temporaries. Measured with the same allocator, the
//! peak above the forward's live bytes (excluding parameter gradients) was 0.44–0.62 × the
//! forward activations over those presets; [`BACKWARD_WORKSPACE`] = 0.5.
//!
//! Both kernel sets are counted ([`Kernels`]): the reference ops (the counts above) and the
//! fused kernels the trainer runs by default, which keep far less (no per-op temporaries in
//! the norms and softmax, no (N, V) logits).

use super::ModelSpec;
use crate::nn::recompute::Checkpointing;
use crate::ops::Kernels;
use serde::Serialize;

/// Peak backward working set as a fraction of the forward activations (measured, see above).
pub const BACKWARD_WORKSPACE: f64 = 0.5;

/// The same with the fused kernels: none. A decoder block is two fused sublayer nodes
/// (`ops::sublayer`) whose backward frees the activations it kept as it creates its
/// parameters' gradients, so the backward's peak (`examples/memprobe.rs`) stays within the
/// forward's live bytes plus the parameter gradients (−5 to +5 MB over tiny, quickstart,
/// bench-gpt, gpt-small, llama-tiny, bench-llama, llama-small).
pub const FUSED_BACKWARD_WORKSPACE: f64 = 0.0;

/// Resident memory of the `lmforge` process before the model: code, runtime, thread stacks,
/// BLAS packing buffers, and the run's bookkeeping (the SQLite experiment store, ~4 MB, and the
/// TensorBoard writer). Measured as the peak-RSS intercept of `lmforge train` on the tiny
/// presets (~25 MB; it was ~16 MB before the store and the larger binary).
pub const CPU_RUNTIME_OVERHEAD: u64 = 24 << 20;

/// Peak training memory on the CPU, by component (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CpuTrainMemory {
    /// fp32 parameters (4 bytes each).
    pub weights: u64,
    /// fp32 gradients, one per parameter.
    pub gradients: u64,
    /// The optimizer's state (given by the caller: it depends on the optimizer).
    pub optimizer_state: u64,
    /// Forward tensors autograd keeps for the backward pass of one micro-batch.
    pub activations: u64,
    /// Backward temporaries and non-parameter gradients at the backward peak.
    pub backward_workspace: u64,
    /// Process runtime ([`CPU_RUNTIME_OVERHEAD`]).
    pub runtime: u64,
}

impl CpuTrainMemory {
    pub fn total(&self) -> u64 {
        [self.weights, self.gradients, self.optimizer_state, self.activations, self.backward_workspace, self.runtime]
            .into_iter()
            .fold(0u64, u64::saturating_add)
    }
}

impl ModelSpec {
    /// fp32 elements the forward pass of one token keeps per decoder layer, for sequences of
    /// `seq_len` tokens (attention scores scale with the sequence), with `kernels`.
    pub fn cpu_layer_activation_elems(&self, seq_len: usize, kernels: Kernels) -> u64 {
        let (h, t) = (self.n_head as u64, seq_len as u64);
        // Reference attention scores: QKᵀ, × scale, + mask, softmax (x − max, exp, ÷ sum):
        // 6 × H·T, plus the max and the sum (H each). The fused attention keeps none.
        let scores = 6 * h * t + 2 * h;
        self.arch().cpu_layer_elems(self, scores, kernels)
    }

    /// fp32 elements kept per token outside the layers. Reference: embedding lookup (GPT-2:
    /// plus the position add), final norm, logits and the log-softmax's shifted, exp and output
    /// (4V). Fused: the lookup, the final norm's output and the LM-head loss's d hidden (C); no
    /// logits (see [`Self::cpu_head_fixed_bytes`] for d head).
    pub fn cpu_head_activation_elems(&self, kernels: Kernels) -> u64 {
        self.arch().cpu_head_elems(self, kernels)
    }

    /// Bytes the fused LM-head loss keeps independent of the batch: d head (V × C), computed in
    /// the forward and held for the backward.
    pub fn cpu_head_fixed_bytes(&self, kernels: Kernels) -> u64 {
        match kernels {
            Kernels::Reference => 0,
            Kernels::Fused => 4 * (self.vocab_size * self.d_model) as u64,
        }
    }

    /// Peak memory of one training step on the CPU with micro-batch `batch` × `seq_len`, given
    /// the optimizer's state size (`train::optimizer_state_bytes`), with the kernels this thread
    /// runs ([`crate::ops::kernels`]; fused unless chosen otherwise), with the blocks
    /// `checkpointing` covers recomputed.
    pub fn cpu_train_memory(
        &self,
        batch: usize,
        seq_len: usize,
        optimizer_state: u64,
        checkpointing: Checkpointing,
    ) -> CpuTrainMemory {
        self.cpu_train_memory_with(crate::ops::kernels(), batch, seq_len, optimizer_state, checkpointing)
    }

    /// [`Self::cpu_train_memory`] for the given kernels.
    pub fn cpu_train_memory_with(
        &self,
        kernels: Kernels,
        batch: usize,
        seq_len: usize,
        optimizer_state: u64,
        checkpointing: Checkpointing,
    ) -> CpuTrainMemory {
        let p = self.num_params();
        // Saturating: an absurd request (a hostile config) must come out as "too large", not wrap.
        let tokens = (batch as u64).saturating_mul(seq_len as u64);
        let layer = self.cpu_layer_activation_elems(seq_len, kernels);
        // A checkpointed block (`nn::recompute`) keeps its input (C per token); one block's
        // activations exist again while it is recomputed.
        let layers = checkpointing.kept_activations(self.n_layer, self.d_model as u64, layer);
        let per_token = layers.saturating_add(self.cpu_head_activation_elems(kernels));
        let activations =
            tokens.saturating_mul(per_token).saturating_mul(4).saturating_add(self.cpu_head_fixed_bytes(kernels));
        let workspace = match kernels {
            Kernels::Reference => BACKWARD_WORKSPACE,
            Kernels::Fused => FUSED_BACKWARD_WORKSPACE,
        };
        CpuTrainMemory {
            weights: 4 * p,
            gradients: 4 * p,
            optimizer_state,
            activations,
            backward_workspace: (workspace * activations as f64) as u64,
            runtime: CPU_RUNTIME_OVERHEAD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward live bytes measured with a counting allocator (candle 0.11, one forward + loss,
    /// parameters excluded); the op-by-op count must stay within 5%.
    #[test]
    fn forward_activation_count_matches_allocator_measurements() {
        let measured_mb = [
            ("tiny", 16, 128, 135.35),
            ("llama-tiny", 16, 128, 125.04),
            ("quickstart", 16, 128, 464.09),
            ("bench-gpt", 4, 256, 421.27),
            ("bench-llama", 4, 256, 474.29),
            ("gpt-small", 4, 256, 704.18),
            ("llama-small", 4, 256, 604.99),
        ];
        for (preset, b, t, mb) in measured_mb {
            let m = ModelSpec::preset(preset).unwrap().cpu_train_memory_with(
                Kernels::Reference,
                b,
                t,
                0,
                Checkpointing::Off,
            );
            let rel = m.activations as f64 / (mb * 1e6) - 1.0;
            assert!(rel.abs() < 0.05, "{preset}: predicted {} vs measured {mb} MB ({rel:+.3})", m.activations);
        }
    }

    /// The same with the fused kernels (`memprobe PRESET B T fused`: forward live minus the
    /// model); within 10% (the small presets' fixed runtime buffers weigh more).
    #[test]
    fn fused_forward_activation_count_matches_allocator_measurements() {
        let measured_mb = [
            ("tiny", 16, 128, 23.45),
            ("llama-tiny", 16, 128, 23.77),
            ("quickstart", 16, 128, 122.67),
            ("bench-gpt", 4, 256, 90.29),
            ("bench-llama", 4, 256, 89.05),
            ("gpt-small", 4, 256, 184.75),
            ("llama-small", 4, 256, 184.76),
        ];
        for (preset, b, t, mb) in measured_mb {
            let m =
                ModelSpec::preset(preset).unwrap().cpu_train_memory_with(Kernels::Fused, b, t, 0, Checkpointing::Off);
            let rel = m.activations as f64 / (mb * 1e6) - 1.0;
            assert!(rel.abs() < 0.10, "{preset}: predicted {} vs measured {mb} MB ({rel:+.3})", m.activations);
        }
    }

    #[test]
    fn parameters_count_sixteen_bytes_with_adamw() {
        let s = ModelSpec::preset("gpt2-124m").unwrap();
        let m = s.cpu_train_memory(1, 1024, 8 * s.num_params(), Checkpointing::Off);
        assert_eq!(m.weights + m.gradients + m.optimizer_state, 16 * 124_439_808);
        assert!(m.total() > m.activations + m.backward_workspace);
    }
}
