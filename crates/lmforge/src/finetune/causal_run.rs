//! The causal-LM fine-tuning front end: reads and encodes the rows, loads the base and sets up
//! the method, hands [`CausalTuning`] to the loop, and at the end scores the saved model (read
//! back as `generate` and `eval` read it) on the test split, or the validation split, into
//! `RUN_DIR/results.json`, with its generations in `RUN_DIR/generations-SPLIT.jsonl`.

use super::causal::{self, CausalTuning, Generation};
use super::config::{FinetuneConfig, Method, TrainOn};
use super::dataset::BadRows;
use super::sft_data::{read_rows, SftEncoded, SftEncoder, Truncation};
use super::{drive, loop_plan, optimizer_groups, param_report, Drive, FinetuneSummary};
use crate::checkpoint::LoadedModel;
use crate::error::{Error, Result};
use crate::generate::SamplingConfig;
use crate::metrics::generation::GenerationMetrics;
use crate::observe::Observers;
use crate::train::{Task, TrainOptions, TrainSummary};
use serde::Serialize;
use serde_json::json;
use std::path::Path;

/// The final scores of a causal fine-tune: loss and perplexity on the target tokens, and the
/// generation metrics when the run generates.
#[derive(Debug, Clone, Serialize)]
pub struct CausalEval {
    pub rows: usize,
    pub target_tokens: usize,
    pub loss: f64,
    pub ppl: f64,
    pub generation: Option<GenerationMetrics>,
}

/// One split: its rows and their encoding.
struct Split {
    encoded: Vec<SftEncoded>,
    bad: BadRows,
    truncation: Truncation,
}

pub(super) fn run(
    cfg: &FinetuneConfig,
    run_dir: &Path,
    opts: &TrainOptions,
    resuming: bool,
    observers: &mut Observers,
) -> Result<(TrainSummary, FinetuneSummary)> {
    let t = &cfg.train;
    let placement = opts.placement(t.device, t.precision)?;
    cfg.check_paths()?;
    let base = causal::load_base(&cfg.model.base, &placement.device)?;
    let template = causal::chat_template(cfg, &base)?;
    let causal::Base { spec, mut store, tokenizer, folder } = base;
    let max_length = super::window(cfg, spec.context);
    let encoder = SftEncoder {
        tokenizer: &tokenizer,
        template: &template,
        train_on: cfg.sft.train_on,
        eos: if cfg.sft.add_eos { tokenizer.eos_id() } else { None },
        max_length,
    };
    let read = |path: &Path, limit: usize, train: bool| -> Result<Option<Split>> {
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let (mut rows, bad) = read_rows(path, cfg, true)?;
        if train {
            rows = super::train_subset(cfg, rows);
        } else if limit > 0 {
            rows.truncate(limit);
        }
        let (encoded, truncation) = encoder.encode_all(&rows)?;
        if encoded.is_empty() {
            return Err(Error::format(
                path,
                format!("no row has a completion token within {max_length} tokens (model.max_length)"),
            ));
        }
        Ok(Some(Split { encoded, bad, truncation }))
    };
    let train = read(&cfg.data.train, 0, true)?.expect("data.train is required");
    let validation = read(&cfg.data.validation, cfg.data.max_validation_rows, false)?;
    let test = read(&cfg.data.test, 0, false)?;
    let lora = causal::prepare(&mut store, &spec, cfg)?;

    let (per_epoch, total_steps) = super::step_counts(cfg, train.encoded.len(), opts.collective().world_size())?;
    let groups = optimizer_groups(cfg, spec.params(), &store)?;
    let lp = loop_plan(cfg, groups, total_steps)?;
    let report = param_report(cfg, &store, &lp.groups, &lp.optim);
    let validation_rows = validation.as_ref().map(|v| v.encoded.as_slice());
    let store = store.with_precision(placement.precision);
    let task =
        CausalTuning::new(cfg, (spec, store, folder), lora, &tokenizer, &template, &train.encoded, validation_rows)?;
    let announce = || announce(cfg, &train, validation.as_ref(), test.as_ref(), total_steps);
    let summary = drive(&task, &lp, Drive { cfg, run_dir, opts, resuming, total_steps }, observers, &announce)?;

    let writer = opts.collective().rank() == 0;
    let mut out = FinetuneSummary::new(cfg, run_dir, &summary, total_steps, per_epoch, report);
    let model_dir = out.model_dir.clone();
    if !out.finished || !writer {
        return Ok((summary, out));
    }
    if validation.is_none() {
        task.keep_best(run_dir)?;
    }
    let final_split = test.as_ref().map(|s| ("test", s)).or(validation.as_ref().map(|s| ("validation", s)));
    if let Some((name, split)) = final_split {
        let saved = load_saved(cfg, &model_dir, &placement.device)?;
        out.final_split = Some(name.to_string());
        out.final_causal =
            Some(score_saved(cfg, &saved, &split.encoded, &run_dir.join(format!("generations-{name}.jsonl")))?);
    }
    write_results(run_dir, cfg, &out, &train, [Some(&train), validation.as_ref(), test.as_ref()])?;
    Ok((summary, out))
}

/// The saved model of a run: the full folder, or the base with the saved adapter on top.
fn load_saved(cfg: &FinetuneConfig, model_dir: &Path, device: &candle_core::Device) -> Result<LoadedModel> {
    match cfg.finetune.method {
        Method::Full => LoadedModel::load(model_dir, device),
        Method::Lora | Method::Adapter | Method::Prefix => {
            LoadedModel::load_with_adapter(&cfg.model.base, Some(model_dir), device)
        }
    }
}

