//! Masking statistics, special-token safety, determinism and NSP pairing on a real slice of the
//! bundled corpus with a small trained tokenizer.

use super::*;
use crate::shards::TokenShardWriter;

const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A tokenizer and a shard of ~300 speeches from the bundled corpus (one document each).
fn fixture(dir: &std::path::Path) -> (TextTokenizer, TokenShard) {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/tinyshakespeare.txt")).unwrap();
    let docs: Vec<&str> = text[..60_000].split("\n\n").filter(|d| !d.trim().is_empty()).collect();
    let specials: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let tok = TextTokenizer::train_bpe(docs.iter().copied(), 400, &specials).unwrap();
    let path = dir.join("train.bin");
    let mut w = TokenShardWriter::create(&path, tok.vocab_size()).unwrap();
    for d in &docs {
        w.push_document(&tok.encode(d).unwrap()).unwrap();
    }
    w.finish().unwrap();
    (tok, TokenShard::open(&path).unwrap())
}

#[test]
fn masking_hits_15_percent_and_80_10_10_and_never_touches_specials() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, shard) = fixture(dir.path());
    let vocab = Vocab::from_tokenizer(&tok, 400).unwrap();
    let cfg = MlmConfig::default();
    let src = MlmSource {
        shard: &shard,
        index: SentenceIndex::build(&shard, &vocab).unwrap(),
        vocab: &vocab,
        cfg: &cfg,
        nsp: false,
        seq_len: 64,
    };
    let (mut candidates, mut selected, mut masked, mut random, mut kept) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut padded_rows = 0;
    for i in 0..3000 {
        let (ex, sel) = src.example(7, &format!("row/{i}")).unwrap();
        assert_eq!(ex.ids.len(), 64);
        padded_rows += (ex.len < 64) as usize;
        candidates += ex.len - 2; // all but [CLS] and [SEP]: the text holds no special tokens
        for &(p, orig) in &sel {
            assert!(p < ex.len, "padding is never selected");
            assert!(!vocab.is_special(orig), "special token {orig} selected at {p}");
            match ex.ids[p] {
                id if id == vocab.mask => masked += 1,
                id if id == orig => kept += 1,
                id => {
                    assert!(!vocab.is_special(id), "a random replacement is never special");
                    random += 1
                }
            }
        }
        selected += sel.len();
    }
    assert!(padded_rows > 100, "short documents give padded rows ({padded_rows})");
    let rate = selected as f64 / candidates as f64;
    assert!((rate - 0.15).abs() < 0.01, "selection rate {rate}");
    let f = |n: usize| n as f64 / selected as f64;
    assert!((f(masked) - 0.8).abs() < 0.015, "[MASK] share {}", f(masked));
    assert!((f(random) - 0.1).abs() < 0.015, "random share {}", f(random));
    assert!((f(kept) - 0.1).abs() < 0.015, "unchanged share {}", f(kept));
}

#[test]
fn masks_are_a_pure_function_of_seed_and_step() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, shard) = fixture(dir.path());
    let vocab = Vocab::from_tokenizer(&tok, 400).unwrap();
    let cfg = MlmConfig::default();
    let src = MlmSource {
        shard: &shard,
        index: SentenceIndex::build(&shard, &vocab).unwrap(),
        vocab: &vocab,
        cfg: &cfg,
        nsp: true,
        seq_len: 48,
    };
    let a = src.batch(1, 5, 0, 0..8).unwrap();
    let b = src.batch(1, 5, 0, 0..8).unwrap();
    assert_eq!((&a.ids, &a.positions, &a.targets, &a.nsp_labels), (&b.ids, &b.positions, &b.targets, &b.nsp_labels));
    let c = src.batch(1, 6, 0, 0..8).unwrap();
    assert_ne!(a.ids, c.ids, "a new step draws new examples and masks");
    // Rows are independent of how the batch is split (e.g. across processes).
    let tail = src.batch(1, 5, 0, 4..8).unwrap();
    assert_eq!(&a.ids[4 * 48..], &tail.ids[..]);
}

#[test]
fn whole_word_masking_selects_every_piece_of_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, shard) = fixture(dir.path());
    let vocab = Vocab::from_tokenizer(&tok, 400).unwrap();
    let cfg = MlmConfig { whole_word: true, mask_token_frac: 1.0, random_token_frac: 0.0, ..MlmConfig::default() };
    let index = SentenceIndex::build(&shard, &vocab).unwrap();
    let (mut multi_piece_words, mut selected) = (0, 0);
    for i in 0..300 {
        let mut rng = ChaCha8Rng::seed_from_u64(i);
        let mut ex = single_example(&shard, &index, &vocab, 64, &mut rng).unwrap();
        let original = ex.ids.clone();
        let sel = mask_example(&mut ex, &vocab, &cfg, &mut rng);
        selected += sel.len();
        let chosen: std::collections::BTreeSet<usize> = sel.iter().map(|s| s.0).collect();
        for &p in &chosen {
            // The piece after a selected one, if it continues the same word, is selected too.
            let next = p + 1;
            if next < ex.len
                && !vocab.is_special(original[next])
                && !vocab.word_start[original[next] as usize]
                && !vocab.ends_space[original[p] as usize]
            {
                multi_piece_words += 1;
                assert!(chosen.contains(&next), "row {i}: word split at {p}/{next}");
            }
        }
    }
    assert!(selected > 500 && multi_piece_words > 20, "the check saw real words ({selected}, {multi_piece_words})");
}

#[test]
fn nsp_pairs_are_half_positive_and_negatives_come_from_other_documents() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, shard) = fixture(dir.path());
    let vocab = Vocab::from_tokenizer(&tok, 400).unwrap();
    let cfg = MlmConfig::default();
    let index = SentenceIndex::build(&shard, &vocab).unwrap();
    let mut positives = 0;
    let n = 4000;
    for i in 0..n {
        let mut rng = ChaCha8Rng::seed_from_u64(i);
        let ex = pair_example(&shard, &index, &vocab, &cfg, 64, &mut rng).unwrap();
        let (a, b) = (ex.docs.0, ex.docs.1.unwrap());
        match ex.nsp_label.unwrap() {
            IS_NEXT => {
                positives += 1;
                assert_eq!(a, b, "a true next segment comes from the same document");
            }
            _ => assert_ne!(a, b, "a random next segment never comes from the same document"),
        }
        // [CLS] A [SEP] B [SEP], token types 0 then 1, padding after.
        assert_eq!(ex.ids[0], vocab.cls);
        assert_eq!(ex.ids[ex.len - 1], vocab.sep);
        let seps: Vec<usize> = (0..ex.len).filter(|&p| ex.ids[p] == vocab.sep).collect();
        assert_eq!(seps.len(), 2, "two separators");
        assert!(seps[0] >= 2 && seps[1] > seps[0] + 1, "both segments non-empty");
        assert!(
            ex.type_ids[..=seps[0]].iter().all(|&t| t == 0) && ex.type_ids[seps[0] + 1..ex.len].iter().all(|&t| t == 1)
        );
        assert!(ex.ids[ex.len..].iter().all(|&t| t == vocab.pad) && ex.len <= 64);
    }
    let share = positives as f64 / n as f64;
    assert!((share - 0.5).abs() < 0.025, "positive share {share}");
}
