//! Language identification of documents (`data.language_id`, `data.languages`): the `whatlang`
//! crate's trigram and script detector, named by ISO 639-1 codes (`en`, `zh`, `ja`, …; ISO
//! 639-3 where a language has no two-letter code).
//!
//! Why whatlang: it is small (its 69 languages' trigram profiles are a few hundred KB, built in),
//! needs no model file, and is deterministic; `lingua` is more accurate on very short texts but
//! embeds hundreds of MB of n-gram models, and fastText's `lid.176` needs a model download this
//! pipeline cannot assume. Measured on the labelled sample in `tests/data/multilingual/`
//! (`tests/api/multilingual.rs`); one correction (see [`detect`]): text whose letters are a third
//! Han / kana is Chinese or Japanese. A document's first [`DETECT_CHARS`] characters decide: language
//! does not change inside a document often enough to pay for reading all of it.

/// Characters of a document the detector reads.
pub const DETECT_CHARS: usize = 2000;

/// The name of documents whose language is not identified (too short, or no language's
/// profile fits).
pub const UNDETERMINED: &str = "und";

/// whatlang's ISO 639-3 codes and the ISO 639-1 codes lmforge names them by.
pub const CODES: [(&str, &str); 69] = [
    ("afr", "af"),
    ("aka", "ak"),
    ("amh", "am"),
    ("ara", "ar"),
    ("aze", "az"),
    ("bel", "be"),
    ("ben", "bn"),
    ("bul", "bg"),
    ("cat", "ca"),
    ("ces", "cs"),
    ("cmn", "zh"),
    ("dan", "da"),
    ("deu", "de"),
    ("ell", "el"),
    ("eng", "en"),
    ("epo", "eo"),
    ("est", "et"),
    ("fin", "fi"),
    ("fra", "fr"),
    ("guj", "gu"),
    ("heb", "he"),
    ("hin", "hi"),
    ("hrv", "hr"),
    ("hun", "hu"),
    ("hye", "hy"),
    ("ind", "id"),
    ("ita", "it"),
    ("jav", "jv"),
    ("jpn", "ja"),
    ("kan", "kn"),
    ("kat", "ka"),
    ("khm", "km"),
    ("kor", "ko"),
    ("lat", "la"),
    ("lav", "lv"),
    ("lit", "lt"),
    ("mal", "ml"),
    ("mar", "mr"),
    ("mkd", "mk"),
    ("mya", "my"),
    ("nep", "ne"),
    ("nld", "nl"),
    ("nob", "nb"),
    ("ori", "or"),
    ("pan", "pa"),
    ("pes", "fa"),
    ("pol", "pl"),
    ("por", "pt"),
    ("ron", "ro"),
    ("rus", "ru"),
    ("sin", "si"),
    ("slk", "sk"),
    ("slv", "sl"),
    ("sna", "sn"),
    ("spa", "es"),
    ("srp", "sr"),
    ("swe", "sv"),
    ("tam", "ta"),
    ("tel", "te"),
    ("tgl", "tl"),
    ("tha", "th"),
    ("tuk", "tk"),
    ("tur", "tr"),
    ("ukr", "uk"),
    ("urd", "ur"),
    ("uzb", "uz"),
    ("vie", "vi"),
    ("yid", "yi"),
    ("zul", "zu"),
];

/// lmforge's name of a whatlang language: its ISO 639-1 code, else its ISO 639-3 code.
fn name_of(lang: whatlang::Lang) -> &'static str {
    let code = lang.code();
    CODES.iter().find(|(three, _)| *three == code).map_or(code, |(_, two)| two)
}

/// A language code as lmforge names it (`zh` for `zh`, `cmn`, `zho` or `chi`; `en` for `eng`),
/// or None when the detector does not know the language.
pub fn canonical(code: &str) -> Option<&'static str> {
    let code = code.trim().to_ascii_lowercase();
    let code = match code.as_str() {
        "zho" | "chi" | "zh-cn" | "zh-tw" | "zh_cn" | "zh_tw" => "zh",
        "no" | "nor" => "nb",
        "fas" | "per" => "fa",
        c => c,
    };
    CODES.iter().find(|(three, two)| *two == code || *three == code).map(|(_, two)| *two)
}

/// The language of `text`, or [`UNDETERMINED`]: Chinese / Japanese by the share of Han and
/// kana among all its letters (a cheap count), other languages by whatlang on its first
/// [`DETECT_CHARS`] characters.
pub fn detect(text: &str) -> &'static str {
    let head = match text.char_indices().nth(DETECT_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    };
    // whatlang decides the script by the most frequent one, so a Chinese or Japanese technical
    // text full of Latin option names reads as English, and kanji-heavy Japanese as Chinese.
    // Han and kana are a language's own once they are a third of the letters: Japanese when
    // kana are at least a tenth of them (Japanese always writes kana among its kanji).
    let (mut kana, mut han, mut letters) = (0usize, 0usize, 0usize);
    for c in text.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        match c {
            '\u{3040}'..='\u{30FF}' => kana += 1,
            '\u{3400}'..='\u{9FFF}' => han += 1,
            _ => {}
        }
    }
    if kana + han >= 10 && 3 * (kana + han) >= letters {
        return if 10 * kana >= han && kana > 0 { "ja" } else { "zh" };
    }
    whatlang::detect(head).map_or(UNDETERMINED, |info| name_of(info.lang()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_iso_639_1() {
        assert_eq!(
            detect("This manual page documents the options of the command and explains what each of them does."),
            "en"
        );
        assert_eq!(detect("这是一个用于测试语言识别的中文句子，它应该被识别为中文。"), "zh");
        assert_eq!(detect("Der schnelle braune Fuchs springt über den faulen Hund und läuft weiter."), "de");
        assert_eq!(detect(""), UNDETERMINED);
        assert_eq!(detect("設定ファイルを読み込み、パッケージ管理システムの動作を変更する。"), "ja");
        assert_eq!(
            (canonical("ZH"), canonical("cmn"), canonical("eng"), canonical("xx")),
            (Some("zh"), Some("zh"), Some("en"), None)
        );
        // Every whatlang language has a name in the table.
        for lang in whatlang::Lang::all() {
            assert_eq!(canonical(name_of(*lang)), Some(name_of(*lang)), "{lang:?}");
        }
    }
}
