//! The `lmforge` command: parses arguments with clap and calls one library function per
//! subcommand. No training, data or model logic lives here.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use lmforge::checkpoint::LoadedModel;
use lmforge::config::RunConfig;
use lmforge::distributed::Collective;
use lmforge::generate::{generate_text, SamplingConfig};
use lmforge::models::{ModelSpec, PRESETS};
use lmforge::observe::Observers;
use lmforge::store;
use lmforge::train::{self, TrainOptions, TrainSummary};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "lmforge", version, about = "Raw text to a trained, evaluated and served transformer language model")]
struct Cli {
    /// The experiment store (default: $LMFORGE_DB, else ./lmforge-runs/lmforge.db).
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a small GPT on the bundled Shakespeare corpus and print a sample.
    Quickstart {
        #[command(flatten)]
        run: RunArgs,
        /// Text the sample continues.
        #[arg(long, default_value = "ROMEO:")]
        prompt: String,
    },
    /// Train a model from a run config (or continue a run with --resume).
    Train {
        /// The run config (TOML).
        #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
        config: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
        /// Continue the run in this folder from its latest checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Stop (with a checkpoint) after this many completed steps.
        #[arg(long, value_name = "STEP")]
        stop_after: Option<u64>,
        /// The run's name in the experiment store (default: the run dir's folder name).
        #[arg(long)]
        name: Option<String>,
        /// How the store labels the run (a sweep starts its trials with `trial`).
        #[arg(long, hide = true, default_value = "train")]
        kind: String,
        /// The store group (a sweep's name) the run belongs to.
        #[arg(long, hide = true, default_value = "")]
        group: String,
    },
    /// Search hyperparameters: trials of a base config over a search space, with early stopping.
    Sweep {
        /// The sweep file (TOML: [sweep], [early_stop], [space]).
        #[arg(long)]
        config: PathBuf,
        /// The sweep dir (default: sweeps/NAME). Running the same command again continues it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A self-contained HTML report of a run or a sweep (charts as inline SVG).
    Report {
        /// A run dir, a sweep dir, or a run in the store (id, id prefix or name).
        target: String,
        /// The HTML file (default: report.html in the run or sweep dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The experiment store: list, show, compare and remove recorded runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Fine-tune a pretrained model for text classification (full, LoRA or adapters).
    Finetune {
        /// The fine-tune config (TOML).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Classify the rows of a TSV / CSV / JSONL file: one JSON object per row (label, probs,
    /// logits).
    Predict {
        /// A fine-tune run dir, its model folder, or an HF *ForSequenceClassification folder.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        input: PathBuf,
        /// JSONL output.
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        reader: ReaderArgs,
    },
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Generate text, streaming tokens as they are produced.
    Generate {
        /// A run dir, checkpoint dir or Hugging Face folder.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 200)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.8)]
        temperature: f64,
        /// 0 = no top-k filter.
        #[arg(long, default_value_t = 200)]
        top_k: usize,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 1337)]
        seed: u64,
    },
    /// Export a model to another format.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Prepare data: clean, filter, deduplicate, split, train the tokenizer, write shards.
    #[command(subcommand)]
    Data(DataCommand),
    /// List model presets with their parameter counts.
    Presets,
    /// Parameters, per-device memory, fit, FLOPs, time and cost of a training job.
    Plan(PlanArgs),
    /// Measure this machine: training throughput and memory, or the matmul peak.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum RunsCommand {
    /// Recorded runs, newest first.
    List {
        /// KEY OP VALUE, OP one of = != < <= > >= ~ (contains); KEY a column (name, kind,
        /// status, group, host, step), a metric (val_loss, best_val_loss, train_loss, ...) or a
        /// config key (optim.lr). Repeatable; all must hold.
        #[arg(long, value_name = "EXPR")]
        filter: Vec<String>,
        /// Sort by a column, metric or config key (`-KEY`: descending).
        #[arg(long, value_name = "KEY")]
        sort: Option<String>,
        /// Show at most N runs.
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON records.
        #[arg(long)]
        json: bool,
    },
    /// Everything recorded about a run: status, metrics, artifacts, config.
    Show {
        /// An id, a unique id prefix, a name or a run dir.
        run: String,
        /// Print the record and its metric rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Config differences and metrics of runs side by side.
    Compare {
        #[arg(required = true, num_args = 2..)]
        runs: Vec<String>,
    },
    /// Remove runs from the store (their run dirs stay on disk).
    Rm {
        #[arg(required = true)]
        runs: Vec<String>,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Train a preset on a fixed random batch (AdamW, clip 1.0, fp32) and report tokens/s,
    /// step times, peak RSS, FLOPs and MFU.
    Train {
        /// bench-gpt or bench-llama (any preset works).
        #[arg(long, default_value = "bench-gpt")]
        preset: String,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 3)]
        warmup: usize,
        /// Sequences per step.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// fused (default) or reference (the composed ops, for comparison).
        #[arg(long, default_value = "fused")]
        kernels: String,
        /// Recompute each block's activations in the backward (less memory, more compute).
        #[arg(long)]
        activation_checkpointing: bool,
        /// Break the step down by phase and fused kernel (forward / backward pass of each).
        #[arg(long)]
        profile: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Sustained fp32 matmul GFLOP/s (the peak MFU is measured against).
    Matmul {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("model").required(true).args(["config", "preset"]))]
struct PlanArgs {
    /// A run config: its [model], [optim] and [train] sections.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A model preset (with the default run config).
    #[arg(long)]
    preset: Option<String>,
    /// Data-parallel devices.
    #[arg(long)]
    gpus: Option<usize>,
    /// h100-80gb (default), a100-80gb, a100-40gb, h200-141gb, or cpu (this machine).
    #[arg(long)]
    gpu: Option<String>,
    /// ZeRO stage: 0 (replicated), 1 (optimizer sharded), 2 (+ gradients), 3 (+ weights).
    #[arg(long)]
    zero: Option<u8>,
    /// fp32 or bf16-mixed (default: bf16-mixed on GPUs, fp32 on cpu).
    #[arg(long)]
    precision: Option<String>,
    /// Sequences per device per micro-batch (default: train.batch_size).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Tokens per sequence (default: train.seq_len, or the model's context).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Micro-batches per optimizer step (default: train.grad_accum).
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Recompute each layer in the backward pass, keeping only its input.
    #[arg(long)]
    activation_checkpointing: bool,
    /// Training tokens, e.g. 2e12 (default: 20 per parameter).
    #[arg(long)]
    tokens: Option<f64>,
    /// Model FLOPs utilisation (default 0.4).
    #[arg(long)]
    mfu: Option<f64>,
    /// Price of one GPU-hour, for the cost line.
    #[arg(long)]
    price_per_gpu_hour: Option<f64>,
    /// Device peak in TFLOP/s (cpu: instead of measuring a matmul).
    #[arg(long)]
    peak_tflops: Option<f64>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Override a config key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Where the run's config, metrics and checkpoints go (default: runs/NAME-TIMESTAMP).
    #[arg(long)]
    run_dir: Option<PathBuf>,
}

#[derive(Args)]
struct ReaderArgs {
    /// Override how rows are read (default: as in training): --set data.text_column=NAME,
    /// data.header=false, data.format=csv, data.bad_rows=fail, ... (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Accuracy, precision / recall / F1 (macro, micro, weighted, binary), confusion matrix
    /// and loss of a classifier on a labelled file.
    Classification {
        /// A fine-tune run dir, its model folder, or an HF *ForSequenceClassification folder.
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        reader: ReaderArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Perplexity and bits per byte of a text file.
    Ppl {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        text: PathBuf,
        /// Sliding-window stride in tokens (default: half the context).
        #[arg(long)]
        stride: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Masked-LM loss and accuracy of a text under a BERT model (every N-th token masked).
    Mlm {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        text: PathBuf,
        /// Mask chunk tokens 0, N, 2N, ... (deterministic, so other tools can reproduce it).
        #[arg(long, default_value_t = 7)]
        every: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Raw text (.txt / .jsonl, optionally .gz / .zst; files or folders) -> a prepared folder.
    Prepare {
        /// An input file or folder (repeatable; added to data.path / data.inputs of --config).
        #[arg(long = "input", value_name = "PATH")]
        inputs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// A run config whose [data] section (and model vocabulary) to use.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Override a config key: --set data.key=value (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Print the manifest as JSON instead of the summary table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ExportCommand {
    /// A Hugging Face folder: config.json, model.safetensors, tokenizer.json.
    Hf {
        /// A run dir, checkpoint dir or Hugging Face folder.
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// Training allocates and frees the same large activation buffers every step. glibc serves
/// blocks above its mmap threshold with fresh mmaps and trims freed heap back to the OS, so
/// every step re-faults hundreds of MB of zeroed pages (measured: 20% of wall time in the
/// kernel). Keeping freed memory in the heap removes that cost.
fn keep_freed_memory_in_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called once before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
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

/// Candle runs its element-wise ops on a pool of its own whose workers spin ~25k rounds after
/// each op before parking, while the matmuls and the fused kernels run on rayon's workers: with
/// a thread per core in each pool, a spinning candle worker takes a core from a busy rayon one.
/// A short spin keeps the handoff fast without that (bench-gpt on 2 cores, 6 runs each: median
/// 4,009 → 4,283 tokens/s). CANDLE_BARRIER_POOL_SPIN_LIMIT, when set, wins.
fn keep_candle_pool_from_spinning() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
}

fn main() {
    keep_freed_memory_in_heap();
    share_cores_between_local_processes();
    keep_candle_pool_from_spinning();
    let cli = Cli::parse();
    let comm = match lmforge::distributed::from_env() {
        Ok(comm) => comm,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let (rank, world) = (comm.rank(), comm.world_size());
    // Rank 0 speaks for a distributed job; the others print only warnings and errors.
    let quiet = if rank == 0 { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| quiet.into()))
        .init();
    let code = match run(cli, &comm) {
        Ok(code) => code,
        Err(e) if world > 1 => {
            eprintln!("error (rank {rank} of {world}): {e:#}");
            // The others may be waiting in a collective for this process: end the whole job.
            comm.abort(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    drop(comm); // the last reference: finalizes MPI before exiting
    std::process::exit(code);
}

/// The run dir every process of a job uses: rank 0's default (its clock) when none was given.
fn agreed_run_dir(comm: &Arc<dyn Collective>, given: Option<PathBuf>, name: &str) -> Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    let mut bytes = default_run_dir(name).to_string_lossy().into_owned().into_bytes();
    comm.broadcast_bytes(&mut bytes, 0)?;
    Ok(PathBuf::from(String::from_utf8(bytes).context("run dir from rank 0")?))
}

/// The signal that asked a run to stop (SIGINT or SIGTERM), 0 while none has arrived. The
/// exit status follows the shell convention 128 + signal number: 130 for Ctrl-C, 143 for
/// SIGTERM, so a scheduler can tell a user's interrupt from its own stop request.
static STOP_SIGNAL: std::sync::OnceLock<Arc<AtomicUsize>> = std::sync::OnceLock::new();

/// SIGINT / SIGTERM set a flag the trainer checks between steps: it checkpoints and stops. A
/// second stop signal ends the process at once (checkpoints are atomic, so that
/// loses at most the steps since the last one).
fn interrupt_flag() -> Arc<AtomicBool> {
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

fn default_run_dir(name: &str) -> PathBuf {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    PathBuf::from("runs").join(format!("{name}-{secs}"))
}

/// The experiment store recording a run. A store that cannot be opened costs the record,
/// not the run: training goes on with a warning.
fn recorder(db: Option<&Path>, kind: &str, name: Option<String>, group: &str) -> Observers {
    let mut observers = Observers::default();
    let path = store::db_path(db);
    match store::Store::open(&path) {
        Ok(s) => observers.push(store::Recorder::new(s, kind, name, group)),
        Err(e) => tracing::warn!("this run is not recorded in the experiment store: {e}"),
    }
    observers
}

fn open_store(db: Option<&Path>) -> Result<store::Store> {
    Ok(store::Store::open(&store::db_path(db))?)
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn run(cli: Cli, comm: &Arc<dyn Collective>) -> Result<i32> {
    let device = lmforge::Device::Cpu;
    let writer = comm.rank() == 0;
    let db = cli.db.as_deref();
    if comm.world_size() > 1 && !matches!(cli.command, Command::Train { .. }) {
        anyhow::bail!("only `lmforge train` runs as several processes; run this command without mpirun");
    }
    match cli.command {
        Command::Quickstart { run, prompt } => {
            let run_dir = run.run_dir.unwrap_or_else(|| default_run_dir("quickstart"));
            let opts = TrainOptions {
                interrupt: Some(interrupt_flag()),
                observers: recorder(db, "quickstart", None, ""),
                ..Default::default()
            };
            let started = std::time::Instant::now();
            eprintln!("quickstart: training into {}", run_dir.display());
            let mut stdout = std::io::stdout();
            let mut header_done = false;
            let report = lmforge::quickstart::run(&run_dir, &run.set, &opts, &prompt, |piece| {
                if !header_done {
                    print!("\n--- sample ---\n{prompt}");
                    header_done = true;
                }
                print!("{piece}");
                let _ = stdout.flush();
                Ok(())
            })?;
            println!("\n--------------");
            print_summary(&report.summary);
            println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
            Ok(exit_code(&report.summary))
        }
        Command::Train { config, run, resume, stop_after, name, kind, group } => {
            // Rank 0 alone records a multi-process run.
            let observers = if writer { recorder(db, &kind, name, &group) } else { Observers::default() };
            let opts =
                TrainOptions { stop_after, interrupt: Some(interrupt_flag()), comm: Some(comm.clone()), observers };
            let summary = match resume {
                Some(dir) => {
                    if !run.set.is_empty() || run.run_dir.is_some() {
                        anyhow::bail!(
                            "--resume continues a run exactly: --set and --run-dir cannot be combined with it"
                        );
                    }
                    train::resume(&dir, &opts)?
                }
                None => {
                    let path = config.expect("clap requires --config without --resume");
                    let cfg = RunConfig::resolve(Some(&path), &run.set)?;
                    let stem =
                        path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
                    let run_dir = agreed_run_dir(comm, run.run_dir, &stem)?;
                    if writer {
                        eprintln!("training into {}", run_dir.display());
                    }
                    train::train(&cfg, &run_dir, &opts)?
                }
            };
            if writer {
                print_summary(&summary);
            }
            Ok(exit_code(&summary))
        }
        Command::Eval(EvalCommand::Mlm { model, text, every, json }) => {
            let m = LoadedModel::load(&model, &device)?;
            let body = std::fs::read_to_string(&text).with_context(|| format!("reading {}", text.display()))?;
            let r = lmforge::eval::masked_lm(&m, &body, every)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("model          {}", m.source.display());
                println!("text           {} ({} tokens, {} sequences)", text.display(), r.tokens, r.sequences);
                println!("masked         {} (every {})", r.masked, r.every);
                println!("mlm loss       {:.6} nats/token", r.loss);
                println!("mlm accuracy   {:.4}", r.accuracy);
            }
            Ok(0)
        }
        Command::Eval(EvalCommand::Ppl { model, text, stride, json }) => {
            let m = LoadedModel::load(&model, &device)?;
            let body = std::fs::read_to_string(&text).with_context(|| format!("reading {}", text.display()))?;
            let r = lmforge::eval::perplexity(&m, &body, stride)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("model          {}", m.source.display());
                println!("text           {} ({} bytes)", text.display(), r.bytes);
                println!("tokens         {} ({} predicted, stride {})", r.tokens, r.predicted, r.stride);
                println!("loss           {:.6} nats/token", r.loss);
                println!("perplexity     {:.4}", r.ppl);
                println!("bits per byte  {:.4}", r.bits_per_byte);
            }
            Ok(0)
        }
        Command::Finetune { config, run } => {
            let cfg = lmforge::finetune::FinetuneConfig::resolve(Some(&config), &run.set)?;
            let stem =
                config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "finetune".into());
            let run_dir = run.run_dir.unwrap_or_else(|| default_run_dir(&stem));
            eprintln!("fine-tuning into {}", run_dir.display());
            let opts = lmforge::finetune::FinetuneOptions {
                interrupt: Some(interrupt_flag()),
                observers: recorder(db, "finetune", None, ""),
            };
            let s = lmforge::finetune::finetune(&cfg, &run_dir, &opts)?;
            println!("run dir:     {}", s.run_dir.display());
            println!("model:       {}", s.model_dir.display());
            println!(
                "steps:       {}/{} ({:.2} epochs){}",
                s.steps,
                s.total_steps,
                s.epochs,
                if s.stopped_early { ", stopped early" } else { "" }
            );
            println!(
                "parameters:  {} trainable of {} ({:.2}%), optimizer state {} bytes",
                s.params.trainable_params,
                s.params.total_params,
                100.0 * s.params.trainable_fraction,
                s.params.optimizer_state_bytes
            );
            println!("train time:  {:.1} s", s.train_seconds);
            if let Some((value, step)) = s.best {
                println!("best:        validation {} {value:.4} at step {step}", cfg.train.metric);
            }
            if let (Some(split), Some(e)) = (&s.final_split, &s.final_eval) {
                println!("--- {split} (best model), loss {:.4} ---", e.loss);
                print!("{}", e.metrics.table());
            }
            Ok(stop_status(s.interrupted))
        }
        Command::Predict { model, input, output, reader } => {
            let m = lmforge::finetune::model::LoadedClassifier::load(&model, &device)?;
            let rc = lmforge::finetune::predict::reader_settings(&m, &reader.set)?;
            let s = lmforge::finetune::predict::predict_file(&m, &input, &output, &rc, reader.batch_size)?;
            eprintln!("{} rows -> {}", s.rows, output.display());
            if s.bad_rows.total() > 0 {
                eprintln!("{}: {}", input.display(), s.bad_rows.summary());
            }
            if let Some(a) = s.accuracy {
                eprintln!("accuracy on the labelled rows: {a:.4}");
            }
            Ok(0)
        }
        Command::Eval(EvalCommand::Classification { model, data, reader, json }) => {
            let m = lmforge::finetune::model::LoadedClassifier::load(&model, &device)?;
            let rc = lmforge::finetune::predict::reader_settings(&m, &reader.set)?;
            let (e, bad) = lmforge::finetune::predict::eval_file(&m, &data, &rc, reader.batch_size)?;
            if json {
                let mut v = serde_json::to_value(&e)?;
                v["bad_rows"] = serde_json::to_value(&bad)?;
                println!("{}", serde_json::to_string(&v)?);
            } else {
                println!("model      {}", m.source.display());
                println!("data       {}", data.display());
                if bad.total() > 0 {
                    println!("{}", bad.summary());
                }
                println!("loss       {:.4}", e.loss);
                print!("{}", e.metrics.table());
            }
            Ok(0)
        }
        Command::Generate { model, prompt, max_new_tokens, temperature, top_k, top_p, seed } => {
            if !(0.0..=1.0).contains(&top_p) || top_p == 0.0 {
                anyhow::bail!("--top-p must be in (0, 1], got {top_p}");
            }
            if temperature < 0.0 {
                anyhow::bail!("--temperature must be >= 0 (0 = greedy), got {temperature}");
            }
            let m = LoadedModel::load(&model, &device)?;
            let cfg = SamplingConfig { max_new_tokens, temperature, top_k, top_p, seed, eos_id: None };
            let mut stdout = std::io::stdout();
            print!("{prompt}");
            generate_text(&m, &prompt, &cfg, |piece| {
                print!("{piece}");
                let _ = stdout.flush();
                Ok(())
            })?;
            println!();
            Ok(0)
        }
        Command::Export(ExportCommand::Hf { model, out }) => {
            let m = LoadedModel::load(&model, &device)?;
            let dir = m.export_hf(&out)?;
            eprintln!("exported {} -> {}", m.source.display(), dir.display());
            Ok(0)
        }
        Command::Data(DataCommand::Prepare { inputs, out, config, set, json }) => {
            let cfg = RunConfig::resolve(config.as_deref(), &set)?;
            let mut data = cfg.data.clone();
            if data.vocab_size == 0 {
                data.vocab_size = ModelSpec::from_config(&cfg.model)?.vocab_size;
            }
            let mut all = data.all_inputs();
            all.extend(inputs);
            let mode = lmforge::progress::ProgressMode::parse(&cfg.log.progress);
            let manifest = lmforge::corpus::prepare(&data, &all, &out, None, mode)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&manifest)?);
            } else {
                print!("{}", lmforge::corpus::summary_table(&manifest));
                println!("written to {}", out.display());
            }
            Ok(0)
        }
        Command::Plan(a) => {
            let cfg = match (&a.config, &a.preset) {
                (Some(path), _) => RunConfig::resolve(Some(path), &[])?,
                (None, preset) => {
                    let preset = preset.as_deref().expect("clap requires --config or --preset");
                    RunConfig::resolve(None, &[format!("model.preset={preset:?}")])?
                }
            };
            let opts = lmforge::plan::PlanOptions {
                gpus: a.gpus,
                gpu: a.gpu,
                zero: a.zero,
                precision: a.precision,
                micro_batch: a.micro_batch,
                seq_len: a.seq_len,
                grad_accum: a.grad_accum,
                checkpointing: a.activation_checkpointing,
                tokens: a.tokens,
                mfu: a.mfu,
                price_per_gpu_hour: a.price_per_gpu_hour,
                peak_tflops: a.peak_tflops,
            };
            let plan = lmforge::plan::plan(&lmforge::plan::PlanRequest::from_config(&cfg, &opts)?)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&plan)?);
            } else {
                print!("{}", lmforge::plan::report::table(&plan));
            }
            Ok(0)
        }
        Command::Bench(BenchCommand::Train {
            preset,
            steps,
            warmup,
            batch,
            kernels,
            activation_checkpointing,
            profile,
            json,
        }) => {
            let kernels = lmforge::ops::Kernels::parse(&kernels)
                .with_context(|| format!("--kernels {kernels:?}: expected fused or reference"))?;
            let opts = lmforge::bench::TrainBenchOptions {
                preset,
                steps,
                warmup,
                batch,
                kernels,
                activation_checkpointing,
                profile,
            };
            let r = lmforge::bench::bench_train(&opts)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print!("{}", lmforge::bench::table(&r));
            }
            Ok(0)
        }
        Command::Bench(BenchCommand::Matmul { json }) => {
            let r = lmforge::bench::bench_matmul()?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("fp32 matmul {}x{0}: {:.1} GFLOP/s ({} threads)", r.n, r.gflops, r.threads);
            }
            Ok(0)
        }
        Command::Runs(cmd) => runs_command(db, cmd),
        Command::Sweep { config, out } => {
            let spec = lmforge::sweep::SweepSpec::load(&config)?;
            let sweep_dir = out.unwrap_or_else(|| PathBuf::from("sweeps").join(&spec.name));
            eprintln!(
                "sweep `{}` into {}: {}, {} trials, {} at a time, early stopping {}{}",
                spec.name,
                sweep_dir.display(),
                format!("{:?}", spec.strategy).to_lowercase(),
                spec.max_trials,
                spec.max_parallel,
                spec.rule.name(),
                if spec.rungs.is_empty() { String::new() } else { format!(" at steps {:?}", spec.rungs) }
            );
            let opts = lmforge::sweep::SweepOptions {
                sweep_dir: sweep_dir.clone(),
                exe: std::env::current_exe().context("locating the lmforge executable for the trials")?,
                db: store::db_path(db),
                interrupt: Some(interrupt_flag()),
            };
            let result = lmforge::sweep::run(&spec, &opts)?;
            print!("{}", lmforge::sweep::table(&spec, &result.trials));
            match result.best {
                Some(b) => {
                    let t = &result.trials[b];
                    println!(
                        "best: trial {} with {} {:.4}; config: {}",
                        t.id,
                        spec.metric,
                        t.metric.unwrap_or(f64::NAN),
                        sweep_dir.join("best.toml").display()
                    );
                }
                None => println!("no trial has finished yet"),
            }
            println!("trials: {}", sweep_dir.join("trials.jsonl").display());
            Ok(match result.outcome {
                lmforge::sweep::SweepOutcome::Complete => 0,
                lmforge::sweep::SweepOutcome::BudgetSpent => {
                    eprintln!(
                        "the time budget ({} s) is spent; raise sweep.time_budget_s to go on",
                        spec.time_budget_s
                    );
                    0
                }
                lmforge::sweep::SweepOutcome::Interrupted => {
                    eprintln!("interrupted; run the same command again to continue");
                    130
                }
            })
        }
        Command::Report { target, out } => {
            let path = lmforge::report::write_report(&target, out.as_deref(), &store::db_path(db))?;
            println!("{}", path.display());
            Ok(0)
        }
        Command::Presets => {
            println!(
                "{:<12} {:>6} {:>15} {:>7} {:>6} {:>5} {:>5} {:>6} {:>7}",
                "preset", "style", "parameters", "vocab", "ctx", "d", "layers", "heads", "kv"
            );
            for name in PRESETS {
                let s = ModelSpec::preset(name).expect("listed presets exist");
                println!(
                    "{:<12} {:>6} {:>15} {:>7} {:>6} {:>5} {:>5} {:>6} {:>7}",
                    name,
                    format!("{:?}", s.style).to_lowercase(),
                    s.num_params(),
                    s.vocab_size,
                    s.context,
                    s.d_model,
                    s.n_layer,
                    s.n_head,
                    s.n_kv_head
                );
            }
            Ok(0)
        }
    }
}

