//! Config files, the generic part: layering (built-in defaults < TOML file < `--set
//! section.key=value` overrides), relative paths in a file resolved against the file's folder,
//! deserialisation that names the dotted key of an unknown key or a wrong type, the config
//! hash, dotted-key flattening, and the small helpers every component's checks use.
//!
//! Each component owns its section (`corpus::DataConfig` is `[data]`, `optim::OptimConfig` is
//! `[optim]`, ...); a config tree composes sections (`train::RunConfig` for `lmforge train`,
//! `finetune::FinetuneConfig` for `lmforge finetune`) and resolves itself once into the typed
//! plan its front end consumes. Validating a config is resolving it and dropping the result.

use crate::error::{Error, IoContext, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// A config tree read from `file` (when given) with `overrides` applied, deserialised. In the
/// file, the values of `path_keys` (dotted keys holding a path or a list of paths) that are
/// relative resolve against the file's folder, as cargo and docker compose resolve theirs, so
/// `lmforge train --config /abs/configs/run.toml` works from any directory; relative paths in
/// overrides resolve against the working directory. Either way the result holds absolute
/// paths, so the config it saves means the same from anywhere.
pub fn load<T: DeserializeOwned>(file: Option<&Path>, overrides: &[String], path_keys: &[&str]) -> Result<T> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).at(path)?;
            let mut table =
                text.parse::<toml::Table>().map_err(|e| Error::format(path, format!("invalid TOML: {e}")))?;
            let dir = path.parent().unwrap_or(Path::new(""));
            rebase_paths(&mut table, path_keys, dir)?;
            table
        }
        None => toml::Table::new(),
    };
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    rebase_paths(&mut table, path_keys, Path::new(""))?;
    deserialize_table(table)
}

/// A config tree from TOML text (a recipe compiled into the binary, a run's saved config) with
/// `overrides` applied. Paths are taken as written.
pub fn parse<T: DeserializeOwned>(text: &str, overrides: &[String]) -> Result<T> {
    let mut table = text.parse::<toml::Table>().map_err(|e| Error::Invalid(format!("invalid TOML: {e}")))?;
    for o in overrides {
        apply_override(&mut table, o)?;
    }
    deserialize_table(table)
}

/// Relative path values under `keys` made absolute against `dir`.
fn rebase_paths(table: &mut toml::Table, keys: &[&str], dir: &Path) -> Result<()> {
    for key in keys {
        let parts: Vec<&str> = key.split('.').collect();
        rebase_at(table, &parts, key, dir)?;
    }
    Ok(())
}

fn rebase_at(table: &mut toml::Table, parts: &[&str], key: &str, dir: &Path) -> Result<()> {
    let Some((first, rest)) = parts.split_first() else { return Ok(()) };
    match (table.get_mut(*first), rest.is_empty()) {
        (Some(toml::Value::Table(t)), false) => rebase_at(t, rest, key, dir),
        (Some(toml::Value::Array(items)), true) => items.iter_mut().try_for_each(|v| rebase(key, v, dir)),
        (Some(v), true) => rebase(key, v, dir),
        _ => Ok(()),
    }
}

/// A relative path string made absolute against `dir`.
fn rebase(key: &str, v: &mut toml::Value, dir: &Path) -> Result<()> {
    if let toml::Value::String(s) = v {
        if !s.is_empty() && Path::new(s.as_str()).is_relative() {
            let joined = std::path::absolute(dir.join(s.as_str())).at(dir)?;
            *s = joined.to_str().ok_or_else(|| Error::config(key, "the resolved path is not UTF-8"))?.to_string();
        }
    }
    Ok(())
}

/// That `path` (the value of `key`) can be read: an error names the key and the path, once.
pub fn readable(key: &str, path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::config(key, format!("{}: {e}", path.display()))),
    }
}

/// A config tree as its saved TOML.
pub fn to_toml<T: Serialize>(cfg: &T) -> String {
    toml::to_string_pretty(cfg).expect("a config always serialises to TOML")
}

