//! Token shards: token ids in a self-describing binary file, read through a memory map.
//!
//! Layout (little-endian), version 1:
//! ```text
//! 0   magic "LMFTOKS\0"        8 bytes
//! 8   format version (u32)      = 1
//! 12  bytes per token (u32)     2 (u16 ids, vocab <= 65536) or 4 (u32 ids)
//! 16  token count N (u64)
//! 24  document count M (u64)
//! 32  vocab size (u64)
//! 40  reserved (zero) up to 64
//! 64  N token ids
//! ..  M+1 document start offsets (u64), the last one equal to N
//! ```
//! The reader checks the header against the file size before touching any token, and says how
//! to fix a mismatch. The document index lets GPT-style packing ignore boundaries and BERT-style
//! sentence pairs respect them.

use crate::error::{Error, IoContext, Result};
use crate::fsio::AtomicFile;
use memmap2::Mmap;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"LMFTOKS\0";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 64;

/// Streams documents of token ids into a shard file, committed atomically by `finish`.
pub struct TokenShardWriter {
    out: AtomicFile,
    width: usize,
    vocab_size: usize,
    offsets: Vec<u64>,
    n_tokens: u64,
}

impl TokenShardWriter {
    pub fn create(path: &Path, vocab_size: usize) -> Result<Self> {
        let width = if vocab_size <= 1 << 16 { 2 } else { 4 };
        let mut out = AtomicFile::create(path)?;
        let tmp = out.temp_path().to_path_buf();
        out.writer().write_all(&[0u8; HEADER_BYTES]).at(&tmp)?;
        Ok(Self { out, width, vocab_size, offsets: vec![0], n_tokens: 0 })
    }

    /// Appends one document.
    pub fn push_document(&mut self, ids: &[u32]) -> Result<()> {
        let tmp = self.out.temp_path().to_path_buf();
        let w = self.out.writer();
        for &id in ids {
            if id as usize >= self.vocab_size {
                return Err(Error::Invalid(format!("token id {id} is outside the vocabulary of {}", self.vocab_size)));
            }
            if self.width == 2 {
                w.write_all(&(id as u16).to_le_bytes()).at(&tmp)?;
            } else {
                w.write_all(&id.to_le_bytes()).at(&tmp)?;
            }
        }
        self.n_tokens += ids.len() as u64;
        self.offsets.push(self.n_tokens);
        Ok(())
    }

    /// Writes the index and header, fsyncs and renames into place.
    pub fn finish(mut self) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let tmp = self.out.temp_path().to_path_buf();
        let w = self.out.writer();
        for off in &self.offsets {
            w.write_all(&off.to_le_bytes()).at(&tmp)?;
        }
        let mut header = [0u8; HEADER_BYTES];
        header[0..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(self.width as u32).to_le_bytes());
        header[16..24].copy_from_slice(&self.n_tokens.to_le_bytes());
        header[24..32].copy_from_slice(&((self.offsets.len() - 1) as u64).to_le_bytes());
        header[32..40].copy_from_slice(&(self.vocab_size as u64).to_le_bytes());
        w.flush().at(&tmp)?;
        w.seek(SeekFrom::Start(0)).at(&tmp)?;
        w.write_all(&header).at(&tmp)?;
        self.out.commit()
    }
}

/// A memory-mapped, validated token shard.
#[derive(Debug)]
pub struct TokenShard {
    path: PathBuf,
    map: Mmap,
    width: usize,
    n_tokens: usize,
    n_docs: usize,
    vocab_size: usize,
}

/// What a shard's header says, checked against the bytes that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardHeader {
    /// Bytes per token id: 2 or 4.
    pub width: usize,
    pub n_tokens: usize,
    pub n_docs: usize,
    pub vocab_size: usize,
}

