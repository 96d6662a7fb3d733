//! `lmforge data prepare`: raw text to a prepared folder (cleaned, deduplicated, split,
//! tokenized).

use anyhow::Result;
use lmforge::models::ModelSpec;
use lmforge::train::RunConfig;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Raw text (.txt / .jsonl / .html / .warc / .wet, optionally .gz / .zst; files or folders) -> a prepared folder.
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

pub fn run(c: Command) -> Result<i32> {
    let Command::Prepare { inputs, out, config, set, json } = c;
    let cfg = RunConfig::resolve(config.as_deref(), &set)?;
    let mut data = cfg.data.clone();
    if data.vocab_size == 0 {
        data.vocab_size = ModelSpec::from_config(&cfg.model)?.vocab_size;
    }
    let mut all = data.all_inputs();
    all.extend(inputs);
    let mode = cfg.log.progress.mode();
    let manifest = lmforge::corpus::prepare(&data, &all, &out, None, mode)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
    } else {
        print!("{}", lmforge::corpus::summary_table(&manifest));
        println!("written to {}", out.display());
    }
    Ok(0)
}
