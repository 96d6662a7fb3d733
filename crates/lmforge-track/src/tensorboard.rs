//! TensorBoard event files: every scalar of a run's metrics rows (loss, learning rate,
//! tokens/s, gradient norm, validation loss / perplexity / bits per byte) written to
//! `RUN_DIR/tb/events.out.tfevents.*` as TensorBoard reads them, plus the run's hyperparameters
//! for the hparams plugin. A file is a sequence of records — u64 length, masked CRC-32C of the
//! length, the bytes, masked CRC-32C of the bytes (TensorFlow's `record_writer.cc`) — each
//! holding one `Event` protobuf (`tensorboard/compat/proto/event.proto`). The handful of
//! protobuf fields needed are encoded by hand here; [`read_events`] decodes them back (and
//! checks every CRC), which the tests use. A resumed run starts a new file with a
//! `SessionLog START` at the first resumed step, which tells TensorBoard to drop the rows the
//! interrupted process wrote past its checkpoint.

use lmforge::error::{Error, IoContext, Result};
use lmforge::observe::{MetricsRow, RunEnd, RunObserver, RunStart};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Keys always shown in the hparams dashboard; any other key differing from the defaults too.
const HPARAM_KEYS: [&str; 9] = [
    "model.preset",
    "optim.name",
    "optim.lr",
    "optim.weight_decay",
    "schedule.kind",
    "train.batch_size",
    "train.seq_len",
    "train.max_steps",
    "train.seed",
];

/// An open `events.out.tfevents.*` file, appended to and flushed per event so a running job
/// can be watched live.
pub struct EventWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new event file in `dir` (named as TensorFlow names them: time, host, pid) and
    /// writes the `file_version` event TensorBoard expects first.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).at(dir)?;
        let secs = wall_time() as u64;
        let host = lmforge::observe::host_name();
        let mut n = 0;
        let path = loop {
            let p = dir.join(format!("events.out.tfevents.{secs:010}.{host}.{}.{n}", std::process::id()));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        let file = lmforge::fsio::open_append(&path)?;
        let mut w = Self { file: std::io::BufWriter::new(file), path };
        let mut e = event_header(wall_time(), 0);
        e.string(3, "brain.Event:2");
        w.write_event(&e.0)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One scalar (TensorBoard's `simple_value` is a float32).
    pub fn scalar(&mut self, tag: &str, step: u64, value: f64) -> Result<()> {
        let mut v = Proto::default();
        v.string(1, tag);
        v.f32(2, value as f32);
        self.summary(step, &[v])
    }

    /// Several scalars of one step in one event.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let vs: Vec<Proto> = values
            .iter()
            .map(|(tag, value)| {
                let mut v = Proto::default();
                v.string(1, tag);
                v.f32(2, *value as f32);
                v
            })
            .collect();
        self.summary(step, &vs)
    }

    /// `SessionLog { status: START }` at `step`: TensorBoard discards events of a previous
    /// session at or past this step (the rows a crashed process logged after its checkpoint).
    pub fn session_start(&mut self, step: u64) -> Result<()> {
        let mut log = Proto::default();
        log.varint(1, 1);
        let mut e = event_header(wall_time(), step);
        e.message(7, &log);
        self.write_event(&e.0)
    }

    /// The hparams plugin's session start: the run's hyperparameters (numbers, strings, bools).
    pub fn hparams(&mut self, hparams: &[(String, HParam)], group: &str) -> Result<()> {
        let mut start = Proto::default();
        for (key, value) in hparams {
            let mut v = Proto::default();
            match value {
                HParam::Number(x) => v.f64(2, *x),
                HParam::Text(s) => v.string(3, s),
                HParam::Bool(b) => v.varint(4, *b as u64),
            }
            let mut entry = Proto::default();
            entry.string(1, key);
            entry.message(2, &v);
            start.message(1, &entry);
        }
        start.string(4, group);
        start.f64(5, wall_time());
        self.hparams_plugin("_hparams_/session_start_info", 3, &start)
    }

    /// The hparams plugin's session end: 1 success, 2 failure.
    pub fn hparams_end(&mut self, status: u64) -> Result<()> {
        let mut end = Proto::default();
        end.varint(1, status);
        end.f64(2, wall_time());
        self.hparams_plugin("_hparams_/session_end_info", 4, &end)
    }

    /// A summary value that carries only plugin data, as `tensorboard.plugins.hparams`
    /// writes it: `HParamsPluginData { version: 0, <field>: data }` in the metadata and a
    /// null float tensor as the value.
    fn hparams_plugin(&mut self, tag: &str, field: u32, data: &Proto) -> Result<()> {
        let mut content = Proto::default();
        content.varint(1, 0);
        content.message(field, data);
        let mut plugin = Proto::default();
        plugin.string(1, "hparams");
        plugin.bytes(2, &content.0);
        let mut meta = Proto::default();
        meta.message(1, &plugin);
        let mut tensor = Proto::default();
        tensor.varint(1, 1); // DT_FLOAT
        tensor.message(2, &Proto::default()); // scalar shape
        tensor.bytes(5, &0f32.to_le_bytes()); // packed float_val [0.0]
        let mut v = Proto::default();
        v.string(1, tag);
        v.message(9, &meta);
        v.message(8, &tensor);
        self.summary(0, &[v])
    }

    fn summary(&mut self, step: u64, values: &[Proto]) -> Result<()> {
        let mut summary = Proto::default();
        for v in values {
            summary.message(1, v);
        }
        let mut e = event_header(wall_time(), step);
        e.message(5, &summary);
        self.write_event(&e.0)
    }

    fn write_event(&mut self, event: &[u8]) -> Result<()> {
        let len = (event.len() as u64).to_le_bytes();
        let w = &mut self.file;
        w.write_all(&len).at(&self.path)?;
        w.write_all(&masked_crc(&len).to_le_bytes()).at(&self.path)?;
        w.write_all(event).at(&self.path)?;
        w.write_all(&masked_crc(event).to_le_bytes()).at(&self.path)?;
        w.flush().at(&self.path)
    }
}

