//! Web input: HTML files and WARC / WET archives become documents. The reader side
//! ([`WarcRecords`]) walks an archive's records with the `warc` crate and turns each into a raw
//! document — an HTTP `response` or a `resource` whose payload is HTML or plain text, a WET
//! `conversion` (text already extracted) — carrying its URL, record id and date; request,
//! metadata, warcinfo and revisit records are skipped (counted), other payloads (images, PDF)
//! are rejected as `not_text`, responses other than 2xx (redirects, error pages) as
//! `http_status`. The processing side ([`html_text`], run in parallel with the
//! other per-document stages) decodes the page by its declared charset (HTTP header or
//! `<meta>`, `encoding_rs`) and extracts the main text with `dom_smoothie` (a port of Mozilla's
//! Readability: scripts, navigation, boilerplate removed; html5ever's parser, so broken markup
//! still parses).

use super::reader::{DocKind, DocMeta, RawDoc};
use std::collections::BTreeMap;
use std::io::{BufRead, Read};
use warc::{RawRecordHeader, WarcHeader};

/// Record types that carry no document (the request a crawler sent, its metadata, the
/// archive's own description, a "same as before" revisit).
const SKIPPED_TYPES: [&str; 5] = ["warcinfo", "request", "metadata", "revisit", "continuation"];

/// Counts kept per archive read: records seen and skipped by type.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct WebCounts {
    pub records: u64,
    pub skipped: BTreeMap<String, u64>,
}

impl WebCounts {
    pub fn add(&mut self, other: &WebCounts) {
        self.records += other.records;
        for (k, v) in &other.skipped {
            *self.skipped.entry(k.clone()).or_insert(0) += v;
        }
    }
}

/// The documents of one WARC / WET stream, in record order.
pub struct WarcRecords<R: BufRead> {
    records: warc::RawRecordIter<R>,
    /// A record that could not be framed ends the file: what follows cannot be found again.
    broken: bool,
    pub counts: WebCounts,
}

impl<R: BufRead> WarcRecords<R> {
    pub fn new(src: R) -> Self {
        Self { records: warc::WarcReader::new(src).iter_raw_records(), broken: false, counts: WebCounts::default() }
    }

    /// The next document of the archive (skipped record types are passed over), or None at
    /// its end. `input` / `source` name the file in defects.
    pub fn next_doc(&mut self, input: usize, source: &str) -> Option<RawDoc> {
        loop {
            if self.broken {
                return None;
            }
            let n = self.counts.records + 1;
            let next = self.records.next();
            let Some(next) = next else {
                // Not one record framed in the whole file: not a WARC (or one with bare
                // line feeds), which must not pass as an empty archive.
                self.broken = true;
                return (self.counts.records == 0).then(|| {
                    defect(
                        "bad_warc",
                        input,
                        0,
                        format!("{source}: no WARC record found (a WARC/1.x header ends in CRLF CRLF)"),
                    )
                });
            };
            let (header, body) = match next {
                Ok(r) => r,
                Err(e) => {
                    // Headers that parse but lack a field leave the stream framed; a wrong
                    // length or a cut file does not, so the rest of the file is given up.
                    self.broken = !matches!(e, warc::Error::MissingHeader(_) | warc::Error::MalformedHeader(..));
                    self.counts.records = n;
                    let rest = if self.broken { "; the rest of the file is not read" } else { "" };
                    return Some(defect("bad_warc", input, n, format!("{source}: record {n}: {e}{rest}")));
                }
            };
            self.counts.records = n;
            let kind = header_str(&header, WarcHeader::WarcType).unwrap_or_default().to_ascii_lowercase();
            if SKIPPED_TYPES.contains(&kind.as_str()) {
                *self.counts.skipped.entry(kind).or_insert(0) += 1;
                continue;
            }
            let meta = DocMeta {
                url: header_str(&header, WarcHeader::TargetURI).map(|u| u.trim_matches(['<', '>']).to_string()),
                record_id: header_str(&header, WarcHeader::RecordID),
                date: header_str(&header, WarcHeader::Date),
            };
            let at = |what: &str| format!("{source}: record {n} ({})", meta.url.as_deref().unwrap_or(what));
            let doc = match kind.as_str() {
                "response" => match http_payload(&body) {
                    Ok((status, _, _)) if !(200..300).contains(&status) => {
                        // Redirects and error pages: a crawl keeps them, a corpus does not.
                        defect("http_status", input, n, format!("{}: HTTP status {status}", at("response")))
                    }
                    Ok((_, content_type, payload)) => {
                        payload_doc(payload, content_type.as_deref(), input, n, &at("response"))
                    }
                    Err(e) => defect("bad_http", input, n, format!("{}: {e}", at("response"))),
                },
                "resource" => payload_doc(
                    body,
                    header_str(&header, WarcHeader::ContentType).as_deref(),
                    input,
                    n,
                    &at("resource"),
                ),
                "conversion" => {
                    RawDoc { bytes: body, input, line: n, defect: None, lossy: false, kind: DocKind::Text, meta: None }
                }
                other => defect("bad_warc", input, n, format!("{}: unknown record type {other:?}", at("record"))),
            };
            return Some(RawDoc { meta: Some(Box::new(meta)), ..doc });
        }
    }
}

