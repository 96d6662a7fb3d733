//! Corpus preparation: raw text → cleaned, filtered, deduplicated, split documents → tokenizer
//! → token shards, streaming and in bounded memory. One pass reads the inputs in chunks of
//! documents; each chunk is decoded, normalised, filtered and MinHashed in parallel (rayon),
//! then deduplicated and assigned to a split in input order (so results do not depend on
//! thread timing) and appended to a per-split temporary store on disk. The tokenizer is then
//! trained on the train store (or loaded), and each store is tokenized into a shard.
//!
//! Everything is built inside a staged folder and renamed into place at the end: a failed run
//! leaves no half-written `DIR` for a later `train` to read. `DIR/manifest.json` records
//! inputs (sizes, SHA-256), every stage's counts and timings, tokens per split and the config.

pub mod clean;
pub mod config;
pub mod dedup;
pub mod langid;
pub mod pii;
pub mod reader;
pub mod stopwords;
pub mod units;
pub mod web;

use crate::error::{Error, IoContext, Result};
use crate::fsio::{self, StagedDir};
use crate::progress::{Progress, ProgressMode};
use crate::shards::TokenShardWriter;
use crate::tokenizer::TextTokenizer;
use clean::{Filters, Normalization};
pub use config::{DataConfig, InvalidUtf8};
use dedup::{LshIndex, MinHasher};
use rayon::prelude::*;
use reader::{DocKind, DocMeta, DocMode, DocReader, RawDoc};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub const SPLITS: [&str; 3] = ["train", "val", "test"];

/// Documents per parallel chunk (and a byte cap), bounding memory while keeping cores busy.
const CHUNK_DOCS: usize = 4096;
const CHUNK_BYTES: usize = 32 << 20;
/// Rejected documents kept per reason in `rejected.sample.jsonl`.
const REJECT_SAMPLES_PER_REASON: usize = 20;

/// Settings resolved from `[data]`.
struct Settings {
    mode: DocMode,
    repair_utf8: bool,
    normalization: Normalization,
    filters: Filters,
    /// The filters of each identified language ([`DataConfig::filters_for`]).
    language_filters: std::collections::HashMap<&'static str, Filters>,
    /// For documents whose language could not be told.
    no_language: Filters,
    /// Identify languages ([`langid`]), and keep only these (None: all).
    language_id: bool,
    languages: Option<Vec<&'static str>>,
    scrub_pii: bool,
    exact: bool,
    near: bool,
    minhash: MinHasher,
    threshold: f64,
    bands: usize,
    val: f64,
    test: f64,
    seed: u64,
}

impl Settings {
    fn from_config(c: &DataConfig) -> Result<Self> {
        c.validate()?;
        Ok(Self {
            mode: c.doc_mode,
            repair_utf8: c.invalid_utf8 == InvalidUtf8::Repair,
            normalization: c.normalize,
            filters: c.filters(),
            no_language: Filters { min_stop_words: 0, stop_words: &[], ..c.filters() },
            language_filters: langid::CODES.iter().map(|(_, l)| (*l, c.filters_for(l))).collect(),
            language_id: c.language_id || !c.languages.is_empty(),
            languages: c.kept_languages()?,
            scrub_pii: c.scrub_pii,
            exact: c.exact_dedup,
            near: c.near_dedup,
            minhash: c.minhasher(),
            threshold: c.near_dup_threshold,
            bands: c.lsh_bands,
            val: c.val_fraction,
            test: c.test_fraction,
            seed: c.seed,
        })
    }
}

/// What processing one document produced.
enum Outcome {
    Rejected {
        reason: &'static str,
        sample: String,
    },
    Kept {
        text: String,
        exact: u128,
        signature: Option<Vec<u32>>,
        language: Option<&'static str>,
        pii: pii::PiiCounts,
        meta: Option<Box<DocMeta>>,
    },
}

struct Processed {
    outcome: Outcome,
    repaired: bool,
    raw_bytes: usize,
    input: usize,
    line: u64,
}

/// Time spent per stage, summed over threads (nanoseconds).
#[derive(Default)]
struct StageClock {
    extract: AtomicU64,
    clean: AtomicU64,
    pii: AtomicU64,
    filter: AtomicU64,
    langid: AtomicU64,
    minhash: AtomicU64,
}

