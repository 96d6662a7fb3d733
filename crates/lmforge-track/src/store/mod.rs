//! The experiment store: every run (train, quickstart, sweep trial) recorded in one embedded
//! SQLite database (default `./lmforge-runs/lmforge.db`): id, name, kind, group (a sweep),
//! status, the resolved config and its hash, host, pid, start / end / heartbeat times, the
//! latest and best metrics, every scalar metric per step, and artifact paths. Parallel writers
//! (sweep trials, two `train`s) are safe: WAL journal, a busy timeout, and every write in one
//! `BEGIN IMMEDIATE` transaction. A run whose process died without recording its end (kill -9,
//! a crash) is found by its pid and the process's start time and marked failed; a run on
//! another host whose heartbeat is old is shown as stale. The schema carries a version
//! (`PRAGMA user_version`) and is migrated forward on open.

pub mod view;

use lmforge::error::{Error, Result};
use lmforge::observe::{MetricsRow, RunEnd, RunObserver, RunStart};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The schema this build writes. Migrations below bring older files up to it.
const SCHEMA_VERSION: i64 = 1;

const MIGRATIONS: [&str; 1] = [r#"
CREATE TABLE runs (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    grp          TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL,
    note         TEXT NOT NULL DEFAULT '',
    run_dir      TEXT NOT NULL,
    config       TEXT NOT NULL,
    config_hash  TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    pid_start    INTEGER,
    started_at   REAL NOT NULL,
    ended_at     REAL,
    heartbeat_at REAL NOT NULL,
    step         INTEGER NOT NULL DEFAULT 0,
    max_steps    INTEGER NOT NULL,
    summary      TEXT NOT NULL DEFAULT '{}',
    artifacts    TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX runs_by_dir ON runs (run_dir, started_at);
CREATE TABLE metrics (
    run_id TEXT NOT NULL,
    split  TEXT NOT NULL,
    key    TEXT NOT NULL,
    step   INTEGER NOT NULL,
    value  REAL NOT NULL,
    PRIMARY KEY (run_id, split, key, step)
) WITHOUT ROWID;
"#];

/// A heartbeat older than this marks a running run of another host as stale.
const STALE_AFTER_S: f64 = 30.0 * 60.0;

/// Where the database is: `--db` (passed in), else `$LMFORGE_DB`, else `./lmforge-runs/lmforge.db`.
pub fn db_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("LMFORGE_DB").filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("lmforge-runs").join("lmforge.db"))
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |e| Error::format(path, format!("experiment store: {e}"))
}

/// Run statuses as stored.
pub const STATUSES: [&str; 4] = ["running", "finished", "failed", "stopped"];

/// One run as recorded.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub group: String,
    pub status: String,
    pub note: String,
    pub run_dir: String,
    /// The resolved config, TOML.
    pub config: String,
    pub config_hash: String,
    pub host: String,
    pub pid: i64,
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub heartbeat_at: f64,
    pub step: u64,
    pub max_steps: u64,
    /// Latest value of every `SPLIT_KEY` (`train_loss`, `val_loss`, ...), plus `best_val_loss`
    /// and `best_step`.
    pub summary: BTreeMap<String, f64>,
    pub artifacts: serde_json::Value,
}

impl RunRecord {
    /// "stale" for a running record whose heartbeat stopped long ago on another host; the
    /// stored status otherwise (dead processes on this host are marked failed when listed).
    pub fn shown_status(&self, now: f64) -> &str {
        if self.status == "running"
            && self.host != lmforge::observe::host_name()
            && now - self.heartbeat_at > STALE_AFTER_S
        {
            "stale"
        } else {
            &self.status
        }
    }

