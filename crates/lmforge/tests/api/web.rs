//! Web input end to end: a WARC written here (HTML responses — one with broken markup, one in
//! GBK behind chunked + gzip transfer — a non-HTML response, a redirect, a resource, a WET conversion,
//! records that carry no document, a record of unknown type and a cut-off last record), the same
//! archive gzipped per record, and a lone `.html` file go through `data prepare`; the shards
//! decode to exactly the expected documents, `train.docs.jsonl` keeps their URLs, and the
//! manifest counts every record. PII scrubbing is checked on the same path.

use lmforge::corpus::config::DataConfig;
use lmforge::progress::ProgressMode;
use lmforge::shards::TokenShard;
use lmforge::tokenizer::TextTokenizer;
use std::io::Write;
use std::path::{Path, PathBuf};

fn record(kind: &str, uri: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "WARC/1.1\r\nWARC-Type: {kind}\r\nWARC-Record-ID: <urn:uuid:{:08x}-0000-4000-8000-000000000000>\r\n\
         WARC-Date: 2026-12-05T10:00:00Z\r\nWARC-Target-URI: {uri}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n",
        xxhash(uri, kind),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r.extend_from_slice(b"\r\n\r\n");
    r
}

fn xxhash(a: &str, b: &str) -> u32 {
    a.bytes().chain(b.bytes()).fold(2166136261u32, |h, c| (h ^ c as u32).wrapping_mul(16777619))
}

fn http(headers: &str, body: &[u8]) -> Vec<u8> {
    http_status("200 OK", headers, body)
}

fn http_status(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("HTTP/1.1 {status}\r\n{headers}\r\n").into_bytes();
    m.extend_from_slice(body);
    m
}

const ARTICLE: &str = "<!DOCTYPE html><html><head><title>Tokenizers</title>\
    <script>window.tracker = 'script text';</script><style>body { color: red }</style></head><body>\
    <nav><ul><li><a href='/'>Home</a></li><li><a href='/about'>About us</a></li></ul></nav>\
    <article><h1>How tokenizers work</h1>\
    <p>A tokenizer turns text into the integer ids a language model reads. Byte-level BPE starts \
    from the 256 byte values and merges the most frequent adjacent pairs until the vocabulary is full.</p>\
    <p>Every string can be encoded, because every byte has an id, and decoding returns the text exactly.</p>\
    </article><footer>Copyright 2026 Example Corp. Privacy policy. Cookie settings.</footer></body></html>";

const BROKEN: &str = "<html><body><div class=main><p>Hand-written pages often leave their tags open, like \
    this paragraph with <b>bold and <i>italic text that never closes<p>and a second paragraph that \
    starts before the first one ends, inside a table cell <table><tr><td>that is never closed either";

const CHINESE: &str = "<html><head><title>数据清洗</title></head><body><div id=content>\
    <p>网页正文用国标码编码，先经过分块传输，再经过压缩。数据清洗要先去掉导航和脚本，只留下正文。</p>\
    <p>去重以后，同一篇文章只保留一份，这样模型不会反复读到同样的句子。</p></div></body></html>";

const EXPECTED: [&str; 5] = [
    "How tokenizers work\n\nA tokenizer turns text into the integer ids a language model reads. Byte-level BPE \
     starts from the 256 byte values and merges the most frequent adjacent pairs until the vocabulary is full.\n\n\
     Every string can be encoded, because every byte has an id, and decoding returns the text exactly.",
    "Hand-written pages often leave their tags open, like this paragraph with bold and italic text that never \
     closes\n\nand a second paragraph that starts before the first one ends, inside a table cell\nthat is never \
     closed either",
    "网页正文用国标码编码，先经过分块传输，再经过压缩。数据清洗要先去掉导航和脚本，只留下正文。\n\n\
     去重以后，同一篇文章只保留一份，这样模型不会反复读到同样的句子。",
    "A resource record holds a page archived without its HTTP exchange, and its text counts like any other page's \
     text does.",
    "A WET conversion record already holds extracted plain text.\nIts lines are kept as they are.",
];

const URLS: [&str; 5] = [
    "https://example.com/tokenizers",
    "http://example.org/broken",
    "https://example.cn/zh",
    "https://example.net/resource",
    "https://example.com/converted",
];

