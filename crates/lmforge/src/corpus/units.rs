//! Script-aware text units: what the quality filters count as words, what MinHash shingles
//! are made of, and where sentences end — for text with spaces between words and for the
//! scripts written without them.
//!
//! Spaced scripts (Latin, Cyrillic, Greek, Hangul, …) give one unit per whitespace-separated
//! word, as before. Han ideographs and Japanese kana are written without spaces: each such
//! character is a unit of its own, and their punctuation (`，。、「」…`) separates units without
//! being one. So `使用git命令。` is the units 使 用 git 命 令. Characters rather than a word
//! segmenter (jieba, MeCab) is a deliberate choice: it needs no dictionary, treats Chinese and
//! Japanese alike, is what character-level CJK MinHash in datatrove / CCNet-style pipelines
//! does, and character 5-grams of Chinese carry about as much as word 2-grams — enough for
//! near-duplicate detection and length filters; word-length statistics (Gopher's mean word
//! length) are only taken over the spaced words.

/// One unit of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit<'a> {
    /// A whitespace-separated word of a spaced script (punctuation attached, as split).
    Word(&'a str),
    /// One character of an unspaced script (Han, kana).
    Char(char),
}

/// Whether `c` belongs to a script written without spaces between words: Han ideographs
/// (CJK Unified Ideographs, extensions A–H, compatibility ideographs), Hiragana, Katakana
/// (with its phonetic extensions and half-width forms) and the ideographic iteration mark.
pub fn is_unspaced(c: char) -> bool {
    matches!(c,
        '\u{3005}' | '\u{3007}'                  // 々 〇
        | '\u{3040}'..='\u{309F}'                // Hiragana
        | '\u{30A0}'..='\u{30FF}'                // Katakana
        | '\u{31F0}'..='\u{31FF}'                // Katakana phonetic extensions
        | '\u{3400}'..='\u{4DBF}'                // CJK extension A
        | '\u{4E00}'..='\u{9FFF}'                // CJK unified ideographs
        | '\u{F900}'..='\u{FAFF}'                // CJK compatibility ideographs
        | '\u{FF66}'..='\u{FF9F}'                // half-width Katakana
        | '\u{20000}'..='\u{3134F}'              // CJK extensions B–H
    )
}

/// CJK punctuation and full-width forms that separate units without being one: the CJK
/// symbols block (`、。〈〉「」『』【】〜` …), vertical and small forms, and the full-width
/// ASCII punctuation (`，！？：；（）`).
fn is_cjk_punctuation(c: char) -> bool {
    matches!(c,
        '\u{3000}'..='\u{3004}' | '\u{3008}'..='\u{3020}' | '\u{3030}' | '\u{303D}'
        | '\u{30FB}'                               // ・
        | '\u{FE10}'..='\u{FE1F}' | '\u{FE30}'..='\u{FE6F}'
        | '\u{FF01}'..='\u{FF0F}' | '\u{FF1A}'..='\u{FF20}' | '\u{FF3B}'..='\u{FF40}'
        | '\u{FF5B}'..='\u{FF65}'
    )
}

/// The units of `text` in order.
pub fn units(text: &str) -> impl Iterator<Item = Unit<'_>> {
    text.split_whitespace().flat_map(word_units)
}

/// The units of one whitespace-separated token: itself when it has no unspaced character,
/// else its unspaced characters one by one and the runs of other characters between them
/// (CJK punctuation dropped).
fn word_units(word: &str) -> impl Iterator<Item = Unit<'_>> {
    // ASCII first: most words of most corpora, and a vectorised check.
    let plain = word.is_ascii() || !word.chars().any(|c| is_unspaced(c) || is_cjk_punctuation(c));
    let mut rest = if plain { "" } else { word };
    let mut whole = plain.then_some(word);
    std::iter::from_fn(move || {
        if let Some(w) = whole.take() {
            return Some(Unit::Word(w));
        }
        loop {
            let c = rest.chars().next()?;
            if is_unspaced(c) {
                rest = &rest[c.len_utf8()..];
                return Some(Unit::Char(c));
            }
            if is_cjk_punctuation(c) {
                rest = &rest[c.len_utf8()..];
                continue;
            }
            let end = rest.find(|c| is_unspaced(c) || is_cjk_punctuation(c)).unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            rest = tail;
            return Some(Unit::Word(run));
        }
    })
}

/// Counts of a text's units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitCounts {
    /// Every unit.
    pub units: usize,
    /// Spaced-script words among them.
    pub words: usize,
    /// Characters of those words.
    pub word_chars: usize,
}

impl UnitCounts {
    pub fn of(text: &str) -> Self {
        let mut n = Self::default();
        for u in units(text) {
            n.units += 1;
            if let Unit::Word(w) = u {
                n.words += 1;
                n.word_chars += w.chars().count();
            }
        }
        n
    }

    /// Mean length of the spaced words, when they are at least half the units (a text mostly
    /// in an unspaced script has no meaningful word length).
    pub fn mean_word_len(&self) -> Option<f64> {
        (self.words > 0 && 2 * self.words >= self.units).then(|| self.word_chars as f64 / self.words as f64)
    }
}

