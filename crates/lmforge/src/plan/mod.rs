//! `lmforge plan`: what training a model costs before anything is allocated — exact
//! parameters by component, per-device memory (weights, gradients, optimizer state,
//! activations with and without checkpointing, temporaries, framework overhead) for a ZeRO
//! stage and precision, whether it fits (and if not, the smallest change that makes it fit),
//! FLOPs per token, tokens/s at a given MFU, time, GPU-hours and cost. Every formula cites its
//! source in `plan/README.md`; the tests reproduce the published figures.
//!
//! Model states are what lmforge's trainer keeps, ZeRO stage by stage, on any device
//! ([`trainer_model_states`]; under bf16-mixed plus the weights' bf16 working copies). On GPUs
//! activations follow Korthikanti et al. (with lmforge's fused attention and chunked LM loss),
//! on the CPU what lmforge itself allocates in fp32 ([`ModelSpec::cpu_train_memory`], shared
//! with the trainer's fits-in-memory check).
//! Letters: Ψ parameters, N_d data-parallel devices,
//! s sequence, b micro-batch, h d_model, a heads, v vocab, L layers.

pub mod comm;
pub mod hardware;
pub mod report;

pub use hardware::{measure_cpu_matmul_flops, Hardware, GPU_NAMES};

use crate::distributed::Compression;
use crate::error::{Error, Result};
use crate::models::{Family, ModelSpec, ParamBreakdown};
use crate::nn::recompute::Checkpointing;
use crate::optim::{OptimConfig, OptimSpec};
use crate::train::optimizer_state_bytes;
use crate::train::RunConfig;
use serde::Serialize;

/// Fixed per-GPU memory outside the model: CUDA context, cuBLAS / NCCL workspaces and
/// allocator fragmentation. An assumption (typically 1–3 GiB in practice), not a measurement.
pub const GPU_FRAMEWORK_OVERHEAD: u64 = 2 << 30;

/// Most GPUs the "smallest change" search tries.
pub const MAX_GPUS: usize = 1024;

pub use crate::device::Precision;

/// Everything a plan depends on, resolved.
#[derive(Debug, Clone)]
pub struct PlanRequest {
    pub model: String,
    pub spec: ModelSpec,
    pub optim: OptimSpec,
    pub hardware: Hardware,
    pub gpus: usize,
    /// ZeRO stage 0 (plain data parallel) to 3.
    pub zero: u8,
    pub precision: Precision,
    pub micro_batch: usize,
    pub seq_len: usize,
    pub grad_accum: usize,
    /// Which decoder blocks are recomputed in the backward (ZeRO-3 recomputes every one).
    pub checkpointing: Checkpointing,
    /// Dropout masks are kept for backward (`model.dropout > 0`).
    pub dropout: bool,
    /// Training tokens.
    pub tokens: f64,
    /// Model FLOPs utilisation (model FLOPs / peak; recomputation does not count).
    pub mfu: f64,
    pub price_per_gpu_hour: Option<f64>,
    /// `[distributed]`: gradient compression, PowerSGD's rank, bucket size (bytes).
    pub compress: Compression,
    pub powersgd_rank: usize,
    pub bucket_bytes: u64,
    /// Gradients reduced during the backward (`distributed.overlap`).
    pub overlap: bool,
}

/// `lmforge plan` flags; `None` keeps the config's value or the default.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    pub gpus: Option<usize>,
    /// A `GPU_NAMES` entry or "cpu" (default h100-80gb).
    pub gpu: Option<String>,
    pub zero: Option<u8>,
    pub precision: Option<String>,
    pub micro_batch: Option<usize>,
    pub seq_len: Option<usize>,
    pub grad_accum: Option<usize>,
    /// `--activation-checkpointing [N]`; None keeps `train.activation_checkpointing`.
    pub checkpointing: Option<Checkpointing>,
    /// Default: 20 tokens per parameter (Chinchilla).
    pub tokens: Option<f64>,
    pub mfu: Option<f64>,
    pub price_per_gpu_hour: Option<f64>,
    /// Overrides the device peak (TFLOP/s); for the CPU, instead of measuring it.
    pub peak_tflops: Option<f64>,
    /// Another optimizer (an `optim::NAMES` entry) with its defaults, keeping the config's
    /// lr, weight decay and clipping.
    pub optim: Option<String>,
}

