//! `lmforge bench`: training throughput and memory on this machine, comparable with
//! `../shared/bench/pytorch_gpt_bench.py` (same shapes, same step: loss → backward → global-norm
//! clip 1.0 → AdamW lr 3e-4, weight decay 0.1 on every tensor, one fixed random batch). Another
//! optimizer can stand in for AdamW (`optim`, with its own defaults) to measure a model whose
//! AdamW state does not fit the device.
//!
//! Timing is per optimizer step after `warmup` untimed steps; tokens/s is tokens × steps over
//! the summed step times (as the PyTorch script computes it). Peak RSS is the process's
//! high-water mark (`VmHWM`), so it includes everything the process ever held, as
//! `ru_maxrss` does on the PyTorch side. MFU is achieved model FLOP/s (the 6·N + attention
//! estimate of [`ModelSpec::train_flops_per_token`]) over the measured fp32 matmul rate on the
//! CPU, and over the GPU's dense peak on CUDA (989 TFLOP/s bf16, 67 fp32: H100 / H200, as the
//! PyTorch script assumes). On a GPU each timed step ends with a device synchronisation.

use crate::device::{DeviceChoice, Precision};
use crate::distributed::{DataParallel, DistributedConfig, SingleProcess};
use crate::error::{Error, Result};
use crate::models::ModelSpec;
use crate::nn::recompute::Checkpointing;
use crate::nn::{InitScheme, ParamStore};
use crate::ops::{self, Kernels};
use crate::optim::groups::uniform_groups;
use crate::optim::OptimSpec;
use crate::train::lm::{CausalBatches, CausalLm, Initial, LmWeights};
use crate::train::step::{self, Phase, StepAt};
use crate::train::{RunConfig, Task};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::Instant;

/// What `bench train` runs.
#[derive(Debug, Clone)]
pub struct TrainBenchOptions {
    pub preset: String,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first (allocator and caches warm up).
    pub warmup: usize,
    /// Sequences per step (default 8, the PyTorch reference's batch).
    pub batch: usize,
    pub kernels: Kernels,
    /// Blocks whose activations are recomputed in the backward (`nn::recompute`).
    pub activation_checkpointing: Checkpointing,
    /// Break the timed steps down by phase and fused kernel ([`StepProfile`]).
    pub profile: bool,
    /// Where it runs (`--device`).
    pub device: DeviceChoice,
    /// fp32 or bf16-mixed (`--precision`).
    pub precision: Precision,
    /// The optimizer's name (`optim::NAMES`, `--optim`): AdamW as the PyTorch script's, any
    /// other with its defaults, at the same learning rate and weight decay.
    pub optim: String,
}

