//! `lmforge eval`: perplexity, masked-LM and classification metrics of a model on a file.

use super::{print_json, AdapterArg, DeviceArg, ReaderArgs, SamplingArgs};
use anyhow::{Context, Result};
use lmforge::checkpoint::LoadedModel;
use lmforge::finetune::{model::LoadedClassifier, predict};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Accuracy, precision / recall / F1 (macro, micro, weighted, binary), confusion matrix
    /// and loss of a classifier on a labelled file; for a token classifier, seqeval's entity
    /// precision / recall / F1 (per type, micro, macro, weighted) and token accuracy on a
    /// tagged file (CoNLL or JSONL); for a regression model, MSE / RMSE / MAE and Pearson /
    /// Spearman correlations.
    Classification {
        /// A fine-tune run dir, its model folder, or an HF *ForSequenceClassification /
        /// *ForTokenClassification folder.
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        adapter: AdapterArg,
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        reader: ReaderArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// BLEU, chrF, ROUGE-1/2/L (with and without stemming), exact match and token F1 of
    /// generations: a model's on a file of prompts (`--model --data`), or a JSONL file whose
    /// rows already hold `prediction` and `reference` (or `references`) (`--predictions`).
    Generation {
        #[arg(long, conflicts_with_all = ["model", "data"], required_unless_present = "model")]
        predictions: Option<PathBuf>,
        /// A causal LM: run dir, checkpoint or Hugging Face folder.
        #[arg(long, requires = "data")]
        model: Option<PathBuf>,
        #[command(flatten)]
        adapter: AdapterArg,
        /// JSONL (`prompt` or `messages`; `reference` / `references`, else the completion or
        /// final assistant turn), TSV or CSV (`prompt`, `completion` columns).
        #[arg(long, requires = "model")]
        data: Option<PathBuf>,
        /// Write the generations here (JSONL: prompt, prediction, references).
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// Perplexity and bits per byte of a text file.
    Ppl {
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        adapter: AdapterArg,
        #[arg(long)]
        text: PathBuf,
        /// Sliding-window stride in tokens (default: half the context).
        #[arg(long)]
        stride: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        device: DeviceArg,
    },
    /// How close a quantized model (a GGUF file) is to its reference on a text: both
    /// perplexities and their ratio, mean KL divergence, share of the same top token.
    Quant {
        /// The reference: run dir, checkpoint, Hugging Face folder (or GGUF file).
        #[arg(long)]
        model: PathBuf,
        /// The quantized model (a .gguf file, or any model path).
        #[arg(long)]
        quantized: PathBuf,
        #[arg(long)]
        text: PathBuf,
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
        #[command(flatten)]
        device: DeviceArg,
    },
}

impl Command {
    /// The model files the command runs.
    pub fn models(&self) -> Vec<&Path> {
        match self {
            Command::Classification { model, .. } | Command::Ppl { model, .. } | Command::Mlm { model, .. } => {
                vec![model]
            }
            Command::Generation { model, .. } => model.iter().map(PathBuf::as_path).collect(),
            Command::Quant { model, quantized, .. } => vec![model, quantized],
        }
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(c: Command) -> Result<i32> {
    match c {
        Command::Generation { predictions, model, adapter, data, output, sampling, json, device } => {
            let (m, source) = match (predictions, model, data) {
                (Some(p), _, _) => (lmforge::metrics::generation::score_file(&p)?, p),
                (None, Some(model), Some(data)) => {
                    let m = LoadedModel::load_with_adapter(&model, adapter.get(), &device.resolve()?)?;
                    let cfg = sampling.config(0.0)?;
                    let r = lmforge::finetune::causal_run::generate_file(&m, &data, output.as_deref(), cfg)?;
                    if r.bad_rows.total() > 0 {
                        eprintln!("{}: {}", data.display(), r.bad_rows.summary());
                    }
                    (r.metrics, data)
                }
                _ => anyhow::bail!("give --predictions FILE, or --model and --data"),
            };
            if json {
                print_json(&m)?;
            } else {
                println!("rows           {} ({} rows)", source.display(), m.n);
                println!(
                    "BLEU           {:.2} (precisions {:.1}/{:.1}/{:.1}/{:.1}, BP {:.3})",
                    m.bleu,
                    m.bleu_precisions[0],
                    m.bleu_precisions[1],
                    m.bleu_precisions[2],
                    m.bleu_precisions[3],
                    m.bleu_bp
                );
                println!("chrF           {:.2}", m.chrf);
                println!("ROUGE-1/2/L    {:.4} / {:.4} / {:.4}", m.rouge1, m.rouge2, m.rouge_l);
                println!("  stemmed      {:.4} / {:.4} / {:.4}", m.rouge1_stemmed, m.rouge2_stemmed, m.rouge_l_stemmed);
                println!("exact match    {:.2}", m.exact_match);
                println!("token F1       {:.2}", m.token_f1);
            }
        }
        Command::Quant { model, quantized, text, json } => {
            let reference = LoadedModel::load(&model, &lmforge::Device::Cpu)?;
            let quant = LoadedModel::load(&quantized, &lmforge::Device::Cpu)?;
            let q = lmforge::eval::quant_quality(&reference, &quant, &read_text(&text)?)?;
            if json {
                print_json(&q)?;
            } else {
                println!("reference      {} ppl {:.4}", reference.source.display(), q.ppl_reference);
                println!("quantized      {} ppl {:.4}", quant.source.display(), q.ppl_quantized);
                println!("ppl ratio      {:.5}", q.ppl_ratio);
                println!("mean KL        {:.6} nats", q.mean_kl);
                println!("same top token {:.2}% of {} positions", 100.0 * q.same_top_token, q.predicted);
            }
        }
        Command::Mlm { model, text, every, json, device } => {
            let device = device.resolve()?;
            let m = LoadedModel::load(&model, &device)?;
            let r = lmforge::eval::masked_lm(&m, &read_text(&text)?, every)?;
            if json {
                print_json(&r)?;
            } else {
                println!("model          {}", m.source.display());
                println!("text           {} ({} tokens, {} sequences)", text.display(), r.tokens, r.sequences);
                println!("masked         {} (every {})", r.masked, r.every);
                println!("mlm loss       {:.6} nats/token", r.loss);
                println!("mlm accuracy   {:.4}", r.accuracy);
            }
        }
        Command::Ppl { model, adapter, text, stride, json, device } => {
            let device = device.resolve()?;
            let m = LoadedModel::load_with_adapter(&model, adapter.get(), &device)?;
            let r = lmforge::eval::perplexity(&m, &read_text(&text)?, stride)?;
            if json {
                print_json(&r)?;
            } else {
                println!("model          {}", m.source.display());
                println!("text           {} ({} bytes)", text.display(), r.bytes);
                println!("tokens         {} ({} predicted, stride {})", r.tokens, r.predicted, r.stride);
                println!("loss           {:.6} nats/token", r.loss);
                println!("perplexity     {:.4}", r.ppl);
                println!("bits per byte  {:.4}", r.bits_per_byte);
            }
        }
        Command::Classification { model, adapter, data, reader, json, device } => {
            let device = device.resolve()?;
            let m = LoadedClassifier::load_with_adapter(&model, adapter.get(), &device)?;
            let rc = predict::reader_settings(&m, &reader.set)?;
            // (JSON of the evaluation, its loss, its table): a QA model's SQuAD scores, a
            // tagger's entity report, a regression's errors and correlations, or a classifier's metrics.
            let (mut v, loss, table, bad) = if m.classifier.kind == lmforge::models::HeadKind::Span {
                let (e, bad) = lmforge::finetune::qa_run::eval_file(&m, &data, &rc, reader.batch_size)?;
                (serde_json::to_value(&e)?, e.loss, e.metrics.table(), bad)
            } else if m.classifier.kind == lmforge::models::HeadKind::Token {
                let (e, bad) = lmforge::finetune::token_run::eval_file(&m, &data, &rc, reader.batch_size)?;
                (serde_json::to_value(&e)?, e.loss, e.entities.table(), bad)
            } else if m.regression {
                let (e, bad) = predict::eval_regression_file(&m, &data, &rc, reader.batch_size)?;
                (serde_json::to_value(&e)?, e.loss, e.metrics.table(), bad)
            } else {
                let (e, bad) = predict::eval_file(&m, &data, &rc, reader.batch_size)?;
                (serde_json::to_value(&e)?, e.loss, e.metrics.table(), bad)
            };
            if json {
                v["bad_rows"] = serde_json::to_value(&bad)?;
                print_json(&v)?;
            } else {
                println!("model      {}", m.source.display());
                println!("data       {}", data.display());
                if bad.total() > 0 {
                    println!("{}", bad.summary());
                }
                println!("loss       {loss:.4}");
                print!("{table}");
            }
        }
    }
    Ok(0)
}