/// A hyperparameter value as the hparams plugin types it.
#[derive(Debug, Clone, PartialEq)]
pub enum HParam {
    Number(f64),
    Text(String),
    Bool(bool),
}

/// The run's hyperparameters for the hparams dashboard: [`HPARAM_KEYS`] and every other
/// scalar key whose value differs from the built-in default (so a sweep's varied keys show).
pub fn hparams_of(start: &RunStart) -> Vec<(String, HParam)> {
    start
        .flat
        .clone()
        .into_iter()
        .filter(|(k, v)| HPARAM_KEYS.contains(&k.as_str()) || start.default_flat.get(k) != Some(v))
        .filter_map(|(k, v)| {
            let h = match v {
                toml::Value::Integer(i) => HParam::Number(i as f64),
                toml::Value::Float(x) => HParam::Number(x),
                toml::Value::Boolean(b) => HParam::Bool(b),
                toml::Value::String(s) => HParam::Text(s),
                _ => return None,
            };
            Some((k, h))
        })
        .collect()
}

/// Writes each metrics row as scalars `SPLIT/KEY` (`train/loss`, `val/bits_per_byte`, ...).
#[derive(Default)]
pub struct TensorBoardObserver {
    writer: Option<EventWriter>,
}

impl TensorBoardObserver {
    /// Events go to `RUN_DIR/tb/`, created when the run starts. Where it cannot be written,
    /// the observer is dropped with a warning: the events are a view of `metrics.jsonl`, not
    /// the record.
    pub fn new() -> Self {
        Self::default()
    }

    fn writer(&mut self) -> Result<&mut EventWriter> {
        self.writer.as_mut().ok_or_else(|| Error::Invalid("TensorBoard writer used before the run started".into()))
    }
}

impl RunObserver for TensorBoardObserver {
    fn start(&mut self, start: &RunStart) -> Result<()> {
        let mut w = EventWriter::create(&start.run_dir.join("tb"))?;
        if let Some(step) = start.resumed_from {
            // The checkpoint's own step stays; what came after it is replaced.
            w.session_start(step + 1)?;
        }
        let group = start.run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        w.hparams(&hparams_of(start), &group)?;
        self.writer = Some(w);
        Ok(())
    }

