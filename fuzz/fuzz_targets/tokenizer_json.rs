//! A `tokenizer.json` (a model folder's, or `data.tokenizer`). If it loads, it must encode and
//! decode text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lmforge::tokenizer::TextTokenizer;

fuzz_target!(|data: &[u8]| {
    // libfuzzer-sys aborts on every panic, even one caught: `from_bytes` catches the
    // `tokenizers` crate's parse panics on purpose, so only panics that escape it (the
    // fuzz_target wrapper's own catch_unwind sees those) may count as crashes.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(tk) = TextTokenizer::from_bytes(data) else { return };
    let _ = tk.vocab_size();
    let _ = tk.eos_id();
    if let Ok(ids) = tk.encode("ROMEO: what light ✓ 🦀\n\nthrough") {
        let _ = tk.decode(&ids);
    }
});
