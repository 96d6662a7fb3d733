//! `lmforge serve` on loopback against the fixture models, driven over plain HTTP/1.1: the
//! OpenAI schemas of completions and chat with and without streaming, greedy results equal
//! alone, in a batch of 16 and to `lmforge generate`, stop strings, reproducible `n` with a
//! seed, the error cases, a disconnect freeing its sequence, 429 over capacity, and SIGTERM
//! draining a running stream.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{fixture, ok, s};

/// A server child process and its address; killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmforge"));
        cmd.args(["serve", "--model", s(model), "--port", "0", "--model-id", "tiny"]).args(extra);
        cmd.env("RUST_LOG", "warn").env_remove("LMFORGE_API_KEY").stdout(Stdio::piped()).stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("lmforge serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on http://").unwrap_or_else(|| panic!("{line:?}")).to_string();
        Self { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request (`Connection: close`): status and body.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>, headers: &[&str]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let body = body.unwrap_or("");
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req += "Content-Type: application/json\r\n";
    }
    for h in headers {
        req += &format!("{h}\r\n");
    }
    req += "\r\n";
    req += body;
    stream.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(rest) } else { rest.to_string() })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out += &rest[..n];
        s = &rest[n + 2..];
    }
    out
}

fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = http(addr, "POST", path, Some(&body.to_string()), &[]);
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

/// The `data:` payloads of an SSE body.
fn sse(body: &str) -> Vec<String> {
    body.lines().filter_map(|l| l.strip_prefix("data: ")).map(String::from).collect()
}

fn stream(addr: &str, path: &str, body: &Value) -> Vec<String> {
    let (status, text) = http(addr, "POST", path, Some(&body.to_string()), &[]);
    assert_eq!(status, 200, "{text}");
    sse(&text)
}