    fn row(&mut self, row: &MetricsRow) -> Result<()> {
        let values: Vec<(String, f64)> = row.values.iter().map(|(k, v)| (format!("{}/{k}", row.split), *v)).collect();
        self.writer()?.scalars(row.step, &values)
    }

    fn end(&mut self, end: &RunEnd) -> Result<()> {
        // A stopped run goes on after a resume; TensorBoard keeps the first session end it
        // reads for a tag, so only a real end is written.
        let status = match end {
            RunEnd::Finished { .. } => 1,
            RunEnd::Failed { .. } => 2,
            RunEnd::Stopped { .. } => return Ok(()),
        };
        match self.writer.as_mut() {
            Some(w) => w.hparams_end(status),
            None => Ok(()),
        }
    }

    fn name(&self) -> &str {
        "tensorboard"
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn event_header(wall_time: f64, step: u64) -> Proto {
    let mut e = Proto::default();
    e.f64(1, wall_time);
    e.varint(2, step);
    e
}

/// CRC-32C, rotated and offset as TensorFlow masks it (a CRC of data that embeds CRCs is
/// otherwise prone to collisions).
pub fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// The few protobuf wire-format writes events need.
#[derive(Default)]
struct Proto(Vec<u8>);

impl Proto {
    fn key(&mut self, field: u32, wire: u8) {
        self.raw_varint(((field as u64) << 3) | wire as u64);
    }
    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn varint(&mut self, field: u32, v: u64) {
        self.key(field, 0);
        self.raw_varint(v);
    }
    fn f64(&mut self, field: u32, v: f64) {
        self.key(field, 1);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn f32(&mut self, field: u32, v: f32) {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.key(field, 2);
        self.raw_varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn message(&mut self, field: u32, m: &Proto) {
        self.bytes(field, &m.0);
    }
}

/// One decoded event: what lmforge writes, read back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: u64,
    pub file_version: Option<String>,
    /// `(tag, simple_value)` of the summary's scalar values.
    pub scalars: Vec<(String, f32)>,
    /// Plugin names of summary values carrying plugin data (`hparams`).
    pub plugins: Vec<(String, String)>,
    /// `SessionLog.status` (1 = START).
    pub session_status: Option<u64>,
}

/// Reads every record of an event file, checking both CRCs of each, and decodes the events.
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).at(path)?;
    let bad = |at: usize, msg: &str| Error::format(path, format!("record at byte {at}: {msg}"));
    let mut events = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let head = bytes.get(at..at + 12).ok_or_else(|| bad(at, "truncated header"))?;
        let len = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) != masked_crc(&head[..8]) {
            return Err(bad(at, "length CRC mismatch"));
        }
        let start = at + 12;
        let end =
            start.checked_add(len as usize).filter(|e| e + 4 <= bytes.len()).ok_or_else(|| bad(at, "truncated"))?;
        let data = &bytes[start..end];
        if u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes")) != masked_crc(data) {
            return Err(bad(at, "data CRC mismatch"));
        }
        events.push(decode_event(data).ok_or_else(|| bad(at, "not an Event protobuf"))?);
        at = end + 4;
    }
    Ok(events)
}

/// Every event of every `events.out.tfevents.*` file in `dir`, files in name (time) order.
pub fn read_dir_events(dir: &Path) -> Result<Vec<Event>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents.")))
        .collect();
    files.sort();
    let mut all = Vec::new();
    for f in files {
        all.extend(read_events(&f)?);
    }
    Ok(all)
}

/// One protobuf field: its number and its value (varint, fixed 64/32 bits, or bytes).
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

fn fields(mut b: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let field = (key >> 3) as u32;
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            1 => {
                let (v, rest) = b.split_at_checked(8)?;
                b = rest;
                Field::Fixed64(v.try_into().ok()?)
            }
            2 => {
                let n = varint(&mut b)? as usize;
                let (v, rest) = b.split_at_checked(n)?;
                b = rest;
                Field::Bytes(v)
            }
            5 => {
                let (v, rest) = b.split_at_checked(4)?;
                b = rest;
                Field::Fixed32(v.try_into().ok()?)
            }
            _ => return None,
        };
        out.push((field, value));
    }
    Some(out)
}

