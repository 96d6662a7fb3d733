//! `lmforge finetune`: fine-tune a pretrained model for text classification or as a causal LM
//! (instructions, completions, chat), or continue a fine-tuning run with `--resume` (on one
//! process or several, under `mpirun`).

use super::{Start, StartArgs};
use crate::{process, Ctx};
use anyhow::Result;
use lmforge::finetune::{self, FinetuneConfig};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    start: StartArgs,
    /// LoRA: also write the base with the best adapter merged in, as a plain Hugging Face
    /// folder, to RUN_DIR/merged.
    #[arg(long)]
    merge: bool,
}

pub fn run(a: Args, ctx: &Ctx) -> Result<i32> {
    let (opts, start) = a.start.start(ctx, "finetune", None, "")?;
    let s = match start {
        Start::Resume(dir) => finetune::resume(&dir, &opts)?,
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
