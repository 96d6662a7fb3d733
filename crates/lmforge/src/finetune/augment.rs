//! Training-row augmentation for text classification and regression (`[data.augment]`):
//! EDA (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance on
//! Text Classification Tasks"). Each training row gets `copies` augmented copies, each made by
//! one operation drawn among the enabled ones, as EDA makes its sentences per technique:
//! - `swap` (α): n = max(1, round(α·words)) swaps of two random word positions;
//! - `delete` (p): each word deleted with probability p, never all of them;
//! - `insert` (α): n words of the same sentence inserted at random positions (EDA inserts a
//!   synonym of one; this issue asks for a word of the same sentence, which needs no lexicon);
//! - `synonym` (α): n distinct words (not stop words) with WordNet synonyms each replaced by a
//!   random synonym, every occurrence — WordNet 3.0's database as Debian's `wordnet-base`
//!   installs it (`data.noun`, `data.verb`, `data.adj`, `data.adv`).
//!
//! Words are whitespace-separated (punctuation and case kept). A copy depends only on
//! (`train.seed`, row, copy): its generator is seeded from them, so the same config gives the
//! same rows and a resumed run rebuilds exactly the training set it stopped on. Validation and
//! test rows are never augmented.

use super::dataset::Example;
use crate::error::{Error, Result};
use crate::nn::seed_for;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// `[data.augment]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Augmented copies per training row; 0: off.
    pub copies: usize,
    pub swap: f64,
    pub delete: f64,
    pub insert: f64,
    pub synonym: f64,
    /// The WordNet database folder (synonym replacement only).
    pub wordnet: PathBuf,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self { copies: 0, swap: 0.1, delete: 0.1, insert: 0.1, synonym: 0.1, wordnet: "/usr/share/wordnet".into() }
    }
}

impl AugmentConfig {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Range checks (`data.augment.*`).
    pub fn validate(&self) -> Result<()> {
        for (key, v) in
            [("swap", self.swap), ("delete", self.delete), ("insert", self.insert), ("synonym", self.synonym)]
        {
            crate::config::check((0.0..=1.0).contains(&v), &format!("data.augment.{key}"), v, "0 ..= 1")?;
        }
        if self.copies > 0 && self.ops().is_empty() {
            return Err(Error::config("data.augment.copies", "> 0 but every operation's rate is 0"));
        }
        crate::config::check(self.copies <= 64, "data.augment.copies", self.copies, "0 ..= 64")
    }

    fn ops(&self) -> Vec<Op> {
        [(Op::Swap, self.swap), (Op::Delete, self.delete), (Op::Insert, self.insert), (Op::Synonym, self.synonym)]
            .into_iter()
            .filter(|(_, r)| *r > 0.0)
            .map(|(o, _)| o)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Swap,
    Delete,
    Insert,
    Synonym,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Swap => "swap",
            Op::Delete => "delete",
            Op::Insert => "insert",
            Op::Synonym => "synonym",
        }
    }
}

/// Words synonymous with a word (lowercase), from WordNet's synsets.
#[derive(Debug, Default)]
pub struct Synonyms {
    map: HashMap<String, Vec<String>>,
}

impl Synonyms {
    /// Reads `data.{noun,verb,adj,adv}` of a WordNet 3.0 database folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let files: Vec<PathBuf> = ["data.noun", "data.verb", "data.adj", "data.adv"]
            .iter()
            .map(|f| dir.join(f))
            .filter(|p| p.is_file())
            .collect();
        if files.is_empty() {
            return Err(Error::config(
                "data.augment.wordnet",
                format!(
                    "{} has no WordNet database (data.noun, data.verb, data.adj, data.adv): install it with \
                     `apt install wordnet-base`, point the key at one, or set data.augment.synonym = 0",
                    dir.display()
                ),
            ));
        }
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| Error::io(&f, e))?;
            for (i, line) in text.lines().enumerate() {
                // The licence header's lines start with two spaces.
                if line.starts_with("  ") || line.trim().is_empty() {
                    continue;
                }
                let words = synset_words(line)
                    .ok_or_else(|| Error::format(&f, format!("line {}: not a WordNet synset line", i + 1)))?;
                for w in &words {
                    let entry = map.entry(w.to_lowercase()).or_default();
                    for other in words.iter().filter(|o| !o.eq_ignore_ascii_case(w)) {
                        if !entry.contains(other) {
                            entry.push(other.clone());
                        }
                    }
                }
            }
        }
        map.retain(|_, v| !v.is_empty());
        Ok(Self { map })
    }

    pub fn of(&self, word: &str) -> &[String] {
        self.map.get(&word.to_lowercase()).map_or(&[], Vec::as_slice)
    }

    /// Words that have at least one synonym.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The lemmas of a synset line: `offset lex_filenum ss_type w_cnt (word lex_id)×w_cnt ...`, with
