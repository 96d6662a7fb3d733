//! The Porter stemmer exactly as NLTK's `nltk/stem/porter.py` implements it in its default
//! `NLTK_EXTENSIONS` mode, which is the mode `rouge_score` gets from `porter.PorterStemmer()`.
//!
//! The structure follows the Python source step by step (same rule tables, same order, same
//! quirks) so that the two can be compared side by side; words are handled as code points, as
//! Python strings are.

/// A word as a sequence of code points: Python indexes strings by code point.
type Word = Vec<char>;

/// A rule's condition on the stem left once the suffix is removed.
type Condition<'a> = &'a dyn Fn(&[char]) -> bool;

/// A suffix rule: (suffix, replacement, condition); no condition means "always".
type Rule<'a> = (&'a str, &'a str, Option<Condition<'a>>);

/// Stems `word` as NLTK's `PorterStemmer().stem(word)` does, lowercasing it first.
pub fn stem(word: &str) -> String {
    let lower = word.to_lowercase();
    if let Some(base) = irregular_form(&lower) {
        return base.to_string();
    }
    // NLTK tests the length of the word as given, not of its lowercased form.
    if word.chars().count() <= 2 {
        return lower;
    }
    let mut w: Word = lower.chars().collect();
    w = step1a(&w);
    w = step1b(&w);
    w = step1c(&w);
    w = step2(&w);
    w = step3(&w);
    w = step4(&w);
    w = step5a(&w);
    w = step5b(&w);
    w.into_iter().collect()
}

/// NLTK's table of irregular forms ("the errors actually drawn to Martin Porter's attention").
fn irregular_form(word: &str) -> Option<&'static str> {
    Some(match word {
        "sky" | "skies" => "sky",
        "dying" => "die",
        "lying" => "lie",
        "tying" => "tie",
        "news" => "news",
        "innings" | "inning" => "inning",
        "outings" | "outing" => "outing",
        "cannings" | "canning" => "canning",
        "howe" => "howe",
        "proceed" => "proceed",
        "exceed" => "exceed",
        "succeed" => "succeed",
        _ => return None,
    })
}

/// `_is_consonant`: a letter other than a, e, i, o, u, and other than a `y` preceded by a
/// consonant. A run of `y`s alternates, which NLTK resolves by walking back over it.
fn is_consonant(w: &[char], mut i: usize) -> bool {
    if is_vowel(w[i]) {
        return false;
    }
    if w[i] != 'y' {
        return true;
    }
    let mut negate = false;
    while i > 0 && w[i] == 'y' {
        negate = !negate;
        i -= 1;
    }
    // The letter the run leans on is a consonant if it is not a vowel; each y flips that.
    is_vowel(w[i]) == negate
}

/// The five letters that are always vowels.
fn is_vowel(c: char) -> bool {
    matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
}

/// `_consonant_flags`: `is_consonant` for every position in one left-to-right pass.
fn consonant_flags(w: &[char]) -> Vec<bool> {
    let mut flags: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let consonant = if is_vowel(c) {
            false
        } else if c == 'y' {
            i == 0 || !flags[i - 1]
        } else {
            true
        };
        flags.push(consonant);
    }
    flags
}

/// The measure m of `[C](VC){m}[V]`: the number of vowel-to-consonant transitions.
fn measure(stem: &[char]) -> usize {
    let flags = consonant_flags(stem);
    flags.windows(2).filter(|p| !p[0] && p[1]).count()
}

/// `*v*`: the stem contains a vowel.
fn contains_vowel(stem: &[char]) -> bool {
    consonant_flags(stem).iter().any(|&c| !c)
}

/// `*d`: the word ends with a double consonant.
fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// `*o`: the word ends consonant-vowel-consonant, the last not w, x or y; NLTK also accepts a
/// two-letter vowel-consonant word.
fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

