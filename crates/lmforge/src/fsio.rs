//! Crash-safe writes. Every file lmforge writes goes to a temporary name in the same folder,
//! is fsynced, then renamed over the target, and the folder is fsynced so the rename itself is
//! durable. A crash at any instant leaves either the old file or the new one, never a mix.
//! Folders (checkpoints, prepared data) are staged the same way: built under a hidden
//! temporary name and renamed into place once complete. Temporaries left by a process that
//! died are recognised by the pid in their name and removed ([`remove_stale_temps`]).

use crate::error::{IoContext, Result};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (temp file + fsync + rename + fsync of the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).at(&dir)?;
    let tmp = temp_sibling(path);
    crate::testhooks::write_fault(path).at(path)?;
    {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    fs::rename(&tmp, path).at(path)?;
    sync_dir(&dir)
}

/// Writes JSON, pretty-printed, atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| crate::Error::format(path, format!("cannot serialise: {e}")))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Writes one JSON value per line (JSONL) atomically.
pub fn write_jsonl_atomic(path: &Path, rows: impl IntoIterator<Item = serde_json::Value>) -> Result<()> {
    use std::io::Write;
    let mut file = AtomicFile::create(path)?;
    let tmp = file.temp_path().to_path_buf();
    for row in rows {
        writeln!(file.writer(), "{row}").map_err(|e| crate::Error::io(&tmp, e))?;
    }
    file.commit()
}

/// Writes a file inside a folder that is itself staged ([`StagedDir`]): a plain write, made
/// durable by the folder's commit.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::testhooks::write_fault(path).at(path)?;
    fs::write(path, bytes).at(path)
}

/// Removes a folder so that it vanishes at once from listings: renamed to a hidden temporary
/// name first, then deleted (a crash in between leaves a stale temporary, not half a folder).
pub fn remove_dir(path: &Path) -> Result<()> {
    let tmp = temp_sibling(path);
    fs::rename(path, &tmp).at(path)?;
    fs::remove_dir_all(&tmp).at(&tmp)
}

/// Removes the temporary files and folders in `dir` that a process which is no longer running
/// left behind (killed mid-write). Returns how many were removed.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(0) };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = temp_owner(&name) else { continue };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let p = e.path();
        let r = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        r.at(&p)?;
        removed += 1;
    }
    Ok(removed)
}

/// The pid in a temporary name made by [`temp_sibling`] (`.NAME.tmp-PID`).
fn temp_owner(name: &str) -> Option<u32> {
    name.strip_prefix('.')?.rsplit_once(".tmp-")?.1.parse().ok()
}

/// Whether a process with this pid exists. On Linux, /proc tells (a zombie — exited, not yet
/// reaped, as a killed MPI rank can be for a while — counts as gone); elsewhere it is assumed
/// alive, the safe answer (its files or lock are then left for a person to remove).
pub fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the parenthesised command name.
            Ok(stat) => stat.rsplit_once(')').is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    } else {
        true
    }
}

/// fsyncs a folder so that renames and creations inside it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    // Opening a directory read-only and calling fsync is the POSIX way to persist its entries.
    File::open(dir).and_then(|f| f.sync_all()).at(dir)
}

/// A file written through a buffered handle under a temporary name, renamed over its target
/// by [`AtomicFile::commit`]; dropped without commit, the temporary file is removed.
pub struct AtomicFile {
    file: Option<std::io::BufWriter<File>>,
    tmp: PathBuf,
    target: PathBuf,
}

impl AtomicFile {
    pub fn create(target: &Path) -> Result<Self> {
        let dir = parent_dir(target);
        fs::create_dir_all(&dir).at(&dir)?;
        let tmp = temp_sibling(target);
        crate::testhooks::write_fault(target).at(target)?;
        let file = File::create(&tmp).at(&tmp)?;
        Ok(Self { file: Some(std::io::BufWriter::new(file)), tmp, target: target.to_path_buf() })
    }