/// w_cnt in hex, `_` for spaces and adjective markers such as `(a)` stripped.
fn synset_words(line: &str) -> Option<Vec<String>> {
    let mut f = line.split(' ');
    let (_offset, _lex, _ty) = (f.next()?, f.next()?, f.next()?);
    let n = usize::from_str_radix(f.next()?, 16).ok()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let word = f.next()?;
        f.next()?; // lex_id
        let word = word.split_once('(').map_or(word, |(w, _)| w);
        out.push(word.replace('_', " "));
    }
    Some(out)
}

/// Words synonym replacement leaves alone (EDA skips stop words).
const STOP: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "if", "of", "at", "by", "for", "with", "about", "to", "from", "in", "on",
    "is", "are", "was", "were", "be", "been", "am", "it", "its", "this", "that", "these", "those", "i", "me", "my",
    "we", "our", "you", "your", "he", "him", "his", "she", "her", "they", "them", "their", "what", "which", "who",
    "not", "no", "so", "as", "do", "does", "did", "have", "has", "had", "very", "too", "can", "will", "just",
];

/// What augmentation added, for `results.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AugmentReport {
    pub copies: usize,
    pub rows_added: usize,
    /// Rows made by each operation.
    pub by_operation: BTreeMap<&'static str, usize>,
    /// Words with WordNet synonyms (0 when synonym replacement is off).
    pub wordnet_words: usize,
}

/// `rows` followed by `copies` augmented copies of each (row order, then copy order).
pub fn augment(rows: Vec<Example>, cfg: &AugmentConfig, seed: u64) -> Result<(Vec<Example>, AugmentReport)> {
    let mut report = AugmentReport { copies: cfg.copies, ..Default::default() };
    if cfg.copies == 0 {
        return Ok((rows, report));
    }
    let ops = cfg.ops();
    let synonyms = if cfg.synonym > 0.0 { Synonyms::load(&cfg.wordnet)? } else { Synonyms::default() };
    report.wordnet_words = synonyms.len();
    let mut out = Vec::with_capacity(rows.len() * (cfg.copies + 1));
    let mut added = Vec::with_capacity(rows.len() * cfg.copies);
    for (i, row) in rows.iter().enumerate() {
        for c in 0..cfg.copies {
            let mut rng = ChaCha8Rng::seed_from_u64(seed_for(seed, &format!("finetune/augment/{i}/{c}")));
            let op = *ops.choose(&mut rng).expect("at least one operation");
            let text = apply(op, &row.text, cfg, &synonyms, &mut rng);
            let pair = row.pair.as_deref().map(|p| apply(op, p, cfg, &synonyms, &mut rng));
            *report.by_operation.entry(op.name()).or_insert(0) += 1;
            added.push(Example { text, pair, ..row.clone() });
        }
    }
    out.extend(rows);
    report.rows_added = added.len();
    out.extend(added);
    Ok((out, report))
}

