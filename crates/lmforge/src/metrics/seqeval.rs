//! Entity-level metrics of tag sequences (named-entity recognition, chunking), exactly as
//! Python's `seqeval` computes them in its default mode, the CoNLL `conlleval` rules that
//! Hugging Face's `run_ner.py` reports: a tag is a prefix letter and a type (`B-PER`, `I-PER`,
//! `E-PER`, `S-PER`, `O`), so BIO, IOB1 and BIOES sequences are all read; an entity starts and
//! ends where [`start_of_chunk`] / [`end_of_chunk`] say (an `I-` after `O` starts one, a type
//! change ends one). Precision, recall and F1 are per entity type, micro-averaged (the headline
//! `f1`), macro- and support-weighted averaged, with zero where a denominator is zero; token
//! accuracy is the share of tags equal to the gold ones. Sums run in numpy's order
//! ([`numpy_sum`]) so the figures are bit-for-bit seqeval's (checked against the package in
//! `tests/data/seqeval.json`).

use super::{ratio, Prf};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// An entity: its type and its first and last position (inclusive) in the flattened sequence.
pub type Entity = (String, usize, usize);

/// A tag's prefix letter and type, as seqeval splits it: `B-PER` → (`B`, `PER`), `O` → (`O`,
/// `_`), `B` → (`B`, `_`).
fn split_tag(tag: &str) -> (char, &str) {
    let mut chars = tag.chars();
    let first = chars.next().unwrap_or('O');
    let rest = chars.as_str();
    let kind = rest.split_once('-').map_or(rest, |(_, k)| k);
    (first, if kind.is_empty() { "_" } else { kind })
}

/// Whether an entity ended just before a tag `tag` of type `kind` that follows `prev`.
fn end_of_chunk(prev: char, tag: char, prev_kind: &str, kind: &str) -> bool {
    matches!(prev, 'E' | 'S')
        || (matches!(prev, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev != 'O' && prev != '.' && prev_kind != kind)
}

/// Whether an entity starts at a tag `tag` of type `kind` that follows `prev`.
fn start_of_chunk(prev: char, tag: char, prev_kind: &str, kind: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_kind != kind)
}

/// The entities of sentences, as seqeval's `get_entities` over a list of sentences: the
/// sentences are joined with an `O` after each, positions count over the joined sequence.
pub fn entities<S: AsRef<str>>(sentences: &[Vec<S>]) -> Vec<Entity> {
    let mut out = Vec::new();
    let (mut prev, mut prev_kind, mut begin) = ('O', "_".to_string(), 0usize);
    let mut i = 0usize;
    let mut visit = |tag: &str, i: usize, out: &mut Vec<Entity>| {
        let (t, kind) = split_tag(tag);
        if end_of_chunk(prev, t, &prev_kind, kind) {
            out.push((prev_kind.clone(), begin, i - 1));
        }
        if start_of_chunk(prev, t, &prev_kind, kind) {
            begin = i;
        }
        prev = t;
        prev_kind = kind.to_string();
    };
    for sentence in sentences {
        for tag in sentence.iter().map(AsRef::as_ref).chain(["O"]) {
            visit(tag, i, &mut out);
            i += 1;
        }
    }
    // seqeval appends one more `O` to close an entity at the very end (already closed here by
    // each sentence's own `O`, so this never adds one unless there were no sentences).
    visit("O", i, &mut out);
    out
}

/// numpy's `np.add.reduce` of a float64 vector: pairwise summation in blocks of 8 (so a mean
/// or weighted average here rounds as seqeval's).
pub fn numpy_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &x| s + x)
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum(&a[..n2]) + numpy_sum(&a[n2..])
    }
}

/// One entity type's scores and its number of gold entities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityScore {
    #[serde(rename = "type")]
    pub kind: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
    /// Predicted entities of this type.
    pub predicted: u64,
}

/// seqeval's report over a set of sentences.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityMetrics {
    pub sentences: usize,
    pub tokens: usize,
    /// Share of tokens whose predicted tag equals the gold tag.
    pub accuracy: f64,
    /// Over all entities (seqeval's default `f1_score`, `run_ner.py`'s `overall_f1`).
    pub micro: Prf,
    #[serde(rename = "macro")]
    pub macro_avg: Prf,
    pub weighted: Prf,
    /// Per type, in name order; the types present in the gold or the predicted tags.
    pub per_type: Vec<EntityScore>,
}

/// The metric names early stopping and `eval` can select for token classification (besides
/// `loss`): `f1`, `precision`, `recall` are the micro averages.
pub const ENTITY_METRIC_NAMES: [&str; 10] = [
    "f1",
    "precision",
    "recall",
    "accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "weighted_f1",
    "weighted_precision",
    "weighted_recall",
];

