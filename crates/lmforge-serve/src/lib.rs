//! `lmforge serve`: an OpenAI-compatible HTTP server (axum + tokio) over lmforge's
//! continuous-batching engine (`lmforge::serve`). Endpoints: `POST /v1/completions`, `POST
//! /v1/chat/completions` (the model's chat template, as fine-tuning renders it), `GET
//! /v1/models`, `GET /health`, `GET /metrics` (Prometheus text). Each choice of a request is one
//! engine sequence whose events come back over a channel; streams are server-sent events in
//! OpenAI's chunk schema ending with `data: [DONE]`. A request the context or the KV-cache pool
//! cannot hold is a 400 naming the numbers, never truncated; past `--max-concurrent` requests
//! get a 429; a client that goes away frees its sequence at the engine's next step. SIGTERM or
//! Ctrl-C stops accepting connections, lets running streams finish (a bounded wait) and exits 0.

pub mod bench;
mod metrics;
pub mod openai;
mod respond;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lmforge::chat::ChatTemplate;
use lmforge::checkpoint::LoadedModel;
use lmforge::generate::SamplingConfig;
use lmforge::serve::{Engine, EngineConfig, Event, Request, Sink};
use lmforge::tokenizer::TextTokenizer;
use openai::{ApiError, ChatRequest, Checked, CompletionRequest, Prompt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Sequences per batched forward.
    pub max_batch: usize,
    /// Requests in flight (running or queued) before new ones get a 429.
    pub max_concurrent: usize,
    /// The KV-cache pool.
    pub kv_cache_mb: usize,
    /// Prompt tokens prefilled per engine step.
    pub prefill_tokens: usize,
    pub api_key: Option<String>,
    /// The id `/v1/models` lists and requests may name.
    pub model_id: String,
    /// After SIGTERM, how long running streams may take before the process exits anyway.
    pub drain: Duration,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

struct App {
    engine: Engine,
    tokenizer: TextTokenizer,
    template: ChatTemplate,
    /// The template's end of turn when it is one token (`<|im_end|>`), a stop id for chats.
    turn_end_id: Option<u32>,
    turn_end: Option<String>,
    eos: Option<u32>,
    model_id: String,
    created: u64,
    kv_tokens: usize,
    api_key: Option<String>,
    max_concurrent: usize,
    in_flight: AtomicUsize,
    next_id: AtomicU64,
    metrics: metrics::Metrics,
}

/// A request's place among the `--max-concurrent`; freed when dropped (also when a stream's
/// client goes away).
struct Slot(Arc<App>);

impl Slot {
    fn take(app: &Arc<App>) -> Result<Self, ApiError> {
        let now = app.in_flight.fetch_add(1, Ordering::SeqCst);
        if now >= app.max_concurrent {
            app.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                message: format!("the server is at capacity ({} requests in flight); retry later", app.max_concurrent),
                kind: "rate_limit_error",
                param: None,
                code: Some("rate_limit_exceeded"),
            });
        }
        Ok(Self(app.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Events of every choice of one request, tagged with the choice index.
struct ChanSink {
    tx: mpsc::UnboundedSender<(usize, Event)>,
    index: usize,
}

impl Sink for ChanSink {
    fn send(&mut self, event: Event) -> bool {
        self.tx.send((self.index, event)).is_ok()
    }
    fn closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Builds the server state: the engine over `model`, the tokenizer and chat template.
fn app(model: LoadedModel, o: &ServeOptions) -> anyhow::Result<Arc<App>> {
    let template = model.chat_template()?;
    let tokenizer = model.tokenizer.clone();
    let turn_end = template.turn_end();
    let turn_end_id = turn_end.as_deref().and_then(|t| tokenizer.token_id(t));
    let eos = tokenizer.eos_id();
    let kv_tokens = EngineConfig::kv_tokens_for_mb(&model, o.kv_cache_mb);
    let cfg = EngineConfig { max_batch: o.max_batch, prefill_tokens: o.prefill_tokens, kv_cache_tokens: kv_tokens };
    let engine = Engine::start(model, cfg)?;
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(Arc::new(App {
        engine,
        tokenizer,
        template,
        turn_end_id,
        turn_end,
        eos,
        model_id: o.model_id.clone(),
        created,
        kv_tokens,
        api_key: o.api_key.clone(),
        max_concurrent: o.max_concurrent,
        in_flight: AtomicUsize::new(0),
        next_id: AtomicU64::new(0),
        metrics: metrics::Metrics::new(),
    }))
}

/// The router over `app` (also what tests drive).
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/metrics", get(metrics_text))
        .with_state(app)
}

/// Serves `model` until SIGTERM / Ctrl-C; returns once running streams have finished (or the
/// drain time has passed).
pub fn serve(model: LoadedModel, o: ServeOptions) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let app = app(model, &o)?;
        let listener = tokio::net::TcpListener::bind((o.host.as_str(), o.port)).await?;
        let addr = listener.local_addr()?;
        tracing::info!(
            "serving {} on http://{addr} (max batch {}, KV cache {} MiB = {} positions, max concurrent {})",
            o.model_id,
            o.max_batch,
            o.kv_cache_mb,
            app.kv_tokens,
            o.max_concurrent
        );
        // Scripts wait for this line on stdout before they connect.
        println!("listening on http://{addr}");
        let drain = o.drain;
        let stop = async move {
            stop_signal().await;
            tracing::info!("stopping: no new connections; running streams finish (at most {drain:?})");
            tokio::spawn(async move {
                tokio::time::sleep(drain).await;
                tracing::warn!("streams still running after {drain:?}: exiting");
                std::process::exit(0);
            });
        };
        axum::serve(listener, router(app)).with_graceful_shutdown(stop).await?;
        Ok(())
    })
}

