//! Labelled examples from TSV, CSV or JSONL files: a text column, an optional second text
//! (pair tasks) and a label column, named (header / JSONL field) or by 0-based index
//! (headerless files). Labels are strings (ints are read as their decimal text) mapped to ids
//! by a [`LabelMap`] that is saved with the model. Bad rows — a missing label, a label the map
//! does not know, an empty text, a malformed line — are counted with their file and line and
//! either skipped (reported) or, with `bad_rows = "fail"`, an error at the first one.

use super::config::{BadRowPolicy, ClsDataConfig, DataFormat};
use crate::error::{Error, IoContext, Result};
use serde::Serialize;
use serde_json::Value;
use std::io::BufRead;
use std::path::Path;

/// One example: its 1-based line in the file, its text(s) and label id (None when the file has
/// no labels, for prediction).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub line: u64,
    pub text: String,
    pub pair: Option<String>,
    pub label: Option<usize>,
    /// Regression: the target value (the label column read as a number).
    pub value: Option<f64>,
}

/// Counts of the rows left out, by reason, with the first few spelled out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BadRows {
    pub missing_label: u64,
    pub unknown_label: u64,
    pub empty_text: u64,
    pub malformed: u64,
    /// The first few, as `file:line: reason`.
    pub examples: Vec<String>,
}

impl BadRows {
    pub fn total(&self) -> u64 {
        self.missing_label + self.unknown_label + self.empty_text + self.malformed
    }

    /// "3 bad rows skipped (1 missing label, 2 empty text); first: f.tsv:7: empty text".
    pub fn summary(&self) -> String {
        let parts: Vec<String> = [
            (self.missing_label, "missing label"),
            (self.unknown_label, "unknown label"),
            (self.empty_text, "empty text"),
            (self.malformed, "malformed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        let first = self.examples.first().map(|e| format!("; first: {e}")).unwrap_or_default();
        format!("{} bad rows skipped ({}){first}", self.total(), parts.join(", "))
    }

    fn add(&mut self, other: &BadRows) {
        self.missing_label += other.missing_label;
        self.unknown_label += other.unknown_label;
        self.empty_text += other.empty_text;
        self.malformed += other.malformed;
        for e in &other.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(e.clone());
            }
        }
    }
}

const MAX_EXAMPLES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Reason {
    MissingLabel,
    UnknownLabel,
    EmptyText,
    Malformed,
}

/// Applies the bad-row policy to one bad row: counts it, or fails naming file and line.
pub(super) struct Policy<'a> {
    pub path: &'a Path,
    pub fail: bool,
    pub bad: BadRows,
}

impl Policy<'_> {
    pub fn reject(&mut self, line: u64, reason: Reason, detail: String) -> Result<()> {
        self.reject_at(&format!("line {line}"), &line.to_string(), reason, detail)
    }

    /// [`Self::reject`] of an item located otherwise than by a line (a question of a SQuAD
    /// file): `at` in the error, `short` after the file name in the counted examples.
    pub fn reject_at(&mut self, at: &str, short: &str, reason: Reason, detail: String) -> Result<()> {
        if self.fail {
            return Err(Error::format(self.path, format!("{at}: {detail} (data.bad_rows = \"fail\")")));
        }
        let b = &mut self.bad;
        *match reason {
            Reason::MissingLabel => &mut b.missing_label,
            Reason::UnknownLabel => &mut b.unknown_label,
            Reason::EmptyText => &mut b.empty_text,
            Reason::Malformed => &mut b.malformed,
        } += 1;
        if b.examples.len() < MAX_EXAMPLES {
            b.examples.push(format!("{}:{short}: {detail}", self.path.display()));
        }
        Ok(())
    }
}

/// The label set, in id order.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelMap {
    pub labels: Vec<String>,
}

impl LabelMap {
    /// The distinct labels, sorted numerically when all are integers (so "2" < "10"), else
    /// lexicographically.
    pub fn from_labels<'a>(labels: impl Iterator<Item = &'a str>) -> Self {
        let mut v: Vec<String> = labels.map(String::from).collect();
        v.sort();
        v.dedup();
        if v.iter().all(|l| l.parse::<i64>().is_ok()) {
            v.sort_by_key(|l| l.parse::<i64>().expect("checked"));
        }
        Self { labels: v }
    }

    pub fn id(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == label)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// A row as read, label not yet mapped.
