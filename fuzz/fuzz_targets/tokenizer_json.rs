//! A `tokenizer.json` (a model folder's, or `data.tokenizer`). If it loads, it must encode and
//! decode text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lmforge::tokenizer::TextTokenizer;

fuzz_target!(|data: &[u8]| {
    let Ok(tk) = TextTokenizer::from_bytes(data) else { return };
    let _ = tk.vocab_size();
    let _ = tk.eos_id();
    if let Ok(ids) = tk.encode("ROMEO: what light ✓ 🦀\n\nthrough") {
        let _ = tk.decode(&ids);
    }
});
