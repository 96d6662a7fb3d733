//! `lmforge report`: one self-contained HTML page (inline CSS, charts as inline SVG drawn by
//! `plotters`, no scripts, nothing fetched) for a run or a sweep. A run's page shows its
//! summary, the config keys that differ from the defaults, and loss (train and validation),
//! learning rate, tokens/s and gradient-norm curves from `metrics.jsonl`. A sweep's page shows
//! every trial's validation curve (early-stopped ones dashed grey and crossed where they
//! stopped, the best one bold), the metric against each hyperparameter (log axes for log
//! scales), the trials table and `best.toml`. A cross-validation's page (`finetune --folds`)
//! shows each fold's final metrics with their mean ± std and every fold's validation curve.

use crate::sweep::{read_meta, read_trials, SweepMeta, Trial, TrialStatus};
use lmforge::config::flatten;
use lmforge::error::{Error, IoContext, Result};
use lmforge::train::RunConfig;
use plotters::prelude::*;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const WIDTH: u32 = 920;
const HEIGHT: u32 = 340;
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];
const STOPPED: RGBColor = RGBColor(150, 150, 150);

/// Writes the report for `target` (a run dir, a sweep dir, or a run in the store at `db`) to
/// `out` (default `report.html` inside it) and returns the path.
pub fn write_report(target: &str, out: Option<&Path>, db: &Path) -> Result<PathBuf> {
    let path = Path::new(target);
    let (dir, html) = if path.join("sweep.json").is_file() {
        (path.to_path_buf(), sweep_report(path)?)
    } else if path.join("cv.json").is_file() {
        (path.to_path_buf(), cv_report(path)?)
    } else if path.join("metrics.jsonl").is_file() {
        (path.to_path_buf(), run_report(path)?)
    } else {
        let mut store = crate::store::Store::open(db)?;
        let rec = store.find(target).map_err(|e| {
            Error::Invalid(format!(
                "{target:?} is not a run dir (metrics.jsonl), a sweep dir (sweep.json), a cross-validation \
                 (cv.json), or a stored run: {e}"
            ))
        })?;
        let dir = PathBuf::from(&rec.run_dir);
        (dir.clone(), run_report(&dir)?)
    };
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| dir.join("report.html"));
    lmforge::fsio::write_atomic(&out, html.as_bytes())?;
    Ok(out)
}

/// One curve: points, colour, and how it is drawn.
struct Series {
    label: Option<String>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    width: u32,
    dashed: bool,
    markers: bool,
    /// A cross on the last point (where an early-stopped trial ended).
    end_cross: bool,
}

impl Series {
    fn line(label: &str, points: Vec<(f64, f64)>, color: RGBColor) -> Self {
        Self { label: Some(label.into()), points, color, width: 2, dashed: false, markers: false, end_cross: false }
    }
}

fn chart_err(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("drawing a chart: {e}"))
}

/// The bounds of the finite values, padded by 5% (a flat series gets ±1 or ±5%).
fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) =
        values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !lo.is_finite() {
        return None;
    }
    let pad = if hi > lo { (hi - lo) * 0.05 } else { (lo.abs() * 0.05).max(1e-9) };
    Some((lo - pad, hi + pad))
}

