//! A token shard (`train.bin`, ...): header, sizes and document index. What parses must
//! describe the bytes exactly.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lmforge::shards::ShardHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ShardHeader::parse(data, std::path::Path::new("fuzz.bin")) {
        assert_eq!(data.len(), 64 + h.n_tokens * h.width + (h.n_docs + 1) * 8);
    }
});
