//! The data pipeline on constructed corpora: injected exact duplicates, near duplicates and
//! junk for every rejection reason; split stability; tokenizer round trip through the shards;
//! hostile inputs (binary, invalid UTF-8, a 100 MB line, missing paths, nothing surviving).

use lmforge::corpus;
use lmforge::corpus::reader::DocMode;
use lmforge::corpus::{DataConfig, InvalidUtf8};
use lmforge::progress::ProgressMode;
use lmforge::shards::TokenShard;
use lmforge::tokenizer::TextTokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `n` distinct documents of `len` words drawn from a 2000-word vocabulary.
fn distinct_docs(n: usize, len: usize, seed: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vocab: Vec<String> = (0..2000)
        .map(|i| {
            let l = 3 + i % 6;
            (0..l).map(|k| (b'a' + ((i * 7 + k * 13) % 26) as u8) as char).collect::<String>() + &i.to_string()[..1]
        })
        .map(|w: String| w.chars().filter(|c| c.is_alphabetic()).collect())
        .collect();
    (0..n)
        .map(|_| {
            let words: Vec<&str> = (0..len).map(|_| vocab[rng.random_range(0..vocab.len())].as_str()).collect();
            // Stop words so the Gopher stop-word rule can be tested on the junk alone.
            format!("the {} and that", words.join(" "))
        })
        .collect()
}

fn tweak(doc: &str, changes: usize, rng: &mut ChaCha8Rng) -> String {
    let mut w: Vec<String> = doc.split(' ').map(String::from).collect();
    for _ in 0..changes {
        let i = rng.random_range(1..w.len() - 1);
        w[i] = format!("{}x", w[i]);
    }
    w.join(" ")
}

/// Every document in a prepared folder's shards, decoded (end-of-text stripped).
fn decoded_docs(dir: &Path, split: &str) -> Vec<String> {
    let tk = TextTokenizer::load(&dir.join("tokenizer.json")).unwrap();
    let shard = TokenShard::open(&dir.join(format!("{split}.bin"))).unwrap();
    let eos = tk.eos_id();
    (0..shard.num_docs())
        .map(|d| {
            let (a, b) = (shard.doc_offset(d) as usize, shard.doc_offset(d + 1) as usize);
            let mut ids = Vec::new();
            shard.read_into(a, b - a, &mut ids);
            if ids.last().copied() == eos {
                ids.pop();
            }
            tk.decode(&ids).unwrap()
        })
        .collect()
}

fn cfg() -> DataConfig {
    DataConfig {
        vocab_size: 600,
        doc_mode: DocMode::Paragraph,
        val_fraction: 0.1,
        test_fraction: 0.1,
        ..Default::default()
    }
}

fn prepare(c: &DataConfig, inputs: &[PathBuf], out: &Path) -> lmforge::Result<Value> {
    corpus::prepare(c, inputs, out, None, ProgressMode::Off)
}