impl PlanRequest {
    /// The run config's model, optimizer and `[train]` shape, overridden by the flags.
    pub fn from_config(cfg: &RunConfig, o: &PlanOptions) -> Result<Self> {
        let spec = ModelSpec::from_config(&cfg.model)?;
        let optim = match &o.optim {
            Some(name) if *name != cfg.optim.name => OptimSpec::from_config(&OptimConfig {
                name: name.clone(),
                lr: cfg.optim.lr,
                weight_decay: cfg.optim.weight_decay,
                decay_embeddings: cfg.optim.decay_embeddings,
                grad_clip: cfg.optim.grad_clip,
                groups: cfg.optim.groups.clone(),
                ..OptimConfig::default()
            })
            .map_err(|e| Error::config("--optim", e.to_string()))?,
            _ => OptimSpec::from_config(&cfg.optim)?,
        };
        let gpu = o.gpu.as_deref().unwrap_or("h100-80gb");
        let mut hardware = if gpu == "cpu" {
            let peak = match o.peak_tflops {
                Some(t) => t * 1e12,
                None => measure_cpu_matmul_flops()?,
            };
            Hardware::cpu(peak)
        } else {
            Hardware::gpu(gpu).ok_or_else(|| {
                Error::config("--gpu", format!("unknown GPU {gpu:?}; expected one of {}, cpu", GPU_NAMES.join(", ")))
            })?
        };
        if let (Some(t), false) = (o.peak_tflops, hardware.is_cpu) {
            hardware.peak_bf16_flops = t * 1e12;
            hardware.peak_fp32_flops = t * 1e12;
        }
        let default_precision = if hardware.is_cpu { "fp32" } else { "bf16-mixed" };
        let seq_len = o.seq_len.unwrap_or(if cfg.train.seq_len == 0 { spec.context } else { cfg.train.seq_len });
        let req = Self {
            model: cfg.model.preset.clone(),
            optim,
            hardware,
            gpus: o.gpus.unwrap_or(1),
            zero: o.zero.unwrap_or(cfg.distributed.zero),
            precision: Precision::parse(o.precision.as_deref().unwrap_or(default_precision))?,
            micro_batch: o.micro_batch.unwrap_or(cfg.train.batch_size),
            seq_len,
            grad_accum: o.grad_accum.unwrap_or(cfg.train.grad_accum),
            checkpointing: o.checkpointing.unwrap_or(cfg.train.activation_checkpointing),
            dropout: cfg.model.dropout > 0.0,
            tokens: o.tokens.unwrap_or(20.0 * spec.num_params() as f64),
            mfu: o.mfu.unwrap_or(0.4),
            price_per_gpu_hour: o.price_per_gpu_hour,
            compress: cfg.distributed.compress,
            powersgd_rank: cfg.distributed.powersgd_rank,
            bucket_bytes: (cfg.distributed.bucket_mb * 1e6) as u64,
            overlap: cfg.distributed.overlap,
            spec,
        };
        req.validate()?;
        Ok(req)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::config(key, msg));
        if self.gpus == 0 || self.gpus > 1 << 20 {
            return bad("--gpus", format!("invalid value {}; expected 1 ..= 1048576", self.gpus));
        }
        if self.zero > 3 {
            return bad("--zero", format!("invalid value {}; expected 0, 1, 2 or 3", self.zero));
        }
        if self.micro_batch == 0 || self.grad_accum == 0 {
            return bad("--micro-batch", "micro-batch and grad-accum must be >= 1".into());
        }
        if self.seq_len == 0 || self.seq_len > self.spec.context {
            return bad(
                "--seq-len",
                format!("{} is not in 1 ..= the model's context {}", self.seq_len, self.spec.context),
            );
        }
        if !(self.mfu > 0.0 && self.mfu <= 1.0) {
            return bad("--mfu", format!("invalid value {}; expected 0 < mfu <= 1", self.mfu));
        }
        if !(self.tokens.is_finite() && self.tokens > 0.0) {
            return bad("--tokens", format!("invalid value {}; expected a positive number", self.tokens));
        }
        if !(self.hardware.peak_fp32_flops.is_finite() && self.hardware.peak_fp32_flops > 0.0) {
            return bad("--peak-tflops", "the device peak must be a positive number".into());
        }
        self.checkpointing.check(self.spec.n_layer, "--activation-checkpointing")?;
        if self.hardware.is_cpu && self.precision != Precision::Fp32 {
            return bad("--precision", "lmforge trains in fp32 on the CPU".into());
        }
        // What the trainer refuses on every device (`train.activation_checkpointing`,
        // `distributed.zero`), so no plan counts on it.
        if self.checkpointing.is_on() && !self.is_decoder() {
            return bad("--activation-checkpointing", "lmforge checkpoints the blocks of decoder models only".into());
        }
        if self.zero >= 3 && !self.is_decoder() {
            return bad("--zero", "ZeRO-3 shards the layers of decoder models (GPT-2, Llama); use 2".into());
        }
        Ok(())
    }

    /// Sequences per optimizer step over all devices; on the CPU the processes split each
    /// micro-batch (`train.batch_size` is global).
    pub fn global_batch(&self) -> usize {
        self.micro_batch * self.grad_accum * if self.hardware.is_cpu { 1 } else { self.gpus }
    }

    /// Whether a decoder's blocks train through the fused sublayer nodes (no dropout; the CPU's
    /// kernels or the GPU's `ops::device_sublayer`), which add their layers' gradients in place
    /// and keep no cast copy of their weights; with dropout the layers run composed.
    fn fused_sublayers(&self) -> bool {
        self.is_decoder() && !self.dropout
    }

    /// A decoder (GPT-2, Llama): the only models the trainer recomputes or shards with ZeRO-3.
    fn is_decoder(&self) -> bool {
        self.spec.arch().family() == Family::Decoder
    }

    fn fits(&self) -> bool {
        memory(self).total() <= self.hardware.memory_bytes
    }

    /// Whether recomputing more blocks is a change this request can still make: it does not
    /// recompute every one already, and the trainer checkpoints this model (decoder blocks
    /// only: `nn::recompute`).
    fn can_recompute_more(&self) -> bool {
        self.checkpointing != Checkpointing::All && self.is_decoder()
    }

    /// The highest ZeRO stage the trainer runs this model at: 3 shards decoder layers only.
    fn max_zero(&self) -> u8 {
        if self.is_decoder() {
            3
        } else {
            2
        }
    }

    /// This request recomputing the fewest blocks beyond what it does that make it fit, or,
    /// when no count fits on its own, every block (the start of the combined changes).
    fn recomputing_more(&self) -> PlanRequest {
        let n = self.spec.n_layer;
        let with = |k: usize| PlanRequest {
            checkpointing: if k >= n { Checkpointing::All } else { Checkpointing::first(k) },
            ..self.clone()
        };
        (checkpointing(self).blocks(n) + 1..=n).map(with).find(PlanRequest::fits).unwrap_or_else(|| with(n))
    }
}

