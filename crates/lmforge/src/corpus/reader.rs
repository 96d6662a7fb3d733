//! Streaming document reader: expands input paths (files, folders recursively) into a stable
//! list, opens each through its decompressor (`.gz`, `.zst`), and yields documents one at a
//! time — a whole file, a blank-line separated paragraph, or a line for text files; one JSON
//! object's text field per line for `.jsonl`. Nothing is read ahead beyond one document, so
//! memory stays bounded whatever the corpus size.

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
}

/// Expands `inputs` into files: folders are walked recursively (sorted), keeping `.txt`,
/// `.text`, `.jsonl` and their `.gz` / `.zst` versions. Missing or unreadable paths are errors.
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
                return Err(Error::format(p, "folder has no .txt / .jsonl files (optionally .gz / .zst)"));
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
    base.ends_with(".txt") || base.ends_with(".text") || base.ends_with(".jsonl")
}

fn format_of(p: &Path) -> Format {
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
    if name.trim_end_matches(".gz").trim_end_matches(".zst").ends_with(".jsonl") {
        Format::Jsonl
    } else {
        Format::Text
    }
}

type Source = BufReader<Box<dyn Read + Send>>;
/// SHA-256 state and byte count of the file being read, shared with its `SharedHashingReader`.
type HashState = std::sync::Arc<std::sync::Mutex<(Sha256, u64)>>;

pub struct DocReader {
    files: Vec<PathBuf>,
    mode: DocMode,
    jsonl_field: String,
    next_file: usize,
    current: Option<(Source, Format, HashState)>,
    line: u64,
    pub inputs: Vec<InputFile>,
    /// Compressed (on-disk) bytes read so far, for progress.
    pub bytes_read: u64,
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
        self.current = Some((BufReader::with_capacity(1 << 20, reader), format_of(&path), state));
        self.line = 0;
        Ok(true)
    }

    fn finish_current(&mut self) {
        if let Some((_, _, state)) = self.current.take() {
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
            let (src, format, state) = self.current.as_mut().expect("opened above");
            let doc = match (*format, self.mode) {
                (Format::Jsonl, _) => read_jsonl_doc(src, &self.jsonl_field, &mut self.line, input).at(&path)?,
                (Format::Text, DocMode::File) => {
                    let mut bytes = Vec::new();
                    src.read_to_end(&mut bytes).at(&path)?;
                    if bytes.is_empty() && self.line > 0 {
                        None
                    } else {
                        self.line += 1;
                        // A NUL byte does not occur in text: call the file binary.
                        let defect = bytes.contains(&0).then(|| ("binary_file", path.display().to_string()));
                        Some(RawDoc { bytes, input, line: 1, defect, lossy: false })
                    }
                }
                (Format::Text, DocMode::Line) => {
                    let mut bytes = Vec::new();
                    let n = src.read_until(b'\n', &mut bytes).at(&path)?;
                    self.line += 1;
                    (n > 0).then(|| {
                        let defect =
                            bytes.contains(&0).then(|| ("binary_file", format!("{}:{}", path.display(), self.line)));
                        RawDoc { bytes, input, line: self.line, defect, lossy: false }
                    })
                }
                (Format::Text, DocMode::Paragraph) => read_paragraph(src, &mut self.line, input, &path)?,
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
    Ok(Some(RawDoc { bytes, input, line: start, defect, lossy: false }))
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
                Some(t) => RawDoc { bytes: t.as_bytes().to_vec(), input, line: at, defect: None, lossy },
                None => RawDoc {
                    bytes: Vec::new(),
                    input,
                    line: at,
                    defect: Some(("bad_json", format!("no string field `{field}`"))),
                    lossy,
                },
            },
            Err(e) => RawDoc { bytes: Vec::new(), input, line: at, defect: Some(("bad_json", e.to_string())), lossy },
        };
        return Ok(Some(doc));
    }
}