fn process(raw: RawDoc, s: &Settings, clock: &StageClock) -> Processed {
    let raw_bytes = raw.bytes.len();
    let (input, line) = (raw.input, raw.line);
    let done = |outcome, repaired| Processed { outcome, repaired, raw_bytes, input, line };
    if let Some((reason, detail)) = raw.defect {
        return done(Outcome::Rejected { reason, sample: detail }, false);
    }
    let meta = raw.meta;
    let decoded = match &raw.kind {
        DocKind::Text => clean::decode(raw.bytes, s.repair_utf8),
        DocKind::Html { charset } => {
            let t = Instant::now();
            let url = meta.as_ref().and_then(|m| m.url.as_deref());
            let r = web::html_text(&raw.bytes, charset.as_deref(), url);
            clock.extract.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            // A page's bytes were decoded by its charset; replaced bytes follow the UTF-8 policy.
            match r {
                Ok((_, true)) if !s.repair_utf8 => Err("invalid_utf8"),
                other => other,
            }
        }
    };
    let t = Instant::now();
    let (text, repaired) = match decoded {
        Ok((t, r)) => (t, r || raw.lossy),
        Err(reason) => {
            let sample = meta.and_then(|m| m.url).unwrap_or_default();
            return done(Outcome::Rejected { reason, sample }, false);
        }
    };
    if raw.lossy && !s.repair_utf8 {
        return done(Outcome::Rejected { reason: "invalid_utf8", sample: String::new() }, false);
    }
    let text = clean::normalize(&text, s.normalization);
    clock.clean.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let t = Instant::now();
    let language = s.language_id.then(|| langid::detect(&text));
    clock.langid.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    if let (Some(keep), Some(lang)) = (&s.languages, language) {
        if !keep.contains(&lang) {
            let sample: String = text.chars().take(300).collect();
            return done(Outcome::Rejected { reason: "language", sample: format!("[{lang}] {sample}") }, repaired);
        }
    }
    let t = Instant::now();
    // An identified document is held to its language's thresholds and stop words
    // (undetermined ones to none: the stop-word rule needs a language).
    let filters = match language {
        Some(l) => s.language_filters.get(l).unwrap_or(&s.no_language),
        None => &s.filters,
    };
    let verdict = clean::check(&text, filters);
    clock.filter.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    if let Some(reason) = verdict {
        let sample: String = text.chars().take(300).collect();
        return done(Outcome::Rejected { reason, sample }, repaired);
    }
    // Scrubbed before hashing: copies that differ only in an address are duplicates.
    let t = Instant::now();
    let (text, pii) = if s.scrub_pii {
        match pii::scrub(&text) {
            (std::borrow::Cow::Owned(scrubbed), n) => (scrubbed, n),
            (std::borrow::Cow::Borrowed(_), n) => (text, n),
        }
    } else {
        (text, pii::PiiCounts::default())
    };
    clock.pii.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let t = Instant::now();
    let signature = s.near.then(|| s.minhash.signature(&text));
    clock.minhash.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let exact = dedup::exact_hash(&text);
    done(Outcome::Kept { text, exact, signature, language, pii, meta }, repaired)
}

/// Split of a surviving document: a stable hash of its text, so re-running gives the same
/// split and adding documents never moves existing ones.
pub fn split_of(text: &str, val: f64, test: f64, seed: u64) -> usize {
    let u = xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), seed ^ 0x7370_6c69) as f64 / u64::MAX as f64;
    if u < val {
        1
    } else if u < val + test {
        2
    } else {
        0
    }
}

/// Length-prefixed documents in a temporary file (one per split).
struct DocStore {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    docs: u64,
    bytes: u64,
}

impl DocStore {
    fn create(path: PathBuf) -> Result<Self> {
        let f = std::fs::File::create(&path).at(&path)?;
        Ok(Self { out: BufWriter::with_capacity(1 << 20, f), path, docs: 0, bytes: 0 })
    }
    fn push(&mut self, text: &str) -> Result<()> {
        self.out.write_all(&(text.len() as u64).to_le_bytes()).at(&self.path)?;
        self.out.write_all(text.as_bytes()).at(&self.path)?;
        self.docs += 1;
        self.bytes += text.len() as u64;
        Ok(())
    }
    fn finish(mut self) -> Result<PathBuf> {
        self.out.flush().at(&self.path)?;
        Ok(self.path)
    }
}