pub(super) struct RawRow {
    pub line: u64,
    pub text: String,
    pub pair: Option<String>,
    pub label: Option<String>,
}

/// How rows are read: the reader part of `[data]` (also saved with a fine-tuned model).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Format {
    Tsv,
    Csv,
    Jsonl,
    Conll,
}

pub(super) fn format_of(path: &Path, format: DataFormat) -> Result<Format> {
    Ok(match format {
        DataFormat::Tsv => Format::Tsv,
        DataFormat::Csv => Format::Csv,
        DataFormat::Jsonl => Format::Jsonl,
        DataFormat::Conll => Format::Conll,
        DataFormat::Auto => {
            match path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref() {
                Some("tsv") | Some("txt") => Format::Tsv,
                Some("csv") => Format::Csv,
                Some("jsonl") | Some("json") | Some("ndjson") => Format::Jsonl,
                Some("conll") | Some("iob") | Some("bio") | Some("iobes") => Format::Conll,
                _ => {
                    return Err(Error::format(
                        path,
                        "cannot tell the format from the extension; set data.format to tsv, csv, jsonl or conll",
                    ))
                }
            }
        }
    })
}

/// Reads `path` and maps its labels with `labels`; `labels = None` means the file is the
/// training set and its own labels define the map (unless `cfg.labels` lists them). Without
/// `need_label`, a row without a label is kept with `label = None` (prediction inputs).
pub fn read_examples(
    path: &Path,
    cfg: &ClsDataConfig,
    labels: Option<&LabelMap>,
    need_label: bool,
) -> Result<(Vec<Example>, BadRows, LabelMap)> {
    let mut policy = Policy { path, fail: cfg.bad_rows == BadRowPolicy::Fail, bad: BadRows::default() };
    let rows = read_raw(path, cfg, &mut policy, "classification")?;
    let map = match labels {
        Some(m) => m.clone(),
        None if !cfg.labels.is_empty() => LabelMap { labels: cfg.labels.clone() },
        None => LabelMap::from_labels(rows.iter().filter_map(|r| r.label.as_deref())),
    };
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if r.text.trim().is_empty() {
            policy.reject(r.line, Reason::EmptyText, format!("empty text (column `{}`)", cfg.text_column))?;
            continue;
        }
        let label = match r.label {
            None if need_label => {
                policy.reject(
                    r.line,
                    Reason::MissingLabel,
                    format!("missing label (column `{}`)", cfg.label_column),
                )?;
                continue;
            }
            None => None,
            Some(l) => match map.id(&l) {
                Some(id) => Some(id),
                // Prediction inputs: a gold label the model does not know is just no gold label.
                None if !need_label => None,
                None => {
                    let known = map.labels.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
                    policy.reject(r.line, Reason::UnknownLabel, format!("unknown label {l:?} (known: {known})"))?;
                    continue;
                }
            },
        };
        out.push(Example { line: r.line, text: r.text, pair: r.pair, label, value: None });
    }
    if out.is_empty() {
        let why = if policy.bad.total() > 0 { format!(": {}", policy.bad.summary()) } else { String::new() };
        return Err(Error::format(path, format!("no usable rows{why}")));
    }
    if map.len() < 2 && need_label {
        return Err(Error::format(path, format!("classification needs at least 2 labels, found {:?}", map.labels)));
    }
    Ok((out, policy.bad, map))
}

/// The rows of a TSV / CSV / JSONL file, labels as read.
fn read_raw(path: &Path, cfg: &ClsDataConfig, policy: &mut Policy, task: &str) -> Result<Vec<RawRow>> {
    match format_of(path, cfg.format)? {
        Format::Jsonl => read_jsonl(path, cfg, policy),
        Format::Conll => Err(conll_refused(path, task)),
        f => read_delimited(path, cfg, f, policy),
    }
}

