//! Text-generation metrics for `lmforge eval generation`, each ported from the implementation
//! whose numbers people publish, so that a score printed here can be compared with a paper's:
//!
//! | metric                    | reference implementation                               | scale               |
//! |---------------------------|--------------------------------------------------------|---------------------|
//! | BLEU                      | sacrebleu 2.x `corpus_bleu` / `sentence_bleu`, defaults | 0..100              |
//! | chrF                      | sacrebleu 2.x `corpus_chrf`, defaults                  | 0..100              |
//! | ROUGE-1, ROUGE-2, ROUGE-L | Google's `rouge-score` 0.1.2, `score_multi`            | 0..1                |
//! | exact match, token F1     | the official SQuAD v1.1 evaluation script              | 0..1; means 0..100  |
//!
//! The ports keep Python's string semantics where they change results: strings are indexed by
//! code point, `str.split()` also splits on U+001C..U+001F (which `char::is_whitespace` does not
//! count as whitespace), and `re`'s `\w` is narrower than `char::is_alphanumeric`.
//!
//! Inputs follow one convention throughout: `references[i]` holds every reference of hypothesis
//! `i`, and their number may vary. Two shapes of input that the Python implementations reject or
//! leave undefined are given a meaning, so that no input can make these functions panic:
//! - a hypothesis with no reference is scored against the single reference `""`, which is what
//!   the SQuAD v2 script does for unanswerable questions;
//! - when `hypotheses` and `references` differ in length, the extra items are ignored, as
//!   sacrebleu's `zip` does (callers that want an error must compare the lengths themselves);
//!   an empty corpus scores 0 everywhere.

use std::collections::HashMap;
use std::hash::Hash;

use serde::Serialize;

pub mod porter;

#[cfg(test)]
mod tests;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// A BLEU score with its parts, as sacrebleu's `BLEUScore` reports them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bleu {
    /// BLEU, 0..100.
    pub score: f64,
    /// Modified n-gram precisions for n = 1..4, 0..100 (smoothed where a count is zero).
    pub precisions: [f64; 4],
    /// Brevity penalty, 0..1.
    pub bp: f64,
    /// Number of hypothesis tokens, summed over the corpus.
    pub sys_len: usize,
    /// Number of reference tokens (the closest reference of each hypothesis), summed.
    pub ref_len: usize,
}

/// Precision, recall and F-measure of one ROUGE variant, each 0..1 as `rouge-score` gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RougeScore {
    /// Share of the prediction's n-grams (or tokens, for ROUGE-L) found in the reference.
    pub precision: f64,
    /// Share of the reference's n-grams (or tokens, for ROUGE-L) found in the prediction.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub fmeasure: f64,
}

/// ROUGE-1, ROUGE-2 and ROUGE-L (`rouge1`, `rouge2`, `rougeL` in `rouge-score`), scale 0..1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rouge {
    /// Unigram overlap.
    pub rouge1: RougeScore,
    /// Bigram overlap.
    pub rouge2: RougeScore,
    /// Longest common subsequence of tokens.
    pub rouge_l: RougeScore,
}

/// Every metric of this module over one set of (prediction, references) pairs; the payload of
/// `lmforge eval generation --json`.
///
/// Scales are those of the reference implementations: BLEU and chrF 0..100 (sacrebleu), ROUGE
/// 0..1 (`rouge-score`), exact match and token F1 0..100 (the SQuAD script's printout).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationMetrics {
    /// Number of pairs scored.
    pub n: usize,
    /// Corpus BLEU, 0..100.
    pub bleu: f64,
    /// Corpus BLEU's n-gram precisions, n = 1..4, 0..100.
    pub bleu_precisions: [f64; 4],
    /// Corpus BLEU's brevity penalty, 0..1.
    pub bleu_bp: f64,
    /// Corpus chrF, 0..100.
    pub chrf: f64,
    /// Mean ROUGE-1 F-measure without stemming, 0..1.
    pub rouge1: f64,
    /// Mean ROUGE-2 F-measure without stemming, 0..1.
    pub rouge2: f64,
    /// Mean ROUGE-L F-measure without stemming, 0..1.
    pub rouge_l: f64,
    /// Mean ROUGE-1 F-measure with the Porter stemmer, 0..1.
    pub rouge1_stemmed: f64,
    /// Mean ROUGE-2 F-measure with the Porter stemmer, 0..1.
    pub rouge2_stemmed: f64,
    /// Mean ROUGE-L F-measure with the Porter stemmer, 0..1.
    pub rouge_l_stemmed: f64,
    /// SQuAD exact match, mean over pairs, 0..100.
    pub exact_match: f64,
    /// SQuAD token F1, mean over pairs, 0..100.
    pub token_f1: f64,
}

/// The generation metrics a run can select its best model by (`train.metric`), all higher is
/// better.
pub const GENERATION_METRIC_NAMES: [&str; 10] = [
    "bleu",
    "chrf",
    "rouge1",
    "rouge2",
    "rouge_l",
    "rouge1_stemmed",
    "rouge2_stemmed",
    "rouge_l_stemmed",
    "exact_match",
    "token_f1",
];