#[test]
fn duplicates_and_junk_are_removed_and_originals_survive_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let originals = distinct_docs(200, 300, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut paragraphs: Vec<String> = originals.clone();
    paragraphs.extend(originals[..40].iter().cloned()); // exact duplicates
    for o in &originals[40..80] {
        paragraphs.push(tweak(o, 2, &mut rng)); // near duplicates, Jaccard ~0.97
    }
    let junk = [
        ("too_short", "Hi."),
        ("too_long", &"long ".repeat(3000)),
        ("too_few_words", "Supercalifragilistic"),
        ("too_many_words", &"the and of to ".repeat(300)),
        ("non_alpha", "#### $$$$ 1234 5678 !!!! ???? %%%%"),
        ("duplicate_lines", "the same line and\nthe same line and\nthe same line and\nother words and"),
        ("mean_word_length", "the a b c d e f g h and"),
        ("no_stop_words", "Quick brown foxes jump over lazy dogs"),
    ];
    for (_, j) in &junk {
        paragraphs.push(j.to_string());
    }
    std::fs::create_dir(tmp.path().join("in")).unwrap();
    std::fs::write(tmp.path().join("in/a.txt"), paragraphs.join("\n\n")).unwrap();
    // JSONL, gzip-compressed, with a record lacking the text field, a broken line and
    // invalid UTF-8 (dropped by policy below).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"{\"text\": \"the and that one more original document with several words here\"}\n").unwrap();
    gz.write_all(b"{\"title\": \"no text\"}\n{not json\n").unwrap();
    gz.write_all(b"{\"text\": \"bad \xff bytes and the words\"}\n").unwrap();
    std::fs::write(tmp.path().join("in/b.jsonl.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(tmp.path().join("in/c.txt"), b"text\0with a NUL byte and the rest").unwrap();
    std::fs::write(tmp.path().join("in/empty.txt"), b"").unwrap();
    std::fs::write(tmp.path().join("in/blank.txt"), b"   \n\n \n").unwrap();

    let c = DataConfig {
        min_chars: 5,
        max_chars: 10_000,
        min_words: 2,
        max_words: 1000,
        max_non_alpha_frac: 0.3,
        max_dup_line_frac: 0.3,
        min_mean_word_len: 2.5,
        max_mean_word_len: 12.0,
        min_stop_words: 2,
        invalid_utf8: InvalidUtf8::Drop,
        ..cfg()
    };
    let out = tmp.path().join("out");
    let m = prepare(&c, &[tmp.path().join("in")], &out).unwrap();
    let counts = &m["counts"];
    assert_eq!(counts["exact_duplicates"], 40, "every exact duplicate removed");
    let near = counts["near_duplicates"].as_u64().unwrap();
    assert!(near >= 36, "near-duplicate recall {near}/40 < 0.9");
    for (reason, _) in junk {
        assert_eq!(counts["rejected"][reason], 1, "{reason}: {}", counts["rejected"]);
    }
    for reason in ["bad_json", "invalid_utf8", "binary_file"] {
        assert!(counts["rejected"][reason].as_u64().unwrap() >= 1, "{reason}");
    }
    // No false merges: every original (and the JSONL one) survives, decoded exactly.
    let mut all: Vec<String> = Vec::new();
    for s in corpus::SPLITS {
        all.extend(decoded_docs(&out, s));
    }
    let set: HashSet<&str> = all.iter().map(String::as_str).collect();
    for (i, o) in originals.iter().enumerate() {
        assert!(set.contains(o.as_str()), "original {i} lost or altered");
    }
    assert!(set.contains("the and that one more original document with several words here"));
    assert_eq!(all.len() as u64, counts["documents_out"].as_u64().unwrap());
    assert_eq!(counts["documents_out"].as_u64().unwrap(), 201 + (40 - near));
    let samples = std::fs::read_to_string(out.join("rejected.sample.jsonl")).unwrap();
    assert!(samples.lines().any(|l| l.contains("\"non_alpha\"")));
    for k in ["documents_in", "documents_out"] {
        assert!(counts[k].as_u64().unwrap() > 0);
    }
    assert!(m["inputs"].as_array().unwrap().iter().all(|i| i["sha256"].as_str().unwrap().len() == 64));
}

#[test]
fn splits_are_stable_and_adding_documents_moves_none() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = distinct_docs(300, 40, 3);
    let a = tmp.path().join("a.txt");
    std::fs::write(&a, docs.join("\n\n")).unwrap();
    let c = DataConfig { tokenizer: PathBuf::new(), ..cfg() };
    let (o1, o2, o3) = (tmp.path().join("o1"), tmp.path().join("o2"), tmp.path().join("o3"));
    prepare(&c, std::slice::from_ref(&a), &o1).unwrap();
    prepare(&c, std::slice::from_ref(&a), &o2).unwrap();
    for f in ["train.bin", "val.bin", "test.bin", "tokenizer.json"] {
        assert_eq!(std::fs::read(o1.join(f)).unwrap(), std::fs::read(o2.join(f)).unwrap(), "{f} differs between runs");
    }
    let b = tmp.path().join("b.txt");
    std::fs::write(&b, distinct_docs(100, 40, 4).join("\n\n")).unwrap();
    // Reuse the first tokenizer so decoded texts compare across runs.
    let c3 = DataConfig { tokenizer: o1.join("tokenizer.json"), ..cfg() };
    prepare(&c3, &[a, b], &o3).unwrap();
    for split in corpus::SPLITS {
        let before: HashSet<String> = decoded_docs(&o1, split).into_iter().collect();
        let after: HashSet<String> = decoded_docs(&o3, split).into_iter().collect();
        assert!(!before.is_empty() || split != "train");
        assert!(before.is_subset(&after), "{split}: a document moved");
    }
}

#[test]
fn hostile_inputs_give_clear_errors_or_counted_rejections() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // A missing path is an error naming it.
    let e = prepare(&cfg(), &[tmp.path().join("nope.txt")], &out).unwrap_err().to_string();
    assert!(e.contains("nope.txt"), "{e}");
    // Nothing usable: a clear error, and no output folder left behind.
    let junk = tmp.path().join("junk.txt");
    std::fs::write(&junk, b"\0\x01\x02binary").unwrap();
    let e = prepare(&DataConfig { doc_mode: DocMode::File, ..cfg() }, &[junk], &out).unwrap_err().to_string();
    assert!(e.contains("no training documents survived"), "{e}");
    assert!(!out.exists(), "a failed run leaves no folder");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "no temporary folders left");
    // A 100 MB single line is read and rejected as too long, not a crash.
    let big = tmp.path().join("big.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let chunk = "word ".repeat(20_000);
        for _ in 0..1000 {
            f.write_all(chunk.as_bytes()).unwrap();
        }
        f.write_all(b"\nthe and that a normal line with words\n").unwrap();
    }
    let c = DataConfig { doc_mode: DocMode::Line, val_fraction: 0.0, test_fraction: 0.0, vocab_size: 300, ..cfg() };
    let m = prepare(&c, &[big], &out).unwrap();
    assert_eq!(m["counts"]["rejected"]["too_long"], 1);
    assert_eq!(m["counts"]["documents_out"], 1);
}

#[test]
fn shards_round_trip_the_normalised_text_and_zstd_inputs_read() {
    let tmp = tempfile::tempdir().unwrap();
    let text = "Caf\u{65}\u{301} na\u{ef}ve \u{1F980} tabs\there\r\nand \u{2003}spaces   \n\n\n\nnext para";
    let zst = tmp.path().join("t.txt.zst");
    // ruzstd's encoder writes a valid frame; the reader must decode it.
    let compressed = ruzstd::encoding::compress_to_vec(text.as_bytes(), ruzstd::encoding::CompressionLevel::Fastest);
    std::fs::write(&zst, compressed).unwrap();
    let c = DataConfig { doc_mode: DocMode::File, val_fraction: 0.0, test_fraction: 0.0, vocab_size: 300, ..cfg() };
    let out = tmp.path().join("o");
    prepare(&c, &[zst], &out).unwrap();
    let docs = decoded_docs(&out, "train");
    let want = lmforge::corpus::clean::normalize(text, lmforge::corpus::clean::Normalization::Nfc);
    assert_eq!(docs, vec![want.clone()]);
    assert_eq!(want, "Caf\u{e9} na\u{ef}ve \u{1F980} tabs\there\nand  spaces\n\nnext para");
}