fn completion(addr: &str, prompt: &str, max_tokens: usize) -> String {
    let (status, v) =
        post(addr, "/v1/completions", &json!({ "prompt": prompt, "max_tokens": max_tokens, "temperature": 0 }));
    assert_eq!(status, 200, "{v}");
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

fn metric(addr: &str, name: &str) -> f64 {
    let (_, text) = http(addr, "GET", "/metrics", None, &[]);
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn serve_speaks_openai_completions_and_chat() {
    let server = Server::start(&fixture("gpt2-tiny"), &[], &[]);
    let a = &server.addr;
    assert_eq!(http(a, "GET", "/health", None, &[]).0, 200);
    let (status, models) = http(a, "GET", "/v1/models", None, &[]);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(
        (status, models["object"].as_str(), models["data"][0]["id"].as_str()),
        (200, Some("list"), Some("tiny"))
    );

    // Completions: the response schema, then the same text streamed.
    let req = json!({ "model": "tiny", "prompt": "ROMEO:", "max_tokens": 12, "temperature": 0, "logprobs": 2 });
    let (status, v) = post(a, "/v1/completions", &req);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-") && v["created"].is_u64() && v["model"] == "tiny");
    let choice = &v["choices"][0];
    assert_eq!((choice["index"].as_u64(), choice["finish_reason"].as_str()), (Some(0), Some("length")));
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], v["usage"]["prompt_tokens"].as_u64().unwrap() + 12);
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 12);
    assert!(lp["token_logprobs"][0].as_f64().unwrap() <= 0.0 && lp["top_logprobs"][0].as_object().unwrap().len() == 2);
    let text = choice["text"].as_str().unwrap();
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({ "include_usage": true });
    let chunks = stream(a, "/v1/completions", &sreq);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let parsed: Vec<Value> = chunks[..chunks.len() - 1].iter().map(|c| serde_json::from_str(c).unwrap()).collect();
    let usage = parsed.last().unwrap();
    assert_eq!((usage["choices"].as_array().unwrap().len(), &usage["usage"]), (0, &v["usage"]));
    let streamed: String = parsed.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(streamed, text, "the stream's text is the response's");
    assert!(parsed.iter().all(|c| c["object"] == "text_completion" && c.get("usage").is_some()));
    assert_eq!(parsed[parsed.len() - 2]["choices"][0]["finish_reason"], "length");

    // Chat: ChatML (the fixture has no template of its own), the same reply streamed.
    let req = json!({ "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 10, "temperature": 0 });
    let (status, v) = post(a, "/v1/chat/completions", &req);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let message = &v["choices"][0]["message"];
    assert_eq!(message["role"], "assistant");
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let chunks = stream(a, "/v1/chat/completions", &sreq);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let parsed: Vec<Value> = chunks[..chunks.len() - 1].iter().map(|c| serde_json::from_str(c).unwrap()).collect();
    assert_eq!(parsed[0]["choices"][0]["delta"], json!({ "role": "assistant", "content": "" }));
    assert!(parsed.iter().all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = parsed.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, message["content"].as_str().unwrap());
    let finish = &parsed.last().unwrap()["choices"][0];
    assert_eq!(finish["finish_reason"], v["choices"][0]["finish_reason"]);
}

#[test]
fn serve_greedy_is_the_same_alone_in_a_batch_and_as_generate() {
    let model = fixture("llama-tiny");
    let server = Server::start(&model, &["--max-batch", "16"], &[("LMFORGE_TEST_ENGINE_STEP_DELAY_MS", "2")]);
    let prompts: Vec<String> =
        (0..16).map(|i| format!("Request {i}: the {} of", ["sun", "moon", "sea", "sky"][i % 4])).collect();
    let alone: Vec<String> = prompts.iter().map(|p| completion(&server.addr, p, 20)).collect();
    let steps_before = metric(&server.addr, "lmforge_engine_steps_total");
    let rows_before = metric(&server.addr, "lmforge_batched_sequences_total");
    let batched: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = prompts.iter().map(|p| sc.spawn(|| completion(&server.addr, p, 20))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(batched, alone, "16 concurrent greedy requests return what each returns alone");
    let steps = metric(&server.addr, "lmforge_engine_steps_total") - steps_before;
    let rows = metric(&server.addr, "lmforge_batched_sequences_total") - rows_before;
    eprintln!("16 concurrent requests: {steps} steps, {:.1} sequences per forward", rows / steps);
    assert!(rows / steps > 4.0, "the 16 requests shared batched forwards ({rows} rows in {steps} steps)");
    for (p, want) in prompts.iter().zip(&alone).take(4) {
        let out =
            ok(&["generate", "--model", s(&model), "--prompt", p, "--max-new-tokens", "20", "--temperature", "0"]);
        let generated = out.strip_prefix(p.as_str()).unwrap().strip_suffix('\n').unwrap();
        assert_eq!(generated, want, "as `lmforge generate`");
    }
}

#[test]
fn serve_stop_strings_seeded_n_and_errors() {
    let server = Server::start(&fixture("gpt2-tiny"), &[], &[]);
    let a = &server.addr;
    let full = completion(a, "To be", 24);
    // A stop string from the middle of the greedy text: the text ends just before it.
    let cut = full.char_indices().map(|(i, _)| i).find(|&i| i >= full.len() / 2).unwrap();
    let stop: String = full[cut..].chars().take(3).collect();
    let (_, v) =
        post(a, "/v1/completions", &json!({ "prompt": "To be", "max_tokens": 24, "temperature": 0, "stop": [stop] }));
    let text = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(text, &full[..full.find(stop.as_str()).unwrap()]);

    // n > 1 with a seed: reproducible, and the choices differ.
    let req = json!({ "prompt": "To be", "max_tokens": 10, "temperature": 1.0, "n": 3, "seed": 7 });
    let texts = |v: &Value| -> Vec<String> {
        v["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap().to_string()).collect()
    };
    let (first, second) = (post(a, "/v1/completions", &req).1, post(a, "/v1/completions", &req).1);
    assert_eq!(texts(&first), texts(&second));
    assert_eq!(texts(&first).len(), 3);
    assert!(texts(&first)[0] != texts(&first)[1] || texts(&first)[1] != texts(&first)[2]);

    // Errors: OpenAI's JSON with the right status, never a panic.
    let (status, raw) = http(a, "POST", "/v1/completions", Some("{not json"), &[]);
    let e: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!((status, e["error"]["type"].as_str()), (400, Some("invalid_request_error")));
    for (body, status, param) in [
        (json!({ "prompt": "x", "temperature": 5 }), 400, "temperature"),
        (json!({ "prompt": "x", "temperature": "hot" }), 400, "body"),
        (json!({ "prompt": "x", "n": 0 }), 400, "n"),
        (json!({ "prompt": "x", "max_tokens": 1000 }), 400, "prompt"),
        (json!({ "prompt": "x", "model": "gpt-4" }), 404, "model"),
        (json!({ "max_tokens": 3 }), 400, "body"),
    ] {
        let (got, v) = post(a, "/v1/completions", &body);
        assert_eq!((got, v["error"]["param"].as_str()), (status, Some(param)), "{body}: {v}");
    }
    let (_, v) = post(a, "/v1/completions", &json!({ "prompt": "x", "max_tokens": 1000 }));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("maximum context length is 128") && msg.contains("1000"), "{msg}");
    let (status, v) = post(a, "/v1/chat/completions", &json!({ "messages": [] }));
    assert_eq!((status, v["error"]["param"].as_str()), (400, Some("messages")));
    assert_eq!(http(a, "GET", "/health", None, &[]).0, 200, "still serving");

    let keyed = Server::start(&fixture("gpt2-tiny"), &["--api-key", "sekret"], &[]);
    let body = json!({ "prompt": "x", "max_tokens": 2 }).to_string();
    assert_eq!(http(&keyed.addr, "POST", "/v1/completions", Some(&body), &[]).0, 401);
    assert_eq!(http(&keyed.addr, "POST", "/v1/completions", Some(&body), &["Authorization: Bearer nope"]).0, 401);
    assert_eq!(http(&keyed.addr, "POST", "/v1/completions", Some(&body), &["Authorization: Bearer sekret"]).0, 200);
}

/// Reads a stream's response head and first event, leaving the connection open.
fn open_stream(addr: &str, body: &Value) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).unwrap();
    let body = body.to_string();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    (&stream).write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended early");
    }
    (stream, reader)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn serve_frees_disconnected_streams_refuses_past_capacity_and_drains_on_sigterm() {
    // 30 ms per engine step: a 100-token stream takes 3 s, long enough to act mid-stream.
    let mut server = Server::start(
        &fixture("gpt2-tiny"),
        &["--max-concurrent", "1", "--drain-seconds", "20"],
        &[("LMFORGE_TEST_ENGINE_STEP_DELAY_MS", "30")],
    );
    let addr = server.addr.clone();
    let a = &addr;
    let long = json!({ "prompt": "x", "max_tokens": 100, "temperature": 0, "stream": true });
    let (conn, _reader) = open_stream(a, &long);
    assert_eq!(metric(a, "lmforge_running_sequences"), 1.0);
    // Over capacity: 429 in OpenAI's shape.
    let (status, v) = post(a, "/v1/completions", &json!({ "prompt": "y", "max_tokens": 2 }));
    assert_eq!((status, v["error"]["type"].as_str()), (429, Some("rate_limit_error")));
    // The client goes away: its sequence and KV reservation are freed at once.
    drop(conn);
    drop(_reader);
    wait_for("the cancelled sequence", || metric(a, "lmforge_cancelled_sequences_total") >= 1.0);
    assert_eq!(metric(a, "lmforge_running_sequences"), 0.0);
    assert_eq!(metric(a, "lmforge_kv_cache_used_tokens"), 0.0);
    wait_for("the slot", || post(a, "/v1/completions", &json!({ "prompt": "y", "max_tokens": 2 })).0 == 200);

    // SIGTERM mid-stream: the stream runs to its end, then the server exits 0.
    let (_conn, mut reader) = open_stream(a, &long);
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    let events = sse(&rest);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "the running stream finished");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(TcpStream::connect(a).is_err(), "no new connections after SIGTERM");
}