impl Default for TrainBenchOptions {
    fn default() -> Self {
        Self {
            preset: "bench-gpt".into(),
            steps: 10,
            warmup: 3,
            batch: 8,
            kernels: Kernels::Fused,
            activation_checkpointing: Checkpointing::Off,
            profile: false,
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
            optim: "adamw".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchReport {
    pub preset: String,
    /// "cpu" / "cuda".
    pub device: String,
    /// "fp32" / "bf16-mixed".
    pub precision: &'static str,
    /// The optimizer's name.
    pub optimizer: &'static str,
    pub kernels: &'static str,
    /// `false`, `true` (every block) or the number of blocks recomputed.
    pub activation_checkpointing: Checkpointing,
    pub parameters: u64,
    pub threads: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub steps: usize,
    pub warmup: usize,
    pub tokens_per_s: f64,
    pub step_ms_median: f64,
    pub step_ms_min: f64,
    pub step_ms_max: f64,
    pub peak_rss_bytes: u64,
    /// On a GPU: the memory pool's high-water marks over the timed steps (`device::pool_peaks`:
    /// live tensors at once, and what the pool held), the figures `plan --gpu` predicts less
    /// its framework overhead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_device_used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_device_reserved_bytes: Option<u64>,
    pub flops_per_token: f64,
    pub achieved_gflops: f64,
    /// The rate MFU is measured against: the CPU's measured fp32 matmul rate, or the GPU's
    /// dense peak for the precision.
    pub matmul_peak_gflops: f64,
    pub mfu: f64,
    pub first_loss: f64,
    pub last_loss: f64,
    /// How busy the cores were over the timed steps: the process's CPU time over wall time ×
    /// threads (1.0 = every thread computing or spinning all the time); None where the OS
    /// does not say.
    pub cpu_utilization: Option<f64>,
    /// With `profile`: where the timed steps went.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<StepProfile>,
}

/// Where a step's wall time goes, averaged over the timed steps: the step's phases, and
/// within them each fused kernel's pass (`ops::profile`). A phase's time not spent in the
/// kernels listed under it is candle's (its own ops, the autograd bookkeeping, allocation).
#[derive(Debug, Clone, Serialize)]
pub struct StepProfile {
    pub forward_ms: f64,
    pub backward_ms: f64,
    /// Collecting the gradients by name and global-norm clipping.
    pub grads_ms: f64,
    pub optimizer_ms: f64,
    /// Core utilisation of each phase (as [`TrainBenchReport::cpu_utilization`]), in the
    /// order forward, backward, gradients, optimizer.
    pub cpu_utilization: Option<[f64; 4]>,
    pub ops: Vec<OpProfile>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OpProfile {
    pub op: &'static str,
    pub pass: ops::profile::Pass,
    pub calls_per_step: f64,
    pub ms_per_step: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MatmulBenchReport {
    pub n: usize,
    pub threads: usize,
    pub gflops: f64,
}

/// Sustained fp32 matmul rate of this machine (1024² products through candle, all cores).
pub fn bench_matmul() -> Result<MatmulBenchReport> {
    let flops = crate::plan::measure_cpu_matmul_flops()?;
    Ok(MatmulBenchReport { n: 1024, threads: candle_core::utils::get_num_threads(), gflops: flops / 1e9 })
}

/// Trains `opts.preset` from a seeded init on one seeded random batch and measures it.
pub fn bench_train(opts: &TrainBenchOptions) -> Result<TrainBenchReport> {
    let spec = ModelSpec::preset(&opts.preset)
        .ok_or_else(|| Error::config("--preset", format!("unknown preset {:?}", opts.preset)))?;
    if opts.steps == 0 || opts.batch == 0 {
        return Err(Error::Invalid("bench needs at least one step and one sequence".into()));
    }
    opts.activation_checkpointing.check(spec.n_layer, "--activation-checkpointing")?;
    let _kernels = ops::KernelsGuard::set(opts.kernels);
    let device = opts.device.resolve("--device")?;
    let (b, t) = (opts.batch, spec.context);
    let (x, y) = random_batch(&spec, b, t, &device)?;
    let params =
        ParamStore::init(&spec.params(), InitScheme::Gpt2, spec.n_layer, 0, &device)?.with_precision(opts.precision);
    let weights = LmWeights {
        spec: spec.clone(),
        params,
        init: Initial::Scheme(InitScheme::Gpt2, 0),
        tokenizer: None,
        layers: None,
    };
    let fixed = CausalBatches::Fixed { x, y };
    let task = CausalLm::new(weights, opts.activation_checkpointing, fixed, b, t, Vec::new(), 1.0)?;
    let cfg = RunConfig::from_toml_str(&optim_section(&opts.optim), &[])?;
    let optim = OptimSpec::from_config(&cfg.optim)?;
    let dp = DataParallel::new(std::sync::Arc::new(SingleProcess), &DistributedConfig::default(), task.params(), b)?;
    let groups = uniform_groups(task.params().vars(), cfg.optim.weight_decay);
    let optimizer_name = optim.name();
    let mut optimizer = dp.optimizer_of(optim, groups)?;

    // The trainer's step (`train::step`) on the fixed batch, then the update; `phases`
    // accumulates the wall and CPU time of its four phases.
    let mut phases = Phases::default();
    let profiling_gpu = opts.profile && device.is_cuda();
    let at = StepAt { step: 0, grad_accum: 1, seed: 0, dropout: 0.0, grad_clip: 1.0 };
    let mut step = |phases: &mut Phases| -> Result<f64> {
        let mut clock = (Instant::now(), process_cpu_seconds());
        let mut lap = |i: usize| {
            // A GPU runs a phase after the host queued it: profiled, each phase is waited for,
            // so that its time is the GPU's. (A failure here fails the step's own wait below.)
            if profiling_gpu {
                let _ = device.synchronize();
            }
            let now = (Instant::now(), process_cpu_seconds());
            phases.wall[i] += (now.0 - clock.0).as_secs_f64();
            phases.cpu[i] = match (phases.cpu[i], now.1, clock.1) {
                (Some(total), Some(b), Some(a)) => Some(total + (b - a)),
                _ => None,
            };
            clock = now;
        };
        let g = step::gradients(&task, &dp, at, &mut |phase| {
            lap(match phase {
                Phase::Forward => 0,
                Phase::Backward => 1,
                Phase::Grads => 2,
            })
        })?;
        dp.step(&mut optimizer, &g.grads, g.grad_scale, 3e-4)?;
        lap(3);
        Ok(g.loss)
    };
    let mut losses = Vec::with_capacity(opts.warmup + opts.steps);
    for _ in 0..opts.warmup {
        losses.push(step(&mut Phases::default())?);
    }
    ops::profile::set_enabled_on(&device, opts.profile);
    // The warmup's first steps (the pool growing, modules loading) are not what a run keeps.
    device.synchronize()?;
    crate::device::reset_pool_peaks(&device);
    let mut times = Vec::with_capacity(opts.steps);
    for _ in 0..opts.steps {
        let started = Instant::now();
        losses.push(step(&mut phases)?);
        device.synchronize()?;
        times.push(started.elapsed().as_secs_f64());
    }
    let pool = crate::device::pool_peaks(&device);
    let op_times = ops::profile::take();
    ops::profile::set_enabled(false);
    let threads = rayon::current_num_threads().max(1) as f64;
    let busy = |cpu: Option<f64>, wall: f64| cpu.map(|c| c / (wall * threads).max(f64::MIN_POSITIVE));
    let cpu_utilization = busy(phases.cpu.iter().copied().sum(), phases.wall.iter().sum());
    let profile = opts.profile.then(|| {
        let per_step = |s: f64| 1e3 * s / opts.steps as f64;
        let by_phase: Option<Vec<f64>> = (0..4).map(|i| busy(phases.cpu[i], phases.wall[i])).collect();
        StepProfile {
            forward_ms: per_step(phases.wall[0]),
            backward_ms: per_step(phases.wall[1]),
            grads_ms: per_step(phases.wall[2]),
            optimizer_ms: per_step(phases.wall[3]),
            cpu_utilization: by_phase.map(|v| [v[0], v[1], v[2], v[3]]),
            ops: op_times
                .into_iter()
                .map(|t| OpProfile {
                    op: t.name,
                    pass: t.pass,
                    calls_per_step: t.calls as f64 / opts.steps as f64,
                    ms_per_step: per_step(t.seconds),
                })
                .collect(),
        }
    });
    let matmul = match &device {
        Device::Cpu => bench_matmul()?,
        _ => MatmulBenchReport {
            n: 0,
            threads: candle_core::utils::get_num_threads(),
            gflops: if opts.precision.is_fp32() { 67e3 } else { 989e3 },
        },
    };
    let tokens = (b * t) as f64;
    let total: f64 = times.iter().sum();
    let tokens_per_s = tokens * opts.steps as f64 / total;
    let flops_per_token = spec.train_flops_per_token(t);
    let achieved_gflops = flops_per_token * tokens_per_s / 1e9;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(TrainBenchReport {
        preset: opts.preset.clone(),
        device: crate::device::device_name(&device).into(),
        precision: opts.precision.name(),
        optimizer: optimizer_name,
        kernels: opts.kernels.name(),
        activation_checkpointing: opts.activation_checkpointing,
        parameters: spec.num_params(),
        threads: matmul.threads,
        batch: b,
        seq_len: t,
        steps: opts.steps,
        warmup: opts.warmup,
        tokens_per_s,
        step_ms_median: 1e3 * sorted[sorted.len() / 2],
        step_ms_min: 1e3 * sorted[0],
        step_ms_max: 1e3 * sorted[sorted.len() - 1],
        peak_rss_bytes: peak_rss_bytes().unwrap_or(0),
        peak_device_used_bytes: pool.map(|p| p.used),
        peak_device_reserved_bytes: pool.map(|p| p.reserved),
        flops_per_token,
        achieved_gflops,
        matmul_peak_gflops: matmul.gflops,
        mfu: achieved_gflops / matmul.gflops,
        first_loss: losses[0],
        last_loss: *losses.last().expect("at least one step"),
        cpu_utilization,
        profile,
    })
}

/// The bench's `[optim]`: PyTorch's AdamW (β 0.9 / 0.999, ε 1e-8), or `name` with its defaults;
/// weight decay 0.1 either way. The name is quoted by TOML's own escaping, so a wrong one is
/// `optim.name`'s error.
fn optim_section(name: &str) -> String {
    let betas = if name == "adamw" { "beta1 = 0.9\nbeta2 = 0.999\neps = 1e-8\n" } else { "" };
    format!("[optim]\nname = {}\n{betas}weight_decay = 0.1\n", toml::Value::from(name))
}

/// Wall and process CPU seconds of the step's four phases, summed over steps (CPU: None once
/// a reading failed).
struct Phases {
    wall: [f64; 4],
    cpu: [Option<f64>; 4],
}

impl Default for Phases {
    fn default() -> Self {
        Self { wall: [0.0; 4], cpu: [Some(0.0); 4] }
    }
}

/// User + system CPU time of this process so far, all threads.
fn process_cpu_seconds() -> Option<f64> {
    #[cfg(unix)]
    {
        // SAFETY: rusage is plain data (zero is valid) and getrusage only writes it.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            return Some(secs(u.ru_utime) + secs(u.ru_stime));
        }
    }
    None
}

/// One fixed batch of uniform random token ids (B, T) and its shifted targets, seeded.
fn random_batch(spec: &ModelSpec, b: usize, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let toks: Vec<u32> = (0..b * (t + 1)).map(|_| rng.random_range(0..spec.vocab_size as u32)).collect();
    let toks = Tensor::from_vec(toks, (b, t + 1), device)?;
    Ok((toks.narrow(1, 0, t)?.contiguous()?, toks.narrow(1, 1, t)?.contiguous()?))
}

/// The process's peak resident set (`VmHWM` in /proc/self/status), None where unavailable.
pub fn peak_rss_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// A short human-readable report.
pub fn table(r: &TrainBenchReport) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let mut out = format!(
        "preset        {} ({} parameters, {}, {}, {} kernels{}, {} threads)\n\
         batch         {} x {} tokens, {} timed steps after {} warmup\n\
         tokens/s      {:.0}\n\
         step ms       median {:.1}, min {:.1}, max {:.1}\n\
         peak RSS      {:.0} MB\n\
         FLOPs/token   {:.3e}\n\
         achieved      {:.2} GFLOP/s ({:.1}% MFU of a {:.1} GFLOP/s matmul peak)\n\
         loss          {:.4} -> {:.4}\n\
         cores busy    {}\n",
        r.preset,
        r.parameters,
        r.device,
        r.precision,
        r.kernels,
        r.activation_checkpointing.setup_note(),
        r.threads,
        r.batch,
        r.seq_len,
        r.steps,
        r.warmup,
        r.tokens_per_s,
        r.step_ms_median,
        r.step_ms_min,
        r.step_ms_max,
        mb(r.peak_rss_bytes),
        r.flops_per_token,
        r.achieved_gflops,
        100.0 * r.mfu,
        r.matmul_peak_gflops,
        r.first_loss,
        r.last_loss,
        r.cpu_utilization.map_or("unknown".into(), |u| format!("{:.0}% of {} threads' time", 100.0 * u, r.threads)),
    );
    if let (Some(used), Some(reserved)) = (r.peak_device_used_bytes, r.peak_device_reserved_bytes) {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        out.push_str(&format!("GPU pool peak {:.2} GiB in use, {:.2} GiB reserved\n", gib(used), gib(reserved)));
    }
    if let Some(p) = &r.profile {
        out.push_str(&profile_table(p));
    }
    out
}

/// The per-step breakdown: each phase, the fused kernels' passes inside it, and the rest.
fn profile_table(p: &StepProfile) -> String {
    use ops::profile::Pass;
    let step = p.forward_ms + p.backward_ms + p.grads_ms + p.optimizer_ms;
    let pct = |ms: f64| 100.0 * ms / step.max(f64::MIN_POSITIVE);
    let mut out = format!("\nper step ({step:.1} ms)                      calls       ms      %  cores busy\n");
    let phases = [
        ("forward", p.forward_ms, Some(Pass::Forward)),
        ("backward", p.backward_ms, Some(Pass::Backward)),
        ("gradients + clipping", p.grads_ms, Some(Pass::Gradients)),
        ("optimizer", p.optimizer_ms, Some(Pass::Update)),
    ];
    for (i, (phase, ms, pass)) in phases.into_iter().enumerate() {
        let busy = p.cpu_utilization.map_or(String::new(), |u| format!("{:9.0}%", 100.0 * u[i]));
        out.push_str(&format!("{phase:<38} {ms:9.1} {:6.1} {busy}\n", pct(ms)));
        let ops: Vec<_> = p.ops.iter().filter(|o| Some(o.pass) == pass).collect();
        for o in &ops {
            out.push_str(&format!(
                "  {:<30} {:6.0} {:9.1} {:6.1}\n",
                o.op.trim_start_matches("lmforge-"),
                o.calls_per_step,
                o.ms_per_step,
                pct(o.ms_per_step)
            ));
        }
        if !ops.is_empty() {
            let rest = ms - ops.iter().map(|o| o.ms_per_step).sum::<f64>();
            out.push_str(&format!("  {:<30} {:>6} {rest:9.1} {:6.1}\n", "(candle, outside these)", "", pct(rest)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_bench_runs_and_reports_consistent_numbers() {
        let opts = TrainBenchOptions { preset: "tiny".into(), steps: 2, warmup: 1, batch: 2, ..Default::default() };
        let r = bench_train(&opts).unwrap();
        assert_eq!((r.steps, r.seq_len), (2, 128));
        // The loss is the trainer's step's: the same model and batch give the same first loss.
        let again = bench_train(&opts).unwrap();
        assert_eq!(again.first_loss, r.first_loss);
        assert!(r.tokens_per_s > 0.0 && r.step_ms_min <= r.step_ms_median && r.step_ms_median <= r.step_ms_max);
        assert!(r.peak_rss_bytes > 0 && r.first_loss.is_finite() && r.last_loss.is_finite());
        assert!((r.achieved_gflops - r.flops_per_token * r.tokens_per_s / 1e9).abs() < 1e-9);
        assert!(r.profile.is_none());
        assert_eq!(r.optimizer, "adamw");
        // The GPU pool's peaks exist on a GPU only, and are left out of the JSON elsewhere.
        assert_eq!((r.peak_device_used_bytes, r.peak_device_reserved_bytes), (None, None));
        assert!(!serde_json::to_string(&r).unwrap().contains("peak_device"));
    }

    #[test]
    fn another_optimizer_stands_in_for_adamw() {
        let opts = |optim: &str| TrainBenchOptions {
            preset: "tiny".into(),
            steps: 2,
            warmup: 0,
            batch: 2,
            optim: optim.into(),
            ..Default::default()
        };
        let adamw = bench_train(&opts("adamw")).unwrap();
        let adafactor = bench_train(&opts("adafactor")).unwrap();
        assert_eq!(adafactor.optimizer, "adafactor");
        // Same model, same batch: the same first loss; the updates differ, so the last does.
        assert_eq!(adafactor.first_loss, adamw.first_loss);
        assert_ne!(adafactor.last_loss, adamw.last_loss);
        let e = bench_train(&opts("adamm\"x")).unwrap_err().to_string();
        assert!(e.contains("optim.name") && e.contains("adamm"), "{e}");
    }
}
