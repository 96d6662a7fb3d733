//! The `lmforge` command: parses arguments with clap and calls one library function per
//! subcommand, one file each under `cmd/`. No training, data or model logic lives here;
//! `process.rs` holds what belongs to the process (signals, allocator and thread settings,
//! logging).

mod cmd;
mod process;

use clap::{Parser, Subcommand};
use lmforge::distributed::Collective;
use std::path::PathBuf;
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
    Quickstart(cmd::quickstart::Args),
    /// Train a model from a run config (or continue a run with --resume).
    Train(cmd::train::Args),
    /// Search hyperparameters: trials of a base config over a search space, with early stopping.
    Sweep(cmd::sweep::Args),
    /// A self-contained HTML report of a run or a sweep (charts as inline SVG).
    Report(cmd::report::Args),
    /// The experiment store: list, show, compare and remove recorded runs.
    #[command(subcommand)]
    Runs(cmd::runs::Command),
    /// Fine-tune a pretrained model for text classification or as a causal LM (full, LoRA or
    /// adapters), or continue a fine-tuning run with --resume.
    Finetune(cmd::finetune::Args),
    /// Classify the rows of a TSV / CSV / JSONL file: one JSON object per row (label, probs,
    /// logits).
    Predict(cmd::predict::Args),
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(cmd::eval::Command),
    /// Generate text, streaming tokens as they are produced.
    Generate(cmd::generate::Args),
    /// Serve a causal LM over an OpenAI-compatible HTTP API with continuous batching.
    Serve(cmd::serve::Args),
    /// Write a causal LM as a GGUF file of quantized weights (llama.cpp, Ollama, LM Studio).
    Quantize(cmd::quantize::Args),
    /// Export a model to another format.
    #[command(subcommand)]
    Export(cmd::export::Command),
    /// Prepare data: clean, filter, deduplicate, split, train the tokenizer, write shards.
    #[command(subcommand)]
    Data(cmd::data::Command),
    /// List model presets with their parameter counts.
    Presets,
    /// Parameters, per-device memory, fit, FLOPs, time and cost of a training job.
    Plan(cmd::plan::Args),
    /// Measure this machine: training throughput and memory, or the matmul peak.
    #[command(subcommand)]
    Bench(cmd::bench::Command),
}

/// What every command may need besides its arguments.
pub struct Ctx {
    /// `--db`, when given.
    pub db: Option<PathBuf>,
    /// The processes of this job (one unless launched by `mpirun`).
    pub comm: Arc<dyn Collective>,
}

impl Ctx {
    /// The experiment store's path.
    pub fn db_path(&self) -> PathBuf {
        lmforge_track::store::db_path(self.db.as_deref())
    }

    /// Rank 0 speaks for a distributed job: it writes, records and prints.
    pub fn is_writer(&self) -> bool {
        self.comm.rank() == 0
    }
}

impl Command {
    /// Whether the command runs the forward of a model with quantized weights (a GGUF file)
    /// token by token (generation, serving, evaluation): see [`process::prepare`].
    fn decodes_quantized(&self) -> bool {
        let models: Vec<&std::path::Path> = match self {
            Command::Generate(a) => vec![&a.model],
            Command::Serve(a) => vec![&a.model],
            Command::Eval(c) => c.models(),
            Command::Bench(c) => c.served_model().into_iter().collect(),
            _ => Vec::new(),
        };
        models.into_iter().any(lmforge::gguf::holds_quantized_weights)
    }
}

fn main() {
    let cli = Cli::parse();
    process::prepare(cli.command.decodes_quantized());
    let comm = match lmforge::distributed::from_env() {
        Ok(comm) => comm,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let (rank, world) = (comm.rank(), comm.world_size());
    process::init_logging(rank);
    let ctx = Ctx { db: cli.db, comm: comm.clone() };
    let code = match run(cli.command, &ctx) {
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
    drop(ctx);
    drop(comm); // the last reference: finalizes MPI before exiting
    std::process::exit(code);
}

fn run(command: Command, ctx: &Ctx) -> anyhow::Result<i32> {
    let distributed = matches!(command, Command::Train(_) | Command::Finetune(_));
    if ctx.comm.world_size() > 1 && !distributed {
        anyhow::bail!(
            "only `lmforge train` and `lmforge finetune` run as several processes; run this command without mpirun"
        );
    }
    match command {
        Command::Quickstart(a) => cmd::quickstart::run(a, ctx),
        Command::Train(a) => cmd::train::run(a, ctx),
        Command::Sweep(a) => cmd::sweep::run(a, ctx),
        Command::Report(a) => cmd::report::run(a, ctx),
        Command::Runs(c) => cmd::runs::run(c, ctx),
        Command::Finetune(a) => cmd::finetune::run(a, ctx),
        Command::Predict(a) => cmd::predict::run(a),
        Command::Eval(c) => cmd::eval::run(c),
        Command::Generate(a) => cmd::generate::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Quantize(a) => cmd::quantize::run(a),
        Command::Export(c) => cmd::export::run(c),
        Command::Data(c) => cmd::data::run(c),
        Command::Presets => cmd::presets::run(),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Bench(c) => cmd::bench::run(c),
    }
}
