//! Text views of stored runs for `lmforge runs list | show | compare`: fixed-width tables a
//! terminal reads, built from [`RunRecord`]s without touching the database.

use super::RunRecord;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Metrics shown in `runs list` and first in `runs compare`, in this order.
const HEADLINE: [(&str, &str); 5] = [
    ("val_loss", "val loss"),
    ("best_val_loss", "best val"),
    ("val_bits_per_byte", "bits/byte"),
    ("train_loss", "train loss"),
    ("train_tokens_per_s", "tokens/s"),
];

/// `2026-03-21 10:12` (UTC) from Unix seconds.
pub fn utc_minute(secs: f64) -> String {
    // Civil date from days since 1970-01-01 (H. Hinnant's `civil_from_days`).
    let s = secs.max(0.0) as i64;
    let (days, rem) = (s.div_euclid(86_400), s.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// `1h02m`, `3m05s`, `12s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn metric(run: &RunRecord, key: &str) -> String {
    match run.summary.get(key) {
        Some(v) if key.ends_with("tokens_per_s") => format!("{v:.0}"),
        Some(v) => format!("{v:.4}"),
        None => "-".into(),
    }
}

/// The `runs list` table.
pub fn list_table(runs: &[RunRecord], now: f64) -> String {
    let mut out = String::new();
    let name_w = runs.iter().map(|r| r.name.chars().count()).max().unwrap_or(4).clamp(4, 40);
    let _ = write!(out, "{:<12}  {:<name_w$}  {:<10}  {:<8}  {:>11}", "id", "name", "kind", "status", "step");
    for (_, label) in HEADLINE {
        let _ = write!(out, "  {label:>10}");
    }
    let _ = writeln!(out, "  {:<16}  {:>8}", "started (UTC)", "time");
    for r in runs {
        let name: String = r.name.chars().take(name_w).collect();
        let step = format!("{}/{}", r.step, r.max_steps);
        let _ = write!(out, "{:<12}  {name:<name_w$}  {:<10}  {:<8}  {step:>11}", r.id, r.kind, r.shown_status(now));
        for (key, _) in HEADLINE {
            let _ = write!(out, "  {:>10}", metric(r, key));
        }
        let took = r.ended_at.unwrap_or(if r.status == "running" { now } else { r.heartbeat_at }) - r.started_at;
        let _ = writeln!(out, "  {:<16}  {:>8}", utc_minute(r.started_at), duration(took));
    }
    if runs.is_empty() {
        out.push_str("(no runs)\n");
    }
    out
}

/// Everything recorded about one run.
pub fn show(run: &RunRecord, now: f64, metric_rows: usize) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        if !v.is_empty() {
            let _ = writeln!(out, "{k:<13} {v}");
        }
    };
    line("id", &run.id);
    line("name", &run.name);
    line("kind", &run.kind);
    line("group", &run.group);
    line("status", run.shown_status(now));
    line("note", &run.note);
    line("step", &format!("{}/{}", run.step, run.max_steps));
    line("run dir", &run.run_dir);
    line("config hash", &run.config_hash);
    line("host / pid", &format!("{} / {}", run.host, run.pid));
    line("started", &format!("{} UTC", utc_minute(run.started_at)));
    if let Some(end) = run.ended_at {
        line("ended", &format!("{} UTC ({})", utc_minute(end), duration(end - run.started_at)));
    }
    line("metric rows", &metric_rows.to_string());
    let _ = writeln!(out, "\nmetrics (latest, best):");
    for (k, v) in &run.summary {
        let _ = writeln!(out, "  {k:<24} {v:.6}");
    }
    if let Some(a) = run.artifacts.as_object().filter(|a| !a.is_empty()) {
        let _ = writeln!(out, "\nartifacts:");
        for (k, v) in a {
            match v.as_array() {
                Some(list) => {
                    for item in list {
                        let _ = writeln!(out, "  {k:<12} {}", item.as_str().unwrap_or_default());
                    }
                }
                None => {
                    let _ = writeln!(out, "  {k:<12} {}", v.as_str().unwrap_or_default());
                }
            }
        }
    }
    let _ = writeln!(out, "\nconfig:\n{}", run.config.trim_end());
    out
}

/// `runs compare`: the config keys whose values differ, then the metrics side by side.
pub fn compare(runs: &[RunRecord]) -> String {
    let flat: Vec<BTreeMap<String, String>> = runs
        .iter()
        .map(|r| match r.config.parse::<toml::Table>() {
            Ok(cfg) => lmforge::config::flatten(&cfg).into_iter().map(|(k, v)| (k, v.to_string())).collect(),
            Err(_) => BTreeMap::new(),
        })
        .collect();
    let keys: BTreeSet<&String> = flat.iter().flat_map(|f| f.keys()).collect();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| {
            let first = flat[0].get(*k);
            flat.iter().any(|f| f.get(*k) != first)
        })
        .collect();
    let col_w = runs.iter().map(|r| r.name.chars().count().max(r.id.len())).max().unwrap_or(8).clamp(10, 32);
    let key_w = differing.iter().map(|k| k.len()).max().unwrap_or(0).max(22);
    let mut out = String::new();
    let header = |out: &mut String, first: &str| {
        let _ = write!(out, "{first:<key_w$}");
        for r in runs {
            let n: String = r.name.chars().take(col_w).collect();
            let _ = write!(out, "  {n:>col_w$}");
        }
        out.push('\n');
    };
    header(&mut out, "run");
    let _ = write!(out, "{:<key_w$}", "id");
    for r in runs {
        let _ = write!(out, "  {:>col_w$}", r.id);
    }
    out.push('\n');
    let _ = writeln!(out, "\nconfig differences ({}):", differing.len());
    if differing.is_empty() {
        out.push_str("  (identical configs)\n");
    }
    for k in differing {
        let _ = write!(out, "{k:<key_w$}");
        for f in &flat {
            let v: String = f.get(k).map(String::as_str).unwrap_or("-").chars().take(col_w).collect();
            let _ = write!(out, "  {v:>col_w$}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\nmetrics:");
    let mut metric_keys: Vec<String> = HEADLINE.iter().map(|(k, _)| k.to_string()).collect();
    for r in runs {
        for k in r.summary.keys() {
            if !metric_keys.contains(k) {
                metric_keys.push(k.clone());
            }
        }
    }
    let mut rows = vec![
        ("status".to_string(), runs.iter().map(|r| r.status.clone()).collect::<Vec<_>>()),
        ("step".to_string(), runs.iter().map(|r| format!("{}/{}", r.step, r.max_steps)).collect()),
    ];
    for k in metric_keys {
        rows.push((k.clone(), runs.iter().map(|r| metric(r, &k)).collect()));
    }
    for (k, vals) in rows {
        let _ = write!(out, "{k:<key_w$}");
        for v in vals {
            let _ = write!(out, "  {v:>col_w$}");
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_utc_minutes_and_durations() {
        assert_eq!(utc_minute(0.0), "1970-01-01 00:00");
        assert_eq!(utc_minute(1_700_000_000.0), "2023-11-14 22:13");
        assert_eq!(utc_minute(951_782_400.0), "2000-02-29 00:00");
        assert_eq!(duration(12.4), "12s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
    }
}
