//! Decoding, normalisation and quality filters for one document. Pure functions of the bytes
//! and the settings, so they run in parallel and are unit-tested without I/O.
//!
//! Normalisation: Unicode NFC (or NFKC), control characters removed (tab and newline kept),
//! CR/CRLF → LF, other Unicode spaces → ' ', trailing spaces cut, 3+ newlines → 2, the
//! document trimmed. Filters follow the Gopher (Rae et al. 2021, appendix A) and C4 heuristics,
//! with words counted as script-aware units ([`super::units`]: a Han or kana character is one).

use super::units::{units, Unit, UnitCounts};
use unicode_normalization::{is_nfc_quick, is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// Unicode normalisation (`data.normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    Nfc,
    Nfkc,
    None,
}

/// Quality thresholds (config keys of the same names under `[data]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Filters {
    pub min_chars: usize,
    pub max_chars: usize,
    pub min_words: usize,
    pub max_words: usize,
    /// Max fraction of non-whitespace characters that are not alphabetic.
    pub max_non_alpha_frac: f64,
    /// Max fraction of non-empty lines that repeat an earlier line of the same document.
    pub max_dup_line_frac: f64,
    pub min_mean_word_len: f64,
    pub max_mean_word_len: f64,
    /// Minimum number of stop words (Gopher's English the/be/to/of/and/that/have/with, or the
    /// document's language's, [`super::stopwords`]); 0 = off.
    pub min_stop_words: usize,
    /// The stop words counted (lowercase; one character each for Chinese / Japanese).
    pub stop_words: &'static [&'static str],
}

/// Why a document was rejected (the manifest counts these by name).
pub const REASONS: &[&str] = &[
    "invalid_utf8",
    "binary_file",
    "bad_json",
    "empty",
    "too_short",
    "too_long",
    "too_few_words",
    "too_many_words",
    "non_alpha",
    "duplicate_lines",
    "mean_word_length",
    "no_stop_words",
    "language",
    "bad_warc",
    "bad_http",
    "http_status",
    "not_text",
    "no_main_text",
];

/// Decodes bytes as UTF-8. Invalid sequences are replaced (U+FFFD) when `repair`, otherwise
/// the document is refused. Returns the text and whether it needed repair.
pub fn decode(bytes: Vec<u8>, repair: bool) -> Result<(String, bool), &'static str> {
    match String::from_utf8(bytes) {
        Ok(s) => Ok((s, false)),
        Err(e) if repair => Ok((String::from_utf8_lossy(e.as_bytes()).into_owned(), true)),
        Err(_) => Err("invalid_utf8"),
    }
}

pub fn normalize(text: &str, form: Normalization) -> String {
    // Most text is already normalised: the quick check avoids a copy through the composer.
    let composed: std::borrow::Cow<str> = match form {
        Normalization::Nfc if is_nfc_quick(text.chars()) != IsNormalized::Yes => text.nfc().collect::<String>().into(),
        Normalization::Nfkc if is_nfkc_quick(text.chars()) != IsNormalized::Yes => {
            text.nfkc().collect::<String>().into()
        }
        _ => text.into(),
    };
    let mut out = String::with_capacity(composed.len());
    let mut newlines = 0usize;
    let mut chars = composed.chars().peekable();
    while let Some(c) = chars.next() {
        let c = match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    continue; // CRLF: the LF follows
                }
                '\n'
            }
            '\n' | '\t' => c,
            c if c.is_control() => continue,
            c if c.is_whitespace() => ' ',
            // Zero-width and BOM characters carry no text.
            '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{2060}' | '\u{feff}' => continue,
            c => c,
        };
        if c == '\n' {
            // Cut trailing spaces and tabs of the finished line.
            while out.ends_with(' ') || out.ends_with('\t') {
                out.pop();
            }
            newlines += 1;
            if newlines <= 2 {
                out.push('\n');
            }
        } else {
            newlines = 0;
            out.push(c);
        }
    }
    let trimmed = out.trim();
    if trimmed.len() == out.len() {
        out
    } else {
        trimmed.to_string()
    }
}

