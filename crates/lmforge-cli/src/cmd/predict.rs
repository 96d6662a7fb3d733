//! `lmforge predict`: a classifier over the rows of a file, one JSON object per row (a label
//! per text, a tag per word for a token classifier, an answer span for a QA model).

use super::ReaderArgs;
use anyhow::Result;
use lmforge::finetune::{model::LoadedClassifier, predict, qa_run, token_run};
use lmforge::models::HeadKind;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A fine-tune run dir, its model folder, or an HF *ForSequenceClassification /
    /// *ForTokenClassification / *ForQuestionAnswering folder.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    adapter: super::AdapterArg,
    #[arg(long)]
    input: PathBuf,
    /// JSONL output.
    #[arg(long)]
    output: PathBuf,
    #[command(flatten)]
    reader: ReaderArgs,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn run(a: Args) -> Result<i32> {
    let m = LoadedClassifier::load_with_adapter(&a.model, a.adapter.get(), &a.device.resolve()?)?;
    let rc = predict::reader_settings(&m, &a.reader.set)?;
    if m.classifier.kind == HeadKind::Span {
        let s = qa_run::predict_file(&m, &a.input, &a.output, &rc, a.reader.batch_size)?;
        eprintln!("{} questions, {} answered -> {}", s.questions, s.answered, a.output.display());
        if s.bad_rows.total() > 0 {
            eprintln!("{}: {}", a.input.display(), s.bad_rows.summary());
        }
        if let Some(m) = s.metrics {
            eprint!("{}", m.table());
        }
        return Ok(0);
    }
    if m.classifier.kind == HeadKind::Token {
        let s = token_run::predict_file(&m, &a.input, &a.output, &rc, a.reader.batch_size)?;
        eprintln!("{} sentences, {} words -> {}", s.sentences, s.words, a.output.display());
        if s.bad_rows.total() > 0 {
            eprintln!("{}: {}", a.input.display(), s.bad_rows.summary());
        }
        if let Some(acc) = s.accuracy {
            eprintln!("token accuracy on the tagged sentences: {acc:.4}");
        }
        return Ok(0);
    }
    let s = predict::predict_file(&m, &a.input, &a.output, &rc, a.reader.batch_size)?;
    eprintln!("{} rows -> {}", s.rows, a.output.display());
    if s.bad_rows.total() > 0 {
        eprintln!("{}: {}", a.input.display(), s.bad_rows.summary());
    }
    if let Some(acc) = s.accuracy {
        eprintln!("accuracy on the labelled rows: {acc:.4}");
    }
    if let Some(mse) = s.mse {
        eprintln!("mean squared error on the rows with a target: {mse:.4}");
    }
    Ok(0)
}
