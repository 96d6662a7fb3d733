//! Hyperparameter sweeps (`lmforge sweep --config sweep.toml`): a base run config, overrides,
//! and a search space over any config keys; trials proposed by a grid, seeded random draws or
//! TPE; bad trials stopped early at rungs by ASHA or the median rule; `max_trials`,
//! `max_parallel` and a total time budget. A trial is just config overrides → `lmforge train`
//! (or `lmforge finetune` with `sweep.command = "finetune"`, optimising any validation metric
//! the task reports, `val_f1`, `val_accuracy`, ..., in its direction): each runs as a child
//! process (crash isolation, parallelism for free) in
//! `SWEEP_DIR/trials/NNNN/`, trained rung by rung with `--stop-after` and continued with
//! `--resume`, which reproduces an uninterrupted run to the bit. Trials share one prepared
//! data folder per distinct data config. The sweep's state is `SWEEP_DIR/trials.jsonl`
//! (rewritten atomically after every event), so running the same command again after an
//! interruption continues: finished and stopped trials are kept, interrupted ones resume
//! from their checkpoints. The best finished trial's config is written to `best.toml`.
//!
//! ```text
//! SWEEP_DIR/sweep.toml            the sweep file as given
//! SWEEP_DIR/sweep.json            its identity hash, parameters, metric, elapsed seconds
//! SWEEP_DIR/trials.jsonl          one line per trial: params, status, step, metric, rungs
//! SWEEP_DIR/trials/NNNN.toml      the trial's run config (data.prepared set)
//! SWEEP_DIR/trials/NNNN.log       the trial processes' output
//! SWEEP_DIR/trials/NNNN/          the trial's run dir
//! SWEEP_DIR/data/HASH/            prepared data shared by the trials
//! SWEEP_DIR/best.toml             the best finished trial's config, ready to train
//! ```

pub mod early_stop;
mod run;
pub mod space;
pub mod tpe;

pub use run::{run, table, SweepOptions, SweepOutcome, SweepResult};

use early_stop::Rule;
use lmforge::error::{Error, IoContext, Result};
use lmforge::finetune::FinetuneConfig;
use lmforge::train::RunConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use space::Param;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How trials' parameters are proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Grid,
    Random,
    Tpe,
}

/// What a trial runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialCommand {
    /// `lmforge train` on a run config (pretraining).
    #[default]
    Train,
    /// `lmforge finetune` on a fine-tuning config.
    Finetune,
}

impl TrialCommand {
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Finetune => "finetune",
        }
    }

    /// The `split` of the validation rows its runs log in `metrics.jsonl`.
    pub fn val_split(self) -> &'static str {
        match self {
            Self::Train => "val",
            Self::Finetune => "validation",
        }
    }
}

/// Whether the sweep's metric is better lower or higher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    #[default]
    Minimize,
    Maximize,
}

impl Goal {
    /// The metric's default direction: losses and errors down, scores up.
    pub fn of(metric_key: &str) -> Self {
        match ["loss", "ppl", "bits_per_byte", "mse", "rmse", "mae"].contains(&metric_key) {
            true => Self::Minimize,
            false => Self::Maximize,
        }
    }

    /// The value the controller minimises (ranking, early stopping, TPE): the metric itself,
    /// or its negative when higher is better.
    pub fn objective(self, value: f64) -> f64 {
        match self {
            Self::Minimize => value,
            Self::Maximize => -value,
        }
    }

    pub fn words(self) -> &'static str {
        match self {
            Self::Minimize => "lower is better",
            Self::Maximize => "higher is better",
        }
    }
}

/// A trial's config: a run config for `lmforge train`, a fine-tuning config for `lmforge
/// finetune`.
#[derive(Debug, Clone)]
pub enum TrialConfig {
    Train(RunConfig),
    Finetune(FinetuneConfig),
}