/// Per-device memory (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryBreakdown {
    /// The f32 weights (the master copy) plus, in mixed precision, their bf16 working copies.
    pub weights: u64,
    pub gradients: u64,
    pub optimizer_state: u64,
    /// Activations kept for backward under the chosen setting.
    pub activations: u64,
    pub activations_without_checkpointing: u64,
    pub activations_with_checkpointing: u64,
    /// On a GPU the larger of the LM loss's transient peak and the optimizer update's
    /// temporaries; on the CPU the backward workspace.
    pub temporary_buffers: u64,
    pub framework_overhead: u64,
}

impl MemoryBreakdown {
    pub fn total(&self) -> u64 {
        self.weights
            + self.gradients
            + self.optimizer_state
            + self.activations
            + self.temporary_buffers
            + self.framework_overhead
    }
}

/// Communication buffers of one message on the CPU with several processes: the flattened
/// bucket, MPI's copy of it and the received values (a bucket is `bucket_bytes`, or one
/// larger parameter alone: the token embedding, usually).
fn cpu_comm_buffers(req: &PlanRequest) -> u64 {
    if req.gpus < 2 {
        return 0;
    }
    let largest = req.spec.params().iter().map(|p| 4 * p.numel() as u64).max().unwrap_or(0);
    3 * largest.max(req.bucket_bytes)
}