impl GenerationMetrics {
    /// Each of [`GENERATION_METRIC_NAMES`] with its value.
    pub fn named(&self) -> [(&'static str, f64); 10] {
        let v = [
            self.bleu,
            self.chrf,
            self.rouge1,
            self.rouge2,
            self.rouge_l,
            self.rouge1_stemmed,
            self.rouge2_stemmed,
            self.rouge_l_stemmed,
            self.exact_match,
            self.token_f1,
        ];
        std::array::from_fn(|i| (GENERATION_METRIC_NAMES[i], v[i]))
    }
}

// ---------------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------------

/// Corpus BLEU as sacrebleu 2.x `corpus_bleu(hypotheses, reference_streams)` with its defaults:
/// the 13a tokenizer, case-sensitive, n-grams up to 4, `smooth_method="exp"`, no effective order.
///
/// `references[i]` holds every reference of `hypotheses[i]` (sacrebleu takes the transpose, one
/// stream per reference, padded with `None` where a segment has fewer references). Clipped
/// n-gram counts and lengths are summed over the corpus before the precisions are taken; each
/// hypothesis is compared with its closest reference in length (the shorter one on a tie).
pub fn corpus_bleu(hypotheses: &[String], references: &[Vec<String>]) -> Bleu {
    let mut stats = BleuStats::default();
    for (hypothesis, refs) in hypotheses.iter().zip(references) {
        stats.add(&bleu_segment_stats(hypothesis, refs));
    }
    compute_bleu(&stats, false)
}

/// Sentence BLEU as sacrebleu 2.x `sentence_bleu(hypothesis, references)`: like
/// [`corpus_bleu`] on a single segment, but with `use_effective_order=True`, so that a hypothesis
/// shorter than 4 tokens is not scored 0 for having no 4-grams.
pub fn sentence_bleu(hypothesis: &str, references: &[String]) -> Bleu {
    compute_bleu(&bleu_segment_stats(hypothesis, references), true)
}

/// Corpus chrF as sacrebleu 2.x `corpus_chrf(hypotheses, reference_streams)` with its defaults:
/// character n-grams up to 6, no word n-grams, beta 2, whitespace removed, case-sensitive, and
/// sacrebleu's effective-order averaging (not eps smoothing). Scale 0..100.
///
/// For each hypothesis, the reference with the best sentence-level chrF supplies the n-gram
/// statistics (the first one on a tie); the statistics are summed over the corpus and the score
/// is computed once from the sums.
pub fn corpus_chrf(hypotheses: &[String], references: &[Vec<String>]) -> f64 {
    let mut stats: ChrfStats = [[0; 3]; CHRF_CHAR_ORDER];
    for (hypothesis, refs) in hypotheses.iter().zip(references) {
        let segment = chrf_segment_stats(hypothesis, refs);
        for (total, part) in stats.iter_mut().zip(segment) {
            for (t, p) in total.iter_mut().zip(part) {
                *t += p;
            }
        }
    }
    chrf_f_score(&stats)
}

/// ROUGE-1, ROUGE-2 and ROUGE-L of one prediction as `rouge-score` 0.1.2
/// `RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer).score_multi(references,
/// prediction)`: each variant takes the reference with the highest F-measure (the first on a
/// tie), precision and recall included.
///
/// Tokenization is `rouge-score`'s: lowercase, every run of characters other than `a-z0-9`
/// becomes a separator, and with `use_stemmer` tokens longer than 3 characters go through NLTK's
/// Porter stemmer ([`porter::stem`]).
pub fn rouge(prediction: &str, references: &[String], use_stemmer: bool) -> Rouge {
    let predicted = rouge_tokens(prediction, use_stemmer);
    let per_reference: Vec<Rouge> = refs_or_blank(references)
        .iter()
        .map(|reference| {
            let target = rouge_tokens(reference, use_stemmer);
            Rouge {
                rouge1: rouge_n(&target, &predicted, 1),
                rouge2: rouge_n(&target, &predicted, 2),
                rouge_l: rouge_lcs(&target, &predicted),
            }
        })
        .collect();
    Rouge {
        rouge1: first_best(per_reference.iter().map(|r| r.rouge1)),
        rouge2: first_best(per_reference.iter().map(|r| r.rouge2)),
        rouge_l: first_best(per_reference.iter().map(|r| r.rouge_l)),
    }
}

/// The mean of [`rouge`] over (prediction, references) pairs, what is usually reported as
/// corpus ROUGE. Precision, recall and F-measure are each averaged over the pairs; an empty
/// input gives zeros.
pub fn mean_rouge(predictions: &[String], references: &[Vec<String>], use_stemmer: bool) -> Rouge {
    let scores: Vec<Rouge> =
        predictions.iter().zip(references).map(|(prediction, refs)| rouge(prediction, refs, use_stemmer)).collect();
    let average = |pick: fn(&Rouge) -> RougeScore| RougeScore {
        precision: mean(scores.iter().map(|s| pick(s).precision), scores.len()),
        recall: mean(scores.iter().map(|s| pick(s).recall), scores.len()),
        fmeasure: mean(scores.iter().map(|s| pick(s).fmeasure), scores.len()),
    };
    Rouge { rouge1: average(|s| s.rouge1), rouge2: average(|s| s.rouge2), rouge_l: average(|s| s.rouge_l) }
}

/// SQuAD v1.1 exact match: 1.0 when the prediction equals some reference once both are
/// normalized (lowercased, ASCII punctuation and the articles a/an/the removed, whitespace
/// collapsed), else 0.0.
pub fn exact_match(prediction: &str, references: &[String]) -> f64 {
    let predicted = normalize_answer(prediction);
    let hit = refs_or_blank(references).iter().any(|r| normalize_answer(r) == predicted);
    if hit {
        1.0
    } else {
        0.0
    }
}

/// SQuAD v1.1 token F1, 0..1: the F1 of the bag of normalized tokens of the prediction against
/// that of each reference, maximized over the references.
pub fn token_f1(prediction: &str, references: &[String]) -> f64 {
    let predicted = normalize_answer(prediction);
    let predicted: Vec<&str> = py_split(&predicted).collect();
    refs_or_blank(references).iter().map(|reference| squad_f1(&predicted, reference)).fold(0.0, f64::max)
}

/// All metrics of this module over (prediction, references) pairs; see [`GenerationMetrics`]
/// for the scales. Means over zero pairs are 0.
pub fn generation_metrics(predictions: &[String], references: &[Vec<String>]) -> GenerationMetrics {
    let n = predictions.len().min(references.len());
    let pairs = || predictions.iter().zip(references);
    let bleu = corpus_bleu(predictions, references);
    let plain = mean_rouge(predictions, references, false);
    let stemmed = mean_rouge(predictions, references, true);
    // The SQuAD script sums per-question scores and prints 100 * sum / total.
    let percent = |sum: f64| if n == 0 { 0.0 } else { 100.0 * sum / n as f64 };
    GenerationMetrics {
        n,
        bleu: bleu.score,
        bleu_precisions: bleu.precisions,
        bleu_bp: bleu.bp,
        chrf: corpus_chrf(predictions, references),
        rouge1: plain.rouge1.fmeasure,
        rouge2: plain.rouge2.fmeasure,
        rouge_l: plain.rouge_l.fmeasure,
        rouge1_stemmed: stemmed.rouge1.fmeasure,
        rouge2_stemmed: stemmed.rouge2.fmeasure,
        rouge_l_stemmed: stemmed.rouge_l.fmeasure,
        exact_match: percent(pairs().map(|(p, r)| exact_match(p, r)).sum()),
        token_f1: percent(pairs().map(|(p, r)| token_f1(p, r)).sum()),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// The references of one hypothesis, with "no reference" read as the single reference `""`
/// (see the module docs); the Python implementations fail on an empty list.
fn refs_or_blank(references: &[String]) -> &[String] {
    static BLANK: [String; 1] = [String::new()];
    if references.is_empty() {
        &BLANK
    } else {
        references
    }
}

/// Python's `str.isspace()`: Unicode White_Space plus the information separators
/// U+001C..U+001F, which Python's `str.split()` and `str.rstrip()` also treat as whitespace.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()`: the non-empty runs between whitespace.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|token| !token.is_empty())
}

/// The sequences of `n` consecutive items of `tokens` and how often each occurs.
fn ngram_counts<T: Eq + Hash>(tokens: &[T], n: usize) -> HashMap<&[T], usize> {
    let mut counts = HashMap::new();
    if n > 0 {
        for gram in tokens.windows(n) {
            *counts.entry(gram).or_insert(0) += 1;
        }
    }
    counts
}

/// The arithmetic mean of `count` values, 0 for none.
fn mean(values: impl Iterator<Item = f64>, count: usize) -> f64 {
    if count == 0 {
        0.0
    } else {
        values.sum::<f64>() / count as f64
    }
}

// ---------------------------------------------------------------------------------------------
// BLEU (sacrebleu/metrics/bleu.py, sacrebleu/tokenizers/tokenizer_13a.py and tokenizer_re.py)
// ---------------------------------------------------------------------------------------------

/// BLEU's n-gram orders.
const BLEU_MAX_ORDER: usize = 4;

/// The sufficient statistics of BLEU, summed over segments for a corpus score.
#[derive(Debug, Clone, Copy, Default)]
struct BleuStats {
    sys_len: usize,
    ref_len: usize,
    correct: [usize; BLEU_MAX_ORDER],
    total: [usize; BLEU_MAX_ORDER],
}

impl BleuStats {
    /// Adds another segment's statistics.
    fn add(&mut self, other: &BleuStats) {
        self.sys_len += other.sys_len;
        self.ref_len += other.ref_len;
        for n in 0..BLEU_MAX_ORDER {
            self.correct[n] += other.correct[n];
            self.total[n] += other.total[n];
        }
    }
}

/// `BLEU._compute_segment_statistics`: hypothesis n-gram counts clipped by the maximum count of
/// each n-gram over the references, and the length of the reference closest to the hypothesis.
fn bleu_segment_stats(hypothesis: &str, references: &[String]) -> BleuStats {
    let hyp = bleu_tokens(hypothesis);
    let refs: Vec<Vec<String>> = refs_or_blank(references).iter().map(|r| bleu_tokens(r)).collect();
    let mut stats = BleuStats {
        sys_len: hyp.len(),
        ref_len: closest_ref_len(hyp.len(), refs.iter().map(Vec::len)),
        ..BleuStats::default()
    };
    for n in 1..=BLEU_MAX_ORDER {
        let mut max_ref_counts: HashMap<&[String], usize> = HashMap::new();
        for reference in &refs {
            for (gram, count) in ngram_counts(reference, n) {
                let max = max_ref_counts.entry(gram).or_insert(0);
                *max = (*max).max(count);
            }
        }
        for (gram, count) in ngram_counts(&hyp, n) {
            stats.total[n - 1] += count;
            stats.correct[n - 1] += count.min(max_ref_counts.get(gram).copied().unwrap_or(0));
        }
    }
    stats
}

/// `BLEU._get_closest_ref_len`: the reference length nearest the hypothesis length, the
/// shorter one on a tie.
fn closest_ref_len(hyp_len: usize, ref_lens: impl Iterator<Item = usize>) -> usize {
    let mut closest: Option<(usize, usize)> = None;
    for len in ref_lens {
        let diff = hyp_len.abs_diff(len);
        match closest {
            Some((best_diff, best_len)) if diff > best_diff || (diff == best_diff && len >= best_len) => {}
            _ => closest = Some((diff, len)),
        }
    }
    closest.map_or(0, |(_, len)| len)
}

/// `BLEU.compute_bleu` with `smooth_method="exp"`: each order with no match gets the precision
/// 100 / (2^k * total) for its k-th occurrence (NIST smoothing, as in mteval-v13a.pl).
/// `effective_order` averages only over the orders the hypothesis has n-grams for.
fn compute_bleu(stats: &BleuStats, effective_order: bool) -> Bleu {
    let (sys_len, ref_len) = (stats.sys_len, stats.ref_len);
    let bp = match (sys_len < ref_len, sys_len > 0) {
        (true, true) => (1.0 - ref_len as f64 / sys_len as f64).exp(),
        (true, false) => 0.0,
        (false, _) => 1.0,
    };
    let mut precisions = [0.0; BLEU_MAX_ORDER];
    // sacrebleu returns 0 without smoothing when nothing matches at all (its issue #141).
    if stats.correct.iter().all(|&c| c == 0) {
        return Bleu { score: 0.0, precisions, bp, sys_len, ref_len };
    }
    let mut smooth = 1.0;
    let mut order = BLEU_MAX_ORDER;
    for (n, precision) in precisions.iter_mut().enumerate() {
        let (correct, total) = (stats.correct[n], stats.total[n]);
        // An order no hypothesis is long enough for ends the loop with precision 0, which zeroes
        // the score unless the effective order leaves it out.
        if total == 0 {
            break;
        }
        if effective_order {
            order = n + 1;
        }
        *precision = if correct == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total as f64)
        } else {
            100.0 * correct as f64 / total as f64
        };
    }
    // sacrebleu's `my_log` floors log(0) at -9999999999, which makes the score 0.
    let log_sum: f64 = precisions[..order].iter().map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() }).sum();
    let score = bp * (log_sum / order as f64).exp();
    Bleu { score, precisions, bp, sys_len, ref_len }
}

