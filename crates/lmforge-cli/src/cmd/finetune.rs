//! `lmforge finetune`: fine-tune a pretrained model for text classification or as a causal LM
//! (instructions, completions, chat), or continue a fine-tuning run with `--resume` (on one
//! process or several, under `mpirun`).

use super::{RecordArgs, Start, StartArgs};
use crate::{process, Ctx};
use anyhow::Result;
use lmforge::finetune::{self, FinetuneConfig};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    start: StartArgs,
    #[command(flatten)]
    record: RecordArgs,
    /// LoRA: also write the base with the best adapter merged in, as a plain Hugging Face
    /// folder, to RUN_DIR/merged.
    #[arg(long)]
    merge: bool,
    /// k-fold cross-validation: K runs into RUN_DIR/fold-I, each validating on one fold of the
    /// train rows (stratified by label for classification) and training on the others; their
    /// final metrics and mean ± std in RUN_DIR/cv.json.
    #[arg(long, value_name = "K")]
    folds: Option<usize>,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    let r = a.record;
    let fold_kind = r.kind.clone().unwrap_or_else(|| "fold".into());
    let (opts, start) = a.start.start(ctx, r.kind.as_deref().unwrap_or("finetune"), r.name, &r.group)?;
    let s = match start {
        Start::Resume(_) if a.folds.is_some() => {
            anyhow::bail!("--folds starts a cross-validation; resume one fold with --resume RUN_DIR/fold-I")
        }
        Start::Resume(dir) => finetune::resume(&dir, &opts)?,
        Start::New { config, set, run_dir } if a.folds.is_some() => {
            let cfg = FinetuneConfig::resolve(Some(&config), &set)?;
            // The store records each fold as a run of kind `fold`, grouped by the
            // cross-validation's folder name (`lmforge runs list --filter group=NAME`).
            let mut opts = opts;
            if ctx.is_writer() {
                let group = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                opts.observers = lmforge_track::observers(&ctx.db_path(), &fold_kind, None, &group);
            }
            let k = a.folds.unwrap_or(0);
            let cv = finetune::folds::cross_validate(&cfg, &run_dir, k, &opts)?;
            if ctx.is_writer() {
                println!("{k}-fold cross-validation in {} (cv.json)", run_dir.display());
                let names: Vec<&String> = cv.mean_std.keys().collect();
                let header: Vec<String> = names.iter().map(|n| format!("{n:>12}")).collect();
                println!("{:<8}{}", "fold", header.join(""));
                for f in &cv.folds {
                    let cells: Vec<String> = names
                        .iter()
                        .map(|n| f.metrics.get(*n).map_or(format!("{:>12}", "-"), |v| format!("{v:>12.4}")))
                        .collect();
                    println!("{:<8}{}", f.fold, cells.join(""));
                }
                let mean: Vec<String> = names.iter().map(|n| format!("{:>12.4}", cv.mean_std[*n].0)).collect();
                let std: Vec<String> = names.iter().map(|n| format!("{:>12.4}", cv.mean_std[*n].1)).collect();
                println!("{:<8}{}\n{:<8}{}", "mean", mean.join(""), "std", std.join(""));
                let split = cv.folds.first().and_then(|f| f.final_split.clone()).unwrap_or_default();
                println!("(final metrics on each fold's {split} split)");
            }
            return Ok(if cv.finished { 0 } else { process::stop_status(true) });
        }
        Start::New { config, set, run_dir } => {
            let cfg = FinetuneConfig::resolve(Some(&config), &set)?;
            if ctx.is_writer() {
                eprintln!("fine-tuning into {}", run_dir.display());
            }
            finetune::finetune(&cfg, &run_dir, &opts)?
        }
    };
    if a.merge && s.finished && ctx.is_writer() {
        let merged = finetune::merge(&s.run_dir)?;
        println!("merged:      {}", merged.display());
    }
    if !ctx.is_writer() {
        return Ok(process::stop_status(s.interrupted));
    }
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
        println!("best:        validation {} {value:.4} at step {step}", s.metric);
    }
    if let (Some(split), Some(e)) = (&s.final_split, &s.final_eval) {
        println!("--- {split} (best model), loss {:.4} ---", e.loss);
        print!("{}", e.metrics.table());
    }
    if let (Some(split), Some(e)) = (&s.final_split, &s.final_regression) {
        println!("--- {split} (best model), loss (MSE) {:.4} ---", e.loss);
        print!("{}", e.metrics.table());
    }
    if let (Some(split), Some(e)) = (&s.final_split, &s.final_tokens) {
        println!("--- {split} (best model), loss {:.4} ---", e.loss);
        print!("{}", e.entities.table());
    }
    if let (Some(split), Some(e)) = (&s.final_split, &s.final_qa) {
        println!("--- {split} (best model), loss {:.4} ---", e.loss);
        print!("{}", e.metrics.table());
    }
    if let (Some(split), Some(e)) = (&s.final_split, &s.final_causal) {
        println!("--- {split} (best model): {} rows, loss {:.4}, ppl {:.2} ---", e.rows, e.loss, e.ppl);
        if let Some(g) = &e.generation {
            println!(
                "BLEU {:.2}  chrF {:.2}  ROUGE-1/2/L {:.4} / {:.4} / {:.4}",
                g.bleu, g.chrf, g.rouge1, g.rouge2, g.rouge_l
            );
            println!("exact match {:.2}  token F1 {:.2}", g.exact_match, g.token_f1);
            println!("generations: {}", s.run_dir.join(format!("generations-{split}.jsonl")).display());
        }
    }
    if !s.finished {
        println!("stopped at step {}; continue with `lmforge finetune --resume {}`", s.steps, s.run_dir.display());
    }
    Ok(process::stop_status(s.interrupted))
}