/// Elements of the decoder layers' parameters in all, and of one layer.
fn layer_params(spec: &ModelSpec) -> (u64, u64) {
    let layers: u64 = spec
        .params()
        .iter()
        .filter(|p| crate::distributed::zero3::layer_index(&p.name).is_some())
        .map(|p| p.numel() as u64)
        .sum();
    (layers, layers / spec.n_layer.max(1) as u64)
}

/// Model-state bytes per process of lmforge's trainer (CPU or GPU) on `n` processes at ZeRO
/// stage `zero` (f32 weights — the master copy — and f32 gradients, `state` optimizer bytes in
/// all): stage 1 shards the optimizer state; 2 adds each process's share of the gradients
/// accumulated over micro-batches to one micro-batch's full gradients (the backward produces
/// them all before they are reduce-scattered) — or, when they are `streamed` (reduced during
/// the backward: `distributed.overlap`, the CPU's fused sublayers, no dropout), to the full
/// gradients of the parameters outside the layers (they come at the end) and of two layers in
/// flight; 3 keeps the decoder layers' weights and gradients sharded, plus two gathered
/// layers' weights (the one in use and the next, prefetched) and three layers' full gradients
/// (the one being computed, two waiting for their reduce-scatter), the rest (embeddings, final
/// norm, head) whole. (The ZeRO paper's accounting — 2-byte weights and gradients, a 12-byte
/// K with the master copy sharded — is not what lmforge keeps; `plan/README.md`.)
pub fn trainer_model_states(spec: &ModelSpec, state: u64, zero: u8, n: u64, streamed: bool) -> (u64, u64, u64) {
    let n = n.max(1);
    let psi = spec.num_params();
    let (layers, one_layer) = layer_params(spec);
    let optimizer = if zero >= 1 && n > 1 { state.div_ceil(n) } else { state };
    if n == 1 || zero < 2 {
        return (4 * psi, 4 * psi, optimizer);
    }
    if zero == 2 {
        let full = if streamed { 4 * (psi - layers) + 2 * 4 * one_layer } else { 4 * psi };
        return (4 * psi, full + 4 * psi.div_ceil(n), optimizer);
    }
    let sharded = 4 * (psi - layers) + 4 * layers.div_ceil(n);
    (sharded + 2 * 4 * one_layer, sharded + 3 * 4 * one_layer, optimizer)
}

/// Gradient bytes a process holds twice while a step accumulates micro-batches without ZeRO-2
/// or 3's per-micro-batch reductions (`train::step`; one process runs no ZeRO): a decoder's
/// layers' gradients, from its fused sublayers (no dropout) or checkpointed blocks, are added
/// in place as the backward produces them; the rest come in candle's store, a micro-batch's
/// whole set beside the sum. (ZeRO-2's own accounting is `trainer_model_states`'.)
pub fn accumulation_bytes(req: &PlanRequest) -> u64 {
    let reduced_each_micro_batch =
        req.gpus > 1 && (req.zero >= 3 || (req.zero == 2 && req.compress != Compression::PowerSgd));
    if req.grad_accum <= 1 || reduced_each_micro_batch {
        return 0;
    }
    let spec = &req.spec;
    let in_place_layers = match spec.arch().family() {
        Family::Decoder if req.fused_sublayers() => spec.n_layer,
        Family::Decoder => req.checkpointing.blocks(spec.n_layer),
        _ => 0,
    };
    let (_, one_layer) = layer_params(spec);
    4 * (spec.num_params() - in_place_layers as u64 * one_layer)
}

/// Bytes of the bf16 copies of the weights a step holds at its peak under `bf16-mixed`: each
/// product casts its f32 weight to the compute dtype.
///
/// A decoder's fused sublayers (no dropout: how a GPU trains GPT-2 and Llama,
/// `ops::device_sublayer`) cast a weight for each product and drop the copy after it, and cast
/// it again in the backward, so at most one copy — the largest matrix of a layer — exists at a
/// time; the embeddings are gathered in f32 and cast as rows, and the LM loss's copy of the
/// head is its transient (`lm_loss_bytes`). The composed layers (dropout, BERT) cast through a
/// graph node (`ops::like`) whose copy lives as long as the step's graph — every parameter's
/// until the backward ends, except a recomputed block's (checkpointing, and ZeRO-3, which
/// checkpoints every block): its copies go with its forward's graph, and exist again for one
/// block at a time while it is recomputed.
pub fn working_copies(req: &PlanRequest) -> u64 {
    let (spec, precision) = (&req.spec, req.precision);
    if precision.is_fp32() {
        return 0;
    }
    if req.fused_sublayers() {
        return precision.bytes() * largest_layer_matrix(spec);
    }
    let (layers, one_layer) = layer_params(spec);
    let blocks = checkpointing(req).kept_activations(spec.n_layer, 0, one_layer);
    precision.bytes() * (spec.num_params() - layers + blocks)
}