impl TrialConfig {
    /// The config of `command` from TOML text (paths already resolved) and overrides.
    fn from_toml(command: TrialCommand, text: &str, overrides: &[String]) -> Result<Self> {
        Ok(match command {
            TrialCommand::Train => Self::Train(RunConfig::from_toml_str(text, overrides)?),
            TrialCommand::Finetune => Self::Finetune(FinetuneConfig::from_toml_with(text, overrides)?),
        })
    }

    /// A config file's text, resolved (its relative paths against its own folder).
    fn resolve_file(command: TrialCommand, path: &Path) -> Result<String> {
        Ok(match command {
            TrialCommand::Train => {
                let base: RunConfig = lmforge::config::load(Some(path), &[], &RunConfig::PATH_KEYS)?;
                base.to_toml()
            }
            TrialCommand::Finetune => {
                let base: FinetuneConfig = lmforge::config::load(Some(path), &[], &FinetuneConfig::PATH_KEYS)?;
                base.to_toml()
            }
        })
    }

    pub fn to_toml(&self) -> String {
        match self {
            Self::Train(c) => c.to_toml(),
            Self::Finetune(c) => c.to_toml(),
        }
    }

    /// `train.max_steps` (0 for a fine-tune that trains by epochs).
    pub fn max_steps(&self) -> u64 {
        match self {
            Self::Train(c) => c.train.max_steps,
            Self::Finetune(c) => c.train.max_steps,
        }
    }

    fn eval_every(&self) -> u64 {
        match self {
            Self::Train(c) => c.train.eval_every,
            Self::Finetune(c) => c.train.eval_every,
        }
    }

    /// The default metric: pretraining's validation loss, a fine-tune's selection metric.
    fn default_metric(&self) -> String {
        match self {
            Self::Train(_) => "val_loss".into(),
            Self::Finetune(c) => format!("val_{}", c.metric()),
        }
    }
}

