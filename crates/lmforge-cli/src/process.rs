//! What belongs to the `lmforge` process rather than to a command: allocator and thread-pool
//! settings made before any thread starts, logging, the stop signals and their exit status, and
//! the default run folder.

use anyhow::{Context, Result};
use lmforge::distributed::Collective;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Settings that must be made before any other thread starts; `decodes_quantized`: the
/// command runs a model with quantized weights token by token (generation, serving,
/// evaluation of a quantized GGUF file).
pub fn prepare(decodes_quantized: bool) {
    keep_freed_memory_in_heap();
    share_cores_between_local_processes();
    choose_decoding_pools(decodes_quantized);
}

/// Training allocates and frees the same large activation buffers every step. glibc serves
/// blocks above its mmap threshold with fresh mmaps and trims freed heap back to the OS, so
/// every step re-faults hundreds of MB of zeroed pages (measured: 20% of wall time in the
/// kernel). Keeping freed memory in the heap removes that cost. So does a server's engine
/// between steps; it hands the free pages back when it goes idle (`lmforge::serve`).
///
/// In a multi-process job the communication threads allocate gradient buffers that the
/// computing thread frees; with glibc's arena per thread, each arena keeps its own peak of
/// freed memory. One arena for every thread keeps one (gpt2-124m on 4 processes, ZeRO-0, peak
/// RSS per process 3.02–3.18 GiB → 2.57–2.62 GiB; training speed unchanged: bench-gpt
/// 6,007 / 5,747 / 6,375 tokens/s with the default arenas, 6,020 / 6,632 / 6,401 with one).
fn keep_freed_memory_in_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator settings; called once before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        if lmforge::distributed::launched_as_mpi_job() {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// The processes of an MPI job on one machine would each start a thread per core: each gets
/// its share instead (as torchrun sets OMP_NUM_THREADS). RAYON_NUM_THREADS, when set, wins.
fn share_cores_between_local_processes() {
    let local = lmforge::distributed::processes_on_this_node();
    if local > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", (cores / local).max(1).to_string());
    }
}

/// Candle runs its element-wise ops and its quantized matmuls on a pool of its own whose
/// workers spin ~25k rounds after each op before parking, while the dense matmuls and the fused
/// kernels run on rayon's workers. Training: with a thread per core in each pool, a spinning
/// candle worker takes a core from a busy rayon one; a short spin keeps the handoff fast without
/// that (bench-gpt on 2 cores, 6 runs each: median 4,009 → 4,283 tokens/s). Decoding a
/// quantized model is the other way round: the quantized matmuls, a few dozen per token, each
/// sub-millisecond, run on candle's pool, and a worker parked between them wakes late (GPT-2
/// 124M q4_k_m on 2 cores, `generate`, 4 alternating runs: median 131 → 162 tokens/s with
/// 200k rounds). Decoding an f32 model runs its products on rayon, and a long spin after
/// candle's occasional element-wise op took a core from them (`bench serve` of the quickstart
/// model at concurrency 16, 3 alternating runs: ~3,270 tokens/s spinning 200k, ~3,800 at
/// 100). CANDLE_BARRIER_POOL_SPIN_LIMIT, when set, wins. Attention between the products
/// runs on the pool that spins (`ops::workers`).
fn choose_decoding_pools(decodes_quantized: bool) {
    lmforge::ops::workers::use_candle_pool(decodes_quantized);
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", if decodes_quantized { "200000" } else { "100" });
    }
}

/// Log lines to stderr: rank 0 at `info`, the other ranks of a job only warnings and errors
/// (`RUST_LOG` overrides). Colour only when stderr is a terminal and `NO_COLOR` is unset
/// (<https://no-color.org>), so lines written to a file or a pipe carry no escape codes.
pub fn init_logging(rank: usize) {
    let quiet = if rank == 0 { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(use_colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR")))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| quiet.into()))
        .init();
}

/// Colour on a terminal unless `NO_COLOR` is set to anything non-empty.
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The signal that asked a run to stop (SIGINT or SIGTERM), 0 while none has arrived. The
/// exit status follows the shell convention 128 + signal number: 130 for Ctrl-C, 143 for
/// SIGTERM, so a scheduler can tell a user's interrupt from its own stop request.
static STOP_SIGNAL: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();

/// SIGINT / SIGTERM set a flag the trainer checks between steps: it checkpoints and stops. A
/// second stop signal ends the process at once (checkpoints are atomic, so that
/// loses at most the steps since the last one).
pub fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let which = STOP_SIGNAL.get_or_init(|| Arc::new(AtomicUsize::new(0)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Order matters: the conditional default checks the flag before `register` sets it.
        let installed = signal_hook::flag::register_conditional_default(sig, flag.clone())
            .and_then(|_| signal_hook::flag::register(sig, flag.clone()))
            .and_then(|_| signal_hook::flag::register_usize(sig, which.clone(), sig as usize));
        if let Err(e) = installed {
            tracing::warn!(
                "cannot install the handler for signal {sig}: {e}; it will stop the run without a checkpoint"
            );
        }
    }
    flag
}

/// 0, or 128 + the number of the signal that stopped the work (130 SIGINT, 143 SIGTERM).
pub fn stop_status(interrupted: bool) -> i32 {
    if !interrupted {
        return 0;
    }
    let sig = STOP_SIGNAL.get().map_or(0, |w| w.load(Ordering::SeqCst));
    128 + if sig == 0 { signal_hook::consts::SIGINT as usize } else { sig } as i32
}

/// `runs/NAME-SECONDS`.
pub fn default_run_dir(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    PathBuf::from("runs").join(format!("{name}-{secs}"))
}

/// The run dir every process of a job uses: the given one, or rank 0's default (its clock).
pub fn agreed_run_dir(comm: &Arc<dyn Collective>, given: Option<PathBuf>, name: &str) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    let mut bytes = default_run_dir(name).to_string_lossy().into_owned().into_bytes();
    comm.broadcast_bytes(&mut bytes, 0)?;
    Ok(PathBuf::from(String::from_utf8(bytes).context("run dir from rank 0")?))
}

/// The file stem of a config path, as a run name (`configs/small.toml` → `small`).
pub fn config_stem(path: &std::path::Path, fallback: &str) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| fallback.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(!use_colour(false, None), "a file or pipe gets no escape codes");
        assert!(!use_colour(true, Some("1".into())));
        assert!(use_colour(true, Some("".into())), "NO_COLOR set but empty does not count");
    }
}
