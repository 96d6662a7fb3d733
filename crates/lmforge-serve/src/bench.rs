//! `lmforge bench serve`: a bounded load generator against the server on loopback. For each
//! concurrency level, that many clients each send `requests_per_client` streamed completions
//! one after another (a prompt of `prompt_len` tokens, exactly `max_tokens` out: `ignore_eos`),
//! timing every chunk. Reports output tokens/s, time to first token and inter-token latency
//! (p50 / p99), and the process's resident memory idle before, at its peak, and idle after.

use crate::{app, router, ServeOptions};
use lmforge::checkpoint::LoadedModel;
use serde::Serialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub concurrency: Vec<usize>,
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub requests_per_client: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    pub requests: usize,
    pub output_tokens: usize,
    pub seconds: f64,
    pub output_tokens_per_s: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub itl_p50_ms: f64,
    pub itl_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub parameters: usize,
    pub weights_mb: f64,
    pub kv_cache_mb: usize,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub levels: Vec<LevelReport>,
    /// Resident memory (MiB) before the load, its peak, and after the load (Linux).
    pub rss_idle_before_mb: Option<f64>,
    pub rss_peak_mb: Option<f64>,
    pub rss_idle_after_mb: Option<f64>,
}

/// A `/proc/self/status` field in MiB.
fn proc_status_mb(field: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A prompt text of about `n` tokens.
fn prompt_of(m: &LoadedModel, n: usize) -> anyhow::Result<(String, usize)> {
    let filler = "the quick brown fox jumps over the lazy dog while the river runs to the sea ";
    let mut text = String::new();
    while m.tokenizer.encode(&text)?.len() < n {
        text += filler;
    }
    let ids = m.tokenizer.encode(&text)?;
    let text = m.tokenizer.decode(&ids[..n])?;
    let len = m.tokenizer.encode(&text)?.len();
    Ok((text, len))
}

/// One streamed request: (time to first token, gaps between tokens, tokens out).
async fn one(addr: &str, body: &str) -> anyhow::Result<(Duration, Vec<Duration>, usize)> {
    let start = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    write.write_all(req.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let (mut first, mut last, mut gaps, mut tokens) = (None, None, Vec::new(), 0);
    while let Some(line) = lines.next_line().await? {
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data)?;
        if let Some(e) = v.get("error") {
            anyhow::bail!("the server failed a request: {e}");
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            tokens = u["completion_tokens"].as_u64().unwrap_or(0) as usize;
        }
        if v["choices"][0]["text"].as_str().is_some_and(|t| !t.is_empty()) {
            let now = Instant::now();
            first.get_or_insert(now - start);
            if let Some(l) = last {
                gaps.push(now - l);
            }
            last = Some(now);
        }
    }
    Ok((first.unwrap_or_default(), gaps, tokens))
}

fn percentile(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1e3
}

/// Serves `model` on loopback and measures it under `b`'s load.
pub fn bench(model: LoadedModel, o: ServeOptions, b: BenchOptions) -> anyhow::Result<BenchReport> {
    let parameters = model.params.num_params();
    let weights_mb = model.params.weight_bytes() as f64 / (1 << 20) as f64;
    let (prompt, prompt_tokens) = prompt_of(&model, b.prompt_len)?;
    if prompt_tokens + b.max_tokens > model.spec.context {
        anyhow::bail!(
            "--prompt-len {prompt_tokens} + --max-tokens {} exceed the model's context of {}",
            b.max_tokens,
            model.spec.context
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let app = app(model, &o)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?.to_string();
        let server = tokio::spawn(async move { axum::serve(listener, router(app)).await });
        let body = json!({
            "prompt": prompt, "max_tokens": b.max_tokens, "temperature": 0, "ignore_eos": true,
            "stream": true, "stream_options": { "include_usage": true },
        })
        .to_string();
        // One warm-up request (page faults, thread start-up).
        one(&addr, &body).await?;
        let rss_idle_before_mb = proc_status_mb("VmRSS:");
        let mut levels = Vec::new();
        for &c in &b.concurrency {
            let started = Instant::now();
            let clients: Vec<_> = (0..c)
                .map(|_| {
                    let (addr, body) = (addr.clone(), body.clone());
                    let n = b.requests_per_client;
                    tokio::spawn(async move {
                        let mut out = Vec::new();
                        for _ in 0..n {
                            out.push(one(&addr, &body).await?);
                        }
                        anyhow::Ok(out)
                    })
                })
                .collect();
            let (mut ttft, mut itl, mut tokens, mut requests) = (Vec::new(), Vec::new(), 0, 0);
            for c in clients {
                for (first, gaps, n) in c.await?? {
                    ttft.push(first);
                    itl.extend(gaps);
                    tokens += n;
                    requests += 1;
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            levels.push(LevelReport {
                concurrency: c,
                requests,
                output_tokens: tokens,
                seconds,
                output_tokens_per_s: tokens as f64 / seconds,
                ttft_p50_ms: percentile(&mut ttft, 0.5),
                ttft_p99_ms: percentile(&mut ttft, 0.99),
                itl_p50_ms: percentile(&mut itl, 0.5),
                itl_p99_ms: percentile(&mut itl, 0.99),
            });
        }
        let rss_peak_mb = proc_status_mb("VmHWM:");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let rss_idle_after_mb = proc_status_mb("VmRSS:");
        server.abort();
        Ok(BenchReport {
            model: o.model_id.clone(),
            parameters,
            weights_mb,
            kv_cache_mb: o.kv_cache_mb,
            prompt_tokens,
            max_tokens: b.max_tokens,
            levels,
            rss_idle_before_mb,
            rss_peak_mb,
            rss_idle_after_mb,
        })
    })
}

/// The report as a table.
pub fn table(r: &BenchReport) -> String {
    let mut s = format!(
        "{} ({} parameters, {:.1} MiB of weights), prompt {} tokens, {} out, KV cache {} MiB\n",
        r.model, r.parameters, r.weights_mb, r.prompt_tokens, r.max_tokens, r.kv_cache_mb
    );
    s += "concurrency  requests  out tok/s  TTFT p50 / p99 ms  ITL p50 / p99 ms\n";
    for l in &r.levels {
        s += &format!(
            "{:>11}  {:>8}  {:>9.1}  {:>8.1} / {:<8.1}  {:>7.2} / {:.2}\n",
            l.concurrency, l.requests, l.output_tokens_per_s, l.ttft_p50_ms, l.ttft_p99_ms, l.itl_p50_ms, l.itl_p99_ms
        );
    }
    let mb = |v: Option<f64>| v.map(|v| format!("{v:.0} MiB")).unwrap_or_else(|| "n/a".into());
    s += &format!(
        "resident memory: idle {}, peak {}, idle after {}\n",
        mb(r.rss_idle_before_mb),
        mb(r.rss_peak_mb),
        mb(r.rss_idle_after_mb)
    );
    s
}