/// One JSON line per kept document of a split: where it came from (file and line or WARC
/// record; URL, record id and date for web documents; language when identified).
struct MetaWriter {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
}

impl MetaWriter {
    fn create(path: PathBuf) -> Result<Self> {
        let f = std::fs::File::create(&path).at(&path)?;
        Ok(Self { out: BufWriter::with_capacity(1 << 16, f), path })
    }
    fn push(&mut self, row: &Value) -> Result<()> {
        serde_json::to_writer(&mut self.out, row).map_err(|e| Error::format(&self.path, e.to_string()))?;
        self.out.write_all(b"\n").at(&self.path)
    }
    fn finish(mut self) -> Result<()> {
        self.out.flush().at(&self.path)?;
        self.out.get_ref().sync_all().at(&self.path)
    }
}

/// Streams documents back from a store.
fn read_store(path: &Path) -> Result<impl Iterator<Item = Result<String>>> {
    let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path).at(path)?);
    let path = path.to_path_buf();
    Ok(std::iter::from_fn(move || {
        let mut len = [0u8; 8];
        match r.fill_buf() {
            Ok([]) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(Error::io(&path, e))),
        }
        if let Err(e) = r.read_exact(&mut len) {
            return Some(Err(Error::io(&path, e)));
        }
        let mut buf = vec![0u8; u64::from_le_bytes(len) as usize];
        if let Err(e) = r.read_exact(&mut buf) {
            return Some(Err(Error::io(&path, e)));
        }
        Some(String::from_utf8(buf).map_err(|_| Error::format(&path, "store holds invalid UTF-8")))
    }))
}