/// `word.endswith(suffix)`; every suffix in the rule tables is ASCII.
fn ends_with(w: &[char], suffix: &str) -> bool {
    w.len() >= suffix.len() && w[w.len() - suffix.len()..].iter().copied().eq(suffix.chars())
}

/// `_replace_suffix`: `word` (which ends with `suffix`) with the suffix replaced.
fn replace_suffix(w: &[char], suffix: &str, replacement: &str) -> Word {
    let mut out = w[..w.len() - suffix.len()].to_vec();
    out.extend(replacement.chars());
    out
}

/// `_apply_rule_list`: the first rule whose suffix matches decides, whether or not its condition
/// holds. The pseudo-suffix `*d` matches a double consonant and removes both letters before the
/// replacement is appended. Like NLTK, a word that literally ends in "*d" also matches it.
fn apply_rule_list(w: &[char], rules: &[Rule]) -> Word {
    for &(suffix, replacement, condition) in rules {
        let holds = |stem: &[char]| condition.is_none_or(|c| c(stem));
        let stem_len = if suffix == "*d" && ends_double_consonant(w) {
            w.len() - 2
        } else if ends_with(w, suffix) {
            w.len() - suffix.len()
        } else {
            continue;
        };
        let stem = &w[..stem_len];
        return if holds(stem) {
            let mut out = stem.to_vec();
            out.extend(replacement.chars());
            out
        } else {
            w.to_vec()
        };
    }
    w.to_vec()
}

/// Step 1a: plurals (sses -> ss, ies -> i, s -> ""), with NLTK's "dies" -> "die".
fn step1a(w: &[char]) -> Word {
    if ends_with(w, "ies") && w.len() == 4 {
        return replace_suffix(w, "ies", "ie");
    }
    apply_rule_list(w, &[("sses", "ss", None), ("ies", "i", None), ("ss", "ss", None), ("s", "", None)])
}

/// Step 1b: -eed, -ed, -ing, then the tidying of what is left (at -> ate, hopp -> hop, ...).
fn step1b(w: &[char]) -> Word {
    // NLTK: "spied" -> "spi" but "died" -> "die".
    if ends_with(w, "ied") {
        return replace_suffix(w, "ied", if w.len() == 4 { "ie" } else { "i" });
    }
    if ends_with(w, "eed") {
        let stem = replace_suffix(w, "eed", "");
        return if measure(&stem) > 0 { replace_suffix(w, "eed", "ee") } else { w.to_vec() };
    }
    let Some(stem) = ["ed", "ing"]
        .iter()
        .filter(|suffix| ends_with(w, suffix))
        .map(|suffix| replace_suffix(w, suffix, ""))
        .find(|stem| contains_vowel(stem))
    else {
        return w.to_vec();
    };
    // contains_vowel guarantees a non-empty stem.
    let last = stem[stem.len() - 1];
    let last_letter = last.to_string();
    let not_l_s_z = |_: &[char]| !matches!(last, 'l' | 's' | 'z');
    let m1_and_cvc = |s: &[char]| measure(s) == 1 && ends_cvc(s);
    apply_rule_list(
        &stem,
        &[
            ("at", "ate", None),
            ("bl", "ble", None),
            ("iz", "ize", None),
            ("*d", &last_letter, Some(&not_l_s_z)),
            ("", "e", Some(&m1_and_cvc)),
        ],
    )
}

/// Step 1c: y -> i after a consonant that is not the whole stem (NLTK's condition).
fn step1c(w: &[char]) -> Word {
    let condition = |s: &[char]| s.len() > 1 && is_consonant(s, s.len() - 1);
    apply_rule_list(w, &[("y", "i", Some(&condition))])
}

