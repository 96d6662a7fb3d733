//! Streaming document reader: expands input paths (files, folders recursively) into a stable
//! list, opens each through its decompressor (`.gz`, `.zst`), and yields documents one at a
//! time — a whole file, a blank-line separated paragraph, or a line for text files; one JSON
//! object's text field per line for `.jsonl`; a whole page for `.html` / `.htm`; one record
//! for WARC / WET archives (`.warc`, `.wet`, [`super::web`]). Nothing is read ahead beyond one
//! document, so memory stays bounded whatever the corpus size.

use crate::error::{Error, IoContext, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// How a text file is cut into documents (`data.doc_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DocMode {
    /// The whole file.
    File,
    /// Blank-line separated paragraphs.
    Paragraph,
    Line,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Jsonl,
    /// An HTML page: one document, its main text extracted.
    Html,
    /// A WARC / WET archive: a document per response, resource or conversion record.
    Warc,
}

/// What a raw document's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocKind {
    Text,
    /// HTML whose main text is to be extracted; `charset` as the HTTP header declared it.
    Html {
        charset: Option<String>,
    },
}

/// Where a web document came from (WARC headers), kept beside its tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DocMeta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
}

/// One input file with what was learned while reading it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub bytes: u64,
    /// SHA-256 of the file as stored (compressed bytes for compressed files).
    pub sha256: String,
}

/// A raw document: bytes as read (not yet decoded), and where it came from.
pub struct RawDoc {
    pub bytes: Vec<u8>,
    pub input: usize,
    /// 1-based line of the document's start (for error samples).
    pub line: u64,
    /// Set when the reader already knows the document is unusable (bad JSON line, binary file).
    pub defect: Option<(&'static str, String)>,
    /// The bytes were already decoded lossily (invalid UTF-8 inside a JSON line).
    pub lossy: bool,
    pub kind: DocKind,
    /// Web documents: URL, WARC record id and date.
    pub meta: Option<Box<DocMeta>>,
}

impl RawDoc {
    fn text(bytes: Vec<u8>, input: usize, line: u64, defect: Option<(&'static str, String)>, lossy: bool) -> Self {
        Self { bytes, input, line, defect, lossy, kind: DocKind::Text, meta: None }
    }
}

/// Expands `inputs` into files: folders are walked recursively (sorted), keeping `.txt`,
/// `.text`, `.jsonl`, `.html` / `.htm`, `.warc` / `.wet` and their `.gz` / `.zst` versions. Missing or unreadable paths are errors.
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut stack = vec![p.clone()];
            let mut found = Vec::new();
            while let Some(dir) = stack.pop() {
                for e in std::fs::read_dir(&dir).at(&dir)? {
                    let path = e.at(&dir)?.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if is_corpus_file(&path) {
                        found.push(path);
                    }
                }
            }
            found.sort();
            if found.is_empty() {
                return Err(Error::format(
                    p,
                    "folder has no .txt / .jsonl / .html / .warc / .wet files (optionally .gz / .zst)",
                ));
            }
            out.extend(found);
        } else {
            File::open(p).at(p)?;
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::config("data.path", "no input given; set data.path (or data.inputs) or pass --input"));
    }
    Ok(out)
}

fn is_corpus_file(p: &Path) -> bool {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
    let base = name.trim_end_matches(".gz").trim_end_matches(".zst");
    [".txt", ".text", ".jsonl", ".html", ".htm", ".xhtml", ".warc", ".wet"].iter().any(|e| base.ends_with(e))
}

fn format_of(p: &Path) -> Format {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
    let base = name.trim_end_matches(".gz").trim_end_matches(".zst");
    if base.ends_with(".jsonl") {
        Format::Jsonl
    } else if [".html", ".htm", ".xhtml"].iter().any(|e| base.ends_with(e)) {
        Format::Html
    } else if base.ends_with(".warc") || base.ends_with(".wet") {
        Format::Warc
    } else {
        Format::Text
    }
}

/// Whether any of `files` is a web page or archive (their documents carry metadata).
pub fn has_web_input(files: &[PathBuf]) -> bool {
    files.iter().any(|f| matches!(format_of(f), Format::Html | Format::Warc))
}