/// Reads `path` for regression: the label column is a number, the target (`value`). A label
/// that is not a finite number is a bad row (an unknown label); without `need_label` a row
/// without one is kept (prediction inputs).
pub fn read_scored(path: &Path, cfg: &ClsDataConfig, need_label: bool) -> Result<(Vec<Example>, BadRows)> {
    let mut policy = Policy { path, fail: cfg.bad_rows == BadRowPolicy::Fail, bad: BadRows::default() };
    let rows = read_raw(path, cfg, &mut policy, "regression")?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        if r.text.trim().is_empty() {
            policy.reject(r.line, Reason::EmptyText, format!("empty text (column `{}`)", cfg.text_column))?;
            continue;
        }
        let value = match r.label.as_deref().map(|l| (l, l.parse::<f64>())) {
            None if need_label => {
                let why = format!("missing target (column `{}`)", cfg.label_column);
                policy.reject(r.line, Reason::MissingLabel, why)?;
                continue;
            }
            None => None,
            Some((_, Ok(v))) if v.is_finite() => Some(v),
            Some(_) if !need_label => None,
            Some((l, _)) => {
                policy.reject(r.line, Reason::UnknownLabel, format!("target {l:?} is not a finite number"))?;
                continue;
            }
        };
        out.push(Example { line: r.line, text: r.text, pair: r.pair, label: None, value });
    }
    if out.is_empty() {
        let why = if policy.bad.total() > 0 { format!(": {}", policy.bad.summary()) } else { String::new() };
        return Err(Error::format(path, format!("no usable rows{why}")));
    }
    Ok((out, policy.bad))
}

/// The error for a CoNLL file given to a task that reads rows of text.
pub(super) fn conll_refused(path: &Path, task: &str) -> Error {
    Error::format(
        path,
        format!("a CoNLL file (a word and its tag per line) is token_classification data, not {task} rows"),
    )
}

/// Reads a labelled-rows file from raw bytes the way `finetune` reads its train / test files,
/// chosen by `selector` (format, header, bad-row policy, whether labels are required): the
/// entry point of the `dataset_rows` fuzz target and the hostile-input tests. Writes the
/// bytes to a file in `dir`, since the readers stream from files.
pub fn read_bytes_for_fuzzing(dir: &Path, selector: u8, bytes: &[u8]) -> Result<usize> {
    let (format, name) =
        [(DataFormat::Tsv, "tsv"), (DataFormat::Csv, "csv"), (DataFormat::Jsonl, "jsonl")][selector as usize % 3];
    let cfg = ClsDataConfig {
        format,
        header: selector & 0x04 != 0,
        text_column: if selector & 0x04 != 0 { "sentence".into() } else { "1".into() },
        label_column: if selector & 0x04 != 0 { "label".into() } else { "0".into() },
        text_pair_column: if selector & 0x08 != 0 { "pair".into() } else { String::new() },
        bad_rows: if selector & 0x10 != 0 { BadRowPolicy::Fail } else { BadRowPolicy::Skip },
        ..ClsDataConfig::default()
    };
    let path = dir.join(format!("rows.{name}"));
    std::fs::write(&path, bytes).at(&path)?;
    let (rows, _, _) = read_examples(&path, &cfg, None, selector & 0x20 == 0)?;
    Ok(rows.len())
}

/// Adds `b`'s counts into `total` (bad rows of several files).
pub fn add_bad_rows(total: &mut BadRows, b: &BadRows) {
    total.add(b);
}

/// A column spec resolved against a header: its index.
fn column_index(path: &Path, key: &str, spec: &str, header: Option<&csv::StringRecord>) -> Result<usize> {
    if let Some(h) = header {
        if let Some(i) = h.iter().position(|name| name.trim() == spec) {
            return Ok(i);
        }
    }
    spec.parse::<usize>().map_err(|_| match header {
        Some(h) => Error::format(
            path,
            format!("{key} = {spec:?} is not a column of the header ({})", h.iter().collect::<Vec<_>>().join(", ")),
        ),
        None => Error::format(
            path,
            format!("{key} = {spec:?}, but the file has no header (data.header = false): use a 0-based column index"),
        ),
    })
}