/// A line chart as an SVG string.
fn line_chart(title: &str, x_desc: &str, y_desc: &str, series: &[Series]) -> Result<String> {
    let xs = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.0)));
    let ys = bounds(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
    let (Some((x0, x1)), Some((y0, mut y1))) = (xs, ys) else { return Ok(String::new()) };
    let legend_entries = series.iter().filter(|s| s.label.is_some()).count();
    if legend_entries > 0 {
        // Headroom for the legend in the upper right, above curves that start high and fall.
        y1 += (y1 - y0) * (0.15 + 0.1 * legend_entries as f64);
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x0.max(0.0)..x1, y0..y1)
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .light_line_style(RGBColor(235, 235, 235))
            .y_label_formatter(&|v| tick(*v))
            // Steps are integers: fractional ticks of a short run stay unlabelled.
            .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-9 { format!("{v:.0}") } else { String::new() })
            .draw()
            .map_err(chart_err)?;
        let mut labelled = false;
        for s in series {
            let style = s.color.stroke_width(s.width);
            let anno = if s.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 6, 4, style)).map_err(chart_err)?
            } else {
                chart.draw_series(LineSeries::new(s.points.iter().copied(), style)).map_err(chart_err)?
            };
            if let Some(label) = &s.label {
                let (color, width) = (s.color, s.width);
                anno.label(label.as_str())
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(width)));
                labelled = true;
            }
            if s.markers {
                chart.draw_series(s.points.iter().map(|p| Circle::new(*p, 3, s.color.filled()))).map_err(chart_err)?;
            }
            if let (true, Some(last)) = (s.end_cross, s.points.last()) {
                chart.draw_series([Cross::new(*last, 5, s.color.stroke_width(2))]).map_err(chart_err)?;
            }
        }
        if labelled {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(chart_err)?;
        }
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

/// A scatter of the metric against one hyperparameter: finished trials as dots, stopped ones
/// as grey crosses (their metric is from an earlier step), the best one ringed. `categories`
/// places choices at 0, 1, ...; `log` plots log10 of the value with 10^k ticks.
fn scatter_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    points: &[(f64, f64, TrialStatus, bool)],
    log: bool,
    categories: Option<&[String]>,
) -> Result<String> {
    let pts: Vec<(f64, f64, TrialStatus, bool)> =
        points.iter().map(|&(x, y, s, b)| (if log { x.log10() } else { x }, y, s, b)).collect();
    let xs = match categories {
        Some(c) => Some((-0.5, c.len() as f64 - 0.5)),
        None => bounds(pts.iter().map(|p| p.0)),
    };
    let (Some((x0, x1)), Some((y0, y1))) = (xs, bounds(pts.iter().map(|p| p.1))) else { return Ok(String::new()) };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH / 2 - 10, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(65)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(chart_err)?;
        let x_fmt = |v: &f64| match categories {
            Some(c) => {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < c.len() {
                    c[i as usize].clone()
                } else {
                    String::new()
                }
            }
            None if log => tick(10f64.powf(*v)),
            None => tick(*v),
        };
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(if log { format!("{x_desc} (log scale)") } else { x_desc.to_string() })
            .y_desc(y_desc)
            .light_line_style(RGBColor(235, 235, 235))
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&|v| tick(*v));
        if let Some(c) = categories {
            mesh.x_labels(c.len() * 2 + 1);
        }
        mesh.draw().map_err(chart_err)?;
        let finished = pts.iter().filter(|p| p.2 != TrialStatus::Stopped);
        chart.draw_series(finished.map(|p| Circle::new((p.0, p.1), 4, PALETTE[0].filled()))).map_err(chart_err)?;
        let stopped = pts.iter().filter(|p| p.2 == TrialStatus::Stopped);
        chart.draw_series(stopped.map(|p| Cross::new((p.0, p.1), 4, STOPPED.stroke_width(2)))).map_err(chart_err)?;
        let best = pts.iter().filter(|p| p.3);
        chart.draw_series(best.map(|p| Circle::new((p.0, p.1), 8, PALETTE[3].stroke_width(2)))).map_err(chart_err)?;
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

/// Axis numbers that stay short: 0.0003 → 3e-4, 12000 → 1.2e4, 2.5 → 2.5.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e4).contains(&a) {
        let s = format!("{v:.1e}");
        s.replace(".0e", "e")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn read_rows(run_dir: &Path) -> Result<Vec<Value>> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).at(&path)?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// (step, value) of `key` in the rows of `split`.
