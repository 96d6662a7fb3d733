//! One file per subcommand: its clap arguments and a `run` that calls the library.

pub mod bench;
pub mod data;
pub mod eval;
pub mod export;
pub mod finetune;
pub mod generate;
pub mod plan;
pub mod predict;
pub mod presets;
pub mod quantize;
pub mod quickstart;
pub mod report;
pub mod runs;
pub mod serve;
pub mod sweep;
pub mod train;

use std::path::PathBuf;

/// `--set` and `--run-dir`, shared by the commands that start a run.
#[derive(clap::Args)]
pub struct RunArgs {
    /// Override a config key: --set section.key=value (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where the run's config, metrics and checkpoints go (default: runs/NAME-TIMESTAMP).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

/// How `train` and `finetune` start: a new run from a config, or `--resume`.
#[derive(clap::Args)]
pub struct StartArgs {
    /// The config (TOML).
    #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
    /// Continue the run in this folder from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this many completed steps.
    #[arg(long, value_name = "STEP")]
    pub stop_after: Option<u64>,
    /// Where to train: a new run's `train.device` (as `--set train.device=D`); with --resume,
    /// the device the run continues on (checkpoints are device-neutral: a GPU run resumes on
    /// the CPU and back). auto, cpu, cuda or cuda:N.
    #[arg(long, value_parser = parse_device)]
    pub device: Option<lmforge::device::DeviceChoice>,
}

/// How the experiment store records a run that `train` or `finetune` starts.
#[derive(clap::Args)]
pub struct RecordArgs {
    /// The run's name in the experiment store (default: the run dir's folder name).
    #[arg(long)]
    pub name: Option<String>,
    /// How the store labels the run (default: the command; a sweep starts its trials with
    /// `trial`).
    #[arg(long, hide = true)]
    pub kind: Option<String>,
    /// The store group (a sweep's name) the run belongs to.
    #[arg(long, hide = true, default_value = "")]
    pub group: String,
}

/// What a command starting or resuming a run gets from [`StartArgs::start`].
pub enum Start {
    /// A new run: its config file (with the `--set` overrides) and run dir.
    New {
        config: PathBuf,
        set: Vec<String>,
        run_dir: PathBuf,
    },
    Resume(PathBuf),
}

impl StartArgs {
    /// The training options (the store's observers on rank 0 — the run recorded as `kind`,
    /// `name`, `group` —, the stop signals, the processes) and where the run starts. Every
    /// process of a job agrees on the default run dir (rank 0's).
    pub fn start(
        self,
        ctx: &crate::Ctx,
        kind: &str,
        name: Option<String>,
        group: &str,
    ) -> anyhow::Result<(lmforge::train::TrainOptions, Start)> {
        let observers = if ctx.is_writer() {
            lmforge_track::observers(&ctx.db_path(), kind, name, group)
        } else {
            lmforge::observe::Observers::default()
        };
        let mut opts = lmforge::train::TrainOptions {
            stop_after: self.stop_after,
            interrupt: Some(crate::process::interrupt_flag()),
            comm: Some(ctx.comm.clone()),
            observers,
            device: self.device,
            distributed_set: Vec::new(),
        };
        let start = match self.resume {
            Some(dir) => {
                if self.run.run_dir.is_some() || self.run.set.iter().any(|s| !s.starts_with("distributed.")) {
                    anyhow::bail!(
                        "--resume continues a run exactly: --run-dir and --set cannot be combined with it, \
                         except --set distributed.KEY=VALUE (the ZeRO stage, buckets and compression may change)"
                    );
                }
                opts.distributed_set = self.run.set;
                Start::Resume(dir)
            }
            None => {
                let config = self.config.expect("clap requires --config without --resume");
                let stem = crate::process::config_stem(&config, kind);
                let run_dir = crate::process::agreed_run_dir(&ctx.comm, self.run.run_dir, &stem)?;
                let mut set = self.run.set;
                if let Some(d) = self.device {
                    set.push(format!("train.device={}", d.name()));
                }
                Start::New { config, set, run_dir }
            }
        };
        Ok((opts, start))
    }
}

/// How `predict` and `eval classification` read rows.
#[derive(clap::Args)]
pub struct ReaderArgs {
    /// Override how rows are read (default: as in training): --set data.text_column=NAME,
    /// data.header=false, data.format=csv, data.bad_rows=fail, ... (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

/// `--device`: where a command runs its model (resolved as `train.device` is).
#[derive(clap::Args, Clone, Copy)]
pub struct DeviceArg {
    /// auto (a CUDA GPU when this build has CUDA and one is present, else the CPU), cpu,
    /// cuda or cuda:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: lmforge::device::DeviceChoice,
}

impl DeviceArg {
    pub fn resolve(self) -> anyhow::Result<lmforge::Device> {
        Ok(self.device.resolve("--device")?)
    }
}

fn parse_device(s: &str) -> Result<lmforge::device::DeviceChoice, String> {
    lmforge::device::DeviceChoice::parse(s)
}

/// Prints `value` as one JSON line.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// `--adapter DIR`: a PEFT LoRA folder (lmforge's or Hugging Face PEFT's, or a fine-tune run
/// dir) applied on top of `--model`.
#[derive(clap::Args)]
pub struct AdapterArg {
    #[arg(long = "adapter", value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
}

impl AdapterArg {
    pub fn get(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }
}

/// Sampling settings of commands that generate.
#[derive(clap::Args)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    /// 0 = greedy (the default of `eval generation`; 0.8 for `generate`).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// 0 = no top-k filter.
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampling config, `temperature` defaulting to `default_temperature`.
    pub fn config(&self, default_temperature: f64) -> anyhow::Result<lmforge::generate::SamplingConfig> {
        let cfg = lmforge::generate::SamplingConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature.unwrap_or(default_temperature),
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            eos_id: None,
            stop_ids: Vec::new(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