pub(super) fn read_delimited(
    path: &Path,
    cfg: &ClsDataConfig,
    format: Format,
    policy: &mut Policy,
) -> Result<Vec<RawRow>> {
    let quoting = cfg.quoting.unwrap_or(format == Format::Csv);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .quoting(quoting)
        .delimiter(if format == Format::Tsv { b'\t' } else { b',' })
        .from_path(path)
        .map_err(|e| csv_error(path, e))?;
    let mut records = reader.records();
    let header = if cfg.header {
        match records.next() {
            Some(r) => Some(r.map_err(|e| csv_error(path, e))?),
            None => return Err(Error::format(path, "empty file (data.header = true expects a header line)")),
        }
    } else {
        None
    };
    let text = column_index(path, "data.text_column", &cfg.text_column, header.as_ref())?;
    let pair = match cfg.text_pair_column.as_str() {
        "" => None,
        spec => Some(column_index(path, "data.text_pair_column", spec, header.as_ref())?),
    };
    let label = column_index(path, "data.label_column", &cfg.label_column, header.as_ref()).ok();
    let mut rows = Vec::new();
    for rec in records {
        let rec = match rec {
            Ok(r) => r,
            Err(e) if e.is_io_error() => return Err(csv_error(path, e)),
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                policy.reject(line, Reason::Malformed, format!("unreadable row: {e}"))?;
                continue;
            }
        };
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() == 1 && rec[0].is_empty() {
            continue; // a blank line
        }
        let needed = text.max(pair.unwrap_or(0));
        if rec.len() <= needed {
            let detail = format!("{} field(s), the text column is field {} (0-based)", rec.len(), needed);
            policy.reject(line, Reason::Malformed, detail)?;
            continue;
        }
        let label = label.and_then(|i| rec.get(i)).map(str::trim).filter(|l| !l.is_empty()).map(String::from);
        rows.push(RawRow { line, text: rec[text].to_string(), pair: pair.map(|i| rec[i].to_string()), label });
    }
    Ok(rows)
}

fn csv_error(path: &Path, e: csv::Error) -> Error {
    Error::format(path, format!("cannot read: {e}"))
}

/// The JSON objects of a JSONL file with their 1-based lines; blank lines are skipped, and a
/// line that is not UTF-8, not JSON or not an object is a malformed row for `policy`.
pub(super) fn jsonl_objects(path: &Path, policy: &mut Policy) -> Result<Vec<(u64, serde_json::Map<String, Value>)>> {
    let file = std::fs::File::open(path).at(path)?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i as u64 + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                policy.reject(line_no, Reason::Malformed, "invalid UTF-8".into())?;
                continue;
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(o)) => out.push((line_no, o)),
            Ok(_) => policy.reject(line_no, Reason::Malformed, "not a JSON object".into())?,
            Err(e) => policy.reject(line_no, Reason::Malformed, format!("invalid JSON: {e}"))?,
        }
    }
    Ok(out)
}