/// Elements of the largest parameter inside a layer (a decoder's MLP matrix).
fn largest_layer_matrix(spec: &ModelSpec) -> u64 {
    let in_layer = |p: &&crate::nn::ParamInfo| crate::distributed::zero3::layer_index(&p.name).is_some();
    spec.params().iter().filter(in_layer).map(|p| p.numel() as u64).max().unwrap_or(0)
}

/// The LM loss on a GPU (`ops::lm_loss`, rows a chunk of up to
/// `ops::lm_loss::GPU_CHUNK_ELEMENTS` logits at a time): what it keeps for the backward — d
/// hidden in the compute dtype (`e` bytes, `tokens` × h) and d head in f32 (v × h), whose sum
/// each chunk's product adds to in place (`ops::weight_grad`) — and its transient peak: a
/// chunk's logits and their gradient, and the head in the compute dtype.
pub fn lm_loss_bytes(spec: &ModelSpec, tokens: u64, e: u64) -> (u64, u64) {
    let (h, v) = (spec.d_model as u64, spec.vocab_size as u64);
    let rows = (crate::ops::lm_loss::GPU_CHUNK_ELEMENTS as u64 / v.max(1)).clamp(1, tokens.max(1));
    let kept = e * tokens * h + 4 * v * h;
    (kept, 2 * e * rows * v + e * v * h)
}

/// Activation bytes one layer keeps for backward (Korthikanti et al. 2022, §4.1, no tensor or
/// sequence parallelism): `sbh(34 + 5as/h)` in 16-bit for GPT with dropout, generalised to
/// element size `e`, separate q / kv widths (GQA), the MLP's width and kind, and without
/// dropout no masks and no attention scores (the fused attention keeps a log-sum-exp per row).
pub fn layer_activation_bytes(spec: &ModelSpec, b: u64, s: u64, e: u64, dropout: bool) -> u64 {
    let (h, f, a) = (spec.d_model as u64, spec.d_ff as u64, spec.n_head as u64);
    let q = (spec.n_head * spec.head_dim) as u64;
    let kv = (spec.n_kv_head * spec.head_dim) as u64;
    let sb = s * b;
    let mask = u64::from(dropout);
    let norms = 2 * e * sb * h;
    // QKV input, Q and K, V, the output projection's input; the softmax output, or without
    // dropout (where lmforge's fused attention runs: no score matrix, see ops::sdpa) the f32
    // log-sum-exp of every score row; dropout: the score mask and dropped scores, the residual
    // branch's mask.
    let materialised = dropout || spec.head_dim > crate::ops::sdpa::CUDA_MAX_HEAD_DIM;
    let scores = if materialised { e * a * s * s * b } else { 4 * a * s * b };
    let attention = e * sb * (h + q + kv + kv + q) + scores + mask * (a * s * s * b + e * a * s * s * b + sb * h);
    // GELU: its input and output; SwiGLU: gate, up, SiLU(gate), product.
    let mlp = e * sb * h + spec.arch().mlp_activations() * e * sb * f + mask * sb * h;
    norms + attention + mlp
}