    /// A field by name for filters and sorting: a column, a summary metric, or a config key.
    pub fn field(&self, key: &str) -> Option<FieldValue> {
        let text = |s: &str| Some(FieldValue::Text(s.to_string()));
        match key {
            "id" => text(&self.id),
            "name" => text(&self.name),
            "kind" => text(&self.kind),
            "group" => text(&self.group),
            "status" => text(&self.status),
            "host" => text(&self.host),
            "config_hash" => text(&self.config_hash),
            "run_dir" => text(&self.run_dir),
            "step" => Some(FieldValue::Number(self.step as f64)),
            "max_steps" => Some(FieldValue::Number(self.max_steps as f64)),
            "started_at" => Some(FieldValue::Number(self.started_at)),
            "duration_s" => Some(FieldValue::Number(self.ended_at.unwrap_or(self.heartbeat_at) - self.started_at)),
            k if self.summary.contains_key(k) => Some(FieldValue::Number(self.summary[k])),
            k if k.contains('.') => {
                let cfg: toml::Table = self.config.parse().ok()?;
                match lmforge::config::flatten(&cfg).remove(k)? {
                    toml::Value::Integer(i) => Some(FieldValue::Number(i as f64)),
                    toml::Value::Float(x) => Some(FieldValue::Number(x)),
                    toml::Value::String(s) => Some(FieldValue::Text(s)),
                    other => Some(FieldValue::Text(other.to_string())),
                }
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Number(f64),
    Text(String),
}

/// `KEY OP VALUE` with OP one of `= != < <= > >= ~` (`~`: contains).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub key: String,
    pub op: String,
    pub value: String,
}

impl Filter {
    pub fn parse(spec: &str) -> Result<Self> {
        // Longest operators first, so `<=` is not read as `<`.
        for op in ["!=", "<=", ">=", "=", "<", ">", "~"] {
            if let Some((k, v)) = spec.split_once(op) {
                let key = k.trim();
                if key.is_empty() {
                    break;
                }
                return Ok(Self { key: key.to_string(), op: op.to_string(), value: v.trim().to_string() });
            }
        }
        Err(Error::Invalid(format!(
            "--filter {spec:?}: expected KEY OP VALUE with OP one of = != < <= > >= ~ \
             (e.g. status=finished, val_loss<3.2, optim.name=adamw, name~lr)"
        )))
    }

    pub fn matches(&self, run: &RunRecord) -> bool {
        let Some(field) = run.field(&self.key) else { return self.op == "!=" };
        let ord = match (&field, self.value.parse::<f64>()) {
            (FieldValue::Number(x), Ok(v)) => x.partial_cmp(&v),
            (FieldValue::Number(x), Err(_)) => Some(x.to_string().as_str().cmp(self.value.as_str())),
            (FieldValue::Text(s), _) => {
                if self.op == "~" {
                    return s.contains(&self.value);
                }
                Some(s.as_str().cmp(self.value.as_str()))
            }
        };
        use std::cmp::Ordering::*;
        match (self.op.as_str(), ord) {
            ("=", Some(Equal)) | ("<", Some(Less)) | (">", Some(Greater)) => true,
            ("<=", Some(Less | Equal)) | (">=", Some(Greater | Equal)) => true,
            ("!=", o) => o != Some(Equal),
            ("~", _) => matches!(field, FieldValue::Number(x) if x.to_string().contains(&self.value)),
            _ => false,
        }
    }
}

/// Sorts by `key` ascending (`-key`: descending); runs without the key go last.
pub fn sort_runs(runs: &mut [RunRecord], key: &str) {
    let (key, desc) = match key.strip_prefix('-') {
        Some(k) => (k, true),
        None => (key, false),
    };
    runs.sort_by(|a, b| {
        use std::cmp::Ordering;
        match (a.field(key), b.field(key)) {
            (Some(x), Some(y)) => {
                let o = match (x, y) {
                    (FieldValue::Number(x), FieldValue::Number(y)) => x.total_cmp(&y),
                    (FieldValue::Text(x), FieldValue::Text(y)) => x.cmp(&y),
                    (FieldValue::Number(_), FieldValue::Text(_)) => Ordering::Less,
                    (FieldValue::Text(_), FieldValue::Number(_)) => Ordering::Greater,
                };
                if desc {
                    o.reverse()
                } else {
                    o
                }
            }
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    });
}

/// One metric value of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MetricPoint {
    pub step: u64,
    pub split: String,
    pub key: String,
    pub value: f64,
}

/// A connection to the database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating it and its folder if needed) and migrates the database.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let err = db_err(path);
        let conn = Connection::open(path).map_err(&err)?;
        // Writers wait for each other instead of failing; transactions are milliseconds long.
        conn.busy_timeout(std::time::Duration::from_secs(60)).map_err(&err)?;
        // Switching a fresh file to WAL takes an exclusive lock that the busy handler does not
        // always cover; another process doing the same switch at that instant is retried.
        let mut tries = 0;
        loop {
            match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
                Ok(_) => break,
                Err(e) if tries < 100 && is_busy(&e) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(err(e)),
            }
        }
        // WAL with synchronous=NORMAL is durable against process crashes (the case here);
        // a power loss may cost the last transactions, never the file's integrity.
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(&err)?;
        let mut store = Self { conn, path: path.to_path_buf() };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&mut self) -> Result<()> {
        let err = db_err(&self.path);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(&err)?;
        if version > SCHEMA_VERSION {
            return Err(Error::format(
                &self.path,
                format!(
                    "experiment store schema version {version} is newer than this lmforge's \
                     ({SCHEMA_VERSION}); use a newer lmforge or another --db"
                ),
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(sql).map_err(&err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64).map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    fn write<T>(&mut self, f: impl FnOnce(&rusqlite::Transaction) -> rusqlite::Result<T>) -> Result<T> {
        let err = db_err(&self.path);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(&err)?;
        let out = f(&tx).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(out)
    }

    /// Records a new run as running and returns its id.
    pub fn insert_run(&mut self, run: &NewRun) -> Result<String> {
        let now = now_s();
        let id = new_run_id(&run.run_dir, now);
        let me = ProcessId::current();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO runs (id, name, kind, grp, status, run_dir, config, config_hash, host, pid,
                    pid_start, started_at, heartbeat_at, max_steps)
                 VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)",
                params![
                    id,
                    run.name,
                    run.kind,
                    run.group,
                    run.run_dir,
                    run.config,
                    run.config_hash,
                    me.host,
                    me.pid,
                    me.start,
                    now,
                    run.max_steps as i64
                ],
            )
        })?;
        Ok(id)
    }

    /// The latest record of `run_dir`, if any.
    pub fn run_by_dir(&self, run_dir: &str) -> Result<Option<RunRecord>> {
        let sql = format!("{SELECT} WHERE run_dir = ?1 ORDER BY started_at DESC LIMIT 1");
        self.conn.query_row(&sql, [run_dir], read_record).optional().map_err(db_err(&self.path))
    }

    /// Marks a recorded run as running again in this process from checkpoint `step`: metric
    /// rows past it (logged by the process that stopped) are dropped and the summary rebuilt.
    pub fn resume_run(&mut self, id: &str, step: u64) -> Result<()> {
        let me = ProcessId::current();
        let now = now_s();
        self.write(|tx| {
            tx.execute("DELETE FROM metrics WHERE run_id = ?1 AND step > ?2", params![id, step as i64])?;
            tx.execute(
                "UPDATE runs SET status = 'running', note = '', host = ?2, pid = ?3, pid_start = ?4,
                    heartbeat_at = ?5, ended_at = NULL, step = ?6 WHERE id = ?1",
                params![id, me.host, me.pid, me.start, now, step as i64],
            )?;
            let summary = rebuild_summary(tx, id)?;
            tx.execute("UPDATE runs SET summary = ?2 WHERE id = ?1", params![id, summary])?;
            Ok(())
        })
    }

    /// Appends one metrics row and updates the run's step, summary and heartbeat.
    pub fn add_row(&mut self, id: &str, row: &MetricsRow) -> Result<()> {
        let now = now_s();
        self.write(|tx| {
            {
                let mut ins = tx.prepare_cached(
                    "INSERT OR REPLACE INTO metrics (run_id, split, key, step, value) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (k, v) in &row.values {
                    ins.execute(params![id, row.split, k, row.step as i64, v])?;
                }
            }
            let old: String = tx.query_row("SELECT summary FROM runs WHERE id = ?1", [id], |r| r.get(0))?;
            let mut summary: BTreeMap<String, f64> = serde_json::from_str(&old).unwrap_or_default();
            let split = summary_split(&row.split);
            for (k, v) in &row.values {
                summary.insert(format!("{split}_{k}"), *v);
            }
            if let Some(loss) = row.get("loss").filter(|_| split == "val") {
                if summary.get("best_val_loss").is_none_or(|b| loss < *b) {
                    summary.insert("best_val_loss".into(), loss);
                    summary.insert("best_step".into(), row.step as f64);
                }
            }
            let summary = serde_json::to_string(&summary).expect("numbers serialise");
            tx.execute(
                "UPDATE runs SET summary = ?2, heartbeat_at = ?3, step = MAX(step, ?4) WHERE id = ?1",
                params![id, summary, now, row.step as i64],
            )?;
            Ok(())
        })
    }

    /// Records how a run ended (and what it left on disk).
    pub fn end_run(&mut self, id: &str, status: &str, note: &str, artifacts: &serde_json::Value) -> Result<()> {
        let now = now_s();
        self.write(|tx| {
            tx.execute(
                "UPDATE runs SET status = ?2, note = ?3, ended_at = ?4, heartbeat_at = ?4, artifacts = ?5 WHERE id = ?1",
                params![id, status, note, now, artifacts.to_string()],
            )
        })?;
        Ok(())
    }

    /// Changes a run's status and note (a sweep marking an early-stopped trial).
    pub fn set_status(&mut self, id: &str, status: &str, note: &str) -> Result<()> {
        self.write(|tx| tx.execute("UPDATE runs SET status = ?2, note = ?3 WHERE id = ?1", params![id, status, note]))?;
        Ok(())
    }

    /// Every run, newest first. Runs recorded as running on this host whose process is gone
    /// (a crash, kill -9) are marked failed first.
    pub fn list(&mut self) -> Result<Vec<RunRecord>> {
        self.mark_dead_runs_failed()?;
        let sql = format!("{SELECT} ORDER BY started_at DESC");
        let mut stmt = self.conn.prepare(&sql).map_err(db_err(&self.path))?;
        let rows = stmt.query_map([], read_record).map_err(db_err(&self.path))?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err(&self.path))
    }

    fn mark_dead_runs_failed(&mut self) -> Result<()> {
        let host = lmforge::observe::host_name();
        let running: Vec<(String, i64, Option<i64>)> = {
            let mut stmt = self
                .conn
                .prepare("SELECT id, pid, pid_start FROM runs WHERE status = 'running' AND host = ?1")
                .map_err(db_err(&self.path))?;
            let rows =
                stmt.query_map([&host], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db_err(&self.path))?;
            rows.collect::<rusqlite::Result<_>>().map_err(db_err(&self.path))?
        };
        for (id, pid, start) in running {
            if !ProcessId::alive(pid, start) {
                let note = format!("process {pid} on {host} ended without recording an end (crashed or killed)");
                // Only if still running: the process may have ended properly in between.
                self.write(|tx| {
                    tx.execute(
                        "UPDATE runs SET status = 'failed', note = ?2 WHERE id = ?1 AND status = 'running'",
                        params![id, note],
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Finds one run by id, unique id prefix, name (the latest of that name) or run dir.
    pub fn find(&mut self, query: &str) -> Result<RunRecord> {
        let runs = self.list()?;
        if let Some(r) = runs.iter().find(|r| r.id == query) {
            return Ok(r.clone());
        }
        let by_prefix: Vec<&RunRecord> = runs.iter().filter(|r| r.id.starts_with(query)).collect();
        if by_prefix.len() == 1 {
            return Ok(by_prefix[0].clone());
        }
        if let Some(r) = runs.iter().find(|r| r.name == query) {
            return Ok(r.clone());
        }
        if let Ok(dir) = std::fs::canonicalize(query) {
            if let Some(r) = runs.iter().find(|r| Path::new(&r.run_dir) == dir) {
                return Ok(r.clone());
            }
        }
        if by_prefix.len() > 1 {
            let ids: Vec<&str> = by_prefix.iter().map(|r| r.id.as_str()).collect();
            return Err(Error::Invalid(format!("run {query:?} is ambiguous: {}", ids.join(", "))));
        }
        Err(Error::Invalid(format!(
            "no run {query:?} in {} (give an id, an id prefix, a name or a run dir; `lmforge runs list` shows them)",
            self.path.display()
        )))
    }

    /// Every metric value of a run, by split, key and step.
    pub fn metrics(&self, id: &str) -> Result<Vec<MetricPoint>> {
        let mut stmt = self
            .conn
            .prepare("SELECT step, split, key, value FROM metrics WHERE run_id = ?1 ORDER BY split, key, step")
            .map_err(db_err(&self.path))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(MetricPoint { step: r.get::<_, i64>(0)? as u64, split: r.get(1)?, key: r.get(2)?, value: r.get(3)? })
            })
            .map_err(db_err(&self.path))?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err(&self.path))
    }

    /// Deletes runs and their metrics (their run dirs stay on disk).
    pub fn remove(&mut self, ids: &[String]) -> Result<()> {
        self.write(|tx| {
            for id in ids {
                tx.execute("DELETE FROM metrics WHERE run_id = ?1", [id])?;
                tx.execute("DELETE FROM runs WHERE id = ?1", [id])?;
            }
            Ok(())
        })
    }
}

const SELECT: &str = "SELECT id, name, kind, grp, status, note, run_dir, config, config_hash, host, pid,
    started_at, ended_at, heartbeat_at, step, max_steps, summary, artifacts FROM runs";

fn read_record(r: &rusqlite::Row) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        group: r.get(3)?,
        status: r.get(4)?,
        note: r.get(5)?,
        run_dir: r.get(6)?,
        config: r.get(7)?,
        config_hash: r.get(8)?,
        host: r.get(9)?,
        pid: r.get(10)?,
        started_at: r.get(11)?,
        ended_at: r.get(12)?,
        heartbeat_at: r.get(13)?,
        step: r.get::<_, i64>(14)? as u64,
        max_steps: r.get::<_, i64>(15)? as u64,
        summary: serde_json::from_str(&r.get::<_, String>(16)?).unwrap_or_default(),
        artifacts: serde_json::from_str(&r.get::<_, String>(17)?).unwrap_or_default(),
    })
}