    pub fn writer(&mut self) -> &mut std::io::BufWriter<File> {
        self.file.as_mut().expect("an AtomicFile is writable until committed")
    }

    /// Path of the temporary file, for error messages.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn commit(mut self) -> Result<()> {
        let file = self.file.take().expect("commit runs once");
        let file = file.into_inner().map_err(|e| crate::Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().at(&self.tmp)?;
        drop(file);
        fs::rename(&self.tmp, &self.target).at(&self.target)?;
        sync_dir(&parent_dir(&self.target))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.file = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A folder built under a temporary name and renamed into place by [`StagedDir::commit`].
/// Dropped without commit (an error, a panic), it removes its temporary folder.
pub struct StagedDir {
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagedDir {
    pub fn new(target: &Path) -> Result<Self> {
        let tmp = temp_sibling(target);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        crate::testhooks::write_fault(target).at(target)?;
        fs::create_dir_all(&tmp).at(&tmp)?;
        Ok(Self { tmp, target: target.to_path_buf(), committed: false })
    }

    /// Where to write the folder's files before the commit.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// fsyncs every file, then renames the folder to its target (replacing an old one).
    pub fn commit(mut self) -> Result<PathBuf> {
        for entry in fs::read_dir(&self.tmp).at(&self.tmp)? {
            let p = entry.at(&self.tmp)?.path();
            if p.is_file() {
                File::open(&p).and_then(|f| f.sync_all()).at(&p)?;
            }
        }
        sync_dir(&self.tmp)?;
        if self.target.exists() {
            // Move the old folder aside first: rename cannot replace a non-empty folder.
            let old = temp_sibling(&old_sibling(&self.target));
            fs::rename(&self.target, &old).at(&self.target)?;
            fs::rename(&self.tmp, &self.target).at(&self.target)?;
            fs::remove_dir_all(&old).at(&old)?;
        } else {
            fs::rename(&self.tmp, &self.target).at(&self.target)?;
        }
        sync_dir(&parent_dir(&self.target))?;
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Opens a log file for appending (creating it and its folder). Appended logs (`metrics.jsonl`,
/// TensorBoard events) are the one exception to write-then-rename: a crash can cut their last
/// record short, and their readers skip or truncate such a tail.
pub fn open_append(path: &Path) -> Result<File> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).at(&dir)?;
    fs::OpenOptions::new().create(true).append(true).open(path).at(path)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `dir/name.old`: where a folder being replaced is moved before its temporary name.
fn old_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent_dir(path).join(format!("{name}.old"))
}

/// `dir/.name.tmp-PID`: hidden, in the same folder (so rename stays on one filesystem).
fn temp_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    parent_dir(path).join(format!(".{name}.tmp-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn staged_dir_is_invisible_until_commit_and_cleaned_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("ckpt");
        {
            let staged = StagedDir::new(&target).unwrap();
            fs::write(staged.path().join("x"), b"1").unwrap();
            assert!(!target.exists());
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "dropped stage must be removed");
        let staged = StagedDir::new(&target).unwrap();
        fs::write(staged.path().join("x"), b"2").unwrap();
        staged.commit().unwrap();
        assert_eq!(fs::read(target.join("x")).unwrap(), b"2");
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        fs::create_dir(dir.path().join(format!(".step-00000003.tmp-{dead_pid}"))).unwrap();
        fs::write(dir.path().join(format!(".metrics.jsonl.tmp-{dead_pid}")), b"x").unwrap();
        let mine = dir.path().join(format!(".a.tmp-{}", std::process::id()));
        fs::write(&mine, b"x").unwrap();
        fs::write(dir.path().join("step-00000003"), b"x").unwrap();
        assert_eq!(remove_stale_temps(dir.path()).unwrap(), 2);
        assert!(mine.exists() && dir.path().join("step-00000003").exists());
        assert_eq!(temp_owner(".step-00000003.old.tmp-42"), Some(42));
        assert_eq!(temp_owner("step-00000003"), None);
    }
}
