//! Stop words per language for the Gopher stop-word filter (`data.min_stop_words`): a
//! document of real prose in a language contains some of its most frequent function words,
//! boilerplate and word lists do not. Gopher's list is English (the / be / to / of / and /
//! that / have / with); for other languages the lists are their most frequent function words,
//! as FineWeb-2 extends the rule per language. Chinese and Japanese are matched per
//! character (their units, [`super::units`]): 的 是 了 … and the kana particles の に は ….
//! A language without a list is not held to the rule.

/// The stop words of `lang` (an lmforge / ISO 639-1 name), lowercase.
pub fn of(lang: &str) -> Option<&'static [&'static str]> {
    Some(match lang {
        "en" => &["the", "be", "to", "of", "and", "that", "have", "with"],
        "de" => &["der", "die", "und", "in", "den", "von", "zu", "das", "mit", "sich", "des", "auf", "ist", "nicht"],
        "fr" => &["de", "la", "le", "et", "les", "des", "en", "un", "du", "une", "que", "est", "pour", "qui", "dans"],
        "es" => &["de", "la", "que", "el", "en", "y", "los", "del", "se", "las", "por", "un", "para", "con", "una"],
        "it" => &["di", "e", "il", "la", "che", "in", "per", "un", "è", "del", "non", "le", "si", "con", "una"],
        "pt" => &["de", "a", "o", "que", "e", "do", "da", "em", "um", "para", "é", "com", "não", "uma", "os"],
        "nl" => &["de", "en", "van", "het", "een", "in", "is", "dat", "op", "te", "zijn", "met", "voor", "niet", "die"],
        "sv" => &["och", "i", "att", "det", "som", "en", "på", "är", "av", "för", "med", "till", "den", "har", "de"],
        "da" => &["og", "i", "at", "det", "er", "en", "til", "på", "de", "med", "for", "af", "den", "som", "ikke"],
        "nb" => &["og", "i", "det", "er", "på", "til", "en", "som", "av", "for", "med", "at", "den", "ikke", "har"],
        "pl" => &["i", "w", "nie", "na", "się", "z", "do", "to", "że", "jest", "o", "jak", "co", "ale", "od"],
        "cs" => &["a", "se", "na", "je", "v", "že", "to", "s", "z", "o", "do", "jako", "pro", "ale", "by"],
        "ru" => &["и", "в", "не", "на", "что", "с", "как", "а", "по", "это", "но", "к", "из", "он", "для"],
        "uk" => &["і", "в", "на", "не", "що", "з", "у", "до", "та", "як", "й", "за", "це", "по", "від"],
        "tr" => {
            &["ve", "bir", "bu", "da", "de", "için", "ile", "çok", "olarak", "daha", "gibi", "ne", "ama", "en", "o"]
        }
        "id" => &[
            "yang", "dan", "di", "ini", "itu", "dengan", "untuk", "dari", "dalam", "tidak", "akan", "pada", "ke",
            "ada", "juga",
        ],
        "zh" => &["的", "是", "了", "在", "和", "有", "不", "这", "个", "为", "中", "也", "以", "们", "到"],
        "ja" => &["の", "に", "は", "を", "た", "が", "で", "て", "と", "し", "れ", "さ", "な", "る", "も"],
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn lists_are_lowercase_single_units() {
        for lang in
            ["en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "nb", "pl", "cs", "ru", "uk", "tr", "id", "zh", "ja"]
        {
            let list = super::of(lang).unwrap();
            assert!(list.len() >= 8, "{lang}");
            for w in list {
                assert_eq!(*w, w.to_lowercase(), "{lang}: {w}");
                assert!(!w.contains(char::is_whitespace), "{lang}: {w}");
                assert!(crate::corpus::langid::canonical(lang).is_some(), "{lang}");
            }
        }
        assert!(super::of("xx").is_none());
    }
}