async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn authorize(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &app.api_key else { return Ok(()) };
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        return Ok(());
    }
    Err(ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: "Incorrect or missing API key: send `Authorization: Bearer KEY`".into(),
        kind: "invalid_request_error",
        param: None,
        code: Some("invalid_api_key"),
    })
}

fn check_model(app: &App, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(m) if *m != app.model_id => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{m}` does not exist (this server serves `{}`)", app.model_id),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }),
        _ => Ok(()),
    }
}

/// The body as `T`: unparsable JSON or a wrong type is a 400 naming what was wrong.
fn parse<T: serde::de::DeserializeOwned>(body: Result<Json<Value>, JsonRejection>) -> Result<T, ApiError> {
    let Json(v) =
        body.map_err(|e| ApiError::invalid("body", format!("We could not parse the JSON body of your request: {e}")))?;
    serde_json::from_value(v).map_err(|e| ApiError::invalid("body", format!("Invalid request: {e}")))
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    authorize(&app, &headers)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{ "id": app.model_id, "object": "model", "created": app.created, "owned_by": "lmforge" }],
    })))
}

async fn metrics_text(State(app): State<Arc<App>>) -> impl IntoResponse {
    let body = app.metrics.render(&app.engine.stats, app.in_flight.load(Ordering::Relaxed));
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// Which endpoint a response is for.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Completion,
    Chat,
}

/// One request, ready for the engine: its prompts (token ids), checked settings and extras.
struct Job {
    kind: Kind,
    prompts: Vec<Vec<u32>>,
    /// Completions with `echo`: each prompt's text, prepended to its choices.
    echo: Option<Vec<String>>,
    settings: Checked,
    max_tokens: usize,
    logprobs: Option<usize>,
}

async fn completions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let arrived = Instant::now();
    let job = (|| {
        authorize(&app, &headers)?;
        let req: CompletionRequest = parse(body)?;
        check_model(&app, &req.sampling.model)?;
        let settings = req.sampling.check()?;
        let texts = match req.prompt {
            Prompt::One(p) => vec![p],
            Prompt::Many(v) if v.is_empty() => return Err(ApiError::invalid("prompt", "an empty list of prompts")),
            Prompt::Many(v) => v,
        };
        let logprobs = match req.logprobs {
            Some(k) if !(0..=20).contains(&k) => {
                return Err(ApiError::invalid("logprobs", format!("{k} is not in 0..=20")))
            }
            k => k.map(|k| k as usize),
        };
        if req.echo == Some(true) && logprobs.is_some() {
            return Err(ApiError::invalid(
                "echo",
                "echo with logprobs (the prompt's log-probabilities) is not supported",
            ));
        }
        let mut prompts = Vec::new();
        for t in &texts {
            let mut ids = app.tokenizer.encode(t).map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
            if ids.is_empty() {
                // An empty prompt starts from the end-of-text token, as `lmforge generate`.
                ids.extend(app.eos);
            }
            if ids.is_empty() {
                return Err(ApiError::invalid(
                    "prompt",
                    "the prompt is empty and the tokenizer has no end-of-text token",
                ));
            }
            prompts.push(ids);
        }
        let max_tokens = settings.max_tokens.unwrap_or(16);
        let echo = (req.echo == Some(true)).then_some(texts);
        Ok(Job { kind: Kind::Completion, prompts, echo, settings, max_tokens, logprobs })
    })();
    run_job(app, job, arrived).await
}

async fn chat_completions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Response {
    let arrived = Instant::now();
    let job = (|| {
        authorize(&app, &headers)?;
        let req: ChatRequest = parse(body)?;
        check_model(&app, &req.sampling.model)?;
        let settings = req.sampling.check()?;
        if req.messages.is_empty() {
            return Err(ApiError::invalid("messages", "at least one message is required"));
        }
        let text = app.template.prompt(&req.messages).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        let ids = app.tokenizer.encode(&text).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
        let logprobs = match (req.logprobs, req.top_logprobs) {
            (_, Some(k)) if !(0..=20).contains(&k) => {
                return Err(ApiError::invalid("top_logprobs", format!("{k} is not in 0..=20")))
            }
            (Some(true), k) => Some(k.unwrap_or(0) as usize),
            (_, Some(_)) => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs = true")),
            _ => None,
        };
        // Without max_tokens a reply may use the rest of the context.
        let max_tokens = settings.max_tokens.unwrap_or(app.engine.context.saturating_sub(ids.len()).max(1));
        Ok(Job { kind: Kind::Chat, prompts: vec![ids], echo: None, settings, max_tokens, logprobs })
    })();
    run_job(app, job, arrived).await
}

/// Checks the job fits, takes a slot, queues its sequences and answers (JSON or a stream).
async fn run_job(app: Arc<App>, job: Result<Job, ApiError>, arrived: Instant) -> Response {
    let kind = job.as_ref().map(|j| j.kind).unwrap_or(Kind::Completion);
    let response = match start_job(&app, job) {
        Ok((job, rx, slot)) if job.settings.stream => respond::stream(app.clone(), job, rx, slot, arrived),
        Ok((job, rx, slot)) => respond::collect(app.clone(), job, rx, slot, arrived).await,
        Err(e) => e.into_response(),
    };
    app.metrics.request(kind == Kind::Chat, response.status().as_u16());
    response
}

type Events = mpsc::UnboundedReceiver<(usize, Event)>;

fn start_job(app: &Arc<App>, job: Result<Job, ApiError>) -> Result<(Job, Events, Slot), ApiError> {
    let job = job?;
    let context = app.engine.context;
    let what = if job.kind == Kind::Chat { "messages" } else { "prompt" };
    for p in &job.prompts {
        let total = p.len() + job.max_tokens;
        if total > context {
            return Err(ApiError::invalid(
                what,
                format!(
                    "This model's maximum context length is {context} tokens. However, you requested {total} tokens \
                     ({} in the {what}, {} in the completion). Please reduce the length of the {what} or completion.",
                    p.len(),
                    job.max_tokens
                ),
            ));
        }
        if total > app.kv_tokens {
            return Err(ApiError::invalid(
                what,
                format!(
                    "{total} tokens ({} in the {what}, {} in the completion) exceed the KV cache of {} positions \
                     (--kv-cache-mb)",
                    p.len(),
                    job.max_tokens,
                    app.kv_tokens
                ),
            ));
        }
    }
    let slot = Slot::take(app)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let s = &job.settings;
    let base_seed =
        s.seed.unwrap_or_else(|| 0x5eed ^ app.next_id.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9));
    let mut stop_ids = Vec::new();
    let mut stop = s.stop.clone();
    if job.kind == Kind::Chat {
        // A reply ends at the template's end of turn: one token, or a string never sent.
        stop_ids.extend(app.turn_end_id);
        if app.turn_end_id.is_none() {
            stop.extend(app.turn_end.clone());
        }
    }
    let mut index = 0;
    for p in &job.prompts {
        for j in 0..s.n {
            let sampling = SamplingConfig {
                max_new_tokens: job.max_tokens,
                temperature: s.temperature,
                top_k: s.top_k,
                top_p: s.top_p,
                seed: base_seed.wrapping_add(j as u64),
                eos_id: if s.ignore_eos { None } else { app.eos },
                stop_ids: stop_ids.clone(),
            };
            let sink = Box::new(ChanSink { tx: tx.clone(), index });
            let req = Request { prompt: p.clone(), sampling, stop: stop.clone(), logprobs: job.logprobs, sink };
            app.engine.submit(req).map_err(|e| ApiError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: e.to_string(),
                kind: "server_error",
                param: None,
                code: None,
            })?;
            index += 1;
        }
    }
    Ok((job, rx, slot))
}