/// Per-device memory of `req`.
pub fn memory(req: &PlanRequest) -> MemoryBreakdown {
    let spec = &req.spec;
    let (b, s) = (req.micro_batch as u64, req.seq_len as u64);
    let state = optimizer_state_bytes(spec, &req.optim);
    if req.hardware.is_cpu {
        // `--gpus` processes (`mpirun -np N`), each computing its share of the micro-batch's rows.
        let rows = crate::distributed::split_rows(req.micro_batch, req.gpus, 0).len();
        let estimate = |ckpt| spec.cpu_train_memory(rows, req.seq_len, state, ckpt);
        let (m, without, with) =
            (estimate(checkpointing(req)), estimate(Checkpointing::Off), estimate(Checkpointing::All));
        let streamed = req.overlap && !req.dropout;
        let (weights, gradients, optimizer_state) =
            trainer_model_states(spec, state, req.zero, req.gpus as u64, streamed);
        return MemoryBreakdown {
            weights,
            gradients: gradients + accumulation_bytes(req),
            optimizer_state,
            activations: m.activations,
            activations_without_checkpointing: without.activations,
            activations_with_checkpointing: with.activations,
            temporary_buffers: m.backward_workspace + cpu_comm_buffers(req),
            framework_overhead: m.runtime,
        };
    }
    let e = req.precision.bytes();
    // On a GPU the gradients come at the end of candle's backward (no fused sublayers streaming
    // them), and ZeRO-3 checkpoints every layer, as on the CPU.
    let checkpointed = checkpointing(req);
    let (weights, gradients, optimizer_state) = trainer_model_states(spec, state, req.zero, req.gpus as u64, false);
    let layer = layer_activation_bytes(spec, b, s, e, req.dropout);
    // Outside the layers: the final norm's input and output, and what the chunked LM loss keeps
    // (no (s·b, v) logits: Korthikanti's §4.3 4sbv is never held).
    let (loss_kept, loss_transient) = lm_loss_bytes(spec, s * b, e);
    // The optimizer runs after the backward, when the loss's buffers are free again.
    let largest = spec.params().iter().map(|p| p.numel() as u64).max().unwrap_or(0);
    let update_transient = (4.0 * largest as f64 * req.optim.update_temporaries()).ceil() as u64;
    let output = 2 * e * s * b * spec.d_model as u64 + loss_kept;
    // Recomputation (§4.2): a recomputed layer keeps its input (sbh elements), and one layer
    // is rebuilt at a time.
    let kept = |c: Checkpointing| c.kept_activations(spec.n_layer, e * s * b * spec.d_model as u64, layer) + output;
    let (without, with) = (kept(Checkpointing::Off), kept(Checkpointing::All));
    MemoryBreakdown {
        weights: weights + working_copies(req),
        gradients: gradients + accumulation_bytes(req),
        optimizer_state,
        activations: kept(checkpointed),
        activations_without_checkpointing: without,
        activations_with_checkpointing: with,
        temporary_buffers: loss_transient.max(update_transient),
        framework_overhead: GPU_FRAMEWORK_OVERHEAD,
    }
}

/// A change to the request that makes it fit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    /// e.g. "--activation-checkpointing --zero 3 --gpus 16".
    pub change: String,
    pub memory_per_device_bytes: u64,
    /// Sequences per optimizer step after the change (changes with --gpus).
    pub global_batch: usize,
}

impl Suggestion {
    /// The change from `from` to `to`, with `to`'s memory and global batch.
    fn of(from: &PlanRequest, to: &PlanRequest) -> Self {
        Self {
            change: describe_change(from, to),
            memory_per_device_bytes: memory(to).total(),
            global_batch: to.global_batch(),
        }
    }
}

/// `r` with its micro-batch halved, again and again down to 1, the accumulation raised to keep
/// the sequences per device and step.
fn smaller_batches(r: &PlanRequest) -> Vec<PlanRequest> {
    let mut out = Vec::new();
    let mut mb = r.micro_batch;
    while mb > 1 {
        mb /= 2;
        let per_device = r.micro_batch * r.grad_accum;
        out.push(PlanRequest { micro_batch: mb, grad_accum: per_device.div_ceil(mb), ..r.clone() });
    }
    out
}