/// Loss and perplexity of `rows` under `m`, and, when the run generates, every row's
/// generation and their metrics (generations written to `generations`).
fn score_saved(cfg: &FinetuneConfig, m: &LoadedModel, rows: &[SftEncoded], generations: &Path) -> Result<CausalEval> {
    let decoder = m.decoder()?;
    let device = m.params.device();
    let pad = super::model::pad_id(&m.tokenizer);
    let (loss, target_tokens) = causal::mean_loss(decoder, rows, cfg.train.eval_batch_size, pad, device)?;
    let generation = if cfg.sft.generate_every > 0 || cfg.selects_by_generation() {
        let sampling =
            SamplingConfig { max_new_tokens: cfg.sft.max_new_tokens, temperature: 0.0, ..Default::default() };
        let template = m.chat_template()?;
        let g = Generation::new(&m.tokenizer, &template, sampling);
        let (predictions, metrics) = g.score(decoder, device, rows)?;
        write_generations(generations, &m.tokenizer, rows, &predictions)?;
        Some(metrics)
    } else {
        None
    };
    Ok(CausalEval { rows: rows.len(), target_tokens, loss, ppl: loss.exp(), generation })
}

/// One JSON line per row: its line, prompt text, prediction and references (the format
/// `lmforge eval generation --predictions` scores).
pub fn write_generations(
    path: &Path,
    tokenizer: &crate::tokenizer::TextTokenizer,
    rows: &[SftEncoded],
    predictions: &[String],
) -> Result<()> {
    let mut text = String::new();
    for (r, p) in rows.iter().zip(predictions) {
        let row = json!({ "line": r.line, "prompt": tokenizer.decode(&r.prompt)?, "prediction": p, "references": r.references });
        text += &row.to_string();
        text.push('\n');
    }
    crate::fsio::write_atomic(path, text.as_bytes())
}

fn announce(cfg: &FinetuneConfig, train: &Split, validation: Option<&Split>, test: Option<&Split>, total: u64) {
    let mode = cfg.log.progress.mode();
    let loss_on = match cfg.sft.train_on {
        TrainOn::Completion => "completion tokens",
        TrainOn::All => "all tokens",
    };
    crate::progress::note(
        mode,
        &format!(
            "rows: {} train{}{}; loss on {loss_on}; {total} steps in all",
            train.encoded.len(),
            validation.map(|v| format!(", {} validation", v.encoded.len())).unwrap_or_default(),
            test.map(|v| format!(", {} test", v.encoded.len())).unwrap_or_default(),
        ),
    );
    for (name, s) in [("train", Some(train)), ("validation", validation), ("test", test)] {
        let Some(s) = s else { continue };
        if s.bad.total() > 0 {
            crate::progress::note(mode, &format!("{name}: {}", s.bad.summary()));
        }
        if let Some(t) = s.truncation.summary() {
            crate::progress::note(mode, &format!("{name}: {t}"));
        }
    }
}

fn write_results(
    run_dir: &Path,
    cfg: &FinetuneConfig,
    s: &FinetuneSummary,
    train: &Split,
    splits: [Option<&Split>; 3],
) -> Result<()> {
    let mut bad = BadRows::default();
    let mut truncation = serde_json::Map::new();
    for (name, split) in ["train", "validation", "test"].into_iter().zip(splits) {
        if let Some(split) = split {
            super::dataset::add_bad_rows(&mut bad, &split.bad);
            truncation.insert(name.into(), serde_json::to_value(&split.truncation).expect("json"));
        }
    }
    let train = json!({
        "rows": train.encoded.len(),
        "target_tokens": train.encoded.iter().map(|e| e.targets.len()).sum::<usize>(),
    });
    let metrics = s.final_causal.as_ref().map(|e| json!(e));
    let mut results = super::head_run::results(cfg, s, train, &bad, metrics);
    results.insert("truncation".into(), truncation.into());
    crate::fsio::write_json_atomic(&run_dir.join("results.json"), &results)
}

/// What [`generate_file`] did.
#[derive(Debug, Clone, Serialize)]
pub struct GenerationRun {
    pub rows: usize,
    pub bad_rows: BadRows,
    pub metrics: GenerationMetrics,
}

/// Generates a reply for every row of a JSONL / TSV / CSV file (`prompt`, or `messages` rendered
/// by the model's chat template; `reference` / `references`, else the completion or final
/// assistant turn, to score against) and scores them; the generations go to `output` when given
/// (the rows `eval generation --predictions` reads).
pub fn generate_file(
    m: &LoadedModel,
    data: &Path,
    output: Option<&Path>,
    sampling: SamplingConfig,
) -> Result<GenerationRun> {
    let mut cfg = FinetuneConfig::default();
    cfg.task.kind = super::TaskKind::CausalLm;
    let (rows, bad_rows) = read_rows(data, &cfg, false)?;
    if let Some(r) = rows.iter().find(|r| r.references.is_empty()) {
        return Err(Error::format(
            data,
            format!("line {}: no `reference`, `references` or completion to score against", r.line),
        ));
    }
    let template = m.chat_template()?;
    let encoder = SftEncoder {
        tokenizer: &m.tokenizer,
        template: &template,
        train_on: TrainOn::Completion,
        eos: None,
        max_length: usize::MAX,
    };
    let encoded: Vec<SftEncoded> = rows
        .iter()
        .map(|r| {
            encoder.encode(r)?.0.ok_or_else(|| Error::format(data, format!("line {}: an empty completion", r.line)))
        })
        .collect::<Result<_>>()?;
    let g = Generation::new(&m.tokenizer, &template, sampling);
    let (predictions, metrics) = g.score(m.decoder()?, m.params.device(), &encoded)?;
    if let Some(out) = output {
        write_generations(out, &m.tokenizer, &encoded, &predictions)?;
    }
    Ok(GenerationRun { rows: encoded.len(), bad_rows, metrics })
}
