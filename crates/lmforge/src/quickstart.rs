//! `lmforge quickstart`: trains the bundled recipe (`configs/quickstart.toml`) on the bundled
//! Shakespeare corpus, validates, and prints a generated sample. The recipe and the corpus
//! location are compiled in, so the command works from any directory of a source checkout.

use crate::checkpoint::LoadedModel;
use crate::error::Result;
use crate::generate::{generate_text, SamplingConfig};
use crate::train::RunConfig;
use crate::train::{self, TrainOptions, TrainSummary};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// The quickstart recipe, as shipped in `configs/quickstart.toml`.
pub const RECIPE: &str = include_str!("../../../configs/quickstart.toml");

/// The bundled corpus: `data/tinyshakespeare.txt` at the repository root.
pub fn bundled_corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare.txt")
}

/// The recipe with the bundled corpus, then the user's overrides.
pub fn config(overrides: &[String]) -> Result<RunConfig> {
    let mut all = vec![format!("data.path={:?}", bundled_corpus().display().to_string())];
    all.extend_from_slice(overrides);
    RunConfig::from_toml_str(RECIPE, &all)
}

pub struct QuickstartReport {
    pub summary: TrainSummary,
    pub sample: String,
}

/// Trains into `run_dir`, then generates a sample after `prompt`, streamed to `on_text`.
pub fn run(
    run_dir: &Path,
    overrides: &[String],
    opts: &TrainOptions,
    prompt: &str,
    on_text: impl FnMut(&str) -> Result<()>,
) -> Result<QuickstartReport> {
    let cfg = config(overrides)?;
    let summary = train::train(&cfg, run_dir, opts)?;
    let model = LoadedModel::load(run_dir, &Device::Cpu)?;
    let sampling = SamplingConfig { max_new_tokens: 200, temperature: 0.8, top_k: 200, ..Default::default() };
    let sample = generate_text(&model, prompt, &sampling, on_text)?;
    Ok(QuickstartReport { summary, sample })
}