/// `BLEU._preprocess_segment`: sacrebleu strips trailing whitespace before tokenizing, which
/// matters for a trailing "-\n".
fn bleu_tokens(segment: &str) -> Vec<String> {
    tokenize_13a(segment.trim_end_matches(is_py_space))
}

/// sacrebleu's `Tokenizer13a` (mteval-v13a's tokenization), split into tokens.
fn tokenize_13a(line: &str) -> Vec<String> {
    let mut line = line.replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    // `TokenizerRegexp`: four regex substitutions on " line ", then whitespace normalization.
    let padded: Vec<char> = format!(" {line} ").chars().collect();
    // ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> " \1 ": pad the ASCII symbols other than ' , - .
    let mut spaced = Vec::with_capacity(padded.len() * 2);
    for c in padded {
        if matches!(c, '{'..='~' | '['..='`' | ' '..='&' | '('..='+' | ':'..='@' | '/') {
            spaced.extend([' ', c, ' ']);
        } else {
            spaced.push(c);
        }
    }
    let is_digit = |c: char| c.is_ascii_digit();
    let is_period_or_comma = |c: char| c == '.' || c == ',';
    // ([^0-9])([\.,]) -> "\1 \2 ": period and comma unless preceded by a digit.
    let spaced = substitute_pairs(&spaced, |a, b| !is_digit(a) && is_period_or_comma(b), |a, b| [a, ' ', b, ' ']);
    // ([\.,])([^0-9]) -> " \1 \2": period and comma unless followed by a digit.
    let spaced = substitute_pairs(&spaced, |a, b| is_period_or_comma(a) && !is_digit(b), |a, b| [' ', a, ' ', b]);
    // ([0-9])(-) -> "\1 \2 ": a dash after a digit.
    let spaced = substitute_pairs(&spaced, |a, b| is_digit(a) && b == '-', |a, b| [a, ' ', b, ' ']);
    let spaced: String = spaced.into_iter().collect();
    py_split(&spaced).map(str::to_string).collect()
}