/// Sentence-ending punctuation (Unicode's `Sentence_Terminal` characters of the scripts
/// lmforge meets): `. ! ?`, the ideographic and full-width `。 ！ ？ ｡`, `‼ ⁇ ⁈ ⁉`, the Arabic
/// `؟ ۔`, the Devanagari dandas `। ॥`, the Armenian `։` and the Ethiopic `።`.
pub fn is_sentence_end(c: char) -> bool {
    matches!(
        c,
        '.' | '!'
            | '?'
            | '。'
            | '！'
            | '？'
            | '｡'
            | '‼'
            | '⁇'
            | '⁈'
            | '⁉'
            | '؟'
            | '۔'
            | '।'
            | '॥'
            | '։'
            | '።'
    )
}

/// Closing quotes and brackets that may follow a sentence's terminal.
const CLOSERS: [char; 12] = ['"', '\'', ')', ']', '”', '’', '」', '』', '）', '】', '》', '〉'];

/// Whether a piece of text ends a sentence: its last non-space character is a sentence end
/// (closing quotes and brackets after it allowed: `”`, `」`, `』`, `）`, `)`), or it ends a line.
/// BERT's next-sentence pairs split after tokens for which this holds.
pub fn ends_sentence(text: &str) -> bool {
    let text = text.trim_end_matches([' ', '\t']);
    if text.ends_with('\n') {
        return true;
    }
    text.trim_end_matches(CLOSERS).chars().next_back().is_some_and(is_sentence_end)
}

/// The text cut into sentences, each ending after its terminal(s), the closers after them and
/// the white space that follows; the pieces concatenate to the text. An ASCII `.` `!` `?`
/// ends a sentence only before white space or the end (not in `3.5` or `e.g.x`); the
/// ideographic and full-width stops (`。！？`) end one wherever they are, as Chinese and
/// Japanese put no space after them.
pub fn sentences(text: &str) -> Vec<&str> {
    let (mut out, mut start) = (Vec::new(), 0);
    let mut it = text.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        if !is_sentence_end(c) {
            continue;
        }
        let mut end = i + c.len_utf8();
        while let Some(&(j, d)) = it.peek().filter(|(_, d)| is_sentence_end(*d) || CLOSERS.contains(d)) {
            end = j + d.len_utf8();
            it.next();
        }
        if c.is_ascii() && it.peek().is_some_and(|(_, d)| !d.is_whitespace()) {
            continue;
        }
        while let Some(&(j, d)) = it.peek().filter(|(_, d)| d.is_whitespace()) {
            end = j + d.len_utf8();
            it.next();
        }
        out.push(&text[start..end]);
        start = end;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(text: &str) -> Vec<String> {
        units(text)
            .map(|u| match u {
                Unit::Word(w) => w.to_string(),
                Unit::Char(c) => c.to_string(),
            })
            .collect()
    }

    #[test]
    fn spaced_words_stay_whole_and_unspaced_characters_split() {
        assert_eq!(show("the cat, sat."), ["the", "cat,", "sat."]);
        assert_eq!(show("使用git命令。"), ["使", "用", "git", "命", "令"]);
        assert_eq!(show("「こんにちは」と言った"), ["こ", "ん", "に", "ち", "は", "と", "言", "っ", "た"]);
        assert_eq!(show("한국어 문장입니다."), ["한국어", "문장입니다."], "Hangul is spaced");
        assert_eq!(show("版本2.0（测试）"), ["版", "本", "2.0", "测", "试"]);
        assert_eq!(show(""), Vec::<String>::new());
    }

    #[test]
    fn counts_and_word_length() {
        let en = UnitCounts::of("a cat sat");
        assert_eq!((en.units, en.words, en.word_chars), (3, 3, 7));
        assert_eq!(en.mean_word_len(), Some(7.0 / 3.0));
        let zh = UnitCounts::of("这是一个没有空格的句子，用于测试。");
        assert_eq!((zh.units, zh.words), (15, 0));
        assert_eq!(zh.mean_word_len(), None);
        let mixed = UnitCounts::of("运行 make install 即可");
        assert_eq!((mixed.units, mixed.words), (6, 2));
        assert_eq!(mixed.mean_word_len(), None, "2 words of 6 units: mostly unspaced");
    }

    #[test]
    fn sentences_split_at_every_scripts_stops() {
        assert_eq!(sentences("第一句。第二句！第三句？尾"), ["第一句。", "第二句！", "第三句？", "尾"]);
        assert_eq!(sentences("It is 3.5 m. Next!  Done"), ["It is 3.5 m. ", "Next!  ", "Done"]);
        assert_eq!(sentences("他说：「好。」然后走了。"), ["他说：「好。」", "然后走了。"]);
        assert_eq!(sentences("Really?! Yes."), ["Really?! ", "Yes."]);
        assert!(sentences("").is_empty());
    }

    #[test]
    fn sentence_ends_in_every_script() {
        for s in ["Done.", "真的吗？", "好了。", "「好。」", "He said \"no.\"", "line\n", "line\n  ", "क्या।"]
        {
            assert!(ends_sentence(s), "{s:?}");
        }
        for s in ["no end", "逗号，", "3.5 and", ""] {
            assert!(!ends_sentence(s), "{s:?}");
        }
    }
}