fn runs_command(db: Option<&Path>, cmd: RunsCommand) -> Result<i32> {
    let mut st = open_store(db)?;
    match cmd {
        RunsCommand::List { filter, sort, limit, json } => {
            let filters: Vec<store::Filter> =
                filter.iter().map(|f| store::Filter::parse(f)).collect::<Result<_, _>>()?;
            let mut runs: Vec<store::RunRecord> =
                st.list()?.into_iter().filter(|r| filters.iter().all(|f| f.matches(r))).collect();
            if let Some(key) = sort {
                store::sort_runs(&mut runs, &key);
            }
            runs.truncate(limit.unwrap_or(usize::MAX));
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print!("{}", store::view::list_table(&runs, now_s()));
            }
        }
        RunsCommand::Show { run, json } => {
            let r = st.find(&run)?;
            let metrics = st.metrics(&r.id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"run": r, "metrics": metrics}))?);
            } else {
                print!("{}", store::view::show(&r, now_s(), metrics.len()));
            }
        }
        RunsCommand::Compare { runs } => {
            let records: Vec<store::RunRecord> = runs.iter().map(|q| st.find(q)).collect::<Result<_, _>>()?;
            print!("{}", store::view::compare(&records));
        }
        RunsCommand::Rm { runs, yes } => {
            let records: Vec<store::RunRecord> = runs.iter().map(|q| st.find(q)).collect::<Result<_, _>>()?;
            for r in &records {
                println!("{}  {}  {}  {}", r.id, r.name, r.status, r.run_dir);
            }
            if !yes {
                use std::io::IsTerminal;
                if !std::io::stdin().is_terminal() {
                    anyhow::bail!("not removing without confirmation: pass --yes (stdin is not a terminal)");
                }
                print!(
                    "remove these {} run record(s) from {}? (run dirs stay) [y/N] ",
                    records.len(),
                    st.path().display()
                );
                std::io::stdout().flush()?;
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    println!("nothing removed");
                    return Ok(1);
                }
            }
            let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
            st.remove(&ids)?;
            println!("removed {} run record(s)", ids.len());
        }
    }
    Ok(0)
}

/// 0 when the run finished; 128 + the signal's number when a signal stopped it.
fn exit_code(s: &TrainSummary) -> i32 {
    stop_status(s.interrupted)
}

/// 0, or 128 + the number of the signal that stopped the work (130 SIGINT, 143 SIGTERM).
fn stop_status(interrupted: bool) -> i32 {
    if !interrupted {
        return 0;
    }
    let sig = STOP_SIGNAL.get().map_or(0, |w| w.load(Ordering::SeqCst));
    128 + if sig == 0 { signal_hook::consts::SIGINT as usize } else { sig } as i32
}

fn print_summary(s: &TrainSummary) {
    println!("run dir:     {}", s.run_dir.display());
    println!("steps:       {}/{}", s.step, s.max_steps);
    println!("parameters:  {}", s.num_params);
    println!("train speed: {:.0} tokens/s over {:.1} s", s.tokens_per_s, s.train_seconds);
    if let Some(v) = &s.last_val {
        println!("val:         {}", v.summary());
    }
}
