//! Answers: a request's engine events gathered into one OpenAI response (`collect`), or turned
//! into server-sent chunks as they arrive (`stream`): the role delta first for chats, a chunk
//! per token with text, the finish chunk of each choice, the usage chunk when asked, `[DONE]`.
//! Each token's timing feeds the time-to-first-token and inter-token histograms.

use super::{metrics, openai, ApiError, App, Events, Job, Kind, Slot};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use lmforge::serve::{Event, Finish, TokenLogprob};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// What one choice produced.
#[derive(Default)]
struct Choice {
    text: String,
    logprobs: Vec<(u32, TokenLogprob)>,
    finish: Option<Finish>,
    completion_tokens: usize,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
}

impl Choice {
    /// Records a token's timing (time to first token, then inter-token latency).
    fn timed(&mut self, metrics: &metrics::Metrics, arrived: Instant) {
        let now = Instant::now();
        match self.last_token {
            None => metrics.ttft(now - arrived),
            Some(t) => metrics.itl(now - t),
        }
        self.first_token.get_or_insert(now);
        self.last_token = Some(now);
    }
}

fn object(kind: Kind, chunk: bool) -> &'static str {
    match (kind, chunk) {
        (Kind::Completion, _) => "text_completion",
        (Kind::Chat, false) => "chat.completion",
        (Kind::Chat, true) => "chat.completion.chunk",
    }
}

fn response_id(app: &App, kind: Kind) -> String {
    let n = app.next_id.fetch_add(1, Ordering::Relaxed);
    let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
    format!("{prefix}-{:x}{n:06x}", app.created)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(super) async fn collect(app: Arc<App>, job: Job, mut rx: Events, slot: Slot, arrived: Instant) -> Response {
    let n = job.prompts.len() * job.settings.n;
    let mut choices: Vec<Choice> = (0..n).map(|_| Choice::default()).collect();
    let mut prompt_tokens = 0;
    let mut open = n;
    while open > 0 {
        let Some((i, event)) = rx.recv().await else { break };
        let c = &mut choices[i];
        match event {
            Event::Token { id, text, logprob } => {
                c.timed(&app.metrics, arrived);
                c.text += &text;
                c.logprobs.extend(logprob.map(|l| (id, l)));
            }
            Event::Done { finish, text, prompt_tokens: p, completion_tokens } => {
                c.text += &text;
                c.finish = Some(finish);
                c.completion_tokens = completion_tokens;
                if i % job.settings.n == 0 {
                    prompt_tokens += p;
                }
                open -= 1;
            }
            Event::Failed(e) => {
                return ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: e,
                    kind: "server_error",
                    param: None,
                    code: None,
                }
                .into_response()
            }
        }
    }
    drop(slot);
    let completion_tokens: usize = choices.iter().map(|c| c.completion_tokens).sum();
    let tok = &app.tokenizer;
    let body_choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let finish = c.finish.map(Finish::as_str);
            match job.kind {
                Kind::Completion => {
                    let prefix = job.echo.as_ref().map(|e| e[i / job.settings.n].clone()).unwrap_or_default();
                    let logprobs = job.logprobs.map(|_| openai::completion_logprobs(tok, &c.logprobs, prefix.len()));
                    json!({ "index": i, "text": prefix + &c.text, "logprobs": logprobs, "finish_reason": finish })
                }
                Kind::Chat => {
                    let logprobs = job.logprobs.map(|_| openai::chat_logprobs(tok, &c.logprobs));
                    json!({
                        "index": i,
                        "message": { "role": "assistant", "content": c.text, "refusal": null },
                        "logprobs": logprobs,
                        "finish_reason": finish,
                    })
                }
            }
        })
        .collect();
    Json(json!({
        "id": response_id(&app, job.kind),
        "object": object(job.kind, false),
        "created": now_secs(),
        "model": app.model_id,
        "system_fingerprint": null,
        "choices": body_choices,
        "usage": openai::usage(prompt_tokens, completion_tokens),
    }))
    .into_response()
}

/// The state a stream carries from chunk to chunk.
struct StreamState {
    app: Arc<App>,
    job: Job,
    rx: Events,
    _slot: Slot,
    arrived: Instant,
    id: String,
    created: u64,
    choices: Vec<Choice>,
    open: usize,
    prompt_tokens: usize,
    pending: VecDeque<String>,
    finished: bool,
}