type Source = BufReader<Box<dyn Read + Send>>;

/// An open input: a byte stream, or an archive's record iterator over one.
enum Open {
    Stream(Source, Format),
    Warc(Box<super::web::WarcRecords<Source>>),
}
/// SHA-256 state and byte count of the file being read, shared with its `SharedHashingReader`.
type HashState = std::sync::Arc<std::sync::Mutex<(Sha256, u64)>>;

pub struct DocReader {
    files: Vec<PathBuf>,
    mode: DocMode,
    jsonl_field: String,
    next_file: usize,
    current: Option<(Open, HashState)>,
    line: u64,
    pub inputs: Vec<InputFile>,
    /// Compressed (on-disk) bytes read so far, for progress.
    pub bytes_read: u64,
    /// WARC records seen and skipped, over all archives read.
    pub web: super::web::WebCounts,
}

/// Shares the hash state between the reader chain and the DocReader (the decompressor owns it).
struct SharedHashingReader {
    inner: File,
    state: HashState,
}

impl Read for SharedHashingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.lock().expect("hash state lock");
        s.0.update(&buf[..n]);
        s.1 += n as u64;
        Ok(n)
    }
}

impl DocReader {
    pub fn new(files: Vec<PathBuf>, mode: DocMode, jsonl_field: &str) -> Self {
        Self {
            files,
            mode,
            jsonl_field: jsonl_field.to_string(),
            next_file: 0,
            current: None,
            line: 0,
            inputs: Vec::new(),
            bytes_read: 0,
            web: Default::default(),
        }
    }

    fn open_next(&mut self) -> Result<bool> {
        self.finish_current();
        let Some(path) = self.files.get(self.next_file).cloned() else { return Ok(false) };
        self.next_file += 1;
        let file = File::open(&path).at(&path)?;
        let state = std::sync::Arc::new(std::sync::Mutex::new((Sha256::new(), 0u64)));
        let raw = SharedHashingReader { inner: file, state: state.clone() };
        let name = path.to_string_lossy().to_ascii_lowercase();
        let reader: Box<dyn Read + Send> = if name.ends_with(".gz") {
            Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(raw)))
        } else if name.ends_with(".zst") {
            let dec = ruzstd::decoding::StreamingDecoder::new(BufReader::new(raw))
                .map_err(|e| Error::format(&path, format!("not a valid zstd stream: {e}")))?;
            Box::new(dec)
        } else {
            Box::new(raw)
        };
        let src = BufReader::with_capacity(1 << 20, reader);
        let open = match format_of(&path) {
            Format::Warc => Open::Warc(Box::new(super::web::WarcRecords::new(src))),
            f => Open::Stream(src, f),
        };
        self.current = Some((open, state));
        self.line = 0;
        Ok(true)
    }

    fn finish_current(&mut self) {
        if let Some((open, state)) = self.current.take() {
            if let Open::Warc(w) = &open {
                self.web.add(&w.counts);
            }
            let s = state.lock().expect("hash state lock");
            let idx = self.next_file - 1;
            self.inputs.push(InputFile {
                path: self.files[idx].clone(),
                bytes: s.1,
                sha256: s.0.clone().finalize().iter().map(|b| format!("{b:02x}")).collect(),
            });
        }
    }

    fn current_path(&self) -> &Path {
        &self.files[self.next_file - 1]
    }

    /// The next document, or None at the end of all inputs.
    pub fn next_doc(&mut self) -> Result<Option<RawDoc>> {
        loop {
            if self.current.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let input = self.next_file - 1;
            let path = self.current_path().to_path_buf();
            let (open, state) = self.current.as_mut().expect("opened above");
            let doc = match open {
                Open::Warc(records) => records.next_doc(input, &path.display().to_string()),
                Open::Stream(src, format) => {
                    read_stream_doc(src, *format, self.mode, &self.jsonl_field, &mut self.line, input, &path)?
                }
            };
            self.bytes_read = self.inputs.iter().map(|i| i.bytes).sum::<u64>() + state.lock().expect("lock").1;
            match doc {
                Some(d) => return Ok(Some(d)),
                None => {
                    // End of this file: a file-mode read yields its one document first.
                    self.finish_current();
                }
            }
        }
    }
}

