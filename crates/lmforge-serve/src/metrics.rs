//! `/metrics`: Prometheus text (prometheus-client) — requests by endpoint and status, prompt and
//! generated tokens, queue depth, running sequences, batch size, KV-cache use, cancelled
//! sequences, and time-to-first-token and inter-token latency histograms.

use lmforge::serve::Stats;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: u16,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    ttft: Histogram,
    itl: Histogram,
    // Mirrors of the engine's counters and gauges, set when rendered.
    prompt_tokens: Counter,
    generated_tokens: Counter,
    steps: Counter,
    batched: Counter,
    cancelled: Counter,
    waiting: Gauge,
    running: Gauge,
    in_flight: Gauge,
    kv_used: Gauge,
    kv_total: Gauge,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0].into_iter()
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self {
            registry: Mutex::new(Registry::with_prefix("lmforge")),
            requests: Family::default(),
            ttft: Histogram::new(latency_buckets()),
            itl: Histogram::new(latency_buckets()),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            steps: Counter::default(),
            batched: Counter::default(),
            cancelled: Counter::default(),
            waiting: Gauge::default(),
            running: Gauge::default(),
            in_flight: Gauge::default(),
            kv_used: Gauge::default(),
            kv_total: Gauge::default(),
        };
        {
            let mut r = m.registry.lock().expect("not poisoned");
            r.register("requests", "HTTP requests by endpoint and status", m.requests.clone());
            r.register("time_to_first_token_seconds", "From request arrival to its first token", m.ttft.clone());
            r.register("inter_token_latency_seconds", "Between consecutive tokens of a sequence", m.itl.clone());
            r.register("prompt_tokens", "Prompt tokens admitted", m.prompt_tokens.clone());
            r.register("generated_tokens", "Tokens generated", m.generated_tokens.clone());
            r.register("engine_steps", "Batched forwards", m.steps.clone());
            r.register(
                "batched_sequences",
                "Sequences summed over batched forwards (/ steps = mean batch)",
                m.batched.clone(),
            );
            r.register("cancelled_sequences", "Sequences dropped because their client went away", m.cancelled.clone());
            r.register("queue_depth", "Sequences waiting for a batch slot or KV cache", m.waiting.clone());
            r.register("running_sequences", "Sequences in the running batch", m.running.clone());
            r.register("requests_in_flight", "HTTP requests being answered", m.in_flight.clone());
            r.register("kv_cache_used_tokens", "KV-cache positions reserved by running sequences", m.kv_used.clone());
            r.register("kv_cache_total_tokens", "KV-cache pool size in positions", m.kv_total.clone());
        }
        m
    }

    pub fn request(&self, chat: bool, status: u16) {
        let endpoint = if chat { "/v1/chat/completions" } else { "/v1/completions" };
        self.requests.get_or_create(&RequestLabels { endpoint, status }).inc();
    }

    pub fn ttft(&self, d: Duration) {
        self.ttft.observe(d.as_secs_f64());
    }

    pub fn itl(&self, d: Duration) {
        self.itl.observe(d.as_secs_f64());
    }

    /// The text exposition, the engine's numbers as of now.
    pub fn render(&self, s: &Stats, in_flight: usize) -> String {
        let catch_up = |c: &Counter, v: &AtomicU64| {
            let now = v.load(Ordering::Relaxed);
            c.inc_by(now.saturating_sub(c.get()));
        };
        catch_up(&self.prompt_tokens, &s.prompt_tokens);
        catch_up(&self.generated_tokens, &s.generated_tokens);
        catch_up(&self.steps, &s.steps);
        catch_up(&self.batched, &s.batched_sequences);
        catch_up(&self.cancelled, &s.cancelled);
        self.waiting.set(s.waiting.load(Ordering::Relaxed) as i64);
        self.running.set(s.running.load(Ordering::Relaxed) as i64);
        self.in_flight.set(in_flight as i64);
        self.kv_used.set(s.kv_reserved.load(Ordering::Relaxed) as i64);
        self.kv_total.set(s.kv_total.load(Ordering::Relaxed) as i64);
        let mut out = String::new();
        let r = self.registry.lock().expect("not poisoned");
        encode(&mut out, &r).expect("writing to a String");
        out
    }
}