/// A parsed, validated sweep file.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    pub name: String,
    /// The sweep file's text (copied into the sweep dir).
    pub text: String,
    /// The base run config's TOML text (empty: the built-in defaults).
    pub base_text: String,
    /// `[sweep] set` overrides applied to the base before the trial's values.
    pub set: Vec<String>,
    pub strategy: Strategy,
    /// What the trials run.
    pub command: TrialCommand,
    /// `val_` and a validation row's key: `val_loss`, `val_bits_per_byte` or `val_ppl` for
    /// pretraining; any metric the task validates with for fine-tuning (`val_f1`, ...).
    pub metric: String,
    pub goal: Goal,
    pub max_trials: usize,
    pub max_parallel: usize,
    /// Seconds across all invocations; 0 = no limit.
    pub time_budget_s: f64,
    pub seed: u64,
    /// Random trials before TPE starts modelling.
    pub tpe_startup: usize,
    pub rule: Rule,
    pub rungs: Vec<u64>,
    pub params: Vec<Param>,
    /// The base config with `set` applied, resolved.
    pub base: TrialConfig,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    sweep: SweepSection,
    #[serde(default)]
    early_stop: EarlyStopSection,
    space: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepSection {
    #[serde(default)]
    name: String,
    #[serde(default)]
    base: PathBuf,
    #[serde(default)]
    set: Vec<String>,
    strategy: Strategy,
    #[serde(default)]
    command: TrialCommand,
    #[serde(default)]
    metric: Option<String>,
    #[serde(default)]
    goal: Option<Goal>,
    max_trials: Option<usize>,
    #[serde(default = "one")]
    max_parallel: usize,
    #[serde(default)]
    time_budget_s: f64,
    #[serde(default)]
    seed: u64,
    #[serde(default = "default_startup")]
    tpe_startup: usize,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EarlyStopSection {
    #[serde(default = "default_rule")]
    rule: String,
    #[serde(default)]
    min_steps: u64,
    #[serde(default = "default_rf")]
    reduction_factor: f64,
    #[serde(default)]
    rungs: Vec<u64>,
    #[serde(default = "default_min_trials")]
    min_trials: usize,
}

impl Default for EarlyStopSection {
    fn default() -> Self {
        Self {
            rule: default_rule(),
            min_steps: 0,
            reduction_factor: default_rf(),
            rungs: vec![],
            min_trials: default_min_trials(),
        }
    }
}

fn one() -> usize {
    1
}
fn default_startup() -> usize {
    5
}
fn default_rule() -> String {
    "none".into()
}
fn default_rf() -> f64 {
    3.0
}
fn default_min_trials() -> usize {
    3
}

/// Metrics a sweep can minimise: the validation row's key for each.
pub const METRICS: [(&str, &str); 3] =
    [("val_loss", "loss"), ("val_bits_per_byte", "bits_per_byte"), ("val_ppl", "ppl")];

impl SweepSpec {
    /// Reads and validates `path`; a relative `base` is relative to the sweep file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).at(path)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "sweep".into());
        Self::parse(&text, dir, &stem).map_err(|e| match e {
            Error::Config { key, msg } => Error::format(path, format!("`{key}`: {msg}")),
            other => other,
        })
    }

    /// Parses a sweep file's text; `dir` resolves a relative base path, `stem` is the default name.
    pub fn parse(text: &str, dir: &Path, stem: &str) -> Result<Self> {
        let table = text.parse::<toml::Table>().map_err(|e| Error::Invalid(format!("invalid TOML: {e}")))?;
        let file: SweepFile = lmforge::config::deserialize_table(table)?;
        let s = file.sweep;
        let base_text = if s.base.as_os_str().is_empty() {
            String::new()
        } else {
            let p = if s.base.is_absolute() { s.base.clone() } else { dir.join(&s.base) };
            // Resolved (its relative paths against its own folder) and written out whole, so the
            // trials' configs, saved in the sweep dir, read the same files.
            TrialConfig::resolve_file(s.command, &p)?
        };
        let base = TrialConfig::from_toml(s.command, &base_text, &s.set)?;
        let metric = s.metric.clone().unwrap_or_else(|| base.default_metric());
        let key = metric.strip_prefix("val_").unwrap_or_default();
        let goal = match s.command {
            TrialCommand::Train => {
                if !METRICS.iter().any(|(m, _)| *m == metric) {
                    let names: Vec<&str> = METRICS.iter().map(|(m, _)| *m).collect();
                    return Err(Error::config(
                        "sweep.metric",
                        format!("{metric:?} is not one of {}", names.join(", ")),
                    ));
                }
                if s.goal == Some(Goal::Maximize) {
                    return Err(Error::config("sweep.goal", "pretraining metrics are minimised"));
                }
                Goal::Minimize
            }
            TrialCommand::Finetune => {
                if key.is_empty() {
                    return Err(Error::config(
                        "sweep.metric",
                        format!("{metric:?}: expected val_ and a validation metric of the task (val_loss, val_f1, val_accuracy, ...)"),
                    ));
                }
                s.goal.unwrap_or(Goal::of(key))
            }
        };
        if s.max_parallel == 0 {
            return Err(Error::config("sweep.max_parallel", "expected >= 1"));
        }
        if s.time_budget_s.is_nan() || s.time_budget_s < 0.0 {
            return Err(Error::config("sweep.time_budget_s", "expected >= 0 (0 = no limit)"));
        }
        if file.space.is_empty() {
            return Err(Error::config(
                "space",
                "expected at least one parameter, e.g. \"optim.lr\" = { loguniform = [1e-4, 1e-2] }",
            ));
        }
        let params: Vec<Param> = file.space.iter().map(|(k, v)| Param::parse(k, v)).collect::<Result<_>>()?;
        let es = file.early_stop;
        let rule = match es.rule.as_str() {
            "none" => Rule::None,
            "asha" if es.reduction_factor > 1.0 => Rule::Asha { reduction_factor: es.reduction_factor },
            "asha" => return Err(Error::config("early_stop.reduction_factor", "expected > 1")),
            "median" => Rule::Median { min_trials: es.min_trials.max(1) },
            other => {
                return Err(Error::config("early_stop.rule", format!("{other:?} is not one of none, asha, median")))
            }
        };
        let rungs = if rule == Rule::None {
            Vec::new()
        } else {
            if base.max_steps() == 0 || base.eval_every() == 0 {
                return Err(Error::config(
                    "early_stop.rule",
                    "rungs are steps: set train.max_steps and train.eval_every in the base config or sweep.set",
                ));
            }
            for p in &params {
                if ["train.max_steps", "train.eval_every"].contains(&p.key.as_str()) {
                    return Err(Error::config(
                        format!("space.\"{}\"", p.key),
                        "cannot vary while early stopping uses rungs",
                    ));
                }
            }
            early_stop::rungs(&es.rungs, es.min_steps, es.reduction_factor, base.max_steps(), base.eval_every())?
        };
        let grid_size = if s.strategy == Strategy::Grid {
            Some(
                params
                    .iter()
                    .map(|p| p.grid().map(|g| g.len()))
                    .try_fold(1usize, |acc, n| n.map(|n| acc.saturating_mul(n)))?,
            )
        } else {
            None
        };
        let max_trials = match (s.max_trials, grid_size) {
            (Some(0), _) => return Err(Error::config("sweep.max_trials", "expected >= 1")),
            (Some(n), Some(g)) => n.min(g),
            (Some(n), None) => n,
            (None, Some(g)) => g,
            (None, None) => 20,
        };
        let spec = Self {
            name: if s.name.is_empty() { stem.to_string() } else { s.name },
            text: text.to_string(),
            base_text,
            set: s.set,
            strategy: s.strategy,
            command: s.command,
            metric,
            goal,
            max_trials,
            max_parallel: s.max_parallel,
            time_budget_s: s.time_budget_s,
            seed: s.seed,
            tpe_startup: s.tpe_startup,
            rule,
            rungs,
            params,
            base,
        };
        spec.check_space_keys()?;
        Ok(spec)
    }

    /// Every parameter's extreme values (each choice, each end of a range) resolve to a valid
    /// run config: a misspelt key or an impossible range fails here, not in trial 7.
    fn check_space_keys(&self) -> Result<()> {
        for p in &self.params {
            let probes: Vec<Value> = match &p.dist {
                space::Dist::Choice(c) => c.clone(),
                _ => {
                    let (a, b) = p.real_range().expect("numeric");
                    vec![p.value(space::Internal::Real(a)), p.value(space::Internal::Real(b))]
                }
            };
            for v in probes {
                let over = BTreeMap::from([(p.key.clone(), v.clone())]);
                self.config(&over).map_err(|e| {
                    Error::config(
                        format!("space.\"{}\"", p.key),
                        format!("value {v} does not make a valid run config: {e}"),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// The config of a trial: base < set < the trial's values.
    pub fn config(&self, params: &BTreeMap<String, Value>) -> Result<TrialConfig> {
        let mut overrides = self.set.clone();
        overrides.extend(params.iter().map(|(k, v)| format!("{k}={}", space::toml_literal(v))));
        TrialConfig::from_toml(self.command, &self.base_text, &overrides)
    }

    /// A hash of everything that decides the trials' results (not max_trials, max_parallel or
    /// the budget, which may change between invocations).
    pub fn identity(&self) -> String {
        use sha2::{Digest, Sha256};
        let space: Vec<String> = self.params.iter().map(|p| format!("{p:?}")).collect();
        let text = serde_json::json!({
            "base": self.base.to_toml(), "strategy": self.strategy, "metric": self.metric, "seed": self.seed,
            "command": self.command, "goal": self.goal,
            "tpe_startup": self.tpe_startup, "rule": format!("{:?}", self.rule), "rungs": self.rungs, "space": space,
        });
        Sha256::digest(text.to_string().as_bytes())[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The validation row key of the metric (`loss` for `val_loss`).
    pub fn metric_key(&self) -> &str {
        self.metric.strip_prefix("val_").unwrap_or(&self.metric)
    }
}

/// Where a trial stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialStatus {
    /// Proposed, not started.
    Pending,
    /// Between rungs or training (resumable from its checkpoint).
    Running,
    /// Stopped early by the rule at a rung.
    Stopped,
    Finished,
    Failed,
}

/// One trial as `trials.jsonl` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub id: usize,
    pub params: BTreeMap<String, Value>,
    pub status: TrialStatus,
    /// Steps trained (the last rung or the end reached).
    pub step: u64,
    /// The metric at `step`.
    pub metric: Option<f64>,
    /// The metric at each rung reached.
    pub rungs: BTreeMap<u64, f64>,
    /// The run dir, relative to the sweep dir.
    pub run_dir: String,
    pub note: String,
    /// Wall seconds of its training processes.
    pub seconds: f64,
}

/// What `sweep.json` records: enough to refuse a changed sweep and to draw its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepMeta {
    pub name: String,
    pub identity: String,
    pub metric: String,
    #[serde(default)]
    pub goal: Goal,
    #[serde(default)]
    pub command: TrialCommand,
    pub strategy: Strategy,
    pub rule: String,
    pub rungs: Vec<u64>,
    pub max_steps: u64,
    /// (key, log scale) of each parameter, in the sweep file's order.
    pub params: Vec<(String, bool)>,
    pub elapsed_s: f64,
}

/// Reads `SWEEP_DIR/trials.jsonl` (empty if absent).
pub fn read_trials(sweep_dir: &Path) -> Result<Vec<Trial>> {
    let path = sweep_dir.join("trials.jsonl");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).at(&path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::format(&path, format!("line {}: {e}", i + 1))))
        .collect()
}

pub fn read_meta(sweep_dir: &Path) -> Result<SweepMeta> {
    let path = sweep_dir.join("sweep.json");
    let text = std::fs::read_to_string(&path).at(&path)?;
    serde_json::from_str(&text).map_err(|e| Error::format(&path, format!("not a sweep record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SweepSpec> {
        SweepSpec::parse(text, Path::new("."), "s")
    }

    #[test]
    fn a_sweep_file_resolves_with_defaults() {
        let s = parse(
            "[sweep]\nstrategy = \"grid\"\nset = [\"train.max_steps=90\", \"train.eval_every=10\"]\n\
             [early_stop]\nrule = \"asha\"\nmin_steps = 10\n\
             [space]\n\"optim.lr\" = { choice = [1e-3, 3e-3] }\n\"model.n_layer\" = { int = [1, 3] }\n",
        )
        .unwrap();
        assert_eq!((s.name.as_str(), s.max_trials, s.max_parallel), ("s", 6, 1));
        assert_eq!(s.rungs, vec![10, 30]);
        assert_eq!(s.rule, Rule::Asha { reduction_factor: 3.0 });
        assert_eq!(s.base.max_steps(), 90);
        let c = s.config(&BTreeMap::from([("model.n_layer".to_string(), Value::from(3))])).unwrap();
        let TrialConfig::Train(c) = c else { panic!("a run config") };
        assert_eq!(c.model.n_layer, Some(3));
    }

    #[test]
    fn the_shipped_example_sweep_resolves() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/sweep-quickstart.toml");
        let s = SweepSpec::load(&path).unwrap();
        assert_eq!((s.name.as_str(), s.strategy, s.max_trials), ("sweep-quickstart", Strategy::Tpe, 8));
        assert_eq!(s.rungs, vec![30, 60]);
        let TrialConfig::Train(base) = &s.base else { panic!("a run config") };
        assert_eq!(base.model.preset, "quickstart");
    }

    #[test]
    fn mistakes_are_named() {
        let e = |t: &str| parse(t).unwrap_err().to_string();
        let space = "[space]\n\"optim.lr\" = { choice = [1e-3] }\n";
        assert!(e(&format!("[sweep]\nstrategy = \"annealing\"\n{space}")).contains("sweep.strategy"));
        assert!(e(&format!("[sweep]\nstrategy = \"grid\"\nmax_trails = 3\n{space}")).contains("max_trails"));
        assert!(e(&format!("[sweep]\nstrategy = \"grid\"\nmetric = \"acc\"\n{space}")).contains("sweep.metric"));
        let bad_key = e("[sweep]\nstrategy = \"random\"\n[space]\n\"optim.lrr\" = { uniform = [0.1, 0.2] }\n");
        assert!(bad_key.contains("space.\"optim.lrr\"") && bad_key.contains("lrr"), "{bad_key}");
        let bad_range = e("[sweep]\nstrategy = \"random\"\n[space]\n\"model.dropout\" = { uniform = [0.0, 1.5] }\n");
        assert!(bad_range.contains("model.dropout"), "{bad_range}");
        let rungs = e(&format!("[sweep]\nstrategy = \"grid\"\nset = [\"train.eval_every=7\"]\n[early_stop]\nrule = \"asha\"\nmin_steps = 10\n{space}"));
        assert!(rungs.contains("eval_every"), "{rungs}");
        assert!(e("[sweep]\nstrategy = \"grid\"\n[space]\n").contains("at least one"));
    }

    #[test]
    fn a_finetune_sweep_optimises_any_validation_metric_in_its_direction() {
        let base = "set = [\"data.train=t.conll\", \"model.base=m\", \"task.kind=token_classification\"";
        let space = "[space]\n\"optim.lr\" = { choice = [1e-4, 1e-3] }\n";
        let p = |extra: &str, set: &str| {
            parse(&format!("[sweep]\ncommand = \"finetune\"\nstrategy = \"grid\"\n{base}{set}]\n{extra}\n{space}"))
        };
        let s = p("", "").unwrap();
        assert_eq!((s.metric.as_str(), s.goal, s.command), ("val_f1", Goal::Maximize, TrialCommand::Finetune));
        assert!(matches!(s.base, TrialConfig::Finetune(_)), "the task's selection metric by default");
        assert_eq!(p("metric = \"val_loss\"", "").unwrap().goal, Goal::Minimize);
        assert_eq!(p("metric = \"val_mae\"", "").unwrap().goal, Goal::Minimize);
        assert_eq!(p("metric = \"val_f1\"\ngoal = \"minimize\"", "").unwrap().goal, Goal::Minimize, "as told");
        let e = |extra: &str, set: &str| p(extra, set).unwrap_err().to_string();
        assert!(e("metric = \"f1\"", "").contains("sweep.metric"));
        let rungs = e("[early_stop]\nrule = \"asha\"\nmin_steps = 10", "");
        assert!(rungs.contains("train.max_steps"), "{rungs}");
        let ok =
            p("[early_stop]\nrule = \"asha\"\nmin_steps = 10", ", \"train.max_steps=90\", \"train.eval_every=10\"");
        assert_eq!(ok.unwrap().rungs, vec![10, 30]);
        let train = parse(&format!("[sweep]\nstrategy = \"grid\"\ngoal = \"maximize\"\n{space}")).unwrap_err();
        assert!(train.to_string().contains("sweep.goal"), "{train}");
    }

    #[test]
    fn identity_ignores_trial_counts_but_not_the_space() {
        let a = parse(
            "[sweep]\nstrategy = \"random\"\nmax_trials = 3\n[space]\n\"optim.lr\" = { uniform = [0.001, 0.002] }\n",
        )
        .unwrap();
        let b = parse("[sweep]\nstrategy = \"random\"\nmax_trials = 9\nmax_parallel = 2\n[space]\n\"optim.lr\" = { uniform = [0.001, 0.002] }\n").unwrap();
        let c =
            parse("[sweep]\nstrategy = \"random\"\n[space]\n\"optim.lr\" = { uniform = [0.001, 0.003] }\n").unwrap();
        assert_eq!(a.identity(), b.identity());
        assert_ne!(a.identity(), c.identity());
    }
}