/// Step 2: double suffixes to single ones (m > 0), with NLTK's "alli" and "logi" changes.
fn step2(w: &[char]) -> Word {
    // NLTK applies alli -> al first and, when it succeeds, runs step 2 again on the result.
    if ends_with(w, "alli") && measure(&replace_suffix(w, "alli", "")) > 0 {
        return step2(&replace_suffix(w, "alli", "al"));
    }
    let m0 = |s: &[char]| measure(s) > 0;
    let m0: Condition = &m0;
    // The "l" of "logi" stays with the stem when measuring, so that "geo" and "theo" qualify.
    let logi = |_: &[char]| measure(&w[..w.len() - 3]) > 0;
    apply_rule_list(
        w,
        &[
            ("ational", "ate", Some(m0)),
            ("tional", "tion", Some(m0)),
            ("enci", "ence", Some(m0)),
            ("anci", "ance", Some(m0)),
            ("izer", "ize", Some(m0)),
            ("bli", "ble", Some(m0)),
            ("alli", "al", Some(m0)),
            ("entli", "ent", Some(m0)),
            ("eli", "e", Some(m0)),
            ("ousli", "ous", Some(m0)),
            ("ization", "ize", Some(m0)),
            ("ation", "ate", Some(m0)),
            ("ator", "ate", Some(m0)),
            ("alism", "al", Some(m0)),
            ("iveness", "ive", Some(m0)),
            ("fulness", "ful", Some(m0)),
            ("ousness", "ous", Some(m0)),
            ("aliti", "al", Some(m0)),
            ("iviti", "ive", Some(m0)),
            ("biliti", "ble", Some(m0)),
            ("fulli", "ful", Some(m0)),
            ("logi", "log", Some(&logi)),
        ],
    )
}

/// Step 3: -icate, -ative, -alize, -iciti, -ical, -ful, -ness (m > 0).
fn step3(w: &[char]) -> Word {
    let m0 = |s: &[char]| measure(s) > 0;
    let m0: Condition = &m0;
    apply_rule_list(
        w,
        &[
            ("icate", "ic", Some(m0)),
            ("ative", "", Some(m0)),
            ("alize", "al", Some(m0)),
            ("iciti", "ic", Some(m0)),
            ("ical", "ic", Some(m0)),
            ("ful", "", Some(m0)),
            ("ness", "", Some(m0)),
        ],
    )
}

/// Step 4: removes the remaining suffixes when m > 1 (-ion only after s or t).
fn step4(w: &[char]) -> Word {
    let m1 = |s: &[char]| measure(s) > 1;
    let m1: Condition = &m1;
    let ion = |s: &[char]| measure(s) > 1 && matches!(s.last(), Some('s' | 't'));
    apply_rule_list(
        w,
        &[
            ("al", "", Some(m1)),
            ("ance", "", Some(m1)),
            ("ence", "", Some(m1)),
            ("er", "", Some(m1)),
            ("ic", "", Some(m1)),
            ("able", "", Some(m1)),
            ("ible", "", Some(m1)),
            ("ant", "", Some(m1)),
            ("ement", "", Some(m1)),
            ("ment", "", Some(m1)),
            ("ent", "", Some(m1)),
            ("ion", "", Some(&ion)),
            ("ou", "", Some(m1)),
            ("ism", "", Some(m1)),
            ("ate", "", Some(m1)),
            ("iti", "", Some(m1)),
            ("ous", "", Some(m1)),
            ("ive", "", Some(m1)),
            ("ize", "", Some(m1)),
        ],
    )
}

/// Step 5a: a final e goes when m > 1, or when m = 1 and the stem does not end cvc. Both
/// conditions are tried, which is why NLTK does not use the rule list here.
fn step5a(w: &[char]) -> Word {
    if ends_with(w, "e") {
        let stem = replace_suffix(w, "e", "");
        let m = measure(&stem);
        if m > 1 || (m == 1 && !ends_cvc(&stem)) {
            return stem;
        }
    }
    w.to_vec()
}

/// Step 5b: -ll -> -l when the measure of the word less its last letter exceeds 1.
fn step5b(w: &[char]) -> Word {
    let condition = |_: &[char]| measure(&w[..w.len() - 1]) > 1;
    apply_rule_list(w, &[("ll", "l", Some(&condition))])
}
