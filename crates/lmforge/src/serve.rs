//! The inference engine behind `lmforge serve`: continuous batching over one causal LM. One
//! thread owns the model and loops: admit waiting requests while the KV-cache pool has room for
//! their prompt and `max_tokens` (reserved up front, so a running stream is never evicted), then
//! run one forward over every live sequence — a decode token for each running one and prefill
//! chunks of new ones within a per-step token budget, so a long prompt never stalls the streams
//! ([`Decoder::forward_pieces`]) — sample each sequence's next token with its own seeded
//! generator, and send it to the request's [`Sink`]. A sequence ends at the end-of-text token, a
//! stop id, a stop string (never sent) or `max_tokens`; one whose client went away is dropped
//! at the next step and its cache freed. The engine knows nothing of HTTP: the server crate
//! (`lmforge-serve`) turns requests and events into OpenAI's schemas.
//!
//! Batching does not change results: every row of the batched forward is computed as it would
//! be alone, and greedy decoding equals `lmforge generate` (tested).

use crate::checkpoint::LoadedModel;
use crate::error::{Error, Result};
use crate::generate::{sample, SamplingConfig};
use crate::models::{KvCache, Piece};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

/// How the engine batches.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Sequences in one forward at most.
    pub max_batch: usize,
    /// Prompt tokens prefilled per step at most (a long prompt is prefilled in chunks).
    pub prefill_tokens: usize,
    /// The KV-cache pool, in token positions (all layers' keys and values of one position).
    pub kv_cache_tokens: usize,
}

impl EngineConfig {
    /// The pool size in positions for `mb` MiB of KV cache of `model` (fp32 keys and values).
    pub fn kv_tokens_for_mb(model: &LoadedModel, mb: usize) -> usize {
        let s = &model.spec;
        let per_token = 2 * s.n_layer * s.n_kv_head * s.head_dim * 4;
        (mb << 20) / per_token.max(1)
    }
}

/// Why a sequence ended, as OpenAI's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The end-of-text token, a stop id or a stop string.
    Stop,
    /// `max_tokens`.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// The log-probability of a sampled token and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub logprob: f32,
    /// (token id, log-probability), most likely first.
    pub top: Vec<(u32, f32)>,
}

/// What the engine tells a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A new token and the text it completes (empty while a multi-byte character or a possible
    /// stop string is held back).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    /// The end, with any text still held back.
    Done {
        finish: Finish,
        text: String,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// Where a request's events go.
pub trait Sink: Send {
    /// Delivers an event; false when nobody listens any more.
    fn send(&mut self, event: Event) -> bool;
    /// Whether the listener has gone (a client that disconnected).
    fn closed(&self) -> bool;
}

/// One generation request.
pub struct Request {
    pub prompt: Vec<u32>,
    /// max_new_tokens, temperature, top-k, top-p, seed, end-of-text and stop ids.
    pub sampling: SamplingConfig,
    /// Stop strings: the text ends before the first of them, which is not sent.
    pub stop: Vec<String>,
    /// Top alternatives to report with each token's log-probability (None: no log-probabilities).
    pub logprobs: Option<usize>,
    pub sink: Box<dyn Sink>,
}

/// Live counters for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    /// KV positions reserved by running sequences.
    pub kv_reserved: AtomicUsize,
    pub kv_total: AtomicUsize,
    pub steps: AtomicU64,
    /// Sequences summed over steps (mean batch size = this / steps).
    pub batched_sequences: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Sequences dropped because their client went away.
    pub cancelled: AtomicU64,
}

enum Msg {
    Submit(Request),
    Stop,
}

/// The handle the server holds: submit requests; the engine thread stops when it is dropped.
pub struct Engine {
    tx: mpsc::Sender<Msg>,
    pub stats: Arc<Stats>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub context: usize,
}