/// The smallest change that makes `req` fit: recomputing blocks (the fewest that fit), a
/// higher ZeRO stage, a smaller micro-batch (more accumulation, same global batch), more GPUs
/// (powers of two up to [`MAX_GPUS`]) — each alone first, in that order, then combined with
/// every block recomputed. None when nothing does.
pub fn suggest(req: &PlanRequest) -> Option<Suggestion> {
    let more_gpus = |r: &PlanRequest| -> Vec<PlanRequest> {
        let mut out = Vec::new();
        let mut g = r.gpus.next_power_of_two();
        if g == r.gpus {
            g *= 2;
        }
        while g <= MAX_GPUS && !r.hardware.is_cpu {
            out.push(PlanRequest { gpus: g, ..r.clone() });
            g *= 2;
        }
        out
    };
    let ckpt = |r: &PlanRequest| match r.can_recompute_more() {
        true => PlanRequest { checkpointing: Checkpointing::All, ..r.clone() },
        false => r.clone(),
    };
    let zero = |r: &PlanRequest, z: u8| PlanRequest { zero: z, ..r.clone() };
    let mut tries: Vec<PlanRequest> = Vec::new();
    if req.can_recompute_more() {
        tries.push(req.recomputing_more());
    }
    if !req.hardware.is_cpu {
        tries.extend((req.zero + 1..=req.max_zero()).map(|z| zero(req, z)));
    }
    tries.extend(smaller_batches(req));
    tries.extend(more_gpus(req));
    if !req.hardware.is_cpu {
        let both = zero(&ckpt(req), req.zero.max(req.max_zero()));
        tries.push(both.clone());
        tries.extend(smaller_batches(&both));
        tries.extend(more_gpus(&both));
        let smallest = PlanRequest { micro_batch: 1, grad_accum: req.micro_batch * req.grad_accum, ..both };
        tries.extend(more_gpus(&smallest));
    }
    let found = tries.into_iter().find(PlanRequest::fits)?;
    Some(Suggestion::of(req, &found))
}

/// The same job on the same devices with Adafactor instead of the optimizer asked for — its
/// factored second moment keeps a few bytes per matrix row and column where AdamW keeps 8 per
/// parameter — alone, recomputing the fewest blocks that fit, then with smaller micro-batches: the
/// smallest honest change when adding devices is not an option. A change of optimizer is a
/// change of the training itself, so it is offered beside [`suggest`]'s, not instead of it.
/// None when the optimizer's state is no larger than Adafactor's, or nothing fits.
pub fn suggest_optimizer(req: &PlanRequest) -> Option<Suggestion> {
    let cfg = OptimConfig { name: "adafactor".into(), ..OptimConfig::default() };
    let adafactor = OptimSpec::from_config(&cfg).expect("Adafactor's defaults resolve");
    if optimizer_state_bytes(&req.spec, &adafactor) >= optimizer_state_bytes(&req.spec, &req.optim) {
        return None;
    }
    let lighter = PlanRequest { optim: adafactor, ..req.clone() };
    let mut tries = vec![lighter.clone()];
    if lighter.can_recompute_more() {
        tries.push(lighter.recomputing_more());
    }
    let base = tries.last().expect("one try").clone();
    tries.extend(smaller_batches(&base));
    let found = tries.into_iter().find(PlanRequest::fits)?;
    Some(Suggestion::of(req, &found))
}

/// The blocks a request recomputes: ZeRO-3 recomputes every one (a layer's weights are
/// gathered again for its backward), whatever was asked.
fn checkpointing(req: &PlanRequest) -> Checkpointing {
    if req.zero >= 3 {
        Checkpointing::All
    } else {
        req.checkpointing
    }
}

/// For a request that fits and recomputes blocks: the fewest blocks it can recompute and still
/// fit, when that is fewer (Megatron-LM's `--recompute-num-layers`, chosen for the memory at
/// hand). Activations grow with each block not recomputed, so the first count that fits, from
/// none up, is the fewest. None under ZeRO-3, which recomputes every block.
pub fn fewer_recomputed(req: &PlanRequest) -> Option<Suggestion> {
    let asked = checkpointing(req).blocks(req.spec.n_layer);
    if asked == 0 || req.zero >= 3 {
        return None;
    }
    let found = (0..asked)
        .map(|n| PlanRequest { checkpointing: Checkpointing::first(n), ..req.clone() })
        .find(PlanRequest::fits)?;
    Some(Suggestion::of(req, &found))
}

/// The flags that turn `from` into `to`.
fn describe_change(from: &PlanRequest, to: &PlanRequest) -> String {
    let mut parts = Vec::new();
    if to.checkpointing != from.checkpointing {
        parts.push(match to.checkpointing {
            Checkpointing::All => "--activation-checkpointing".to_string(),
            Checkpointing::First(n) => format!("--activation-checkpointing {n}"),
            Checkpointing::Off => "--activation-checkpointing off".to_string(),
        });
    }
    if to.zero != from.zero {
        parts.push(format!("--zero {}", to.zero));
    }
    if to.micro_batch != from.micro_batch {
        parts.push(format!("--micro-batch {} --grad-accum {}", to.micro_batch, to.grad_accum));
    }
    if to.gpus != from.gpus {
        parts.push(format!("--gpus {}", to.gpus));
    }
    if to.optim.name() != from.optim.name() {
        parts.push(format!("--optim {}", to.optim.name()));
    }
    parts.join(" ")
}