fn curve(rows: &[Value], split: &str, key: &str) -> Vec<(f64, f64)> {
    rows.iter()
        .filter(|r| r["split"] == split)
        .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
        .filter(|p| p.1.is_finite())
        .collect()
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>{t}</title>\n<style>\n\
         body{{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:960px;color:#222}}\n\
         h1{{font-size:22px;margin-bottom:4px}} h2{{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}}\n\
         .sub{{color:#666;font-size:13px}} table{{border-collapse:collapse;font-size:13px;margin:8px 0}}\n\
         td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}} th{{background:#f4f4f4}} td.l,th.l{{text-align:left}}\n\
         tr.best td{{background:#fff4d6;font-weight:600}} tr.stopped td{{color:#888}} tr.failed td{{color:#b00}}\n\
         .chart{{margin:10px 0}} .pair{{display:flex;flex-wrap:wrap;gap:20px}}\n\
         pre{{background:#f7f7f7;padding:10px;font-size:12px;overflow:auto;max-height:400px}}\n\
         </style></head><body>\n<h1>{t}</h1>\n{body}\n<p class=\"sub\">Generated by lmforge {v}.</p>\n</body></html>\n",
        t = esc(title),
        v = env!("CARGO_PKG_VERSION"),
    )
}

fn chart_div(svg: String) -> String {
    if svg.is_empty() {
        String::new()
    } else {
        format!("<div class=\"chart\">{svg}</div>\n")
    }
}

/// The page of one run.
pub fn run_report(run_dir: &Path) -> Result<String> {
    let rows = read_rows(run_dir)?;
    let cfg_path = run_dir.join("config.toml");
    let text = std::fs::read_to_string(&cfg_path).at(&cfg_path)?;
    let table: toml::Table = text.parse().map_err(|e| Error::format(&cfg_path, format!("invalid TOML: {e}")))?;
    let flat = flatten(&table);
    // The keys worth showing differ from the defaults of the config's kind.
    let defaults = if RunConfig::from_toml_str(&text, &[]).is_ok() {
        flatten(&RunConfig::default())
    } else if lmforge::finetune::FinetuneConfig::from_toml_str(&text).is_ok() {
        flatten(&lmforge::finetune::FinetuneConfig::default())
    } else {
        Default::default()
    };
    let text_of = |k: &str| match flat.get(k) {
        Some(toml::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "-".into(),
    };
    let name = run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let last_step = rows.iter().filter_map(|r| r["step"].as_u64()).max().unwrap_or(0);
    // Pretraining logs `val` rows, fine-tuning `validation` rows.
    let val_split = if rows.iter().any(|r| r["split"] == "validation") { "validation" } else { "val" };
    let val_last = rows.iter().rfind(|r| r["split"] == val_split);
    let best_val = curve(&rows, val_split, "loss").into_iter().min_by(|a, b| a.1.total_cmp(&b.1));
    let train = curve(&rows, "train", "tokens_per_s");
    let mut body = String::new();
    let _ = writeln!(body, "<p class=\"sub\">{}</p>", esc(&run_dir.display().to_string()));
    body.push_str("<h2>Summary</h2>\n<table>\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(body, "<tr><th class=\"l\">{}</th><td>{}</td></tr>", esc(k), esc(&v));
    };
    match flat.get("train.max_steps").and_then(toml::Value::as_integer).filter(|m| *m > 0) {
        Some(max) => row("steps", format!("{last_step} / {max}")),
        None => row("steps", last_step.to_string()),
    }
    let model = if flat.contains_key("model.base") { text_of("model.base") } else { text_of("model.preset") };
    row("model", format!("{model} ({})", text_of("optim.name")));
    if let Some(v) = val_last {
        for (key, label) in [
            ("loss", "final val loss"),
            ("ppl", "final val perplexity"),
            ("bits_per_byte", "final val bits/byte"),
            ("accuracy", "final val accuracy"),
            ("macro_f1", "final val macro F1"),
        ] {
            if let Some(x) = v[key].as_f64() {
                row(label, format!("{x:.4}"));
            }
        }
    }
    if let Some((step, loss)) = best_val {
        row("best val loss", format!("{loss:.4} at step {step}"));
    }
    if let Some((_, tps)) = train.last() {
        row("tokens/s (last)", format!("{tps:.0}"));
    }
    if let Some(e) = rows.iter().filter_map(|r| r["elapsed_s"].as_f64()).reduce(f64::max) {
        row("elapsed", crate::store::view::duration(e));
    }
    body.push_str("</table>\n");
    body.push_str("<h2>Curves</h2>\n");
    let mut loss = vec![Series::line("train loss", curve(&rows, "train", "loss"), PALETTE[0])];
    let mut val = Series::line("validation loss", curve(&rows, val_split, "loss"), PALETTE[1]);
    val.markers = true;
    loss.push(val);
    body.push_str(&chart_div(line_chart("Loss", "step", "loss", &loss)?));
    let charts = [
        ("Learning rate", "learning rate", "train", "lr", PALETTE[2]),
        ("Throughput", "tokens/s", "train", "tokens_per_s", PALETTE[4]),
        ("Gradient norm (before clipping)", "global L2 norm", "train", "grad_norm", PALETTE[5]),
        ("Validation bits per byte", "bits/byte", val_split, "bits_per_byte", PALETTE[3]),
        ("Validation accuracy", "accuracy", val_split, "accuracy", PALETTE[3]),
    ];
    for (title, y, split, key, color) in charts {
        let mut s = Series::line(y, curve(&rows, split, key), color);
        s.label = None;
        s.markers = split == val_split;
        body.push_str(&chart_div(line_chart(title, "step", y, &[s])?));
    }
    body.push_str("<h2>Config (keys that differ from the defaults)</h2>\n<table>\n");
    for (k, v) in flat {
        if defaults.get(&k) != Some(&v) {
            let _ =
                writeln!(body, "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>", esc(&k), esc(&v.to_string()));
        }
    }
    body.push_str("</table>\n");
    Ok(page(&format!("Run {name}"), &body))
}

/// The page of a k-fold cross-validation (`lmforge finetune --folds K`): each fold's final
/// metrics with their mean and population standard deviation, and every fold's validation
/// curve of the selection metric.
pub fn cv_report(cv_dir: &Path) -> Result<String> {
    let path = cv_dir.join("cv.json");
    let text = std::fs::read_to_string(&path).at(&path)?;
    let cv: Value = serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("not a cv.json: {e}")))?;
    let metric = cv["metric"].as_str().unwrap_or("loss");
    let folds = cv["per_fold"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = cv["mean"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let mut body = String::new();
    let split = folds.first().and_then(|f| f["final_split"].as_str()).unwrap_or("validation");
    let _ = writeln!(
        body,
        "<p class=\"sub\">{} · {} folds of {}{} · selection metric {} · final metrics on each fold's {} split</p>",
        esc(&cv_dir.display().to_string()),
        cv["folds"],
        esc(cv["task"].as_str().unwrap_or("")),
        if cv["stratified"] == true { ", stratified by label" } else { "" },
        esc(metric),
        esc(split),
    );
    body.push_str("<table>\n<tr><th class=\"l\">fold</th>");
    for n in &names {
        let _ = write!(body, "<th>{}</th>", esc(n));
    }
    body.push_str("</tr>\n");
    let cell = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.4}"));
    for f in &folds {
        let _ = write!(body, "<tr><td class=\"l\">{}</td>", f["fold"]);
        for n in &names {
            let _ = write!(body, "<td>{}</td>", cell(&f["metrics"][n]));
        }
        body.push_str("</tr>\n");
    }
    for (label, key) in [("mean", "mean"), ("std", "std")] {
        let _ = write!(body, "<tr class=\"best\"><td class=\"l\">{label}</td>");
        for n in &names {
            let _ = write!(body, "<td>{}</td>", cell(&cv[key][n]));
        }
        body.push_str("</tr>\n");
    }
    body.push_str("</table>\n");
    let mut series = Vec::new();
    for (i, f) in folds.iter().enumerate() {
        let Ok(rows) = read_rows(&cv_dir.join(format!("fold-{}", f["fold"]))) else { continue };
        series.push(Series::line(
            &format!("fold {}", f["fold"]),
            curve(&rows, "validation", metric),
            PALETTE[i % PALETTE.len()],
        ));
    }
    let title = format!("Validation {metric} of every fold");
    body.push_str(&chart_div(line_chart(&title, "step", metric, &series)?));
    let name = cv_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(page(&format!("Cross-validation {name}"), &body))
}

/// The page of a sweep.
pub fn sweep_report(sweep_dir: &Path) -> Result<String> {
    let meta = read_meta(sweep_dir)?;
    let trials = read_trials(sweep_dir)?;
    let metric_key = meta.metric.strip_prefix("val_").unwrap_or("loss");
    let objective = |t: &Trial| meta.goal.objective(t.metric.unwrap_or(f64::NAN));
    let best = trials
        .iter()
        .filter(|t| t.status == TrialStatus::Finished && t.metric.is_some_and(f64::is_finite))
        .min_by(|a, b| objective(a).total_cmp(&objective(b)))
        .map(|t| t.id);
    let count = |s: TrialStatus| trials.iter().filter(|t| t.status == s).count();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<p class=\"sub\">{} · {} trials · strategy {} · metric {} ({}) · early stopping {}{} · {} trials: \
         {} finished, {} stopped early, {} failed, {} unfinished · {} of training</p>",
        esc(&sweep_dir.display().to_string()),
        meta.command.name(),
        format!("{:?}", meta.strategy).to_lowercase(),
        esc(&meta.metric),
        meta.goal.words(),
        esc(&meta.rule),
        if meta.rungs.is_empty() { String::new() } else { format!(" at steps {:?}", meta.rungs) },
        trials.len(),
        count(TrialStatus::Finished),
        count(TrialStatus::Stopped),
        count(TrialStatus::Failed),
        count(TrialStatus::Running) + count(TrialStatus::Pending),
        crate::store::view::duration(trials.iter().map(|t| t.seconds).sum()),
    );
    if let Some(b) = best.and_then(|b| trials.iter().find(|t| t.id == b)) {
        let _ = writeln!(
            body,
            "<p><b>Best: trial {}</b>, {} {:.4} — {}</p>",
            b.id,
            esc(&meta.metric),
            b.metric.unwrap_or(f64::NAN),
            esc(&params_text(&meta, b))
        );
    }
    body.push_str(&chart_div(trial_curves(sweep_dir, &meta, &trials, best, metric_key)?));
    body.push_str("<h2>Metric against each hyperparameter</h2>\n<p class=\"sub\">Dots: finished trials (final metric); \
                   grey crosses: stopped early (metric where they stopped); ringed: the best trial.</p>\n<div class=\"pair\">\n");
    for (key, log) in &meta.params {
        let mut cats: Vec<String> = Vec::new();
        let numeric = trials.iter().all(|t| t.params.get(key).is_none_or(Value::is_number));
        let points: Vec<(f64, f64, TrialStatus, bool)> = trials
            .iter()
            .filter_map(|t| {
                let v = t.params.get(key)?;
                let x = if numeric {
                    v.as_f64()?
                } else {
                    let label = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                    let i = cats.iter().position(|c| *c == label).unwrap_or_else(|| {
                        cats.push(label);
                        cats.len() - 1
                    });
                    i as f64
                };
                Some((x, t.metric.filter(|m| m.is_finite())?, t.status, Some(t.id) == best))
            })
            .collect();
        let svg =
            scatter_chart(key, key, &meta.metric, &points, *log && numeric, (!numeric).then_some(cats.as_slice()))?;
        body.push_str(&chart_div(svg));
    }
    body.push_str("</div>\n<h2>Trials</h2>\n<table>\n<tr><th>trial</th><th class=\"l\">status</th><th>step</th>");
    let _ = write!(body, "<th>{}</th>", esc(&meta.metric));
    for (key, _) in &meta.params {
        let _ = write!(body, "<th>{}</th>", esc(key));
    }
    body.push_str("<th>time</th><th class=\"l\">note</th></tr>\n");
    let mut order: Vec<&Trial> = trials.iter().collect();
    order.sort_by(|a, b| {
        let k = |t: &Trial| (t.status != TrialStatus::Finished, t.metric.unwrap_or(f64::INFINITY));
        k(a).partial_cmp(&k(b)).unwrap_or(std::cmp::Ordering::Equal)
    });
    for t in order {
        let status = format!("{:?}", t.status).to_lowercase();
        let class = if Some(t.id) == best { "best".to_string() } else { status.clone() };
        let _ = write!(
            body,
            "<tr class=\"{class}\"><td>{}</td><td class=\"l\">{status}</td><td>{}</td><td>{}</td>",
            t.id,
            t.step,
            t.metric.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into())
        );
        for (key, _) in &meta.params {
            let v = t.params.get(key).map(value_text).unwrap_or_default();
            let _ = write!(body, "<td>{}</td>", esc(&v));
        }
        let _ = writeln!(
            body,
            "<td>{}</td><td class=\"l\">{}</td></tr>",
            crate::store::view::duration(t.seconds),
            esc(&t.note)
        );
    }
    body.push_str("</table>\n");
    if let Ok(best_toml) = std::fs::read_to_string(sweep_dir.join("best.toml")) {
        let _ = writeln!(body, "<h2>best.toml</h2>\n<pre>{}</pre>", esc(&best_toml));
    }
    Ok(page(&format!("Sweep {}", meta.name), &body))
}

/// Every trial's validation curve: finished trials in colour, stopped ones dashed grey with a
/// cross where they stopped, the best one bold.
fn trial_curves(
    sweep_dir: &Path,
    meta: &SweepMeta,
    trials: &[Trial],
    best: Option<usize>,
    key: &str,
) -> Result<String> {
    let mut series = Vec::new();
    let mut stopped_labelled = false;
    // Each finished trial gets a colour and a legend entry while the legend stays short.
    let finished = trials.iter().filter(|t| t.status != TrialStatus::Stopped).count();
    let colours: Vec<RGBColor> =
        PALETTE.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 9).map(|(_, c)| *c).collect();
    let mut next_colour = 0;
    for t in trials {
        let Ok(rows) = read_rows(&sweep_dir.join(&t.run_dir)) else { continue };
        let points = curve(&rows, meta.command.val_split(), key);
        if points.is_empty() {
            continue;
        }
        let stopped = t.status == TrialStatus::Stopped;
        let is_best = Some(t.id) == best;
        let label = if is_best {
            Some(format!("trial {} (best)", t.id))
        } else if stopped && !stopped_labelled {
            stopped_labelled = true;
            Some("stopped early".into())
        } else if !stopped && finished <= 6 {
            Some(format!("trial {}", t.id))
        } else {
            None
        };
        let color = if stopped {
            STOPPED
        } else if is_best {
            PALETTE[3]
        } else {
            next_colour += 1;
            colours[(next_colour - 1) % colours.len()]
        };
        series.push(Series {
            label,
            points,
            color,
            width: if is_best { 4 } else { 2 },
            dashed: stopped,
            markers: !stopped,
            end_cross: stopped,
        });
    }
    // The best curve last, on top.
    series.sort_by_key(|s| s.width);
    let title = format!("Validation {} of every trial", meta.metric.trim_start_matches("val_"));
    line_chart(&title, "step", &meta.metric, &series)
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Number(n) if n.is_f64() => tick(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn params_text(meta: &SweepMeta, t: &Trial) -> String {
    meta.params
        .iter()
        .filter_map(|(k, _)| t.params.get(k).map(|v| format!("{k} = {}", value_text(v))))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_stay_short() {
        assert_eq!(tick(0.0003), "3e-4");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(12000.0), "1.2e4");
        assert_eq!(tick(0.0), "0");
    }

    #[test]
    fn a_line_chart_is_an_svg_with_its_title_and_legend() {
        let s = Series::line("train loss", vec![(1.0, 5.0), (2.0, 4.0), (3.0, 3.5)], PALETTE[0]);
        let svg = line_chart("Loss", "step", "loss", &[s]).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("\nLoss\n</text>") && svg.contains("train loss") && svg.contains("<polyline"));
        assert_eq!(line_chart("empty", "x", "y", &[]).unwrap(), "");
    }
}