impl Engine {
    /// Starts the engine thread over `model` (a causal LM).
    pub fn start(model: LoadedModel, cfg: EngineConfig) -> Result<Self> {
        model.decoder()?;
        if cfg.max_batch == 0 || cfg.prefill_tokens == 0 || cfg.kv_cache_tokens == 0 {
            return Err(Error::Invalid(format!("engine settings must be positive: {cfg:?}")));
        }
        let stats = Arc::new(Stats::default());
        stats.kv_total.store(cfg.kv_cache_tokens, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        let context = model.spec.context;
        let worker = Worker { model, cfg, stats: stats.clone(), waiting: VecDeque::new(), running: Vec::new() };
        let thread = std::thread::Builder::new()
            .name("lmforge-engine".into())
            // On one of rayon's workers, where a step's products and attention are spread
            // (quickstart model, `bench serve`, 4 alternating runs: concurrency 1 ~1,700 →
            // ~2,600 tokens/s, 16 ~3,250 → ~3,900). `generate` of GPT-2 124M gained nothing.
            .spawn(move || crate::ops::workers::on_a_rayon_worker(|| worker.run(rx)))
            .map_err(|e| Error::Invalid(format!("cannot start the engine thread: {e}")))?;
        Ok(Self { tx, stats, thread: Some(thread), context })
    }

    /// Queues a request (the prompt plus `max_new_tokens` must fit the context and the pool:
    /// the server checks first and answers 400).
    pub fn submit(&self, req: Request) -> Result<()> {
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Msg::Submit(req)).map_err(|_| Error::Invalid("the engine has stopped".into()))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A live sequence.
struct Sequence {
    req: Request,
    cache: KvCache,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    generated: Vec<u32>,
    /// Bytes of the generated text already sent.
    sent: usize,
    rng: ChaCha8Rng,
    reserved: usize,
}

impl Sequence {
    fn in_prefill(&self) -> bool {
        self.prefilled < self.req.prompt.len()
    }
}

struct Worker {
    model: LoadedModel,
    cfg: EngineConfig,
    stats: Arc<Stats>,
    waiting: VecDeque<Request>,
    running: Vec<Sequence>,
}

/// Hands the heap's free pages back to the OS when the engine goes idle, so that the process
/// returns to about its idle size after a burst. While it is busy, freed buffers stay in the
/// heap for the next step: with glibc's own thresholds (buffers above 128 KiB mapped afresh, the
/// heap's top trimmed) every step re-faulted its activations, 8% of the engine's time at
/// concurrency 16 (`bench serve` of the quickstart model, 7 alternating runs: median ~3,200 →
/// ~3,750 tokens/s).
fn return_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Worker {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        loop {
            // Block for work when idle; otherwise take whatever arrived since the last step.
            if self.waiting.is_empty() && self.running.is_empty() {
                return_free_heap();
                match rx.recv() {
                    Ok(Msg::Submit(r)) => self.waiting.push_back(r),
                    Ok(Msg::Stop) | Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(Msg::Submit(r)) => self.waiting.push_back(r),
                    Ok(Msg::Stop) | Err(mpsc::TryRecvError::Disconnected) => return,
                    Err(mpsc::TryRecvError::Empty) => break,
                }
            }
            self.drop_cancelled();
            self.admit();
            if let Err(e) = self.step() {
                // A failed forward fails every running sequence, not the server.
                for mut s in self.running.drain(..) {
                    s.req.sink.send(Event::Failed(e.to_string()));
                }
                self.stats.kv_reserved.store(0, Ordering::Relaxed);
                self.stats.running.store(0, Ordering::Relaxed);
            }
        }
    }

    fn drop_cancelled(&mut self) {
        let before = self.running.len() + self.waiting.len();
        let stats = &self.stats;
        self.running.retain(|s| {
            let keep = !s.req.sink.closed();
            if !keep {
                stats.kv_reserved.fetch_sub(s.reserved, Ordering::Relaxed);
            }
            keep
        });
        let waiting_before = self.waiting.len();
        self.waiting.retain(|r| !r.sink.closed());
        stats.waiting.fetch_sub(waiting_before - self.waiting.len(), Ordering::Relaxed);
        let gone = before - self.running.len() - self.waiting.len();
        stats.cancelled.fetch_add(gone as u64, Ordering::Relaxed);
        stats.running.store(self.running.len(), Ordering::Relaxed);
    }

    /// Admits waiting requests in order while a batch slot and their KV reservation are free.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_batch {
            let Some(req) = self.waiting.front() else { break };
            let need = req.prompt.len() + req.sampling.max_new_tokens;
            if self.stats.kv_reserved.load(Ordering::Relaxed) + need > self.cfg.kv_cache_tokens {
                break;
            }
            let req = self.waiting.pop_front().expect("front exists");
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            self.stats.kv_reserved.fetch_add(need, Ordering::Relaxed);
            self.stats.prompt_tokens.fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
            let rng = ChaCha8Rng::seed_from_u64(req.sampling.seed);
            // Buffers for the whole sequence, written in place: no regrowth, no fragmentation.
            let cache = KvCache::with_capacity(self.model.spec.n_layer, need);
            self.running.push(Sequence {
                req,
                cache,
                prefilled: 0,
                generated: Vec::new(),
                sent: 0,
                rng,
                reserved: need,
            });
        }
        self.stats.running.store(self.running.len(), Ordering::Relaxed);
    }

    /// One forward over every running sequence, and its sampled tokens.
    fn step(&mut self) -> Result<()> {
        if self.running.is_empty() {
            return Ok(());
        }
        // Which sequences take part, and with which tokens: decodes first, then prefill chunks
        // in admission order within the budget.
        let mut budget = self.cfg.prefill_tokens;
        let mut plan: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, s) in self.running.iter().enumerate() {
            if !s.in_prefill() {
                plan.push((i, vec![*s.generated.last().expect("decoding after a sampled token")]));
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            if s.in_prefill() && budget > 0 {
                let n = (s.req.prompt.len() - s.prefilled).min(budget);
                budget -= n;
                plan.push((i, s.req.prompt[s.prefilled..s.prefilled + n].to_vec()));
            }
        }
        plan.sort_by_key(|(i, _)| *i);
        let decoder = self.model.decoder()?;
        let logits = {
            let mut caches: Vec<Option<&mut Sequence>> = self.running.iter_mut().map(Some).collect();
            let mut pieces: Vec<Piece> = Vec::with_capacity(plan.len());
            for (i, tokens) in &plan {
                let s = caches[*i].take().expect("one piece per sequence");
                let start = s.cache.len();
                pieces.push(Piece { tokens, start, cache: &mut s.cache });
            }
            decoder.forward_pieces(&mut pieces)?
        };
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        crate::testhooks::engine_step_pause();
        self.stats.batched_sequences.fetch_add(plan.len() as u64, Ordering::Relaxed);
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        let mut finished = Vec::new();
        for ((i, tokens), row) in plan.iter().zip(rows) {
            let s = &mut self.running[*i];
            if s.in_prefill() {
                s.prefilled += tokens.len();
                if s.in_prefill() {
                    continue; // more prompt to go: these logits are not a prediction yet
                }
            }
            if let Some(finish) = self.sample_next(*i, &row) {
                finished.push((*i, finish));
            }
        }
        for (i, finish) in finished.into_iter().rev() {
            let mut s = self.running.swap_remove(i);
            self.stats.kv_reserved.fetch_sub(s.reserved, Ordering::Relaxed);
            let text = self.model.tokenizer.decode(&s.generated)?;
            let end = stop_at(&text, &s.req.stop).unwrap_or(text.len());
            let rest = text.get(s.sent.min(end)..end).unwrap_or_default().to_string();
            let (prompt_tokens, completion_tokens) = (s.req.prompt.len(), s.generated.len());
            s.req.sink.send(Event::Done { finish, text: rest, prompt_tokens, completion_tokens });
        }
        // swap_remove in descending index order keeps the remaining indices valid.
        self.stats.running.store(self.running.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Samples sequence `i`'s next token from `logits`, sends it, and says whether it ended.
    fn sample_next(&mut self, i: usize, logits: &[f32]) -> Option<Finish> {
        let tokenizer = &self.model.tokenizer;
        let s = &mut self.running[i];
        let cfg = &s.req.sampling;
        let id = sample(logits, cfg, &mut s.rng);
        if Some(id) == cfg.eos_id || cfg.stop_ids.contains(&id) {
            return Some(Finish::Stop);
        }
        let logprob = s.req.logprobs.map(|k| token_logprob(logits, id, k));
        s.generated.push(id);
        self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
        let text = tokenizer.decode(&s.generated).unwrap_or_default();
        if let Some(end) = stop_at(&text, &s.req.stop) {
            // The token completed a stop string: the text before it is the last to send.
            let delta = text.get(s.sent.min(end)..end).unwrap_or_default().to_string();
            s.sent = end;
            s.req.sink.send(Event::Token { id, text: delta, logprob });
            return Some(Finish::Stop);
        }
        let safe = safe_len(&text, &s.req.stop);
        let delta = if safe > s.sent { text[s.sent..safe].to_string() } else { String::new() };
        s.sent = s.sent.max(safe);
        if !s.req.sink.send(Event::Token { id, text: delta, logprob }) {
            return None; // dropped at the next step
        }
        (s.generated.len() >= cfg.max_new_tokens).then_some(Finish::Length)
    }
}

/// Where the text ends because of a stop string: the start of the earliest one.
pub fn stop_at(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter().filter(|s| !s.is_empty()).filter_map(|s| text.find(s.as_str())).min()
}

/// How much of `text` can be sent: not a trailing partial character (U+FFFD from a split
/// UTF-8 sequence) nor a suffix that may be the start of a stop string.
pub fn safe_len(text: &str, stop: &[String]) -> usize {
    let mut end = text.len();
    if text.ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let body = &text[..end];
    let mut held = 0;
    for s in stop.iter().filter(|s| !s.is_empty()) {
        // The longest proper prefix of `s` that `body` ends with.
        for (k, _) in s.char_indices().skip(1) {
            if body.ends_with(&s[..k]) {
                held = held.max(k);
            }
        }
    }
    end - held
}

/// The sampled token's log-probability and the `k` most likely tokens', from raw logits.
pub fn token_logprob(logits: &[f32], id: u32, k: usize) -> TokenLogprob {
    let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    let lp = |i: usize| (logits[i] as f64 - lse) as f32;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    TokenLogprob { logprob: lp(id as usize), top: order.into_iter().take(k).map(|i| (i as u32, lp(i))).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_held_back() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(stop_at("abc END x", &stop), Some(4));
        assert_eq!(stop_at("a\n\nb END", &stop), Some(1));
        assert_eq!(stop_at("abc", &stop), None);
        assert_eq!(safe_len("abc EN", &stop), 4, "a possible start of END waits");
        assert_eq!(safe_len("abc\n", &stop), 3);
        assert_eq!(safe_len("abc", &stop), 3);
        assert_eq!(safe_len("ab\u{FFFD}", &[]), 2, "a split character waits");
    }

    #[test]
    fn logprobs_are_log_softmax() {
        let l = token_logprob(&[0.0, 1.0, 2.0], 1, 2);
        let z = (1f64 + 1f64.exp() + 2f64.exp()).ln();
        assert!((l.logprob as f64 - (1.0 - z)).abs() < 1e-6);
        assert_eq!(l.top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 1]);
    }
}
