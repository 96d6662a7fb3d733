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
pub mod quickstart;
pub mod report;
pub mod runs;
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