/// F1 as seqeval writes it: (1 + β²)·P·R / (β²·P + R), β = 1, 0/0 → 0.
fn f1(p: f64, r: f64) -> f64 {
    let denom = 1.0 * p + r;
    let denom = if denom == 0.0 { 1.0 } else { denom };
    2.0 * p * r / denom
}

/// Entity metrics of predicted tags against gold tags, sentence by sentence. Panics when a
/// sentence's lengths differ (callers produce one prediction per gold tag).
pub fn entity_metrics<S: AsRef<str>, T: AsRef<str>>(gold: &[Vec<S>], pred: &[Vec<T>]) -> EntityMetrics {
    assert_eq!(gold.len(), pred.len(), "one predicted sentence per gold sentence");
    let (mut tokens, mut correct) = (0usize, 0u64);
    for (g, p) in gold.iter().zip(pred) {
        assert_eq!(g.len(), p.len(), "one predicted tag per gold tag");
        tokens += g.len();
        correct += g.iter().zip(p).filter(|(a, b)| a.as_ref() == b.as_ref()).count() as u64;
    }
    let by_type = |es: Vec<Entity>| {
        let mut m: BTreeMap<String, BTreeSet<(usize, usize)>> = BTreeMap::new();
        for (k, s, e) in es {
            m.entry(k).or_default().insert((s, e));
        }
        m
    };
    let (t, p) = (by_type(entities(gold)), by_type(entities(pred)));
    let empty = BTreeSet::new();
    let names: BTreeSet<&String> = t.keys().chain(p.keys()).collect();
    let mut per_type = Vec::with_capacity(names.len());
    let (mut tp_all, mut true_all, mut pred_all) = (0u64, 0u64, 0u64);
    for name in names {
        let (ts, ps) = (t.get(name).unwrap_or(&empty), p.get(name).unwrap_or(&empty));
        let tp = ts.intersection(ps).count() as u64;
        let (support, predicted) = (ts.len() as u64, ps.len() as u64);
        let (precision, recall) = (ratio(tp, predicted), ratio(tp, support));
        per_type.push(EntityScore {
            kind: name.clone(),
            precision,
            recall,
            f1: f1(precision, recall),
            support,
            predicted,
        });
        (tp_all, true_all, pred_all) = (tp_all + tp, true_all + support, pred_all + predicted);
    }
    let (mp, mr) = (ratio(tp_all, pred_all), ratio(tp_all, true_all));
    let n = per_type.len() as f64;
    let mean = |f: fn(&EntityScore) -> f64| {
        let v: Vec<f64> = per_type.iter().map(f).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            numpy_sum(&v) / n
        }
    };
    let weighted = |f: fn(&EntityScore) -> f64| {
        let v: Vec<f64> = per_type.iter().map(|s| f(s) * s.support as f64).collect();
        numpy_sum(&v) / true_all as f64
    };
    let macro_avg = Prf { precision: mean(|s| s.precision), recall: mean(|s| s.recall), f1: mean(|s| s.f1) };
    // seqeval's weighted average with no gold entity: all zero (its zero_division value).
    let weighted = if true_all == 0 {
        Prf { precision: 0.0, recall: 0.0, f1: 0.0 }
    } else {
        Prf { precision: weighted(|s| s.precision), recall: weighted(|s| s.recall), f1: weighted(|s| s.f1) }
    };
    // No entity on either side: seqeval's macro average of an empty list is NaN; 0 here.
    let macro_avg = if per_type.is_empty() { Prf { precision: 0.0, recall: 0.0, f1: 0.0 } } else { macro_avg };
    EntityMetrics {
        sentences: gold.len(),
        tokens,
        accuracy: ratio(correct, tokens as u64),
        micro: Prf { precision: mp, recall: mr, f1: f1(mp, mr) },
        macro_avg,
        weighted,
        per_type,
    }
}

impl EntityMetrics {
    /// A metric of [`ENTITY_METRIC_NAMES`] by name.
    pub fn get(&self, name: &str) -> Option<f64> {
        let (prf, field) = match name {
            "accuracy" => return Some(self.accuracy),
            "f1" | "precision" | "recall" => (self.micro, name),
            _ => {
                let (avg, field) = name.split_once('_')?;
                let prf = match avg {
                    "micro" => self.micro,
                    "macro" => self.macro_avg,
                    "weighted" => self.weighted,
                    _ => return None,
                };
                (prf, field)
            }
        };
        match field {
            "precision" => Some(prf.precision),
            "recall" => Some(prf.recall),
            "f1" => Some(prf.f1),
            _ => None,
        }
    }

