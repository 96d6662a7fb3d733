//! The data pipeline on real Chinese text (`tests/data/multilingual/`, made by
//! `scripts/make_multilingual_data.py` from this machine's zh_CN / zh_TW manual pages, message catalogues and
//! AppStream metadata; its PROVENANCE.md says how): documents pass the default quality filters,
//! near-duplicates with a few characters changed are found (character shingles) without merging
//! distinct documents, and sentences end at `。！？`.

use lmforge::corpus::clean::{check, normalize, Normalization};
use lmforge::corpus::config::DataConfig;
use lmforge::corpus::dedup::LshIndex;
use lmforge::corpus::units::{ends_sentence, is_unspaced, sentences};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

fn docs(name: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/multilingual").join(name);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string())
        .map(|t| normalize(&t, Normalization::Nfc))
        .collect()
}

#[test]
fn chinese_documents_pass_the_default_filters() {
    let zh = docs("zh_docs.jsonl");
    assert!(zh.len() >= 10, "{} documents", zh.len());
    let filters = DataConfig::default().filters();
    for (i, d) in zh.iter().enumerate() {
        assert_eq!(check(d, &filters), None, "document {i}: {}", d.chars().take(80).collect::<String>());
    }
    // Gopher's English settings (a mean word length of 3–10, two stop words) are the English
    // ones: Chinese has no spaced words to measure, and no English stop words.
    let english = lmforge::corpus::clean::Filters { min_mean_word_len: 3.0, max_mean_word_len: 10.0, ..filters };
    assert!(zh.iter().all(|d| check(d, &english).is_none()));
}

/// `doc` with `n` of its Han characters replaced by other Han characters (seeded).
fn perturbed(doc: &str, n: usize, rng: &mut ChaCha8Rng) -> String {
    let mut chars: Vec<char> = doc.chars().collect();
    let han: Vec<usize> = (0..chars.len()).filter(|&i| is_unspaced(chars[i])).collect();
    for _ in 0..n {
        let at = han[rng.random_range(0..han.len())];
        chars[at] = char::from_u32(rng.random_range(0x4E00..0x9FA5)).unwrap();
    }
    chars.into_iter().collect()
}

#[test]
fn chinese_near_duplicates_are_found_and_distinct_documents_kept() {
    let zh = docs("zh_docs.jsonl");
    let cfg = DataConfig::default();
    let minhash = cfg.minhasher();
    let mut index = LshIndex::new(cfg.minhash_perms, cfg.near_dup_threshold, cfg.lsh_bands);
    // The originals, in order: none is a near duplicate of another (exact repeats aside).
    let mut false_merges = Vec::new();
    for (i, d) in zh.iter().enumerate() {
        if let Some(j) = index.check_and_insert(&minhash.signature(d)) {
            false_merges.push((i, j));
        }
    }
    assert!(false_merges.is_empty(), "distinct documents merged: {false_merges:?}");
    // Copies with three characters changed: each should find its original.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let found = zh
        .iter()
        .enumerate()
        .filter(|(i, d)| index.check_and_insert(&minhash.signature(&perturbed(d, 3, &mut rng))) == Some(*i as u32))
        .count();
    let recall = found as f64 / zh.len() as f64;
    assert!(recall >= 0.9, "near-duplicate recall {recall:.3} ({found} of {})", zh.len());
}

#[test]
fn chinese_sentences_end_at_ideographic_stops() {
    let zh = docs("zh_docs.jsonl");
    let mut split = 0;
    for d in &zh {
        let s = sentences(d);
        assert_eq!(s.concat(), *d, "sentences cover the text");
        for piece in &s[..s.len() - 1] {
            assert!(ends_sentence(piece), "{piece:?}");
        }
        split += s.iter().filter(|p| p.trim_end().ends_with('。')).count();
    }
    assert!(split >= zh.len(), "{split} sentences ending in 。 over {} documents", zh.len());
    assert_eq!(sentences("第一句。第二句！第三句？尾"), ["第一句。", "第二句！", "第三句？", "尾"]);
    assert_eq!(sentences("He said \"no.\" Then left."), ["He said \"no.\" ", "Then left."]);
}

/// whatlang on the labelled paragraphs of translated manual pages: accuracy ≥ 0.95 overall.
#[test]
fn language_identification_is_accurate_on_the_labelled_sample() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/multilingual/langid.jsonl");
    let mut per: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let (lang, text) = (row["lang"].as_str().unwrap(), row["text"].as_str().unwrap());
        let e = per.entry(lang.to_string()).or_default();
        e.0 += 1;
        e.1 += (lmforge::corpus::langid::detect(text) == lang) as usize;
    }
    let (n, right) = per.values().fold((0, 0), |a, v| (a.0 + v.0, a.1 + v.1));
    let table: Vec<String> = per.iter().map(|(l, (n, r))| format!("{l} {r}/{n}")).collect();
    eprintln!("language ID: {right}/{n} = {:.4} ({})", right as f64 / n as f64, table.join(", "));
    assert!(per.len() >= 10, "{table:?}");
    assert!(right as f64 / n as f64 >= 0.95, "accuracy {right}/{n}: {table:?}");
}