/// Runs the pipeline over `inputs` into `out` and returns the manifest. `model_vocab`, when
/// known, bounds the tokenizer (its ids must fit the embedding table).
pub fn prepare(
    cfg: &DataConfig,
    inputs: &[PathBuf],
    out: &Path,
    model_vocab: Option<usize>,
    mode: ProgressMode,
) -> Result<Value> {
    let started = Instant::now();
    let s = Settings::from_config(cfg)?;
    if out.exists() && !out.join("manifest.json").is_file() && std::fs::read_dir(out).at(out)?.next().is_some() {
        return Err(Error::format(out, "exists and is not a prepared data folder; refusing to replace it"));
    }
    let files = reader::discover(inputs)?;
    let total_bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    let web_input = reader::has_web_input(&files);
    let staged = StagedDir::new(out)?;
    let dir = staged.path().to_path_buf();
    let mut stores: Vec<DocStore> =
        SPLITS.iter().map(|n| DocStore::create(dir.join(format!(".docs-{n}")))).collect::<Result<_>>()?;
    // Line k of SPLIT.docs.jsonl describes document k of SPLIT.bin (same order as the store).
    let mut metadata: Option<Vec<MetaWriter>> = if cfg.document_metadata.unwrap_or(web_input) {
        Some(SPLITS.iter().map(|n| MetaWriter::create(dir.join(format!("{n}.docs.jsonl")))).collect::<Result<_>>()?)
    } else {
        None
    };
    let sources: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();

    let mut reader = DocReader::new(files, s.mode, &cfg.jsonl_field);
    let clock = StageClock::default();
    let mut exact_seen: HashSet<u128> = HashSet::new();
    let mut lsh = LshIndex::new(s.minhash.num_perm(), s.threshold, s.bands);
    let mut rejected: BTreeMap<&'static str, u64> = clean::REASONS.iter().map(|r| (*r, 0)).collect();
    let mut samples: Vec<Value> = Vec::new();
    let (mut docs_in, mut raw_bytes, mut repaired, mut exact_dups, mut near_dups) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut clusters: HashSet<u32> = HashSet::new();
    // Kept documents and bytes per identified language.
    let mut languages: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    // PII replaced in kept documents, and how many documents had any.
    let (mut pii_total, mut pii_docs) = (pii::PiiCounts::default(), 0u64);
    let (mut read_s, mut process_s, mut dedup_s) = (0f64, 0f64, 0f64);
    let progress = Progress::new(mode, "prepare: bytes", 0, total_bytes.max(1));

    loop {
        let t = Instant::now();
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        while chunk.len() < CHUNK_DOCS && chunk_bytes < CHUNK_BYTES {
            match reader.next_doc()? {
                Some(d) => {
                    chunk_bytes += d.bytes.len();
                    chunk.push(d);
                }
                None => break,
            }
        }
        read_s += t.elapsed().as_secs_f64();
        if chunk.is_empty() {
            break;
        }
        let t = Instant::now();
        let processed: Vec<Processed> = chunk.into_par_iter().map(|d| process(d, &s, &clock)).collect();
        process_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for p in processed {
            docs_in += 1;
            raw_bytes += p.raw_bytes as u64;
            repaired += p.repaired as u64;
            match p.outcome {
                Outcome::Rejected { reason, sample } => {
                    let n = rejected.entry(reason).or_insert(0);
                    *n += 1;
                    if *n as usize <= REJECT_SAMPLES_PER_REASON {
                        let source = reader
                            .inputs
                            .get(p.input)
                            .map(|i| i.path.display().to_string())
                            .unwrap_or_else(|| format!("input #{}", p.input));
                        samples.push(json!({ "reason": reason, "source": source, "line": p.line, "text": sample }));
                    }
                }
                Outcome::Kept { text, exact, signature, language, pii, meta } => {
                    if s.exact && !exact_seen.insert(exact) {
                        exact_dups += 1;
                        continue;
                    }
                    if let Some(sig) = signature {
                        if let Some(first) = lsh.check_and_insert(&sig) {
                            near_dups += 1;
                            clusters.insert(first);
                            continue;
                        }
                    }
                    if let Some(lang) = language {
                        let n = languages.entry(lang).or_insert((0, 0));
                        *n = (n.0 + 1, n.1 + text.len() as u64);
                    }
                    pii_total.add(&pii);
                    pii_docs += (pii.total() > 0) as u64;
                    let split = split_of(&text, s.val, s.test, s.seed);
                    stores[split].push(&text)?;
                    if let Some(m) = metadata.as_mut() {
                        // A WARC document's place is its record number, a text's its line.
                        let at = if meta.is_some() { "record" } else { "line" };
                        let mut row = json!({ "source": sources[p.input] });
                        row[at] = json!(p.line);
                        if let Some(meta) = meta {
                            row.as_object_mut().expect("object").extend(
                                serde_json::to_value(*meta)
                                    .expect("serialisable")
                                    .as_object()
                                    .cloned()
                                    .unwrap_or_default(),
                            );
                        }
                        if let Some(lang) = language {
                            row["language"] = json!(lang);
                        }
                        m[split].push(&row)?;
                    }
                }
            }
        }
        dedup_s += t.elapsed().as_secs_f64();
        progress.update(reader.bytes_read, &format!("{docs_in} docs"), true);
    }
    progress.finish();
    let pass1_s = started.elapsed().as_secs_f64();

    let split_docs: Vec<(u64, u64)> = stores.iter().map(|st| (st.docs, st.bytes)).collect();
    let docs_out: u64 = split_docs.iter().map(|d| d.0).sum();
    if split_docs[0].0 == 0 {
        return Err(Error::Invalid(format!(
            "no training documents survived ({docs_in} read, {} rejected, {exact_dups} exact and {near_dups} near duplicates, \
             {} in other splits); loosen the [data] filters or add text",
            rejected.values().sum::<u64>(),
            docs_out
        )));
    }
    for (i, frac) in [(1, s.val), (2, s.test)] {
        if frac > 0.0 && split_docs[i].0 == 0 {
            return Err(Error::Invalid(format!(
                "the {} split is empty: only {docs_out} document(s) survived, too few for a {frac} fraction; \
                 cut the text into more documents (data.doc_mode = \"paragraph\" or \"line\") or add text",
                SPLITS[i]
            )));
        }
    }
    let store_paths: Vec<PathBuf> = stores.into_iter().map(DocStore::finish).collect::<Result<_>>()?;
    for m in metadata.into_iter().flatten() {
        m.finish()?;
    }

    // Tokenizer: trained on the train split only, so validation text never shapes it.
    let t = Instant::now();
    let trained = cfg.tokenizer.as_os_str().is_empty();
    let tokenizer = if trained {
        let vocab = if cfg.vocab_size > 0 { cfg.vocab_size } else { model_vocab.unwrap_or(8192) };
        let docs = read_store(&store_paths[0])?.map_while(|d| d.ok());
        TextTokenizer::train_bpe(docs, vocab, &cfg.special_tokens)?
    } else {
        TextTokenizer::load(&cfg.tokenizer)?
    };
    let tokenizer_s = t.elapsed().as_secs_f64();
    let vocab_size = tokenizer.vocab_size();
    if let Some(mv) = model_vocab {
        if vocab_size > mv {
            return Err(Error::config(
                "data.vocab_size",
                format!("the tokenizer has {vocab_size} tokens but the model's vocabulary is {mv}; set model.vocab_size >= {vocab_size}"),
            ));
        }
    }
    let shard_vocab = model_vocab.unwrap_or(vocab_size).max(vocab_size);
    let eos = if cfg.append_eos { tokenizer.eos_id() } else { None };

    let t = Instant::now();
    let mut split_tokens = Vec::new();
    let progress = Progress::new(mode, "tokenize: docs", 0, docs_out.max(1));
    let mut tokenized_docs = 0u64;
    for (name, store) in SPLITS.iter().zip(&store_paths) {
        let mut w = TokenShardWriter::create(&dir.join(format!("{name}.bin")), shard_vocab)?;
        let mut tokens = 0u64;
        let mut docs = read_store(store)?;
        loop {
            let batch: Vec<String> = docs.by_ref().take(CHUNK_DOCS).collect::<Result<_>>()?;
            if batch.is_empty() {
                break;
            }
            for mut ids in tokenizer.encode_batch(batch.iter().map(String::as_str).collect())? {
                ids.extend(eos);
                tokens += ids.len() as u64;
                w.push_document(&ids)?;
            }
            tokenized_docs += batch.len() as u64;
            progress.update(tokenized_docs, name, true);
        }
        w.finish()?;
        std::fs::remove_file(store).at(store)?;
        split_tokens.push(tokens);
    }
    progress.finish();
    let tokenize_s = t.elapsed().as_secs_f64();
    tokenizer.save(&dir.join("tokenizer.json"))?;
    let mut rej_file = String::new();
    for s in &samples {
        rej_file.push_str(&s.to_string());
        rej_file.push('\n');
    }
    std::fs::write(dir.join("rejected.sample.jsonl"), rej_file).at(dir.join("rejected.sample.jsonl"))?;

    let mb = |bytes: u64, secs: f64| bytes as f64 / 1e6 / secs.max(1e-9);
    let threads = rayon::current_num_threads() as f64;
    let cpu = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
    let kept_bytes: u64 = split_docs.iter().map(|d| d.1).sum();
    let (bands, rows) = lsh.bands_rows();
    let manifest = json!({
        "format": "lmforge-prepared-data",
        "version": 1,
        "inputs": reader.inputs,
        "counts": {
            "documents_in": docs_in,
            "bytes_in": raw_bytes,
            "invalid_utf8_repaired": repaired,
            "rejected": rejected,
            "exact_duplicates": exact_dups,
            "near_duplicates": near_dups,
            "near_duplicate_clusters": clusters.len(),
            "documents_out": docs_out,
            "bytes_out": kept_bytes,
            "pii": s.scrub_pii.then(|| json!({
                "email": pii_total.email, "ip": pii_total.ip, "phone": pii_total.phone, "documents": pii_docs,
            })),
            "web": web_input.then(|| json!(reader.web)),
            "languages": s.language_id.then(|| languages.iter().map(|(l, (d, b))| {
                (l.to_string(), json!({ "documents": d, "bytes": b }))
            }).collect::<serde_json::Map<String, Value>>()),
            "splits": SPLITS.iter().enumerate().map(|(i, n)| (n.to_string(), json!({
                "documents": split_docs[i].0,
                "bytes": split_docs[i].1,
                "tokens": split_tokens[i],
            }))).collect::<serde_json::Map<String, Value>>(),
        },
        "tokenizer": { "trained": trained, "vocab_size": vocab_size, "eos_appended": eos.is_some() },
        "bytes_per_token": kept_bytes as f64 / split_tokens.iter().sum::<u64>().max(1) as f64,
        "dedup": { "minhash_perms": s.minhash.num_perm(), "ngram": s.minhash.ngram, "threshold": s.threshold, "lsh_bands": bands, "lsh_rows": rows },
        "timings_s": {
            "read": read_s, "extract_cpu": cpu(&clock.extract), "clean_cpu": cpu(&clock.clean), "pii_cpu": cpu(&clock.pii), "filter_cpu": cpu(&clock.filter),
            "langid_cpu": cpu(&clock.langid), "minhash_cpu": cpu(&clock.minhash), "parallel_wall": process_s, "dedup_and_write": dedup_s,
            "pass1": pass1_s, "tokenizer_train": tokenizer_s, "tokenize": tokenize_s,
            "total": started.elapsed().as_secs_f64(), "threads": threads,
        },
        "mb_per_s": {
            "read": mb(raw_bytes, read_s),
            "extract": web_input.then(|| mb(raw_bytes, cpu(&clock.extract) / threads)),
            "clean": mb(raw_bytes, cpu(&clock.clean) / threads),
            "pii": s.scrub_pii.then(|| mb(raw_bytes, cpu(&clock.pii) / threads)),
            "filter": mb(raw_bytes, cpu(&clock.filter) / threads),
            "langid": s.language_id.then(|| mb(raw_bytes, cpu(&clock.langid) / threads)),
            "minhash": mb(raw_bytes, cpu(&clock.minhash) / threads),
            "pass1": mb(raw_bytes, pass1_s),
            "tokenize": mb(kept_bytes, tokenize_s),
        },
        "config": cfg,
    });
    fsio::write_json_atomic(&dir.join("manifest.json"), &manifest)?;
    staged.commit()?;
    Ok(manifest)
}