/// The first filter a normalised document fails, if any.
pub fn check(text: &str, f: &Filters) -> Option<&'static str> {
    if text.is_empty() {
        return Some("empty");
    }
    let chars = text.chars().count();
    if chars < f.min_chars {
        return Some("too_short");
    }
    if chars > f.max_chars {
        return Some("too_long");
    }
    // Words are script-aware units: a Han or kana character is one (see `units`).
    let counts = UnitCounts::of(text);
    let words = counts.units;
    if words < f.min_words {
        return Some("too_few_words");
    }
    if words > f.max_words {
        return Some("too_many_words");
    }
    let (mut visible, mut non_alpha) = (0usize, 0usize);
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        visible += 1;
        if !c.is_alphabetic() {
            non_alpha += 1;
        }
    }
    if visible > 0 && non_alpha as f64 / visible as f64 > f.max_non_alpha_frac {
        return Some("non_alpha");
    }
    if f.max_dup_line_frac < 1.0 {
        let mut seen = std::collections::HashSet::new();
        let (mut lines, mut dups) = (0usize, 0usize);
        for l in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            lines += 1;
            if !seen.insert(l) {
                dups += 1;
            }
        }
        if lines > 0 && dups as f64 / lines as f64 > f.max_dup_line_frac {
            return Some("duplicate_lines");
        }
    }
    // Only the spaced words have a length to judge (none for mostly-Chinese text).
    if counts.mean_word_len().is_some_and(|mean| mean < f.min_mean_word_len || mean > f.max_mean_word_len) {
        return Some("mean_word_length");
    }
    if f.min_stop_words > 0 {
        let is_stop = |u: &Unit| match u {
            // Punctuation attached to a word ("the,") does not hide it.
            Unit::Word(w) => {
                let w = w.trim_matches(|c: char| !c.is_alphanumeric());
                f.stop_words.iter().any(|s| w.chars().flat_map(char::to_lowercase).eq(s.chars()))
            }
            Unit::Char(c) => f.stop_words.iter().any(|s| s.chars().eq(std::iter::once(*c))),
        };
        let stop = units(text).filter(is_stop).take(f.min_stop_words).count();
        if stop < f.min_stop_words {
            return Some("no_stop_words");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenient() -> Filters {
        Filters {
            min_chars: 1,
            max_chars: 1000,
            min_words: 1,
            max_words: 100,
            max_non_alpha_frac: 0.5,
            max_dup_line_frac: 0.3,
            min_mean_word_len: 2.0,
            max_mean_word_len: 10.0,
            min_stop_words: 0,
            stop_words: crate::corpus::stopwords::of("en").unwrap(),
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize("  a\r\nb \t\r\n\n\n\nc\u{0007}\u{00a0}d  ", Normalization::Nfc), "a\nb\n\nc d");
        // e + combining acute → é (NFC); the ligature ﬁ → fi only under NFKC.
        assert_eq!(normalize("e\u{301}\u{fb01}", Normalization::Nfc), "\u{e9}\u{fb01}");
        assert_eq!(normalize("e\u{301}\u{fb01}", Normalization::Nfkc), "\u{e9}fi");
    }

    #[test]
    fn decode_policy() {
        assert_eq!(decode(b"ok".to_vec(), false), Ok(("ok".into(), false)));
        assert_eq!(decode(vec![b'a', 0xff], false), Err("invalid_utf8"));
        assert_eq!(decode(vec![b'a', 0xff], true), Ok(("a\u{fffd}".into(), true)));
    }

    #[test]
    fn every_filter_fires() {
        let f = lenient();
        assert_eq!(check("The cat sat on the mat with a hat.", &f), None);
        assert_eq!(check("", &f), Some("empty"));
        assert_eq!(check(&"word ".repeat(300), &f), Some("too_long"));
        assert_eq!(check("#### $$$ 1234 !!!!", &f), Some("non_alpha"));
        assert_eq!(check("same line here\nsame line here\nsame line here\nother one", &f), Some("duplicate_lines"));
        assert_eq!(check("a b c d e f", &f), Some("mean_word_length"));
        let strict = Filters { min_chars: 20, min_words: 3, max_words: 4, min_stop_words: 2, ..lenient() };
        assert_eq!(check("short", &strict), Some("too_short"));
        assert_eq!(check("twentyfivecharacterslong", &strict), Some("too_few_words"));
        assert_eq!(check("alpha beta gamma delta epsilon zeta", &strict), Some("too_many_words"));
        assert_eq!(check("alpha beta gamma delta", &strict), Some("no_stop_words"));
        assert_eq!(check("the tallest cats and", &strict), None);
        assert_eq!(check("The, tallest cats: AND", &strict), None, "case and punctuation");
        let russian =
            Filters { stop_words: crate::corpus::stopwords::of("ru").unwrap(), min_chars: 1, ..strict.clone() };
        assert_eq!(check("Это дом и сад", &russian), None, "Cyrillic, lowercased");
        let chinese =
            Filters { stop_words: crate::corpus::stopwords::of("zh").unwrap(), min_chars: 1, max_words: 100, ..strict };
        assert_eq!(check("这是我们的房子和花园", &chinese), None, "Han characters");
        assert_eq!(check("房子花园房子花园房子花园", &chinese), Some("no_stop_words"));
    }
}