fn read_jsonl(path: &Path, cfg: &ClsDataConfig, policy: &mut Policy) -> Result<Vec<RawRow>> {
    let mut rows = Vec::new();
    for (line_no, obj) in jsonl_objects(path, policy)? {
        let text_of = |key: &str| match obj.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        let Some(text) = text_of(&cfg.text_column) else {
            policy.reject(line_no, Reason::EmptyText, format!("no text field `{}`", cfg.text_column))?;
            continue;
        };
        let pair = match cfg.text_pair_column.as_str() {
            "" => None,
            key => Some(text_of(key).unwrap_or_default()),
        };
        let label = text_of(&cfg.label_column).map(|l| l.trim().to_string()).filter(|l| !l.is_empty());
        rows.push(RawRow { line: line_no, text, pair, label });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sets: &[(&str, &str)]) -> ClsDataConfig {
        let mut c = ClsDataConfig::default();
        for (k, v) in sets {
            match *k {
                "text" => c.text_column = v.to_string(),
                "pair" => c.text_pair_column = v.to_string(),
                "label" => c.label_column = v.to_string(),
                "header" => c.header = *v == "true",
                "bad_rows" => c.bad_rows = if *v == "fail" { BadRowPolicy::Fail } else { BadRowPolicy::Skip },
                _ => unreachable!(),
            }
        }
        c
    }

    #[test]
    fn bad_rows_are_counted_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let train = dir.path().join("train.tsv");
        std::fs::write(&train, "text\tlabel\ngood one\tpos\n\tneg\nno label\t\nfine\tneg\n").unwrap();
        let (ex, bad, map) = read_examples(&train, &cfg(&[]), None, true).unwrap();
        assert_eq!(map.labels, ["neg", "pos"]);
        assert_eq!(ex.iter().map(|e| (e.line, e.label)).collect::<Vec<_>>(), [(2, Some(1)), (5, Some(0))]);
        assert_eq!((bad.empty_text, bad.missing_label, bad.total()), (1, 1, 2));
        assert!(bad.examples[0].contains("train.tsv:3: empty text"), "{:?}", bad.examples);
        assert!(bad.summary().starts_with("2 bad rows skipped (1 missing label, 1 empty text)"), "{}", bad.summary());

        // At test time a label the training set did not have is an unknown label.
        let test = dir.path().join("test.tsv");
        std::fs::write(&test, "text\tlabel\nok\tpos\nhmm\tneutral\n").unwrap();
        let (ex, bad, _) = read_examples(&test, &cfg(&[]), Some(&map), true).unwrap();
        assert_eq!((ex.len(), bad.unknown_label), (1, 1));
        assert!(bad.examples[0].contains("test.tsv:3: unknown label \"neutral\""), "{:?}", bad.examples);

        let e = read_examples(&test, &cfg(&[("bad_rows", "fail")]), Some(&map), true).unwrap_err().to_string();
        assert!(e.contains("test.tsv: line 3: unknown label \"neutral\""), "{e}");
    }

    #[test]
    fn headerless_csv_jsonl_pairs_and_int_labels() {
        let dir = tempfile::tempdir().unwrap();
        let spam = dir.path().join("spam.tsv");
        // Unbalanced quotes: TSV reads them literally.
        std::fs::write(&spam, "ham\tsee you \"soon\nspam\tWIN a \"prize\"\n").unwrap();
        let c = cfg(&[("header", "false"), ("text", "1"), ("label", "0")]);
        let (ex, _, map) = read_examples(&spam, &c, None, true).unwrap();
        assert_eq!(ex[0].text, "see you \"soon");
        assert_eq!(map.labels, ["ham", "spam"]);
        let e = read_examples(&spam, &cfg(&[("header", "false")]), None, true).unwrap_err().to_string();
        assert!(e.contains("data.text_column") && e.contains("0-based"), "{e}");

        let csv = dir.path().join("nli.csv");
        std::fs::write(&csv, "premise,hypothesis,label\n\"a, b\",c,10\nd,e,2\n").unwrap();
        let (ex, _, map) =
            read_examples(&csv, &cfg(&[("text", "premise"), ("pair", "hypothesis")]), None, true).unwrap();
        assert_eq!((ex[0].text.as_str(), ex[0].pair.as_deref()), ("a, b", Some("c")));
        assert_eq!(map.labels, ["2", "10"], "integer labels sort numerically");

        let jsonl = dir.path().join("d.jsonl");
        std::fs::write(&jsonl, "{\"text\": \"x\", \"label\": 1}\n\nnot json\n{\"text\": \"y\", \"label\": 0}\n")
            .unwrap();
        let (ex, bad, map) = read_examples(&jsonl, &cfg(&[]), None, true).unwrap();
        assert_eq!((ex.len(), bad.malformed, map.labels.clone()), (2, 1, vec!["0".to_string(), "1".to_string()]));
        assert!(bad.examples[0].contains("d.jsonl:3: invalid JSON"), "{:?}", bad.examples);
        // Prediction inputs may lack labels.
        let unl = dir.path().join("u.jsonl");
        std::fs::write(&unl, "{\"text\": \"z\"}\n").unwrap();
        let (ex, _, _) = read_examples(&unl, &cfg(&[]), Some(&map), false).unwrap();
        assert_eq!(ex[0].label, None);
    }
}