fn header_str(h: &RawRecordHeader, key: WarcHeader) -> Option<String> {
    h.headers.get(&key).map(|v| String::from_utf8_lossy(v).trim().to_string())
}

fn defect(reason: &'static str, input: usize, record: u64, detail: String) -> RawDoc {
    RawDoc {
        bytes: Vec::new(),
        input,
        line: record,
        defect: Some((reason, detail)),
        lossy: false,
        kind: DocKind::Text,
        meta: None,
    }
}

/// A payload with its media type: HTML to extract, text as it is, anything else rejected.
fn payload_doc(bytes: Vec<u8>, content_type: Option<&str>, input: usize, record: u64, at: &str) -> RawDoc {
    let ct = content_type.unwrap_or("").to_ascii_lowercase();
    let media = ct.split(';').next().unwrap_or("").trim();
    let kind = match media {
        "text/html" | "application/xhtml+xml" => DocKind::Html { charset: charset_param(&ct) },
        "text/plain" => DocKind::Text,
        // No type given: look at the bytes, as browsers do.
        "" if looks_like_html(&bytes) => DocKind::Html { charset: None },
        _ => return defect("not_text", input, record, format!("{at}: content type {:?}", content_type.unwrap_or(""))),
    };
    RawDoc { bytes, input, line: record, defect: None, lossy: false, kind, meta: None }
}

/// `charset=...` of a Content-Type value.
fn charset_param(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim().eq_ignore_ascii_case("charset")).then(|| v.trim().trim_matches(['"', '\'']).to_string())
    })
}

fn looks_like_html(bytes: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(1024)]).to_ascii_lowercase();
    head.contains("<html") || head.contains("<!doctype html") || head.contains("<body")
}

/// Splits an HTTP response into its status, Content-Type and payload, undoing chunked
/// transfer and gzip / deflate content encodings (archives keep the bytes as they came off
/// the wire).
fn http_payload(message: &[u8]) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut response = httparse::Response::new(&mut headers);
    let start = match response.parse(message) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("HTTP headers are cut off".into()),
        Err(e) => return Err(format!("not an HTTP response: {e}")),
    };
    let get = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    let mut payload = message[start..].to_vec();
    if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        payload = dechunk(&payload).ok_or("chunked transfer encoding is malformed")?;
    }
    match get("content-encoding").as_deref() {
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&payload[..])
                .read_to_end(&mut out)
                .map_err(|e| format!("gzip content encoding: {e}"))?;
            payload = out;
        }
        Some("deflate") => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(&payload[..])
                .read_to_end(&mut out)
                .map_err(|e| format!("deflate content encoding: {e}"))?;
            payload = out;
        }
        _ => {}
    }
    let content_type = response.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-type"));
    let status = response.code.unwrap_or(0);
    Ok((status, content_type.map(|h| String::from_utf8_lossy(h.value).trim().to_string()), payload))
}

/// The body of a chunked transfer: hex size line, that many bytes, CRLF, until a zero size.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size..)?;
        data = data.strip_prefix(b"\r\n").unwrap_or(data);
    }
}

/// The main text of an HTML page: decoded by `charset` (the HTTP header's), else the page's
/// `<meta>` declaration, else UTF-8; returns the text and whether bytes had to be replaced.
/// `Err` names the rejection: a page with no text to extract.
pub fn html_text(bytes: &[u8], charset: Option<&str>, url: Option<&str>) -> Result<(String, bool), &'static str> {
    let encoding = charset
        .and_then(|c| encoding_rs::Encoding::for_label(c.as_bytes()))
        .or_else(|| meta_charset(bytes))
        .unwrap_or(encoding_rs::UTF_8);
    // A byte-order mark overrides any declaration (the HTML standard's order).
    let (html, _, replaced) = encoding.decode(bytes);
    let cfg = dom_smoothie::Config {
        text_mode: dom_smoothie::TextMode::Formatted,
        // Pages are scored whole: a limit would reject long pages outright.
        max_elements_to_parse: 0,
        ..Default::default()
    };
    // Relative or malformed URLs are only used to absolutise links: drop them rather than fail.
    let url = url.filter(|u| u.starts_with("http://") || u.starts_with("https://"));
    let mut readability = match dom_smoothie::Readability::new(html.as_ref(), url, Some(cfg.clone())) {
        Ok(r) => r,
        Err(_) => dom_smoothie::Readability::new(html.as_ref(), None, Some(cfg)).map_err(|_| "no_main_text")?,
    };
    let text = match readability.parse() {
        Ok(article) => tidy(&article.text_content),
        Err(_) => String::new(),
    };
    if text.trim().is_empty() {
        return Err("no_main_text");
    }
    Ok((text, replaced))
}

/// Extracted text with its lines trimmed and runs of blank lines cut to one (paragraph breaks).
fn tidy(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank = false;
    for line in text.lines().map(str::trim) {
        if line.is_empty() {
            blank = !out.is_empty();
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank { "\n\n" } else { "\n" });
        }
        out.push_str(line);
        blank = false;
    }
    out
}

