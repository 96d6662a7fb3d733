//! Fine-tuning rows as `finetune` / `predict` / `eval classification` read them: the first
//! byte picks the format (TSV, CSV, JSONL), header, text-pair column, bad-row policy and
//! whether labels are required; the rest is the file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let dir = tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
        .expect("temp dir");
    let _ = lmforge::finetune::dataset::read_bytes_for_fuzzing(dir.path(), sel, body);
});