/// Chinese and English documents through `data prepare`: per-language counts and bytes in the
/// manifest, and `data.languages` keeping one of them.
#[test]
fn prepare_counts_languages_and_keeps_the_chosen_ones() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/multilingual");
    let tmp = tempfile::tempdir().unwrap();
    let inputs = [dir.join("zh_docs.jsonl"), dir.join("en_docs.jsonl")];
    let (zh, en) = (docs("zh_docs.jsonl").len() as u64, docs("en_docs.jsonl").len() as u64);
    let base = DataConfig { vocab_size: 2000, val_fraction: 0.1, ..Default::default() };
    let prepare = |c: &DataConfig, out: &str| {
        lmforge::corpus::prepare(c, &inputs, &tmp.path().join(out), None, lmforge::progress::ProgressMode::Off).unwrap()
    };
    let m = prepare(&DataConfig { language_id: true, ..base.clone() }, "all");
    let langs = &m["counts"]["languages"];
    assert_eq!(langs["zh"]["documents"].as_u64(), Some(zh), "{langs}");
    assert_eq!(langs["en"]["documents"].as_u64(), Some(en), "{langs}");
    let bytes: u64 = langs.as_object().unwrap().values().map(|v| v["bytes"].as_u64().unwrap()).sum();
    assert_eq!(Some(bytes), m["counts"]["bytes_out"].as_u64());

    let m = prepare(&DataConfig { languages: vec!["zh".into()], ..base.clone() }, "zh");
    assert_eq!(m["counts"]["rejected"]["language"].as_u64(), Some(en));
    assert_eq!(m["counts"]["documents_out"].as_u64(), Some(zh));
    let e = DataConfig { languages: vec!["klingon".into()], ..base }.validate().unwrap_err().to_string();
    assert!(e.contains("data.languages") && e.contains("klingon"), "{e}");
}

/// Gopher's stop-word rule per language: the labelled paragraphs of languages with a list pass
/// with their own stop words and mostly fail with English ones; Chinese counts 的 / 是 / … per
/// character. `[data.language_filters.LANG]` thresholds apply to that language alone.
#[test]
fn stop_words_and_thresholds_follow_the_language() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/multilingual/langid.jsonl");
    let cfg = DataConfig { min_stop_words: 2, ..Default::default() };
    let (mut own, mut english, mut n) = (0, 0, 0);
    let mut per: std::collections::BTreeMap<String, (usize, usize, usize)> = Default::default();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        let (lang, text) =
            (row["lang"].as_str().unwrap(), normalize(row["text"].as_str().unwrap(), Normalization::Nfc));
        if lang == "en" || lmforge::corpus::stopwords::of(lang).is_none() || text.chars().count() < 100 {
            continue;
        }
        let e = per.entry(lang.to_string()).or_default();
        e.0 += 1;
        n += 1;
        if check(&text, &cfg.filters_for(lang)) != Some("no_stop_words") {
            own += 1;
            e.1 += 1;
        }
        if check(&text, &cfg.filters()) != Some("no_stop_words") {
            english += 1;
            e.2 += 1;
        }
    }
    let table: Vec<String> = per.iter().map(|(l, (n, o, e))| format!("{l} {o}/{e}/{n}")).collect();
    eprintln!("stop-word rule, own list / English list / paragraphs of 100+ characters: {}", table.join(", "));
    assert!(per.len() >= 8, "{table:?}");
    assert!(own as f64 >= 0.9 * n as f64, "own lists pass {own} of {n}: {table:?}");
    assert!((english as f64) < 0.5 * n as f64, "English list passes {english} of {n}: {table:?}");

    let zh = docs("zh_docs.jsonl");
    let zh_pass = zh.iter().filter(|d| check(d, &cfg.filters_for("zh")).is_none()).count();
    eprintln!("Chinese documents passing with min_stop_words = 2: {zh_pass} of {}", zh.len());
    assert!(zh_pass as f64 >= 0.9 * zh.len() as f64);

    let toml = "min_chars = 10\n[language_filters.zh]\nmin_chars = 100000\n[language_filters.de]\nmin_stop_words = 0\n";
    let c: DataConfig = toml::from_str(toml).unwrap();
    c.validate().unwrap();
    assert_eq!((c.filters_for("zh").min_chars, c.filters_for("en").min_chars), (100000, 10));
    assert_eq!(c.filters_for("ko").min_stop_words, 0, "no Korean list: not held to the rule");
    let bad: DataConfig = toml::from_str("[language_filters.xx]\nmin_chars = 1\n").unwrap();
    assert!(bad.validate().unwrap_err().to_string().contains("data.language_filters.xx"));
    let bad: DataConfig = toml::from_str("[language_filters.ko]\nmin_stop_words = 2\n").unwrap();
    assert!(bad.validate().unwrap_err().to_string().contains("data.language_filters.ko.min_stop_words"));
    assert!(toml::from_str::<DataConfig>("[language_filters.zh]\nmin_char = 1\n").is_err(), "unknown key");
}
