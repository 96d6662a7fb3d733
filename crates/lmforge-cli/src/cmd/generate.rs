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
    pub(crate) model: PathBuf,
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
    // A chat reply ends at the template's end of turn, even when that is several tokens: text
    // that may be its start is held back until it is known not to be (as the server does).
    let stop: Vec<String> = turn_end.into_iter().collect();
    let (mut text, mut printed, mut ended) = (String::new(), 0usize, false);
    generate_text(&m, &prompt, &cfg, |piece| {
        if ended {
            return Ok(());
        }
        text.push_str(piece);
        let upto = match lmforge::serve::stop_at(&text, &stop) {
            Some(end) => {
                ended = true;
                end
            }
            None => lmforge::serve::safe_len(&text, &stop),
        };
        if upto > printed {
            print!("{}", &text[printed..upto]);
            printed = upto;
            let _ = stdout.flush();
        }
        Ok(())
    })?;
    if !ended && printed < text.len() {
        print!("{}", &text[printed..]);
    }
    println!();
    Ok(0)
}