impl ShardHeader {
    /// Validates a whole shard's bytes (`path` names it in errors): magic, version, width,
    /// the size the header implies against the real size (checked arithmetic, so a header
    /// claiming 2^60 tokens is an error, not an allocation), and a document index that starts
    /// at 0, never decreases and ends at the token count. Token ids are not scanned.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::format(path, msg);
        if bytes.len() < HEADER_BYTES || &bytes[0..8] != MAGIC {
            return Err(bad("not an lmforge token shard (bad magic); re-run data preparation".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "shard format version {version}, this lmforge reads {VERSION}; re-run data preparation"
            )));
        }
        let width = u32_at(12) as usize;
        if width != 2 && width != 4 {
            return Err(bad(format!("bytes per token is {width}, expected 2 or 4")));
        }
        let (n_tokens, n_docs, vocab) = (u64_at(16), u64_at(24), u64_at(32));
        let expected = n_tokens
            .checked_mul(width as u64)
            .and_then(|t| n_docs.checked_add(1)?.checked_mul(8)?.checked_add(t))
            .and_then(|x| x.checked_add(HEADER_BYTES as u64));
        match expected {
            Some(e) if e == bytes.len() as u64 => {}
            Some(e) => {
                return Err(bad(format!(
                    "header says {n_tokens} tokens and {n_docs} documents ({e} bytes) but the file has {} bytes: \
                     it was truncated or is still being written; delete it and re-run data preparation",
                    bytes.len()
                )))
            }
            None => {
                return Err(bad(format!("header claims an impossible size ({n_tokens} tokens, {n_docs} documents)")))
            }
        }
        if vocab == 0 || vocab > u32::MAX as u64 + 1 || (width == 2 && vocab > 1 << 16) {
            return Err(bad(format!("vocabulary size {vocab} does not fit {width}-byte token ids")));
        }
        // The sizes now match the file, so they fit in memory's address space.
        let header = Self { width, n_tokens: n_tokens as usize, n_docs: n_docs as usize, vocab_size: vocab as usize };
        let index = &bytes[HEADER_BYTES + header.n_tokens * width..];
        let mut prev = 0u64;
        for (d, chunk) in index.chunks_exact(8).enumerate() {
            let off = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if (d == 0 && off != 0) || off < prev || off > n_tokens {
                return Err(bad(format!(
                    "document index entry {d} is {off} (previous {prev}, {n_tokens} tokens): the file is corrupt"
                )));
            }
            prev = off;
        }
        if prev != n_tokens {
            return Err(bad("document index does not end at the token count; the file is corrupt".into()));
        }
        Ok(header)
    }
}

impl TokenShard {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).at(path)?;
        // SAFETY: the map is read-only; lmforge never writes a shard in place (writers rename a
        // finished temporary file over it), so the mapped bytes do not change underneath us.
        let map = unsafe { Mmap::map(&file) }.at(path)?;
        let h = ShardHeader::parse(&map, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            width: h.width,
            n_tokens: h.n_tokens,
            n_docs: h.n_docs,
            vocab_size: h.vocab_size,
        })
    }

    pub fn len(&self) -> usize {
        self.n_tokens
    }
    pub fn is_empty(&self) -> bool {
        self.n_tokens == 0
    }
    pub fn num_docs(&self) -> usize {
        self.n_docs
    }
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        let o = HEADER_BYTES + i * self.width;
        if self.width == 2 {
            u16::from_le_bytes([self.map[o], self.map[o + 1]]) as u32
        } else {
            u32::from_le_bytes(self.map[o..o + 4].try_into().expect("4 bytes"))
        }
    }

    /// Tokens `start..start+len`, appended to `out`.
    pub fn read_into(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        out.extend((start..start + len).map(|i| self.get(i)));
    }

    /// Start offset (in tokens) of document `d`; `doc_offset(num_docs())` is the token count.
    pub fn doc_offset(&self, d: usize) -> u64 {
        let o = HEADER_BYTES + self.n_tokens * self.width + d * 8;
        u64::from_le_bytes(self.map[o..o + 8].try_into().expect("8 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, vocab: usize, docs: &[Vec<u32>]) {
        let mut w = TokenShardWriter::create(path, vocab).unwrap();
        for d in docs {
            w.push_document(d).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn reader_returns_exactly_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        for vocab in [1000usize, 100_000] {
            let p = dir.path().join(format!("t{vocab}.bin"));
            let docs = vec![vec![1, 2, 3], vec![], vec![(vocab - 1) as u32, 0]];
            write(&p, vocab, &docs);
            let s = TokenShard::open(&p).unwrap();
            assert_eq!((s.len(), s.num_docs()), (5, 3));
            let mut all = Vec::new();
            s.read_into(0, s.len(), &mut all);
            assert_eq!(all, docs.concat());
            assert_eq!((0..=3).map(|d| s.doc_offset(d)).collect::<Vec<_>>(), vec![0, 3, 3, 5]);
        }
    }

    #[test]
    fn truncated_or_lying_headers_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        write(&p, 1000, &[vec![1, 2, 3, 4]]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(TokenShard::open(&p).unwrap_err().to_string().contains("truncated"));
        let mut lie = bytes.clone();
        lie[16..24].copy_from_slice(&(1u64 << 60).to_le_bytes());
        std::fs::write(&p, &lie).unwrap();
        assert!(TokenShard::open(&p).is_err());
        std::fs::write(&p, b"garbage").unwrap();
        assert!(TokenShard::open(&p).unwrap_err().to_string().contains("magic"));
        // A document index that goes backwards.
        let mut lie = bytes.clone();
        let n = lie.len();
        lie[n - 8..].copy_from_slice(&2u64.to_le_bytes());
        let e = ShardHeader::parse(&lie, &p).unwrap_err().to_string();
        assert!(e.contains("document index"), "{e}");
    }

    #[test]
    fn out_of_vocab_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = TokenShardWriter::create(&dir.path().join("x.bin"), 10).unwrap();
        assert!(w.push_document(&[10]).is_err());
    }
}