/// The test archive's records, in order; the last one is cut off.
fn records() -> Vec<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&encoding_gbk(CHINESE)).unwrap();
    let gz = gz.finish().unwrap();
    let mut chunked = Vec::new();
    for piece in gz.chunks(100) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let resource = format!("<html><body><p>{}</p></body></html>", EXPECTED[3]);
    let resp = "application/http; msgtype=response";
    let mut truncated =
        record("response", "https://example.com/cut", resp, &http("Content-Type: text/html\r\n", b"<p>x</p>"));
    truncated.truncate(truncated.len() - 30);
    vec![
        record("warcinfo", "", "application/warc-fields", b"software: lmforge-test\r\n"),
        record("request", URLS[0], "application/http; msgtype=request", b"GET /tokenizers HTTP/1.1\r\n\r\n"),
        record(
            "response",
            &format!("<{}>", URLS[0]),
            resp,
            &http("Content-Type: text/html; charset=utf-8\r\n", ARTICLE.as_bytes()),
        ),
        record("metadata", URLS[0], "application/warc-fields", b"fetchTimeMs: 12\r\n"),
        record("response", URLS[1], resp, &http("Content-Type: text/html\r\n", BROKEN.as_bytes())),
        record(
            "response",
            "https://example.com/logo.png",
            resp,
            &http("Content-Type: image/png\r\n", b"\x89PNG\r\n\x1a\n\0\0"),
        ),
        record(
            "response",
            "https://example.com/old",
            resp,
            &http_status(
                "301 Moved Permanently",
                "Location: /new\r\nContent-Type: text/html\r\n",
                b"<p>Moved to /new</p>",
            ),
        ),
        record(
            "response",
            URLS[2],
            resp,
            &http(
                "Content-Type: text/html; charset=GBK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n",
                &chunked,
            ),
        ),
        record("resource", URLS[3], "text/html", resource.as_bytes()),
        record("conversion", URLS[4], "text/plain", EXPECTED[4].as_bytes()),
        record("mystery", "https://example.com/odd", "text/plain", b"what is this"),
        truncated,
    ]
}

/// `s` in GBK, as a Chinese site would serve it.
fn encoding_gbk(s: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::GBK.encode(s);
    assert!(!unmappable);
    bytes.into_owned()
}

/// Every document of a prepared split, decoded.
fn documents(dir: &Path, split: &str) -> Vec<String> {
    let tok = TextTokenizer::load(&dir.join("tokenizer.json")).unwrap();
    let shard = TokenShard::open(&dir.join(format!("{split}.bin"))).unwrap();
    (0..shard.num_docs())
        .map(|d| {
            let start = shard.doc_offset(d) as usize;
            let end = if d + 1 < shard.num_docs() { shard.doc_offset(d + 1) as usize } else { shard.len() };
            let mut ids = Vec::new();
            shard.read_into(start, end - start, &mut ids);
            tok.decode(&ids).unwrap()
        })
        .collect()
}

fn config() -> DataConfig {
    DataConfig { vocab_size: 300, val_fraction: 0.0, append_eos: false, ..Default::default() }
}

fn prepare(cfg: &DataConfig, inputs: &[PathBuf], out: &Path) -> serde_json::Value {
    lmforge::corpus::prepare(cfg, inputs, out, None, ProgressMode::Off).unwrap()
}