/// The encoding a page declares in its first 1,024 bytes (`<meta charset=...>` or
/// `<meta http-equiv="Content-Type" content="...; charset=...">`), as browsers pre-scan.
fn meta_charset(bytes: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    static META: std::sync::OnceLock<regex::bytes::Regex> = std::sync::OnceLock::new();
    let re = META.get_or_init(|| {
        regex::bytes::Regex::new(r#"(?i)<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)"#).expect("valid pattern")
    });
    let head = &bytes[..bytes.len().min(1024)];
    let label = re.captures(head)?.get(1)?.as_bytes();
    encoding_rs::Encoding::for_label(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(dechunk(b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n").unwrap(), b"hello world");
        assert_eq!(dechunk(b"zz\r\nhello"), None);
        assert_eq!(dechunk(b"9\r\nhello"), None, "a chunk longer than the data");
    }

    #[test]
    fn charsets_come_from_headers_or_meta() {
        assert_eq!(charset_param("text/html; charset=\"GBK\"").as_deref(), Some("GBK"));
        assert_eq!(charset_param("text/html"), None);
        assert_eq!(meta_charset(b"<html><head><meta charset=gb2312>").map(|e| e.name()), Some("GBK"));
        let http_equiv = br#"<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">"#;
        assert_eq!(meta_charset(http_equiv).map(|e| e.name()), Some("Shift_JIS"));
        assert_eq!(meta_charset(b"<p>no declaration</p>"), None);
    }

    #[test]
    fn main_text_drops_scripts_and_navigation() {
        let page = "<html><head><title>T</title><script>var x = 'script text';</script>\
            <style>p { color: red }</style></head><body>\
            <nav><a href=/a>Home</a> | <a href=/b>About us</a> | <a href=/c>Contact</a></nav>\
            <article><h1>The heading</h1><p>The first paragraph of the article says something worth \
            reading about tokenizers, and it goes on for a while so that it looks like content.</p>\
            <p>A second paragraph with more words in it, because readers need at least some text \
            to decide what the main content of a page is.</p></article>\
            <footer>Copyright 2026 Example Corp. All rights reserved.</footer></body></html>";
        let (text, replaced) = html_text(page.as_bytes(), None, Some("https://example.com/a")).unwrap();
        assert!(!replaced);
        assert!(text.contains("The first paragraph") && text.contains("A second paragraph"), "{text}");
        for gone in ["script text", "color: red", "About us", "Copyright"] {
            assert!(!text.contains(gone), "{gone:?} left in {text:?}");
        }
        assert!(text.contains("\n"), "paragraphs stay apart: {text:?}");
    }

    #[test]
    fn broken_markup_still_yields_text_and_empty_pages_are_rejected() {
        let broken = "<html><body><div><p>Unclosed paragraph with <b>bold <i>and italic text that never \
            closes its tags, as pages written by hand often do, and yet it is the content<p>Another one \
            <table><tr><td>cell text</div></span></body>";
        let (text, _) = html_text(broken.as_bytes(), None, None).unwrap();
        assert!(text.contains("Unclosed paragraph") && text.contains("Another one"), "{text}");
        assert_eq!(html_text(b"<html><body><script>only()</script></body></html>", None, None), Err("no_main_text"));
        assert_eq!(html_text(b"", None, None), Err("no_main_text"));
    }

    #[test]
    fn pages_in_legacy_encodings_are_decoded() {
        let text = "中文网页的正文内容，用国标码编码，讲的是数据清洗和去重。这是第二句话，内容还要再长一些才算正文。";
        let html =
            format!("<html><head><meta charset=\"gbk\"></head><body><article><p>{text}</p></article></body></html>");
        let (gbk, _, _) = encoding_rs::GBK.encode(&html);
        let (got, replaced) = html_text(&gbk, None, None).unwrap();
        assert_eq!(got, text);
        assert!(!replaced);
        // The HTTP header's charset wins over none in the page.
        let bare = format!("<html><body><p>{text}</p></body></html>");
        let (gbk, _, _) = encoding_rs::GBK.encode(&bare);
        assert_eq!(html_text(&gbk, Some("gb2312"), None).unwrap().0, text);
    }

    #[test]
    fn http_payloads_are_unwrapped() {
        let body = b"<html><body><p>hi</p></body></html>";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, body).unwrap();
        let gz = gz.finish().unwrap();
        let mut msg =
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Encoding: gzip\r\n\r\n".to_vec();
        msg.extend_from_slice(&gz);
        let (status, ct, payload) = http_payload(&msg).unwrap();
        assert_eq!(status, 200);
        assert_eq!(ct.as_deref(), Some("text/html; charset=utf-8"));
        assert_eq!(payload, body);
        assert!(http_payload(b"HTTP/1.1 200 OK\r\nContent-Type: text/ht").unwrap_err().contains("cut off"));
        assert!(http_payload(b"\x00\x01garbage").is_err());
    }
}