/// A human summary of a manifest, one stage per row.
pub fn summary_table(m: &Value) -> String {
    let c = &m["counts"];
    let mut out = String::new();
    let mut row = |k: &str, v: String| out.push_str(&format!("{k:<28} {v}\n"));
    row("documents in", format!("{} ({:.1} MB)", c["documents_in"], c["bytes_in"].as_f64().unwrap_or(0.0) / 1e6));
    row("invalid UTF-8 repaired", c["invalid_utf8_repaired"].to_string());
    if let Some(r) = c["rejected"].as_object() {
        for (reason, n) in r.iter().filter(|(_, n)| n.as_u64() != Some(0)) {
            row(&format!("rejected: {reason}"), n.to_string());
        }
    }
    row("exact duplicates", c["exact_duplicates"].to_string());
    row("near duplicates", format!("{} (in {} clusters)", c["near_duplicates"], c["near_duplicate_clusters"]));
    row("documents out", c["documents_out"].to_string());
    if let Some(web) = c["web"].as_object() {
        let skipped: Vec<String> =
            web["skipped"].as_object().into_iter().flatten().map(|(k, n)| format!("{k} {n}")).collect();
        row("WARC records (skipped)", format!("{} ({})", web["records"], skipped.join(", ")));
    }
    if let Some(pii) = c["pii"].as_object() {
        row(
            "PII replaced",
            format!(
                "{} e-mail, {} IP, {} phone in {} documents",
                pii["email"], pii["ip"], pii["phone"], pii["documents"]
            ),
        );
    }
    if let Some(langs) = c["languages"].as_object() {
        let mut by_docs: Vec<(&String, u64)> =
            langs.iter().map(|(l, v)| (l, v["documents"].as_u64().unwrap_or(0))).collect();
        by_docs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let shown: Vec<String> = by_docs.iter().take(8).map(|(l, n)| format!("{l} {n}")).collect();
        row("languages (documents)", shown.join(", "));
    }
    for s in SPLITS {
        let sp = &c["splits"][s];
        row(&format!("split {s}"), format!("{} docs, {} tokens", sp["documents"], sp["tokens"]));
    }
    row("bytes per token", format!("{:.3}", m["bytes_per_token"].as_f64().unwrap_or(0.0)));
    let r = &m["mb_per_s"];
    row(
        "MB/s (clean/filter/minhash)",
        format!(
            "{:.0} / {:.0} / {:.0}",
            r["clean"].as_f64().unwrap_or(0.0),
            r["filter"].as_f64().unwrap_or(0.0),
            r["minhash"].as_f64().unwrap_or(0.0)
        ),
    );
    row(
        "MB/s (pass 1 / tokenize)",
        format!("{:.1} / {:.1}", r["pass1"].as_f64().unwrap_or(0.0), r["tokenize"].as_f64().unwrap_or(0.0)),
    );
    row("total time", format!("{:.1} s", m["timings_s"]["total"].as_f64().unwrap_or(0.0)));
    out
}
