//! What a CUDA fat binary holds (the image `nvcc -fatbin` writes and the driver's
//! `cuModuleLoadData` takes): machine code (an ELF cubin for one `sm_XX`) and PTX (for one
//! `compute_XX`), entry by entry. build.rs checks every kernel file's image with [`check`] —
//! machine code for the target GPU as well as PTX, so no kernel waits on the driver's JIT
//! compiler at first use and newer GPUs still run the PTX — and the tests check the images the
//! library embeds. Shared by build.rs (`#[path]`) and the tests.
//!
//! The layout is not documented by NVIDIA; it is what nvcc 13.0 writes (and what cuobjdump and
//! the open fatbin readers decode): a 16-byte header — magic `0xBA55ED50` (u32), version (u16),
//! header size (u16), size of the entries (u64) — then entries, each a header — kind (u16:
//! 1 PTX, 2 ELF), version (u16), header size (u32), payload size (u64), …, at byte 28 the
//! architecture (u32: 90 for sm_90) — followed by its payload (compressed or not).

const MAGIC: u32 = 0xBA55_ED50;

/// Which code an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// PTX, compiled by the driver at load time for the GPU at hand.
    Ptx,
    /// Machine code (a cubin) for exactly one architecture.
    Machine,
}

/// One entry of a fat binary: its code and the architecture it targets (90 = Hopper).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub code: Code,
    pub arch: u32,
}

fn read<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], String> {
    bytes
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("the image ends at byte {} inside a header at byte {at}", bytes.len()))
}

fn u16_at(bytes: &[u8], at: usize) -> Result<u16, String> {
    read::<2>(bytes, at).map(u16::from_le_bytes)
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, String> {
    read::<4>(bytes, at).map(u32::from_le_bytes)
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, String> {
    read::<8>(bytes, at).map(u64::from_le_bytes)
}

/// The entries of the fat binary `image`, in order; an error says where it stops making sense.
pub fn entries(image: &[u8]) -> Result<Vec<Entry>, String> {
    let magic = u32_at(image, 0)?;
    if magic != MAGIC {
        return Err(format!("not a fat binary: magic {magic:#x}, expected {MAGIC:#x}"));
    }
    let header = u16_at(image, 6)? as usize;
    let end = header.saturating_add(u64_at(image, 8)? as usize);
    if end > image.len() {
        return Err(format!("the header gives {end} bytes, the image has {}", image.len()));
    }
    let mut entries = Vec::new();
    let mut at = header;
    while at < end {
        let code = match u16_at(image, at)? {
            1 => Code::Ptx,
            2 => Code::Machine,
            k => return Err(format!("entry at byte {at}: kind {k}, expected 1 (PTX) or 2 (ELF)")),
        };
        let size = (u32_at(image, at + 4)? as usize).saturating_add(u64_at(image, at + 8)? as usize);
        entries.push(Entry { code, arch: u32_at(image, at + 28)? });
        if size == 0 || at.saturating_add(size) > end {
            return Err(format!("entry at byte {at} claims {size} bytes past the image's end {end}"));
        }
        at += size;
    }
    Ok(entries)
}

/// The entries of `image` when it holds machine code for `sm_{arch}` and PTX no newer than
/// it (which the driver compiles for any later GPU); else what is missing.
pub fn check(image: &[u8], arch: u32) -> Result<Vec<Entry>, String> {
    let entries = entries(image)?;
    if !entries.contains(&Entry { code: Code::Machine, arch }) {
        return Err(format!("no machine code for sm_{arch} (entries: {entries:?})"));
    }
    if !entries.iter().any(|e| e.code == Code::Ptx && e.arch <= arch) {
        return Err(format!("no PTX for compute_{arch} or older (entries: {entries:?})"));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fat binary as nvcc 13.0 lays it out, with `(kind, arch, payload bytes)` entries.
    fn image(entries: &[(u16, u32, usize)]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(kind, arch, payload) in entries {
            let mut header = [0u8; 64];
            header[0..2].copy_from_slice(&kind.to_le_bytes());
            header[2..4].copy_from_slice(&0x0101u16.to_le_bytes());
            header[4..8].copy_from_slice(&64u32.to_le_bytes());
            header[8..16].copy_from_slice(&(payload as u64).to_le_bytes());
            header[28..32].copy_from_slice(&arch.to_le_bytes());
            body.extend_from_slice(&header);
            body.extend(std::iter::repeat_n(0xAB, payload));
        }
        let mut out = MAGIC.to_le_bytes().to_vec();
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn machine_code_and_ptx_are_listed_and_pass() {
        let img = image(&[(1, 90, 40), (2, 90, 96)]);
        let want = vec![Entry { code: Code::Ptx, arch: 90 }, Entry { code: Code::Machine, arch: 90 }];
        assert_eq!(check(&img, 90).unwrap(), want);
        // Older PTX is fine (the driver compiles it forward); machine code must match exactly.
        assert!(check(&image(&[(1, 80, 8), (2, 90, 8)]), 90).is_ok());
    }

    #[test]
    fn a_missing_kind_of_code_is_named() {
        let ptx_only = check(&image(&[(1, 90, 40)]), 90).unwrap_err();
        assert!(ptx_only.contains("no machine code for sm_90"), "{ptx_only}");
        let other_gpu = check(&image(&[(1, 90, 8), (2, 80, 8)]), 90).unwrap_err();
        assert!(other_gpu.contains("no machine code for sm_90"), "{other_gpu}");
        let machine_only = check(&image(&[(2, 90, 8)]), 90).unwrap_err();
        assert!(machine_only.contains("no PTX"), "{machine_only}");
        let newer_ptx = check(&image(&[(1, 100, 8), (2, 90, 8)]), 90).unwrap_err();
        assert!(newer_ptx.contains("no PTX"), "{newer_ptx}");
    }

    #[test]
    fn damaged_images_are_errors_not_panics() {
        let img = image(&[(1, 90, 40), (2, 90, 96)]);
        for len in 0..img.len() {
            assert!(entries(&img[..len]).is_err(), "a {len}-byte prefix parsed");
        }
        let mut bad = img.clone();
        bad[0] ^= 1;
        assert!(entries(&bad).unwrap_err().contains("not a fat binary"));
        let mut bad_kind = img.clone();
        bad_kind[16] = 7;
        assert!(entries(&bad_kind).unwrap_err().contains("kind 7"));
        let mut huge = img;
        huge[16 + 8..16 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(entries(&huge).is_err());
    }
}