/// The next document of a text, JSONL or HTML stream (None at its end).
fn read_stream_doc(
    src: &mut Source,
    format: Format,
    mode: DocMode,
    jsonl_field: &str,
    line: &mut u64,
    input: usize,
    path: &Path,
) -> Result<Option<RawDoc>> {
    Ok(match (format, mode) {
        (Format::Jsonl, _) => read_jsonl_doc(src, jsonl_field, line, input).at(path)?,
        // A page is one document whatever the mode: its text exists only after extraction.
        (Format::Html, _) => {
            read_whole(src, line, input, path)?.map(|d| RawDoc { kind: DocKind::Html { charset: None }, ..d })
        }
        (Format::Text | Format::Warc, DocMode::File) => read_whole(src, line, input, path)?,
        (Format::Text | Format::Warc, DocMode::Line) => {
            let mut bytes = Vec::new();
            let n = src.read_until(b'\n', &mut bytes).at(path)?;
            *line += 1;
            (n > 0).then(|| {
                let defect = bytes.contains(&0).then(|| ("binary_file", format!("{}:{}", path.display(), line)));
                RawDoc::text(bytes, input, *line, defect, false)
            })
        }
        (Format::Text | Format::Warc, DocMode::Paragraph) => read_paragraph(src, line, input, path)?,
    })
}

/// The whole rest of a file as one document (None once it was read).
fn read_whole(src: &mut Source, line: &mut u64, input: usize, path: &Path) -> Result<Option<RawDoc>> {
    let mut bytes = Vec::new();
    src.read_to_end(&mut bytes).at(path)?;
    if bytes.is_empty() && *line > 0 {
        return Ok(None);
    }
    *line += 1;
    // A NUL byte does not occur in text: call the file binary.
    let defect = bytes.contains(&0).then(|| ("binary_file", path.display().to_string()));
    Ok(Some(RawDoc::text(bytes, input, 1, defect, false)))
}

/// Lines up to the next blank line (blank lines before a paragraph are skipped).
fn read_paragraph(src: &mut Source, line: &mut u64, input: usize, path: &Path) -> Result<Option<RawDoc>> {
    let mut bytes = Vec::new();
    let mut start = 0;
    loop {
        let mut l = Vec::new();
        let n = src.read_until(b'\n', &mut l).at(path)?;
        if n == 0 {
            break;
        }
        *line += 1;
        let blank = l.iter().all(|b| b.is_ascii_whitespace());
        if blank {
            if bytes.is_empty() {
                continue;
            }
            break;
        }
        if bytes.is_empty() {
            start = *line;
        }
        bytes.extend_from_slice(&l);
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    let defect = bytes.contains(&0).then(|| ("binary_file", format!("{}:{start}", path.display())));
    Ok(Some(RawDoc::text(bytes, input, start, defect, false)))
}

fn read_jsonl_doc(src: &mut Source, field: &str, line: &mut u64, input: usize) -> std::io::Result<Option<RawDoc>> {
    loop {
        let mut l = Vec::new();
        if src.read_until(b'\n', &mut l)? == 0 {
            return Ok(None);
        }
        *line += 1;
        if l.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let at = *line;
        // Invalid UTF-8 inside a JSON line: decode lossily so the text can still be judged
        // (the cleaning stage counts or drops it by the invalid_utf8 policy).
        let text = String::from_utf8_lossy(&l);
        let lossy = matches!(text, std::borrow::Cow::Owned(_));
        let doc = match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => match v.get(field).and_then(|t| t.as_str()) {
                Some(t) => RawDoc::text(t.as_bytes().to_vec(), input, at, None, lossy),
                None => {
                    RawDoc::text(Vec::new(), input, at, Some(("bad_json", format!("no string field `{field}`"))), lossy)
                }
            },
            Err(e) => RawDoc::text(Vec::new(), input, at, Some(("bad_json", e.to_string())), lossy),
        };
        return Ok(Some(doc));
    }
}