/// 16 hex digits of SHA-256 over a config's JSON: recorded in checkpoints (a resumed run must
/// have the same) and the experiment store.
pub fn config_hash<T: Serialize>(cfg: &T) -> String {
    let json = serde_json::to_string(cfg).expect("a config always serialises to JSON");
    let digest = Sha256::digest(json.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A config (any serialisable one, or a parsed TOML table) as dotted keys (`optim.lr`) to their
/// TOML values; arrays and tables of arrays (`data.inputs`, `optim.groups`) stay whole values.
/// Runs are compared and filtered by these.
pub fn flatten<T: Serialize>(cfg: &T) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, v: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other);
            }
        }
    }
    let mut out = BTreeMap::new();
    let value = toml::Value::try_from(cfg).expect("a config always serialises to TOML");
    walk("", value, &mut out);
    out
}

/// `Ok` when `ok`; otherwise an error naming `key`, its value and what is allowed.
pub fn check(ok: bool, key: &str, value: impl std::fmt::Display, allowed: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(bad(key, &value.to_string(), allowed))
    }
}

pub fn bad(key: &str, value: &str, allowed: &str) -> Error {
    Error::config(key, format!("invalid value {value:?}; expected {allowed}"))
}

/// A config struct from a table; an unknown key or a wrong type is an error naming its dotted
/// path.
pub fn deserialize_table<T: DeserializeOwned>(table: toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.trim_end_matches('\n').to_string();
        Error::config(if key == "." { "(top level)".into() } else { key }, inner)
    })
}

/// Applies one `a.b.c=value` override to the table, creating sections as needed.
pub fn apply_override(table: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, raw) =
        spec.split_once('=').ok_or_else(|| Error::config(spec, "an override must look like section.key=value"))?;
    let key = key.trim();
    let raw = raw.trim();
    // A value in TOML syntax (numbers, booleans, quoted strings, arrays); otherwise a bare string.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config(key, "an override key must look like section.key"));
    }
    let mut cur = table;
    for part in &parts[..parts.len() - 1] {
        let entry = cur.entry(part.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| Error::config(key, format!("`{part}` is a value, not a section")))?;
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// An empty path stands for "not given".
pub fn given(path: &Path) -> Option<&Path> {
    (!path.as_os_str().is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[derive(serde::Deserialize, Debug)]
    struct Files {
        data: FilesData,
    }
    #[derive(serde::Deserialize, Debug)]
    struct FilesData {
        path: PathBuf,
        inputs: Vec<PathBuf>,
        absolute: PathBuf,
    }

    #[test]
    fn relative_paths_resolve_against_the_file_folder_or_for_overrides_the_working_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("configs");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("run.toml");
        std::fs::write(&file, "[data]\npath = \"corpus.txt\"\ninputs = [\"../more.txt\"]\nabsolute = \"/srv/x.txt\"\n")
            .unwrap();
        let keys = ["data.path", "data.inputs", "data.absolute", "data.missing", "nothing.here"];
        let f: Files = load(Some(&file), &[], &keys).unwrap();
        assert_eq!(f.data.path, dir.join("corpus.txt"));
        assert_eq!(f.data.inputs, vec![dir.join("../more.txt")]);
        assert_eq!(f.data.absolute, PathBuf::from("/srv/x.txt"));
        let f: Files = load(Some(&file), &["data.path=local.txt".into()], &keys).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(f.data.path, cwd.join("local.txt"), "an override is relative to the working directory");
    }

    #[test]
    fn an_unreadable_path_names_the_key_and_the_path() {
        let e = readable("data.path", Path::new("/no/such/corpus.txt")).unwrap_err().to_string();
        assert!(e.contains("data.path") && e.contains("/no/such/corpus.txt"), "{e}");
        assert_eq!(e.matches("/no/such/corpus.txt").count(), 1, "{e}");
    }
}