/// `re.sub` for a pattern of exactly two characters: matches are found left to right and do not
/// overlap, so the scan resumes after each replaced pair.
fn substitute_pairs(
    text: &[char],
    matches: impl Fn(char, char) -> bool,
    replace: impl Fn(char, char) -> [char; 4],
) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 2);
    let mut i = 0;
    while i < text.len() {
        if i + 1 < text.len() && matches(text[i], text[i + 1]) {
            out.extend(replace(text[i], text[i + 1]));
            i += 2;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// chrF (sacrebleu/metrics/chrf.py, sacrebleu/metrics/helpers.py)
// ---------------------------------------------------------------------------------------------

/// chrF's character n-gram orders.
const CHRF_CHAR_ORDER: usize = 6;

/// chrF's beta: recall weighs beta² times as much as precision.
const CHRF_BETA: f64 = 2.0;

/// Per character order: [hypothesis n-grams, reference n-grams, matched n-grams].
type ChrfStats = [[usize; 3]; CHRF_CHAR_ORDER];

/// `CHRF._compute_segment_statistics`: the statistics against the reference with the best
/// sentence-level chrF, the first one on a tie.
fn chrf_segment_stats(hypothesis: &str, references: &[String]) -> ChrfStats {
    let hyp = chars_without_whitespace(hypothesis);
    let hyp_ngrams: Vec<HashMap<&[char], usize>> = (1..=CHRF_CHAR_ORDER).map(|n| ngram_counts(&hyp, n)).collect();
    let mut best: (f64, ChrfStats) = (-1.0, [[0; 3]; CHRF_CHAR_ORDER]);
    for reference in refs_or_blank(references) {
        let reference = chars_without_whitespace(reference);
        let mut stats: ChrfStats = [[0; 3]; CHRF_CHAR_ORDER];
        for (n, (hyp_counts, order_stats)) in (1..).zip(hyp_ngrams.iter().zip(stats.iter_mut())) {
            let ref_counts = ngram_counts(&reference, n);
            let matched = hyp_counts.iter().map(|(gram, &c)| c.min(ref_counts.get(gram).copied().unwrap_or(0))).sum();
            // sacrebleu does not count hypothesis n-grams of an order the reference lacks.
            let hyp_total = if ref_counts.is_empty() { 0 } else { hyp_counts.values().sum() };
            *order_stats = [hyp_total, ref_counts.values().sum(), matched];
        }
        let f = chrf_f_score(&stats);
        if f > best.0 {
            best = (f, stats);
        }
    }
    best.1
}

/// sacrebleu's `extract_all_char_ngrams` preprocessing: `"".join(line.split())`, as code points.
fn chars_without_whitespace(text: &str) -> Vec<char> {
    text.chars().filter(|&c| !is_py_space(c)).collect()
}

/// `CHRF._compute_f_score` without eps smoothing (the default): precision and recall are
/// averaged over the orders both sides have n-grams for, then combined into F-beta.
fn chrf_f_score(stats: &ChrfStats) -> f64 {
    let factor = CHRF_BETA * CHRF_BETA;
    let (mut avg_prec, mut avg_rec, mut effective_order) = (0.0, 0.0, 0usize);
    for &[n_hyp, n_ref, n_match] in stats {
        if n_hyp > 0 && n_ref > 0 {
            avg_prec += n_match as f64 / n_hyp as f64;
            avg_rec += n_match as f64 / n_ref as f64;
            effective_order += 1;
        }
    }
    if effective_order == 0 {
        return 0.0;
    }
    avg_prec /= effective_order as f64;
    avg_rec /= effective_order as f64;
    if avg_prec + avg_rec == 0.0 {
        return 0.0;
    }
    100.0 * ((1.0 + factor) * avg_prec * avg_rec / (factor * avg_prec + avg_rec))
}

// ---------------------------------------------------------------------------------------------
// ROUGE (rouge_score/tokenize.py, rouge_score/rouge_scorer.py, rouge_score/scoring.py)
// ---------------------------------------------------------------------------------------------

/// `rouge_score.tokenize.tokenize`: lowercase, replace every run of characters other than
/// `a-z0-9` by a space, split, stem tokens longer than 3 characters, drop invalid tokens.
fn rouge_tokens(text: &str, use_stemmer: bool) -> Vec<String> {
    let is_valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    // Lowercasing first matters: "İ" lowercases to "i" plus a combining dot, "K" (Kelvin) to "k".
    text.to_lowercase()
        .split(|c: char| !is_valid(c))
        .filter(|token| !token.is_empty())
        .map(|token| if use_stemmer && token.len() > 3 { porter::stem(token) } else { token.to_string() })
        .filter(|token| !token.is_empty() && token.chars().all(is_valid))
        .collect()
}

/// `rouge_scorer._score_ngrams`: clipped n-gram overlap, each count floored at 1 when dividing.
fn rouge_n(target: &[String], prediction: &[String], n: usize) -> RougeScore {
    let target_counts = ngram_counts(target, n);
    let prediction_counts = ngram_counts(prediction, n);
    let overlap: usize =
        target_counts.iter().map(|(gram, &c)| c.min(prediction_counts.get(gram).copied().unwrap_or(0))).sum();
    let target_total: usize = target_counts.values().sum();
    let prediction_total: usize = prediction_counts.values().sum();
    let precision = overlap as f64 / prediction_total.max(1) as f64;
    let recall = overlap as f64 / target_total.max(1) as f64;
    RougeScore { precision, recall, fmeasure: fmeasure(precision, recall) }
}

/// `rouge_scorer._score_lcs`: precision and recall of the longest common token subsequence.
fn rouge_lcs(target: &[String], prediction: &[String]) -> RougeScore {
    if target.is_empty() || prediction.is_empty() {
        return RougeScore::default();
    }
    let lcs = lcs_length(target, prediction);
    let precision = lcs as f64 / prediction.len() as f64;
    let recall = lcs as f64 / target.len() as f64;
    RougeScore { precision, recall, fmeasure: fmeasure(precision, recall) }
}

/// Length of the longest common subsequence; the same recurrence as `rouge_scorer._lcs_table`,
/// keeping two rows instead of the whole table since only the length is needed.
fn lcs_length<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y { previous[j] + 1 } else { previous[j + 1].max(current[j]) };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// `rouge_score.scoring.fmeasure`.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// The score with the highest F-measure, the first on a tie, as `np.argmax` in `score_multi`.
fn first_best(scores: impl Iterator<Item = RougeScore>) -> RougeScore {
    scores.reduce(|best, s| if s.fmeasure > best.fmeasure { s } else { best }).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// SQuAD v1.1 exact match and token F1 (the official evaluate-v1.1.py)
// ---------------------------------------------------------------------------------------------

/// `normalize_answer`: lowercase, remove `string.punctuation`, replace the articles a/an/the by
/// a space, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    // `string.punctuation` is exactly the 32 ASCII punctuation characters.
    let text: Vec<char> = s.to_lowercase().chars().filter(|c| !c.is_ascii_punctuation()).collect();
    let text = remove_articles(&text);
    py_split(&text).collect::<Vec<_>>().join(" ")
}

/// `re.sub(r'\b(a|an|the)\b', ' ', text)` with Python's Unicode word boundaries.
fn remove_articles(text: &[char]) -> String {
    let is_boundary = |i: usize| {
        let before = i > 0 && is_py_word_char(text[i - 1]);
        let after = i < text.len() && is_py_word_char(text[i]);
        before != after
    };
    // The alternatives are tried in order; at most one can be followed by a boundary.
    let article_at = |i: usize| {
        ["a", "an", "the"]
            .into_iter()
            .find(|article| {
                let end = i + article.len();
                end <= text.len() && text[i..end].iter().copied().eq(article.chars()) && is_boundary(end)
            })
            .map(str::len)
    };
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if let Some(len) = if is_boundary(i) { article_at(i) } else { None } {
            out.push(' ');
            i += len;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// `f1_score` for one reference, on the prediction's already normalized tokens.
pub(crate) fn squad_f1(predicted: &[&str], reference: &str) -> f64 {
    let reference = normalize_answer(reference);
    let mut reference_counts: HashMap<&str, usize> = HashMap::new();
    let mut reference_len = 0usize;
    for token in py_split(&reference) {
        *reference_counts.entry(token).or_insert(0) += 1;
        reference_len += 1;
    }
    // The multiset intersection `Counter(prediction) & Counter(reference)`.
    let mut num_same = 0usize;
    for token in predicted {
        if let Some(left) = reference_counts.get_mut(token).filter(|left| **left > 0) {
            *left -= 1;
            num_same += 1;
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = num_same as f64 / predicted.len() as f64;
    let recall = num_same as f64 / reference_len as f64;
    2.0 * precision * recall / (precision + recall)
}

/// A character of Python's `\w` for `str` patterns: `str.isalnum()` or `_`.
///
/// `char::is_alphanumeric` is a superset of `str.isalnum()`: it also counts the Other_Alphabetic
/// marks and symbols (Indic vowel signs, combining Latin letters U+0363..U+036F, circled
/// letters, ...), which Python's `re` does not treat as word characters. Those are listed in
/// [`NOT_PY_ALNUM`].
fn is_py_word_char(c: char) -> bool {
    c == '_' || (c.is_alphanumeric() && !in_ranges(NOT_PY_ALNUM, c))
}

/// Whether `c` lies in one of the sorted, disjoint, inclusive `ranges`.
fn in_ranges(ranges: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    ranges
        .binary_search_by(|&(first, last)| {
            if last < c {
                std::cmp::Ordering::Less
            } else if first > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// Code points that `char::is_alphanumeric` accepts but Python 3.11's `str.isalnum()`
/// (Unicode 14) rejects, as inclusive ranges. The test `word_characters_match_python_re` checks
/// this against Python's word characters as `scripts/make_generation_metrics_expected.py` records them, and prints the
/// table it expects when they differ.
#[rustfmt::skip]
const NOT_PY_ALNUM: &[(u32, u32)] = &[
    (0x0345, 0x0345), (0x0363, 0x036F), (0x05B0, 0x05BD), (0x05BF, 0x05BF), (0x05C1, 0x05C2),
    (0x05C4, 0x05C5), (0x05C7, 0x05C7), (0x0610, 0x061A), (0x064B, 0x0657), (0x0659, 0x065F),
    (0x0670, 0x0670), (0x06D6, 0x06DC), (0x06E1, 0x06E4), (0x06E7, 0x06E8), (0x06ED, 0x06ED),
    (0x0711, 0x0711), (0x0730, 0x073F), (0x07A6, 0x07B0), (0x0816, 0x0817), (0x081B, 0x0823),
    (0x0825, 0x0827), (0x0829, 0x082C), (0x08D4, 0x08DF), (0x08E3, 0x08E9), (0x08F0, 0x0903),
    (0x093A, 0x093B), (0x093E, 0x094C), (0x094E, 0x094F), (0x0955, 0x0957), (0x0962, 0x0963),
    (0x0981, 0x0983), (0x09BE, 0x09C4), (0x09C7, 0x09C8), (0x09CB, 0x09CC), (0x09D7, 0x09D7),
    (0x09E2, 0x09E3), (0x0A01, 0x0A03), (0x0A3E, 0x0A42), (0x0A47, 0x0A48), (0x0A4B, 0x0A4C),
    (0x0A51, 0x0A51), (0x0A70, 0x0A71), (0x0A75, 0x0A75), (0x0A81, 0x0A83), (0x0ABE, 0x0AC5),
    (0x0AC7, 0x0AC9), (0x0ACB, 0x0ACC), (0x0AE2, 0x0AE3), (0x0AFA, 0x0AFC), (0x0B01, 0x0B03),
    (0x0B3E, 0x0B44), (0x0B47, 0x0B48), (0x0B4B, 0x0B4C), (0x0B56, 0x0B57), (0x0B62, 0x0B63),
    (0x0B82, 0x0B82), (0x0BBE, 0x0BC2), (0x0BC6, 0x0BC8), (0x0BCA, 0x0BCC), (0x0BD7, 0x0BD7),
    (0x0C00, 0x0C04), (0x0C3E, 0x0C44), (0x0C46, 0x0C48), (0x0C4A, 0x0C4C), (0x0C55, 0x0C56),
    (0x0C62, 0x0C63), (0x0C81, 0x0C83), (0x0CBE, 0x0CC4), (0x0CC6, 0x0CC8), (0x0CCA, 0x0CCC),
    (0x0CD5, 0x0CD6), (0x0CE2, 0x0CE3), (0x0D00, 0x0D03), (0x0D3E, 0x0D44), (0x0D46, 0x0D48),
    (0x0D4A, 0x0D4C), (0x0D57, 0x0D57), (0x0D62, 0x0D63), (0x0D81, 0x0D83), (0x0DCF, 0x0DD4),
    (0x0DD6, 0x0DD6), (0x0DD8, 0x0DDF), (0x0DF2, 0x0DF3), (0x0E31, 0x0E31), (0x0E34, 0x0E3A),
    (0x0E4D, 0x0E4D), (0x0EB1, 0x0EB1), (0x0EB4, 0x0EB9), (0x0EBB, 0x0EBC), (0x0ECD, 0x0ECD),
    (0x0F71, 0x0F83), (0x0F8D, 0x0F97), (0x0F99, 0x0FBC), (0x102B, 0x1036), (0x1038, 0x1038),
    (0x103B, 0x103E), (0x1056, 0x1059), (0x105E, 0x1060), (0x1062, 0x1064), (0x1067, 0x106D),
    (0x1071, 0x1074), (0x1082, 0x108D), (0x108F, 0x108F), (0x109A, 0x109D), (0x1712, 0x1713),
    (0x1732, 0x1733), (0x1752, 0x1753), (0x1772, 0x1773), (0x17B6, 0x17C8), (0x1885, 0x1886),
    (0x18A9, 0x18A9), (0x1920, 0x192B), (0x1930, 0x1938), (0x1A17, 0x1A1B), (0x1A55, 0x1A5E),
    (0x1A61, 0x1A74), (0x1ABF, 0x1AC0), (0x1ACC, 0x1ACE), (0x1B00, 0x1B04), (0x1B35, 0x1B43),
    (0x1B80, 0x1B82), (0x1BA1, 0x1BA9), (0x1BAC, 0x1BAD), (0x1BE7, 0x1BF1), (0x1C24, 0x1C36),
    (0x1DD3, 0x1DF4), (0x24B6, 0x24E9), (0x2DE0, 0x2DFF), (0xA674, 0xA67B), (0xA69E, 0xA69F),
    (0xA802, 0xA802), (0xA80B, 0xA80B), (0xA823, 0xA827), (0xA880, 0xA881), (0xA8B4, 0xA8C3),
    (0xA8C5, 0xA8C5), (0xA8FF, 0xA8FF), (0xA926, 0xA92A), (0xA947, 0xA952), (0xA980, 0xA983),
    (0xA9B4, 0xA9BF), (0xA9E5, 0xA9E5), (0xAA29, 0xAA36), (0xAA43, 0xAA43), (0xAA4C, 0xAA4D),
    (0xAA7B, 0xAA7D), (0xAAB0, 0xAAB0), (0xAAB2, 0xAAB4), (0xAAB7, 0xAAB8), (0xAABE, 0xAABE),
    (0xAAEB, 0xAAEF), (0xAAF5, 0xAAF5), (0xABE3, 0xABEA), (0xFB1E, 0xFB1E), (0x10376, 0x1037A),
    (0x10A01, 0x10A03), (0x10A05, 0x10A06), (0x10A0C, 0x10A0F), (0x10D24, 0x10D27),
    (0x10EAB, 0x10EAC), (0x11000, 0x11002), (0x11038, 0x11045), (0x11073, 0x11074),
    (0x11080, 0x11082), (0x110B0, 0x110B8), (0x110C2, 0x110C2), (0x11100, 0x11102),
    (0x11127, 0x11132), (0x11145, 0x11146), (0x11180, 0x11182), (0x111B3, 0x111BF),
    (0x111CE, 0x111CF), (0x1122C, 0x11234), (0x11237, 0x11237), (0x1123E, 0x1123E),
    (0x112DF, 0x112E8), (0x11300, 0x11303), (0x1133E, 0x11344), (0x11347, 0x11348),
    (0x1134B, 0x1134C), (0x11357, 0x11357), (0x11362, 0x11363), (0x11435, 0x11441),
    (0x11443, 0x11445), (0x114B0, 0x114C1), (0x115AF, 0x115B5), (0x115B8, 0x115BE),
    (0x115DC, 0x115DD), (0x11630, 0x1163E), (0x11640, 0x11640), (0x116AB, 0x116B5),
    (0x1171D, 0x1172A), (0x1182C, 0x11838), (0x11930, 0x11935), (0x11937, 0x11938),
    (0x1193B, 0x1193C), (0x11940, 0x11940), (0x11942, 0x11942), (0x119D1, 0x119D7),
    (0x119DA, 0x119DF), (0x119E4, 0x119E4), (0x11A01, 0x11A0A), (0x11A35, 0x11A39),
    (0x11A3B, 0x11A3E), (0x11A51, 0x11A5B), (0x11A8A, 0x11A97), (0x11C2F, 0x11C36),
    (0x11C38, 0x11C3E), (0x11C92, 0x11CA7), (0x11CA9, 0x11CB6), (0x11D31, 0x11D36),
    (0x11D3A, 0x11D3A), (0x11D3C, 0x11D3D), (0x11D3F, 0x11D41), (0x11D43, 0x11D43),
    (0x11D47, 0x11D47), (0x11D8A, 0x11D8E), (0x11D90, 0x11D91), (0x11D93, 0x11D96),
    (0x11EF3, 0x11EF6), (0x16F4F, 0x16F4F), (0x16F51, 0x16F87), (0x16F8F, 0x16F92),
    (0x16FF0, 0x16FF1), (0x1BC9E, 0x1BC9E), (0x1E000, 0x1E006), (0x1E008, 0x1E018),
    (0x1E01B, 0x1E021), (0x1E023, 0x1E024), (0x1E026, 0x1E02A), (0x1E947, 0x1E947),
    (0x1F130, 0x1F149), (0x1F150, 0x1F169), (0x1F170, 0x1F189),
];

/// Scores a JSONL file of generations: one object per line with `prediction` (a string) and
/// `reference` (a string) or `references` (a list of strings). A malformed line is an error
/// naming the file and line.
pub fn score_file(path: &std::path::Path) -> crate::Result<GenerationMetrics> {
    use crate::error::{Error, IoContext};
    let text = std::fs::read_to_string(path).at(path)?;
    let (mut predictions, mut references) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: &str| Error::format(path, format!("line {}: {what}", i + 1));
        let row: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
        let prediction = row.get("prediction").and_then(|p| p.as_str()).ok_or_else(|| bad("no string `prediction`"))?;
        let refs: Vec<String> = match (row.get("references"), row.get("reference")) {
            (Some(serde_json::Value::Array(a)), _) => a
                .iter()
                .map(|r| r.as_str().map(str::to_string).ok_or_else(|| bad("`references` holds a non-string")))
                .collect::<crate::Result<_>>()?,
            (None, Some(serde_json::Value::String(r))) => vec![r.clone()],
            _ => return Err(bad("no `reference` string or `references` list")),
        };
        predictions.push(prediction.to_string());
        references.push(refs);
    }
    if predictions.is_empty() {
        return Err(Error::format(path, "no rows to score"));
    }
    Ok(generation_metrics(&predictions, &references))
}
