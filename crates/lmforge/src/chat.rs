//! Chat formatting: a conversation (OpenAI-style `messages`: system / user / assistant) becomes
//! the text a causal LM reads, by the model's own Jinja chat template (`chat_template` in its
//! `tokenizer_config.json`), rendered as Hugging Face's `apply_chat_template` renders it:
//! `trim_blocks` and `lstrip_blocks`, `loop_controls`, Python string methods (`.strip()`,
//! `.startswith()`, ...), `raise_exception`, `bos_token` / `eos_token`, a `tojson` that does
//! not HTML-escape. A model without a template gets [`CHATML`] (documented in README).
//!
//! Fine-tuning needs more than the text: which characters are the assistant's (trained) and
//! which are the prompt's (masked). [`ChatTemplate::segments`] finds them by rendering prefixes
//! of the conversation — the text before assistant turn i is the rendering of the turns before
//! it with the generation prompt, the turn ends where the rendering of the turns up to it ends
//! — so any template that renders conversations as a growing prefix works, without markers in
//! the template. The same prompt rendering is what `generate --chat` and `eval generation`
//! feed the model, so training and inference see the same prompt text.

use crate::error::{Error, IoContext, Result};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// ChatML (OpenAI, Qwen, many fine-tunes): the default when a model has no template.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A piece of rendered text and whether the model learns to produce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    pub trained: bool,
}

/// A compiled chat template with the special tokens it may use.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    pub bos_token: String,
    pub eos_token: String,
    /// Where it came from, for messages ("tokenizer_config.json of M", "ChatML (default)").
    pub origin: String,
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error names `origin`.
    pub fn new(source: &str, bos_token: &str, eos_token: &str, origin: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |_fmt: String| -> String {
            // Templates use it for "today's date" in a system prompt; a fixed value keeps
            // rendering (and training data) deterministic.
            String::new()
        });
        env.add_filter("tojson", |v: Value| -> std::result::Result<String, minijinja::Error> {
            serde_json::to_string(&v).map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, e.to_string()))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Invalid(format!("the chat template of {origin} does not compile: {e:#}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            origin: origin.into(),
        })
    }

    /// ChatML with the given end-of-text token.
    pub fn chatml(bos_token: &str, eos_token: &str) -> Self {
        Self::new(CHATML, bos_token, eos_token, "ChatML (default)").expect("ChatML compiles")
    }

    /// ChatML with `tokenizer`'s end-of-text token: the template of a model that has none.
    pub fn chatml_for(tokenizer: &crate::tokenizer::TextTokenizer) -> Result<Self> {
        Ok(Self::chatml("", &eos_text(tokenizer)?))
    }

    /// The template of a model folder's `tokenizer_config.json` (a string, or Hugging Face's
    /// list of named templates, of which `default`), with its `bos_token` / `eos_token`;
    /// None when the folder has no template.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("tokenizer_config.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).at(&path)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("invalid JSON: {e}")))?;
        let source = match v.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .ok_or_else(|| Error::format(&path, "chat_template is a list without a `default` template"))?
                .to_string(),
            Some(_) => return Err(Error::format(&path, "chat_template must be a string or a list of named templates")),
        };
        let token = |key: &str| -> String {
            match v.get(key) {
                Some(serde_json::Value::String(s)) => s.clone(),
                // AddedToken form: {"content": "<s>", ...}
                Some(o) => o.get("content").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
                None => String::new(),
            }
        };
        Self::new(&source, &token("bos_token"), &token("eos_token"), &format!("{}", path.display())).map(Some)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The text of `messages`, with the assistant's opening when `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat").expect("added in new");
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        };
        tmpl.render(ctx).map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation => Error::Invalid(format!(
                "the chat template ({}) refused the conversation: {}",
                self.origin,
                e.detail().unwrap_or("")
            )),
            _ => Error::Invalid(format!("the chat template ({}) failed: {e:#}", self.origin)),
        })
    }

    /// The rendered conversation cut into prompt (untrained) and assistant (trained) pieces,
    /// in order; their concatenation is `render(messages, false)`. An error when the template
    /// does not render the conversation as a growing prefix.
    pub fn segments(&self, messages: &[Message]) -> Result<Vec<Segment>> {
        let mut out = Vec::new();
        let mut done = 0usize; // bytes of the full rendering already in `out`
        let full = self.render(messages, false)?;
        for (i, m) in messages.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            let prefix_ok = full.starts_with(&through) && through.starts_with(&before) && before.len() >= done;
            if !prefix_ok {
                return Err(Error::Invalid(format!(
                    "the chat template ({}) does not render this conversation as a growing prefix, so the \
                     assistant's tokens cannot be told from the prompt's (message {})",
                    self.origin,
                    i + 1
                )));
            }
            push(&mut out, &full[done..before.len()], false);
            push(&mut out, &full[before.len()..through.len()], true);
            done = through.len();
        }
        push(&mut out, &full[done..], false);
        Ok(out)
    }

    /// What the template writes after an assistant turn, trimmed (ChatML's `<|im_end|>`,
    /// Llama 2's `</s>`): where a generated reply ends. None when it writes nothing there.
    pub fn turn_end(&self) -> Option<String> {
        let probe = "\u{E000}"; // a private-use character no template writes
        let conv = [Message::new("user", "x"), Message::new("assistant", probe)];
        let segments = self.segments(&conv).ok()?;
        let after = segments.iter().find(|s| s.trained)?.text.split_once(probe)?.1.trim();
        (!after.is_empty()).then(|| after.to_string())
    }

    /// The prompt for a reply to `messages` (which end with a user turn): the rendering with
    /// the generation prompt.
    pub fn prompt(&self, messages: &[Message]) -> Result<String> {
        self.render(messages, true)
    }
}