fn apply(op: Op, text: &str, cfg: &AugmentConfig, synonyms: &Synonyms, rng: &mut ChaCha8Rng) -> String {
    let mut words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    if words.is_empty() {
        return text.to_string();
    }
    let n = |alpha: f64| ((alpha * words.len() as f64).round() as usize).max(1);
    match op {
        Op::Swap => {
            for _ in 0..n(cfg.swap) {
                let (a, b) = (rng.random_range(0..words.len()), rng.random_range(0..words.len()));
                words.swap(a, b);
            }
        }
        Op::Delete => {
            if words.len() > 1 {
                let keep: Vec<bool> = words.iter().map(|_| !rng.random_bool(cfg.delete)).collect();
                if keep.iter().any(|&k| k) {
                    words = words.into_iter().zip(keep).filter(|(_, k)| *k).map(|(w, _)| w).collect();
                } else {
                    words = vec![words[rng.random_range(0..words.len())].clone()];
                }
            }
        }
        Op::Insert => {
            for _ in 0..n(cfg.insert) {
                let w = words[rng.random_range(0..words.len())].clone();
                let at = rng.random_range(0..=words.len());
                words.insert(at, w);
            }
        }
        Op::Synonym => {
            let mut candidates: Vec<String> = words
                .iter()
                .map(|w| w.to_lowercase())
                .filter(|w| !STOP.contains(&w.as_str()) && !synonyms.of(w).is_empty())
                .collect();
            candidates.sort();
            candidates.dedup();
            candidates.shuffle(rng);
            for target in candidates.into_iter().take(n(cfg.synonym)) {
                let with = synonyms.of(&target).choose(rng).expect("non-empty").clone();
                for w in words.iter_mut().filter(|w| w.to_lowercase() == target) {
                    *w = with.clone();
                }
            }
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mini() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/wordnet-mini")
    }

    fn row(text: &str) -> Example {
        Example { line: 2, text: text.into(), pair: None, label: Some(1), value: None }
    }

    fn only(op: &str, rate: f64) -> AugmentConfig {
        let mut c = AugmentConfig { copies: 1, swap: 0.0, delete: 0.0, insert: 0.0, synonym: 0.0, wordnet: mini() };
        match op {
            "swap" => c.swap = rate,
            "delete" => c.delete = rate,
            "insert" => c.insert = rate,
            _ => c.synonym = rate,
        }
        c
    }

    fn sorted(s: &str) -> Vec<&str> {
        let mut w: Vec<&str> = s.split_whitespace().collect();
        w.sort();
        w
    }

    #[test]
    fn wordnet_synsets_give_synonyms() {
        let s = Synonyms::load(&mini()).unwrap();
        assert_eq!(s.of("movie"), ["film", "picture", "moving picture"]);
        assert_eq!(s.of("Film"), ["movie", "picture", "moving picture"]);
        assert!(s.of("great").contains(&"outstanding".to_string()), "adjective markers stripped: {:?}", s.of("great"));
        assert!(s.of("zzz").is_empty());
        let e = Synonyms::load(Path::new("/nonexistent")).unwrap_err().to_string();
        assert!(e.contains("data.augment.wordnet") && e.contains("wordnet-base"), "{e}");
        assert_eq!(
            synset_words("00001740 03 n 02 entity 0 thing 0 000 | that which is"),
            Some(vec!["entity".into(), "thing".into()])
        );
        assert_eq!(synset_words("garbage"), None);
    }

    /// Debian's database where installed (`apt install wordnet-base`): the parser reads it whole.
    #[test]
    fn the_installed_wordnet_parses() {
        let dir = Path::new("/usr/share/wordnet");
        if !dir.join("data.noun").is_file() {
            eprintln!("skipped: no WordNet at {} (apt install wordnet-base)", dir.display());
            return;
        }
        let s = Synonyms::load(dir).unwrap();
        eprintln!("WordNet: {} words with synonyms; movie → {:?}", s.len(), s.of("movie"));
        assert!(s.len() > 50_000, "{}", s.len());
        assert!(s.of("movie").contains(&"film".to_string()));
        assert!(s.of("good").contains(&"well".to_string()));
    }

    #[test]
    fn each_operation_does_what_it_says() {
        let text = "the movie was a great film and the plot was good";
        let syn = Synonyms::load(&mini()).unwrap();
        for seed in 0..20u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let swapped = apply(Op::Swap, text, &only("swap", 0.2), &syn, &mut rng);
            assert_eq!(sorted(&swapped), sorted(text), "a swap keeps the words");
            let deleted = apply(Op::Delete, text, &only("delete", 0.3), &syn, &mut rng);
            let n = deleted.split_whitespace().count();
            assert!((1..=11).contains(&n) && deleted.split_whitespace().all(|w| text.contains(w)));
            let inserted = apply(Op::Insert, text, &only("insert", 0.2), &syn, &mut rng);
            assert_eq!(inserted.split_whitespace().count(), 13, "round(0.2 × 11) = 2 words inserted");
            assert!(inserted.split_whitespace().all(|w| text.split_whitespace().any(|t| t == w)));
            let replaced = apply(Op::Synonym, text, &only("synonym", 0.1), &syn, &mut rng);
            assert_ne!(replaced, text);
            assert!(replaced.starts_with("the "), "stop words stay: {replaced}");
        }
        // Deleting everything still leaves a word; one word is never deleted.
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(apply(Op::Delete, "alone", &only("delete", 1.0), &syn, &mut rng), "alone");
        assert_eq!(apply(Op::Delete, "a b c", &only("delete", 1.0), &syn, &mut rng).split_whitespace().count(), 1);
    }

    #[test]
    fn copies_depend_only_on_seed_row_and_copy() {
        let rows = vec![row("the movie was great"), row("a bad film with a poor plot"), row("fine")];
        let cfg = AugmentConfig { copies: 3, wordnet: mini(), ..Default::default() };
        let (a, report) = augment(rows.clone(), &cfg, 5).unwrap();
        assert_eq!(a.len(), 12);
        assert_eq!(&a[..3], &rows[..], "originals first, unchanged");
        assert_eq!((report.rows_added, report.by_operation.values().sum::<usize>()), (9, 9));
        assert!(a[3..].iter().all(|e| e.label == Some(1) && e.line == 2));
        assert_eq!(augment(rows.clone(), &cfg, 5).unwrap().0, a, "same seed, same rows");
        assert_ne!(augment(rows.clone(), &cfg, 6).unwrap().0, a);
        // Row 0's copies do not change when other rows are added.
        let (b, _) = augment(vec![rows[0].clone()], &cfg, 5).unwrap();
        assert_eq!(b[1..4], a[3..6]);
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad = AugmentConfig { copies: 1, swap: 1.5, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("data.augment.swap"));
        let none = AugmentConfig { copies: 1, swap: 0.0, delete: 0.0, insert: 0.0, synonym: 0.0, ..Default::default() };
        assert!(none.validate().unwrap_err().to_string().contains("data.augment.copies"));
        let cfg = AugmentConfig { copies: 1, wordnet: "/nonexistent".into(), ..Default::default() };
        assert!(augment(vec![row("x y")], &cfg, 0).unwrap_err().to_string().contains("apt install wordnet-base"));
    }
}