/// The whole plan, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub model: String,
    pub parameters: u64,
    pub parameters_by_component: ParamBreakdown,
    pub optimizer: String,
    pub device: String,
    pub gpus: usize,
    pub zero: u8,
    pub precision: Precision,
    pub micro_batch: usize,
    pub seq_len: usize,
    pub grad_accum: usize,
    /// Sequences per optimizer step over all devices.
    pub global_batch: usize,
    /// `false`, `true` (every block) or the number of blocks recomputed.
    pub activation_checkpointing: Checkpointing,
    pub memory: MemoryBreakdown,
    pub memory_per_device_bytes: u64,
    /// Bytes each device (process) sends per optimizer step (`comm::bytes_per_step`).
    pub communication_bytes_per_step: u64,
    /// Gradient compression (`distributed.compress`).
    pub compress: Compression,
    pub device_memory_bytes: u64,
    pub fits: bool,
    /// The smallest change of devices, sharding, checkpointing or micro-batch that fits.
    pub suggestion: Option<Suggestion>,
    /// Or, on the same devices, a lighter optimizer ([`suggest_optimizer`]).
    pub optimizer_suggestion: Option<Suggestion>,
    /// When it fits with blocks recomputed: recomputing fewer that still fits
    /// ([`fewer_recomputed`]), each block fewer a block's forward less a step.
    pub fewer_recomputed: Option<Suggestion>,
    /// Training FLOPs per token: 6 × (non-embedding parameters + tied head) + 12·L·s·h attention.
    pub flops_per_token: f64,
    pub peak_flops_per_device: f64,
    pub mfu: f64,
    pub tokens: f64,
    pub tokens_per_s: f64,
    pub training_seconds: f64,
    pub gpu_hours: f64,
    pub cost: Option<f64>,
}

/// Plans `req`.
pub fn plan(req: &PlanRequest) -> Result<Plan> {
    req.validate()?;
    let mem = memory(req);
    let total = mem.total();
    let fits = total <= req.hardware.memory_bytes;
    let flops_per_token = req.spec.train_flops_per_token(req.seq_len);
    let peak = match req.precision {
        Precision::Fp32 => req.hardware.peak_fp32_flops,
        Precision::Bf16Mixed => req.hardware.peak_bf16_flops,
    };
    let tokens_per_s = req.mfu * peak * req.gpus as f64 / flops_per_token;
    let training_seconds = req.tokens / tokens_per_s;
    let gpu_hours = training_seconds * req.gpus as f64 / 3600.0;
    Ok(Plan {
        model: req.model.clone(),
        parameters: req.spec.num_params(),
        parameters_by_component: req.spec.param_breakdown(),
        optimizer: req.optim.name().to_string(),
        device: req.hardware.name.clone(),
        gpus: req.gpus,
        zero: req.zero,
        precision: req.precision,
        micro_batch: req.micro_batch,
        seq_len: req.seq_len,
        grad_accum: req.grad_accum,
        global_batch: req.global_batch(),
        activation_checkpointing: req.checkpointing,
        memory: mem,
        memory_per_device_bytes: total,
        communication_bytes_per_step: comm::bytes_per_step(
            &req.spec,
            &comm::CommRequest {
                processes: req.gpus as u64,
                zero: req.zero,
                grad_accum: req.grad_accum as u64,
                compress: req.compress,
                powersgd_rank: req.powersgd_rank,
            },
        ),
        compress: req.compress,
        device_memory_bytes: req.hardware.memory_bytes,
        fits,
        suggestion: if fits { None } else { suggest(req) },
        optimizer_suggestion: if fits { None } else { suggest_optimizer(req) },
        fewer_recomputed: if fits { fewer_recomputed(req) } else { None },
        flops_per_token,
        peak_flops_per_device: peak,
        mfu: req.mfu,
        tokens: req.tokens,
        tokens_per_s,
        training_seconds,
        gpu_hours,
        cost: req.price_per_gpu_hour.map(|p| p * gpu_hours),
    })
}

#[cfg(test)]
mod tests;
