//! OpenAI's request and response schemas for `/v1/completions` and `/v1/chat/completions`:
//! permissive requests (unknown fields ignored, as OpenAI does), checked values with errors
//! naming the parameter, and the exact response / stream-chunk shapes (ids, `object`,
//! `created`, `model`, `finish_reason`, `usage`, `logprobs`).

use axum::http::StatusCode;
use lmforge::chat::Message;
use lmforge::serve::TokenLogprob;
use lmforge::tokenizer::TextTokenizer;
use serde::Deserialize;
use serde_json::{json, Value};

/// An error in OpenAI's shape, with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `prompt`: one string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// The sampling fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    /// Chat's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// vLLM's extension: do not stop at the end-of-text token (benchmarks of fixed lengths).
    pub ignore_eos: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Top alternatives per token (0..=20); null: none.
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// Checked sampling settings.
#[derive(Debug, Clone)]
pub struct Checked {
    pub max_tokens: Option<usize>,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: usize,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
}

impl Sampling {
    pub fn check(&self) -> Result<Checked, ApiError> {
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(m) if m < 1 => {
                return Err(ApiError::invalid("max_tokens", format!("{m} is less than the minimum of 1")))
            }
            m => m.map(|m| m as usize),
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid("temperature", format!("{temperature} is not in [0, 2]")));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", format!("{top_p} is not in (0, 1]")));
        }
        let top_k = match self.top_k {
            Some(k) if k < 0 => {
                return Err(ApiError::invalid("top_k", format!("{k} is negative (0: no top-k filter)")))
            }
            k => k.unwrap_or(0) as usize,
        };
        let n = match self.n {
            Some(n) if !(1..=64).contains(&n) => return Err(ApiError::invalid("n", format!("{n} is not in 1..=64"))),
            n => n.unwrap_or(1) as usize,
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) if v.len() > 4 => {
                return Err(ApiError::invalid("stop", format!("{} stop sequences, at most 4", v.len())))
            }
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.iter().any(String::is_empty) {
            return Err(ApiError::invalid("stop", "an empty stop sequence"));
        }
        let stream = self.stream.unwrap_or(false);
        let include_usage = self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(ApiError::invalid("stream_options", "stream_options is only allowed with stream = true"));
        }
        Ok(Checked {
            max_tokens,
            temperature,
            top_p,
            top_k,
            seed: self.seed.map(|s| s as u64),
            stop,
            n,
            stream,
            include_usage,
            ignore_eos: self.ignore_eos.unwrap_or(false),
        })
    }
}

/// `usage`.
pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion })
}

/// The text of one token (a special token's spelling; bytes of a partial character as the
/// replacement character).
pub fn token_text(tok: &TextTokenizer, id: u32) -> String {
    tok.token_text(id).unwrap_or_default()
}

/// Completions' `logprobs` object for the tokens of one choice.
pub fn completion_logprobs(tok: &TextTokenizer, items: &[(u32, TokenLogprob)], offset: usize) -> Value {
    let mut text_offset = Vec::new();
    let mut at = offset;
    let tokens: Vec<String> = items
        .iter()
        .map(|(id, _)| {
            let t = token_text(tok, *id);
            text_offset.push(at);
            at += t.len();
            t
        })
        .collect();
    let top: Vec<Value> = items
        .iter()
        .map(|(_, lp)| {
            let m: serde_json::Map<String, Value> =
                lp.top.iter().map(|(id, l)| (token_text(tok, *id), json!(l))).collect();
            Value::Object(m)
        })
        .collect();
    json!({
        "tokens": tokens,
        "token_logprobs": items.iter().map(|(_, lp)| lp.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// Chat's `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs(tok: &TextTokenizer, items: &[(u32, TokenLogprob)]) -> Value {
    let entry = |id: u32, l: f32| {
        let t = token_text(tok, id);
        json!({ "token": t, "logprob": l, "bytes": t.as_bytes() })
    };
    let content: Vec<Value> = items
        .iter()
        .map(|(id, lp)| {
            let mut e = entry(*id, lp.logprob);
            e["top_logprobs"] = lp.top.iter().map(|(i, l)| entry(*i, *l)).collect();
            e
        })
        .collect();
    json!({ "content": content })
}
