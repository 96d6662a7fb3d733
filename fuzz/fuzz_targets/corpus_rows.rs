//! Corpus input files as `data prepare` reads them: the first byte picks the format (.txt,
//! .jsonl, each plain, .gz or .zst) and the document mode, the rest is the file. Every
//! document is then decoded and normalised as the cleaning stage does.
#![no_main]
use libfuzzer_sys::fuzz_target;
use lmforge::corpus::clean::{decode, normalize, Normalization};
use lmforge::corpus::reader::{DocMode, DocReader};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else { return };
    let names = ["a.txt", "a.jsonl", "a.txt.gz", "a.jsonl.gz", "a.txt.zst", "a.jsonl.zst"];
    let name = names[sel as usize % names.len()];
    let mode = [DocMode::File, DocMode::Paragraph, DocMode::Line][(sel as usize / names.len()) % 3];
    let dir = tempfile::tempdir_in(if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" })
        .expect("temp dir");
    let path = dir.path().join(name);
    std::fs::write(&path, body).expect("write input");
    let mut reader = DocReader::new(vec![path], mode, "text");
    // A compressed input can expand a thousandfold (a few bytes of zstd make megabytes of
    // newlines): stop after 16 MB of documents. A reader that never ends shows as a timeout.
    let mut seen = 0usize;
    while seen < 16 << 20 {
        match reader.next_doc() {
            Ok(Some(doc)) => {
                seen += doc.bytes.len() + 1;
                if let Ok((text, _)) = decode(doc.bytes, true) {
                    let _ = normalize(&text, Normalization::Nfc);
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
});