    /// A plain-text report as seqeval's `classification_report`: per type, then the averages.
    pub fn table(&self) -> String {
        let width = self.per_type.iter().map(|c| c.kind.len()).max().unwrap_or(5).clamp(12, 24);
        let mut s =
            format!("sentences  {}\ntokens     {}\naccuracy   {:.4}\n", self.sentences, self.tokens, self.accuracy);
        s += &format!("{:<width$} {:>9} {:>9} {:>9} {:>8}\n", "type", "precision", "recall", "f1", "support");
        for c in &self.per_type {
            s += &format!("{:<width$} {:>9.4} {:>9.4} {:>9.4} {:>8}\n", c.kind, c.precision, c.recall, c.f1, c.support);
        }
        let support: u64 = self.per_type.iter().map(|c| c.support).sum();
        for (name, p) in [("micro avg", self.micro), ("macro avg", self.macro_avg), ("weighted avg", self.weighted)] {
            s += &format!("{name:<width$} {:>9.4} {:>9.4} {:>9.4} {support:>8}\n", p.precision, p.recall, p.f1);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(s: &str) -> Vec<&str> {
        s.split_whitespace().collect()
    }

    /// seqeval's README example: two of three gold entities found, one spurious.
    #[test]
    fn readme_example() {
        let gold = vec![tags("O O O B-MISC I-MISC I-MISC O"), tags("B-PER I-PER O")];
        let pred = vec![tags("O O B-MISC I-MISC I-MISC I-MISC O"), tags("B-PER I-PER O")];
        let m = entity_metrics(&gold, &pred);
        assert_eq!(m.micro.f1, 0.5);
        assert_eq!((m.micro.precision, m.micro.recall), (0.5, 0.5));
        assert_eq!(m.accuracy, 0.8);
        assert_eq!(m.per_type.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>(), ["MISC", "PER"]);
    }

    #[test]
    fn chunk_rules() {
        // An I- after O starts an entity; a type change ends one; BIOES singletons.
        assert_eq!(
            entities(&[tags("I-PER I-PER O I-LOC B-LOC")]),
            [("PER".to_string(), 0, 1), ("LOC".to_string(), 3, 3), ("LOC".to_string(), 4, 4)]
        );
        assert_eq!(
            entities(&[tags("S-PER B-ORG E-ORG O"), tags("B-X")]),
            [("PER".to_string(), 0, 0), ("ORG".to_string(), 1, 2), ("X".to_string(), 5, 5)]
        );
        assert_eq!(split_tag("B-PER-X"), ('B', "PER-X"));
        assert_eq!(split_tag("O"), ('O', "_"));
    }

    /// Every case of `tests/data/seqeval.json` (`scripts/make_seqeval_expected.py`: the
    /// `seqeval` package's own figures) reproduced bit for bit.
    #[test]
    fn equals_the_seqeval_package_exactly() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/seqeval.json");
        let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let sentences = |v: &serde_json::Value| -> Vec<Vec<String>> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect())
                .collect()
        };
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 15);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let (gold, pred) = (sentences(&case["gold"]), sentences(&case["pred"]));
            let want = &case["expected"];
            let m = entity_metrics(&gold, &pred);
            let got_entities: Vec<serde_json::Value> =
                entities(&gold).into_iter().map(|(k, s, e)| serde_json::json!([k, s, e])).collect();
            assert_eq!(&serde_json::Value::Array(got_entities), &want["gold_entities"], "{name}: entities");
            let f = |v: &serde_json::Value| v.as_f64().unwrap();
            assert_eq!(m.accuracy, f(&want["accuracy"]), "{name}: accuracy");
            assert_eq!(
                (m.micro.precision, m.micro.recall, m.micro.f1),
                (f(&want["precision"]), f(&want["recall"]), f(&want["f1"])),
                "{name}: micro"
            );
            let types = want["per_type"].as_object().unwrap();
            assert_eq!(m.per_type.len(), types.len(), "{name}: types");
            for t in &m.per_type {
                let w = &types[&t.kind];
                assert_eq!(
                    (t.precision, t.recall, t.f1, t.support),
                    (f(&w["precision"]), f(&w["recall"]), f(&w["f1-score"]), w["support"].as_u64().unwrap()),
                    "{name}: type {}",
                    t.kind
                );
            }
            let avgs = &want["averages"];
            for (avg, prf) in [("micro", m.micro), ("macro", m.macro_avg), ("weighted", m.weighted)] {
                if types.is_empty() && avg == "macro" {
                    continue; // seqeval: NaN (an average over no type); 0 here
                }
                let w = &avgs[avg];
                assert_eq!(
                    (prf.precision, prf.recall, prf.f1),
                    (f(&w["precision"]), f(&w["recall"]), f(&w["f1-score"])),
                    "{name}: {avg} average"
                );
            }
        }
    }

    #[test]
    fn numpy_pairwise_sum_order() {
        let v: Vec<f64> = (0..300).map(|i| 1.0 / (i as f64 + 1.0)).collect();
        let seq: f64 = v.iter().sum();
        assert!((numpy_sum(&v) - seq).abs() < 1e-12);
        assert_eq!(numpy_sum(&v[..5]), v[..5].iter().fold(0.0, |s, &x| s + x));
    }
}