/// The spelling of `tokenizer`'s end-of-text token ("" without one), a template's `eos_token`.
pub fn eos_text(tokenizer: &crate::tokenizer::TextTokenizer) -> Result<String> {
    Ok(tokenizer.eos_id().map(|id| tokenizer.token_text(id)).transpose()?.unwrap_or_default())
}

fn push(out: &mut Vec<Segment>, text: &str, trained: bool) {
    if !text.is_empty() {
        out.push(Segment { text: text.to_string(), trained });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/chat_template/cases.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (the shared fixtures sit beside the checkout)", path.display()));
        serde_json::from_str(&text).unwrap()
    }

    /// Every case renders exactly as transformers' `apply_chat_template(tokenize=False)`.
    #[test]
    fn renders_as_hugging_face() {
        let f = fixture();
        let (bos, eos) = (f["bos_token"].as_str().unwrap(), f["eos_token"].as_str().unwrap());
        let cases = f["cases"].as_array().unwrap();
        assert!(cases.len() >= 12);
        for case in cases {
            let name = case["template"].as_str().unwrap();
            let t = ChatTemplate::new(f["templates"][name].as_str().unwrap(), bos, eos, name).unwrap();
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let gen = case["add_generation_prompt"].as_bool().unwrap();
            assert_eq!(t.render(&messages, gen).unwrap(), case["rendered"].as_str().unwrap(), "{name} {messages:?}");
        }
        assert_eq!(f["templates"]["chatml"].as_str().unwrap(), CHATML, "the default is the fixture's ChatML");
    }

    #[test]
    fn raise_exception_is_an_error_naming_the_template() {
        let f = fixture();
        let t = ChatTemplate::new(f["templates"]["llama2"].as_str().unwrap(), "<s>", "</s>", "llama2").unwrap();
        let bad = [Message::new("user", "a"), Message::new("user", "b")];
        let e = t.render(&bad, false).unwrap_err().to_string();
        assert!(e.contains("llama2") && e.contains("alternate"), "{e}");
        let e = ChatTemplate::new("{% for %}", "", "", "broken.json").unwrap_err().to_string();
        assert!(e.contains("broken.json"), "{e}");
    }

    #[test]
    fn segments_mark_the_assistant_turns() {
        let f = fixture();
        let conv = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello."),
            Message::new("user", "Bye"),
            Message::new("assistant", "Bye!"),
        ];
        let chatml = ChatTemplate::chatml("", "<|endoftext|>");
        let s = chatml.segments(&conv).unwrap();
        let trained: Vec<&str> = s.iter().filter(|s| s.trained).map(|s| s.text.as_str()).collect();
        assert_eq!(trained, ["Hello.<|im_end|>\n", "Bye!<|im_end|>\n"]);
        let joined: String = s.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(joined, chatml.render(&conv, false).unwrap());
        assert_eq!(s[0].text, chatml.prompt(&conv[..2]).unwrap(), "the first prompt is what generation reads");
        let llama2 = ChatTemplate::new(f["templates"]["llama2"].as_str().unwrap(), "<s>", "</s>", "llama2").unwrap();
        let s = llama2.segments(&conv).unwrap();
        let trained: Vec<&str> = s.iter().filter(|s| s.trained).map(|s| s.text.as_str()).collect();
        assert_eq!(trained, [" Hello. </s>", " Bye! </s>"]);
        assert_eq!(llama2.turn_end().as_deref(), Some("</s>"));
        assert_eq!(chatml.turn_end().as_deref(), Some("<|im_end|>"));
    }
}