#[test]
fn a_warc_yields_exactly_its_pages_main_text_with_urls() {
    let tmp = tempfile::tempdir().unwrap();
    let warc = tmp.path().join("crawl.warc");
    std::fs::write(&warc, records().concat()).unwrap();
    // The same archive as Common Crawl ships it: each record its own gzip member.
    let gz_path = tmp.path().join("crawl-gz.warc.gz");
    let mut gz_bytes = Vec::new();
    for r in records() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&r).unwrap();
        gz_bytes.extend(e.finish().unwrap());
    }
    std::fs::write(&gz_path, gz_bytes).unwrap();

    for input in [&warc, &gz_path] {
        let out = tmp.path().join(format!("out-{}", input.file_name().unwrap().to_string_lossy()));
        let m = prepare(&config(), std::slice::from_ref(input), &out);
        let got = documents(&out, "train");
        let mut want: Vec<&str> = EXPECTED.to_vec();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want.sort();
        assert_eq!(got_sorted, want, "{}", input.display());
        // Metadata, in shard order: the URL (angle brackets of WARC/1.0 dropped), record id, date.
        let meta: Vec<serde_json::Value> = std::fs::read_to_string(out.join("train.docs.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(meta.len(), got.len());
        for (doc, row) in got.iter().zip(&meta) {
            let i = EXPECTED.iter().position(|e| e == doc).unwrap();
            assert_eq!(row["url"], URLS[i], "{row}");
            assert!(row["record_id"].as_str().unwrap().starts_with("<urn:uuid:"), "{row}");
            assert_eq!(row["date"], "2026-12-05T10:00:00Z");
            assert_eq!(row["source"], input.display().to_string());
            assert!(row["record"].as_u64().is_some_and(|r| (3..=10).contains(&r)), "{row}");
        }
        let c = &m["counts"];
        assert_eq!(c["documents_in"], 9, "{c}");
        assert_eq!(c["documents_out"], 5);
        assert_eq!(c["rejected"]["not_text"], 1, "the PNG");
        assert_eq!(c["rejected"]["http_status"], 1, "the redirect");
        assert_eq!(c["rejected"]["bad_warc"], 2, "the unknown type and the cut-off record");
        assert_eq!(c["web"]["records"], 12);
        assert_eq!(c["web"]["skipped"], serde_json::json!({ "warcinfo": 1, "request": 1, "metadata": 1 }));
        let samples = std::fs::read_to_string(out.join("rejected.sample.jsonl")).unwrap();
        assert!(samples.contains("logo.png") && samples.contains("image/png"), "{samples}");
        assert!(samples.contains("record 12") && samples.contains("the rest of the file is not read"), "{samples}");
    }
}

#[test]
fn html_files_and_broken_archives_are_handled() {
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("page.html");
    std::fs::write(&page, ARTICLE).unwrap();
    let text = tmp.path().join("notes.txt");
    std::fs::write(&text, "Plain text sits beside the page.\n").unwrap();
    let not_warc = tmp.path().join("fake.warc");
    std::fs::write(&not_warc, "this is not an archive\nat all\n").unwrap();
    let out = tmp.path().join("out");
    let m = prepare(&config(), &[page.clone(), text, not_warc], &out);
    let mut got = documents(&out, "train");
    got.sort();
    assert_eq!(got, [EXPECTED[0], "Plain text sits beside the page."]);
    assert_eq!(m["counts"]["rejected"]["bad_warc"], 1);
    let samples = std::fs::read_to_string(out.join("rejected.sample.jsonl")).unwrap();
    assert!(samples.contains("no WARC record found"), "{samples}");
    // Metadata is on for web input: the page's file, no URL.
    let meta = std::fs::read_to_string(out.join("train.docs.jsonl")).unwrap();
    assert!(meta.contains("page.html") && !meta.contains("\"url\""), "{meta}");
    // Off when asked, and off by default for plain text.
    let out2 = tmp.path().join("out2");
    prepare(&DataConfig { document_metadata: Some(false), ..config() }, &[page], &out2);
    assert!(!out2.join("train.docs.jsonl").exists());
}

#[test]
fn pii_is_scrubbed_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("contacts.jsonl");
    let rows = [
        "Reach the maintainer at maintainer@example.org or +44 20 7946 0958 for access.",
        "The mirror at 93.184.216.34 and the backup at 2a00:1450:4001:82a::200e are public.",
        "The release of 2024-01-05 was version 1.2.3.4.5, and it was built on the host 10.0.0.1 inside the office.",
    ];
    let body: String = rows.iter().map(|r| format!("{}\n", serde_json::json!({ "text": r }))).collect();
    std::fs::write(&input, body).unwrap();
    let out = tmp.path().join("out");
    let m = prepare(&DataConfig { scrub_pii: true, ..config() }, std::slice::from_ref(&input), &out);
    let mut got = documents(&out, "train");
    got.sort();
    assert_eq!(
        got,
        [
            "Reach the maintainer at <EMAIL> or <PHONE> for access.",
            "The mirror at <IP_ADDRESS> and the backup at <IP_ADDRESS> are public.",
            "The release of 2024-01-05 was version 1.2.3.4.5, and it was built on the host 10.0.0.1 inside the office.",
        ]
    );
    assert_eq!(m["counts"]["pii"], serde_json::json!({ "email": 1, "ip": 2, "phone": 1, "documents": 2 }));
    // Off by default: the text is kept as it is.
    let out = tmp.path().join("plain");
    let m = prepare(&config(), &[input], &out);
    assert!(documents(&out, "train").iter().any(|d| d.contains("maintainer@example.org")));
    assert!(m["counts"]["pii"].is_null());
}
