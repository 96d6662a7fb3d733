//! `lmforge generate`: streamed sampling from a causal LM (optionally with a LoRA adapter, and
//! with the prompt as a chat turn rendered by the model's chat template).

use anyhow::Result;
use lmforge::chat::Message;
use lmforge::checkpoint::LoadedModel;
use lmforge::generate::generate_text;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A run dir, checkpoint dir or Hugging Face folder.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    adapter: super::AdapterArg,
    #[arg(long)]
    prompt: String,
    /// The prompt is a user message: render it with the model's chat template (ChatML when
    /// the model has none) and generate the assistant's reply.
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message before the user's.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    #[command(flatten)]
    sampling: super::SamplingArgs,
    #[command(flatten)]
    device: super::DeviceArg,
}

pub fn run(a: Args) -> Result<i32> {
    let mut cfg = a.sampling.config(0.8)?;
    let m = LoadedModel::load_with_adapter(&a.model, a.adapter.get(), &a.device.resolve()?)?;
    let mut stdout = std::io::stdout();
    let (prompt, turn_end) = if a.chat {
        let template = m.chat_template()?;
        let mut messages: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
        messages.push(Message::new("user", &a.prompt));
        let end = template.turn_end();
        cfg.stop_ids.extend(end.as_deref().and_then(|t| m.tokenizer.token_id(t)));
        (template.prompt(&messages)?, end)
    } else {
        print!("{}", a.prompt);
        (a.prompt.clone(), None)
    };
    let mut shown = String::new();
    generate_text(&m, &prompt, &cfg, |piece| {
        shown.push_str(piece);
        // A chat reply ends at the template's end of turn, even when that is several tokens.
        if turn_end.as_deref().is_some_and(|end| shown.contains(end)) {
            return Ok(());
        }
        print!("{piece}");
        let _ = stdout.flush();
        Ok(())
    })?;
    println!();
    Ok(0)
}