/// The summary of a run from its metric rows: the latest value of each `SPLIT_KEY` and the
/// best validation loss with its step.
fn rebuild_summary(tx: &rusqlite::Transaction, id: &str) -> rusqlite::Result<String> {
    let mut summary = BTreeMap::new();
    let mut stmt = tx.prepare(
        "SELECT split, key, value FROM metrics m WHERE run_id = ?1
           AND step = (SELECT MAX(step) FROM metrics WHERE run_id = m.run_id AND split = m.split AND key = m.key)",
    )?;
    for row in stmt.query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?)))? {
        let (split, key, value) = row?;
        summary.insert(format!("{}_{key}", summary_split(&split)), value);
    }
    let best: Option<(f64, i64)> = tx
        .query_row(
            "SELECT value, step FROM metrics WHERE run_id = ?1 AND split IN ('val', 'validation') AND key = 'loss'
             ORDER BY value ASC, step ASC LIMIT 1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((loss, step)) = best {
        summary.insert("best_val_loss".to_string(), loss);
        summary.insert("best_step".to_string(), step as f64);
    }
    Ok(serde_json::to_string(&summary).expect("numbers serialise"))
}

/// Summary keys call fine-tuning's `validation` rows `val`, as pretraining's, so `val_loss`
/// lists and sorts every kind of run.
fn summary_split(split: &str) -> &str {
    if split == "validation" {
        "val"
    } else {
        split
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// 12 hex digits of SHA-256 over the run dir, the time and the pid: unique in practice, short
/// enough to type (a prefix works too).
fn new_run_id(run_dir: &str, now: f64) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(format!("{run_dir}\0{now}\0{}", std::process::id()).as_bytes());
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A process as the store identifies it: host, pid, and the pid's start time (clock ticks
/// after boot, from /proc), which tells a dead run from a new process that reused its pid.
struct ProcessId {
    host: String,
    pid: i64,
    start: Option<i64>,
}

impl ProcessId {
    fn current() -> Self {
        let pid = std::process::id() as i64;
        Self { host: lmforge::observe::host_name(), pid, start: process_start(pid) }
    }

    fn alive(pid: i64, start: Option<i64>) -> bool {
        if !cfg!(target_os = "linux") {
            return true; // unknown elsewhere: never declare a live run dead
        }
        match (process_start(pid), start) {
            (None, _) => false,
            (Some(now), Some(then)) => now == then,
            (Some(_), None) => true,
        }
    }
}

/// Field 22 of /proc/PID/stat (after the parenthesised command name, which may hold spaces).
fn process_start(pid: i64) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// What a new run record holds.
pub struct NewRun {
    pub name: String,
    pub kind: String,
    pub group: String,
    pub run_dir: String,
    pub config: String,
    pub config_hash: String,
    pub max_steps: u64,
}

/// The store as a run observer: records the run at its start (or picks up its record on a
/// resume), every metrics row, and its end with status and artifacts.
pub struct Recorder {
    store: Store,
    name: Option<String>,
    kind: String,
    group: String,
    id: Option<String>,
    run_dir: PathBuf,
}

impl Recorder {
    /// `name` None: the run dir's folder name.
    pub fn new(store: Store, kind: &str, name: Option<String>, group: &str) -> Self {
        Self { store, name, kind: kind.into(), group: group.into(), id: None, run_dir: PathBuf::new() }
    }

    /// The run's id once started.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

/// The canonical absolute form of a run dir (how the store keys runs).
pub fn run_dir_key(run_dir: &Path) -> String {
    std::fs::canonicalize(run_dir).unwrap_or_else(|_| run_dir.to_path_buf()).display().to_string()
}

impl RunObserver for Recorder {
    fn start(&mut self, start: &RunStart) -> Result<()> {
        self.run_dir = start.run_dir.to_path_buf();
        let dir = run_dir_key(start.run_dir);
        if let Some(step) = start.resumed_from {
            if let Some(rec) = self.store.run_by_dir(&dir)? {
                self.store.resume_run(&rec.id, step)?;
                self.id = Some(rec.id);
                return Ok(());
            }
        }
        let name = self.name.clone().unwrap_or_else(|| {
            start.run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.clone())
        });
        let id = self.store.insert_run(&NewRun {
            name,
            kind: self.kind.clone(),
            group: self.group.clone(),
            run_dir: dir,
            config: start.config_toml.clone(),
            config_hash: start.config_hash.clone(),
            max_steps: start.max_steps,
        })?;
        self.id = Some(id);
        Ok(())
    }

    fn row(&mut self, row: &MetricsRow) -> Result<()> {
        match &self.id {
            Some(id) => self.store.add_row(&id.clone(), row),
            None => Ok(()),
        }
    }

    fn end(&mut self, end: &RunEnd) -> Result<()> {
        let Some(id) = self.id.clone() else { return Ok(()) };
        let (status, note) = match end {
            RunEnd::Finished { .. } => ("finished", String::new()),
            RunEnd::Stopped { reason, .. } => ("stopped", reason.clone()),
            RunEnd::Failed { error } => ("failed", error.clone()),
        };
        let checkpoints: Vec<String> = lmforge::checkpoint::list_checkpoints(&self.run_dir)
            .unwrap_or_default()
            .into_iter()
            .map(|s| run_dir_key(&lmforge::checkpoint::checkpoint_dir(&self.run_dir, s)))
            .collect();
        let dir = run_dir_key(&self.run_dir);
        let artifacts = serde_json::json!({
            "run_dir": dir,
            "config": format!("{dir}/config.toml"),
            "metrics": format!("{dir}/metrics.jsonl"),
            "tensorboard": format!("{dir}/tb"),
            "checkpoints": checkpoints,
        });
        self.store.end_run(&id, status, &note, &artifacts)
    }

    fn name(&self) -> &str {
        "experiment store"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lmforge::train::RunConfig;

    fn row(step: u64, split: &str, values: &[(&str, f64)]) -> MetricsRow {
        MetricsRow { step, split: split.into(), values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect() }
    }

    fn record(store: &Store, dir: &Path, resumed_from: Option<u64>, kind: &str) -> Recorder {
        let mut rec = Recorder::new(Store::open(store.path()).unwrap(), kind, None, "");
        let cfg = RunConfig::from_toml_str("", &["train.max_steps=4".into()]).unwrap();
        rec.start(&RunStart::new(dir, &cfg, cfg.train.max_steps, resumed_from)).unwrap();
        rec
    }

    #[test]
    fn runs_metrics_and_statuses_are_recorded_and_a_resume_drops_rows_past_its_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(&tmp.path().join("db/lmforge.db")).unwrap();
        let dir = tmp.path().join("run-a");
        std::fs::create_dir_all(&dir).unwrap();
        let mut rec = record(&store, &dir, None, "train");
        let id = rec.id().unwrap().to_string();
        rec.row(&row(1, "train", &[("loss", 5.0), ("lr", 1e-3)])).unwrap();
        rec.row(&row(2, "val", &[("loss", 4.0), ("ppl", 54.6)])).unwrap();
        rec.row(&row(3, "train", &[("loss", 3.5)])).unwrap();
        rec.row(&row(4, "val", &[("loss", 4.5)])).unwrap();
        let r = store.find(&id).unwrap();
        assert_eq!((r.status.as_str(), r.step, r.max_steps, r.kind.as_str()), ("running", 4, 4, "train"));
        assert_eq!(r.summary["val_loss"], 4.5);
        assert_eq!(r.summary["best_val_loss"], 4.0);
        assert_eq!(r.summary["best_step"], 2.0);
        assert_eq!(r.summary["train_loss"], 3.5);
        rec.end(&RunEnd::Stopped { step: 4, reason: "interrupted by a signal".into() }).unwrap();
        let r = store.find(&id[..5]).unwrap();
        assert_eq!((r.status.as_str(), r.note.as_str()), ("stopped", "interrupted by a signal"));
        assert_eq!(r.artifacts["tensorboard"], format!("{}/tb", run_dir_key(&dir)));

        // Resumed from the checkpoint at step 2: the rows of steps 3 and 4 go, the summary follows.
        let mut rec = record(&store, &dir, Some(2), "train");
        assert_eq!(rec.id(), Some(id.as_str()), "a resume continues the same record");
        let r = store.find(&id).unwrap();
        assert_eq!(r.status, "running");
        assert_eq!(r.summary.get("val_loss"), Some(&4.0));
        assert_eq!(r.summary.get("train_loss"), Some(&5.0));
        rec.row(&row(4, "val", &[("loss", 3.0)])).unwrap();
        rec.end(&RunEnd::Finished { step: 4 }).unwrap();
        let r = store.find("run-a").unwrap();
        assert_eq!((r.status.as_str(), r.summary["best_val_loss"]), ("finished", 3.0));
        let m = store.metrics(&id).unwrap();
        assert_eq!(m.iter().filter(|p| p.split == "val" && p.key == "loss").count(), 2);
        assert!(m.iter().all(|p| p.step <= 4));

        let mut rec = record(&store, &tmp.path().join("run-b"), None, "trial");
        rec.end(&RunEnd::Failed { error: "loss became NaN".into() }).unwrap();
        let all = store.list().unwrap();
        assert_eq!(all.len(), 2);
        store.remove(std::slice::from_ref(&id)).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert!(store.metrics(&id).unwrap().is_empty());
    }

    #[test]
    fn a_run_whose_process_died_is_marked_failed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = Store::open(&tmp.path().join("lmforge.db")).unwrap();
        let id = store
            .insert_run(&NewRun {
                name: "ghost".into(),
                kind: "train".into(),
                group: String::new(),
                run_dir: "/nowhere".into(),
                config: String::new(),
                config_hash: String::new(),
                max_steps: 10,
            })
            .unwrap();
        assert_eq!(store.find(&id).unwrap().status, "running", "this process is alive");
        // Pretend it belonged to a process that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i64;
        child.wait().unwrap();
        store.conn.execute("UPDATE runs SET pid = ?1 WHERE id = ?2", params![pid, id]).unwrap();
        let r = store.find(&id).unwrap();
        assert_eq!(r.status, "failed");
        assert!(r.note.contains("crashed or killed"), "{}", r.note);
        // Another host's silent run is shown stale, not failed.
        store.conn.execute("UPDATE runs SET status = 'running', host = 'elsewhere', heartbeat_at = 0", []).unwrap();
        let r = store.find(&id).unwrap();
        assert_eq!((r.status.as_str(), r.shown_status(now_s())), ("running", "stale"));
    }

    /// Two writers with their own connections (as two processes have), each logging many rows
    /// in its own transactions at the same time: nothing is lost.
    #[test]
    fn concurrent_writers_lose_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lmforge.db");
        let handles: Vec<_> = (0..2)
            .map(|w| {
                let path = path.clone();
                let dir = tmp.path().join(format!("run-{w}"));
                std::thread::spawn(move || {
                    let mut store = Store::open(&path).unwrap();
                    let id = store
                        .insert_run(&NewRun {
                            name: format!("w{w}"),
                            kind: "train".into(),
                            group: String::new(),
                            run_dir: dir.display().to_string(),
                            config: String::new(),
                            config_hash: String::new(),
                            max_steps: 300,
                        })
                        .unwrap();
                    for step in 1..=300 {
                        store.add_row(&id, &row(step, "train", &[("loss", step as f64), ("lr", 0.1)])).unwrap();
                    }
                    id
                })
            })
            .collect();
        let ids: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut store = Store::open(&path).unwrap();
        for id in &ids {
            assert_eq!(store.metrics(id).unwrap().len(), 600);
            let r = store.find(id).unwrap();
            assert_eq!((r.step, r.summary["train_loss"]), (300, 300.0));
        }
    }

    #[test]
    fn filters_and_sorting_read_columns_metrics_and_config_keys() {
        let mut a = RunRecord {
            id: "aaa".into(),
            name: "lr-small".into(),
            kind: "train".into(),
            group: String::new(),
            status: "finished".into(),
            note: String::new(),
            run_dir: String::new(),
            config: RunConfig::from_toml_str("", &["optim.lr=0.001".into()]).unwrap().to_toml(),
            config_hash: String::new(),
            host: String::new(),
            pid: 0,
            started_at: 0.0,
            ended_at: None,
            heartbeat_at: 0.0,
            step: 10,
            max_steps: 10,
            summary: BTreeMap::from([("val_loss".to_string(), 3.0)]),
            artifacts: serde_json::Value::Null,
        };
        let mut b = a.clone();
        b.id = "bbb".into();
        b.name = "lr-big".into();
        b.status = "stopped".into();
        b.config = RunConfig::from_toml_str("", &["optim.lr=0.01".into()]).unwrap().to_toml();
        b.summary.insert("val_loss".into(), 2.5);
        let f = |s: &str| Filter::parse(s).unwrap();
        assert!(f("status=finished").matches(&a) && !f("status=finished").matches(&b));
        assert!(f("val_loss<2.8").matches(&b) && !f("val_loss<2.8").matches(&a));
        assert!(f("val_loss>=3").matches(&a));
        assert!(f("optim.lr>0.005").matches(&b) && !f("optim.lr>0.005").matches(&a));
        assert!(f("name~big").matches(&b) && !f("name~big").matches(&a));
        assert!(f("optim.name=adamw").matches(&a));
        assert!(f("status!=finished").matches(&b));
        assert!(Filter::parse("val_loss").is_err());
        a.summary.clear();
        let mut runs = vec![a.clone(), b.clone()];
        sort_runs(&mut runs, "val_loss");
        assert_eq!(runs[0].id, "bbb", "runs without the metric go last");
        sort_runs(&mut runs, "-name");
        assert_eq!(runs[0].id, "aaa");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lmforge.db");
        drop(Store::open(&path).unwrap());
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        let e = Store::open(&path).err().unwrap().to_string();
        assert!(e.contains("newer") && e.contains("99"), "{e}");
    }
}