impl StreamState {
    fn chunk(&self, choices: Vec<Value>) -> String {
        let mut c = json!({
            "id": self.id,
            "object": object(self.job.kind, true),
            "created": self.created,
            "model": self.app.model_id,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.job.settings.include_usage {
            c["usage"] = Value::Null;
        }
        c.to_string()
    }

    fn choice(&self, i: usize, text: &str, logprob: Option<(u32, &TokenLogprob)>, finish: Option<Finish>) -> Value {
        let tok = &self.app.tokenizer;
        let items: Vec<(u32, TokenLogprob)> = logprob.map(|(id, l)| (id, l.clone())).into_iter().collect();
        match self.job.kind {
            Kind::Completion => {
                let offset = self.choices[i].text.len();
                let lp = self.job.logprobs.map(|_| openai::completion_logprobs(tok, &items, offset));
                json!({ "index": i, "text": text, "logprobs": lp, "finish_reason": finish.map(Finish::as_str) })
            }
            Kind::Chat => {
                let lp = self.job.logprobs.map(|_| openai::chat_logprobs(tok, &items));
                let delta = if finish.is_some() && text.is_empty() { json!({}) } else { json!({ "content": text }) };
                json!({ "index": i, "delta": delta, "logprobs": lp, "finish_reason": finish.map(Finish::as_str) })
            }
        }
    }

    /// The chunks one engine event makes.
    fn on_event(&mut self, i: usize, event: Event) {
        match event {
            Event::Token { id, text, logprob } => {
                self.choices[i].timed(&self.app.metrics, self.arrived);
                if !text.is_empty() || logprob.is_some() {
                    let c = self.choice(i, &text, logprob.as_ref().map(|l| (id, l)), None);
                    self.pending.push_back(self.chunk(vec![c]));
                }
                self.choices[i].text += &text;
            }
            Event::Done { finish, text, prompt_tokens, completion_tokens } => {
                if !text.is_empty() {
                    let c = self.choice(i, &text, None, None);
                    self.pending.push_back(self.chunk(vec![c]));
                    self.choices[i].text += &text;
                }
                let c = self.choice(i, "", None, Some(finish));
                self.pending.push_back(self.chunk(vec![c]));
                self.choices[i].completion_tokens = completion_tokens;
                if i % self.job.settings.n == 0 {
                    self.prompt_tokens += prompt_tokens;
                }
                self.open -= 1;
            }
            Event::Failed(e) => {
                let err = json!({ "error": { "message": e, "type": "server_error", "param": null, "code": null } });
                self.pending.push_back(err.to_string());
                self.open = 0;
            }
        }
        if self.open == 0 {
            if self.job.settings.include_usage {
                let completion: usize = self.choices.iter().map(|c| c.completion_tokens).sum();
                let mut u = json!({
                    "id": self.id,
                    "object": object(self.job.kind, true),
                    "created": self.created,
                    "model": self.app.model_id,
                    "system_fingerprint": null,
                    "choices": [],
                });
                u["usage"] = openai::usage(self.prompt_tokens, completion);
                self.pending.push_back(u.to_string());
            }
            self.pending.push_back("[DONE]".into());
            self.finished = true;
        }
    }
}

pub(super) fn stream(app: Arc<App>, job: Job, rx: Events, slot: Slot, arrived: Instant) -> Response {
    let n = job.prompts.len() * job.settings.n;
    let id = response_id(&app, job.kind);
    let mut st = StreamState {
        app,
        job,
        rx,
        _slot: slot,
        arrived,
        id,
        created: now_secs(),
        choices: (0..n).map(|_| Choice::default()).collect(),
        open: n,
        prompt_tokens: 0,
        pending: VecDeque::new(),
        finished: false,
    };
    if st.job.kind == Kind::Chat {
        // OpenAI's first chunk of each choice names the role.
        for i in 0..n {
            let c = json!({ "index": i, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null });
            let chunk = st.chunk(vec![c]);
            st.pending.push_back(chunk);
        }
    }
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), st));
            }
            if st.finished {
                return None;
            }
            match st.rx.recv().await {
                Some((i, event)) => st.on_event(i, event),
                None => return None,
            }
        }
    });
    Sse::new(stream).into_response()
}