fn decode_event(data: &[u8]) -> Option<Event> {
    let mut e = Event::default();
    for (field, value) in fields(data)? {
        match (field, value) {
            (1, Field::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => e.step = v,
            (3, Field::Bytes(b)) => e.file_version = Some(String::from_utf8(b.to_vec()).ok()?),
            (5, Field::Bytes(summary)) => {
                for (f, value) in fields(summary)? {
                    let (1, Field::Bytes(v)) = (f, value) else { continue };
                    let (mut tag, mut simple, mut plugin) = (String::new(), None, None);
                    for (f, x) in fields(v)? {
                        match (f, x) {
                            (1, Field::Bytes(t)) => tag = String::from_utf8(t.to_vec()).ok()?,
                            (2, Field::Fixed32(x)) => simple = Some(f32::from_le_bytes(x)),
                            (9, Field::Bytes(meta)) => {
                                for (f, pd) in fields(meta)? {
                                    if let (1, Field::Bytes(pd)) = (f, pd) {
                                        for (f, name) in fields(pd)? {
                                            if let (1, Field::Bytes(n)) = (f, name) {
                                                plugin = Some(String::from_utf8(n.to_vec()).ok()?);
                                            }
                                        }
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    if let Some(x) = simple {
                        e.scalars.push((tag.clone(), x));
                    }
                    if let Some(p) = plugin {
                        e.plugins.push((tag, p));
                    }
                }
            }
            (7, Field::Bytes(log)) => {
                for (f, v) in fields(log)? {
                    if let (1, Field::Varint(s)) = (f, v) {
                        e.session_status = Some(s);
                    }
                }
            }
            _ => {}
        }
    }
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TensorFlow's published CRC-32C check value and the record framing of an empty event.
    #[test]
    fn crc_is_castagnoli_and_masked_like_tensorflow() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8, worked out by hand.
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
    }

    #[test]
    fn scalars_read_back_with_their_steps_tags_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("train/loss", 1, 5.25).unwrap();
        w.scalars(300, &[("val/loss".into(), 2.5), ("val/ppl".into(), 12.182)]).unwrap();
        w.session_start(7).unwrap();
        w.hparams(&[("optim.lr".into(), HParam::Number(1e-3))], "g").unwrap();
        let events = read_events(w.path()).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        assert_eq!(events[1].step, 1);
        assert_eq!(events[1].scalars, vec![("train/loss".to_string(), 5.25f32)]);
        assert_eq!(events[2].step, 300);
        assert_eq!(events[2].scalars, vec![("val/loss".to_string(), 2.5f32), ("val/ppl".to_string(), 12.182f32)]);
        assert_eq!(events[3].session_status, Some(1));
        assert_eq!(events[3].step, 7);
        assert_eq!(events[4].plugins, vec![("_hparams_/session_start_info".to_string(), "hparams".to_string())]);
        assert!(events.iter().all(|e| e.wall_time > 1.6e9));
    }

    #[test]
    fn a_flipped_byte_fails_the_crc() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalar("train/loss", 1, 5.25).unwrap();
        let path = w.path().to_path_buf();
        drop(w);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = read_events(&path).unwrap_err().to_string();
        assert!(e.contains("data CRC mismatch"), "{e}");
    }

    #[test]
    fn hparams_are_the_core_keys_and_the_changed_ones() {
        use lmforge::train::RunConfig;
        let cfg = RunConfig::from_toml_str("", &["optim.lr=0.01".into(), "model.dropout=0.1".into()]).unwrap();
        let h = hparams_of(&RunStart::new(Path::new("run"), &cfg, 1, None));
        let get = |k: &str| h.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("optim.lr"), Some(HParam::Number(0.01)));
        assert_eq!(get("model.dropout"), Some(HParam::Number(0.1)));
        assert_eq!(get("optim.name"), Some(HParam::Text("adamw".into())));
        assert_eq!(get("data.minhash_perms"), None, "unchanged non-core keys stay out");
    }
}
