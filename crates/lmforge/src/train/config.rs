//! The pretraining config tree (`lmforge train --config FILE`): every component's section
//! composed, and resolved once into a [`RunPlan`] — enums, specs and numbers, no strings or
//! unset keys left — that the front end and the loop consume. Validating a config is resolving
//! it and dropping the plan; nothing is written before that succeeds.

use crate::checkpoint::{self, CheckpointConfig};
use crate::config::{self, check};
use crate::corpus::DataConfig;
use crate::device::{DeviceChoice, Precision};
use crate::distributed::DistributedConfig;
use crate::error::{Error, Result};
use crate::faults::{FaultConfig, FaultPolicy, OnNonFinite};
use crate::mlm_data::MlmConfig;
use crate::models::{hf, Family, ModelConfig, ModelSpec};
use crate::nn::recompute::Checkpointing;
use crate::optim::{
    param_groups, OptimConfig, OptimSpec, ParamGroup, PlateauRule, Schedule, ScheduleConfig, ScheduleKind,
};
use crate::progress::LogConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub data: DataConfig,
    pub model: ModelConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    pub train: TrainConfig,
    pub checkpoint: CheckpointConfig,
    pub log: LogConfig,
    /// Masked-LM settings (read with `train.objective = "mlm"` or `"mlm+nsp"`); left out of the
    /// saved config (and its hash) while at their defaults, so older runs still resume.
    #[serde(skip_serializing_if = "MlmConfig::is_default")]
    pub mlm: MlmConfig,
    /// Left out of the serialised config (and so the hash) while it holds the defaults, so
    /// configs written before multi-process training still resume.
    #[serde(skip_serializing_if = "DistributedConfig::is_default")]
    pub distributed: DistributedConfig,
}

/// What the model learns to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Objective {
    /// The next token (GPT-2 / Llama).
    #[default]
    #[serde(rename = "causal")]
    Causal,
    /// Masked tokens (BERT).
    #[serde(rename = "mlm")]
    Mlm,
    /// Masked tokens and whether the second sentence follows the first (BERT pretraining).
    #[serde(rename = "mlm+nsp")]
    MlmNsp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub max_steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step (gradients are averaged over them).
    pub grad_accum: usize,
    /// Tokens per training sequence; 0: the model's context length.
    pub seq_len: usize,
    /// Validate every N steps (and at the end); 0: only at the end.
    pub eval_every: u64,
    /// Validation batches per evaluation (fixed windows, the same every time).
    pub eval_batches: usize,
    /// Checkpoint every N steps (and at the end); 0: only at the end.
    pub checkpoint_every: u64,
    pub log_every: u64,
    pub seed: u64,
    /// Non-finite loss or gradient norm: "skip" (default) the update, or "rollback" to the
    /// last checkpoint with the LR times `rollback_lr_factor`. Unset keys are left out of the
    /// saved config (and its hash) so runs from before these keys still resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_nonfinite: Option<OnNonFinite>,
    /// Consecutive faulty steps before training stops with an error (default 5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_consecutive_faults: Option<u32>,
    /// LR multiplier applied at each rollback (default 0.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_lr_factor: Option<f64>,
    /// A loss above `spike_ratio` x its running mean is flagged as a spike (default 1.5; 0 = off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spike_ratio: Option<f64>,
    /// "causal" (next token; GPT-2 / Llama), "mlm" (masked LM) or "mlm+nsp" (masked LM and
    /// next-sentence prediction; BERT). Omitted from the saved config when "causal".
    #[serde(skip_serializing_if = "is_causal")]
    pub objective: Objective,
    /// Recompute blocks' activations in the backward instead of keeping them (decoder models):
    /// `true` every block (less memory, about a third more compute), a number `n` the first `n`
    /// blocks. Omitted from the saved config when off.
    #[serde(skip_serializing_if = "Checkpointing::is_off")]
    pub activation_checkpointing: Checkpointing,
    /// "auto" (a GPU when this build has CUDA and one is present, else the CPU), "cpu",
    /// "cuda" or "cuda:N". Omitted from the saved config when "auto".
    #[serde(skip_serializing_if = "DeviceChoice::is_auto")]
    pub device: DeviceChoice,
    /// "fp32" or "bf16-mixed". Omitted from the saved config when "fp32".
    #[serde(skip_serializing_if = "Precision::is_fp32")]
    pub precision: Precision,
}

fn is_causal(objective: &Objective) -> bool {
    *objective == Objective::Causal
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            max_steps: 1000,
            batch_size: 16,
            grad_accum: 1,
            seq_len: 0,
            eval_every: 200,
            eval_batches: 16,
            checkpoint_every: 500,
            log_every: 10,
            seed: 1337,
            on_nonfinite: None,
            max_consecutive_faults: None,
            rollback_lr_factor: None,
            spike_ratio: None,
            objective: Objective::Causal,
            activation_checkpointing: Checkpointing::Off,
            device: DeviceChoice::Auto,
            precision: Precision::Fp32,
        }
    }
}

/// Upper bound of batch counts, so batch arithmetic cannot overflow on a hostile config.
pub const MAX_BATCH: usize = 1 << 20;

impl TrainConfig {
    /// Range checks of the step counts and sizes every trainer reads.
    pub fn check_sizes(&self) -> Result<()> {
        check(self.max_steps >= 1, "train.max_steps", self.max_steps, ">= 1")?;
        check((1..=MAX_BATCH).contains(&self.batch_size), "train.batch_size", self.batch_size, "1 ..= 1048576")?;
        check((1..=MAX_BATCH).contains(&self.grad_accum), "train.grad_accum", self.grad_accum, "1 ..= 1048576")?;
        check((1..=MAX_BATCH).contains(&self.eval_batches), "train.eval_batches", self.eval_batches, "1 ..= 1048576")?;
        check(self.log_every >= 1, "train.log_every", self.log_every, ">= 1")
    }

    /// The fault keys of this section and `[checkpoint]`.
    pub fn fault_config(&self, checkpoint: &CheckpointConfig) -> FaultConfig {
        FaultConfig {
            on_nonfinite: self.on_nonfinite,
            max_consecutive_faults: self.max_consecutive_faults,
            rollback_lr_factor: self.rollback_lr_factor,
            spike_ratio: self.spike_ratio,
            on_write_error: checkpoint.on_write_error,
        }
    }
}

impl FaultPolicy {
    /// The fault policy of a run config (`[train]` and `[checkpoint]` keys).
    pub fn from_config(cfg: &RunConfig) -> Result<Self> {
        Self::resolve(&cfg.train.fault_config(&cfg.checkpoint))
    }
}

/// A run config resolved: what `lmforge train` runs.
#[derive(Debug, Clone)]
pub struct RunPlan {
    /// The config itself (saved as `config.toml`; its hash is the run's identity).
    pub cfg: RunConfig,
    pub spec: ModelSpec,
    pub objective: Objective,
    /// Tokens per training sequence.
    pub seq_len: usize,
    pub optim: OptimSpec,
    /// Every parameter's optimizer group.
    pub groups: BTreeMap<String, ParamGroup>,
    pub schedule: Schedule,
    /// The reduce-on-plateau rule, with `schedule.kind = "plateau"`.
    pub plateau: Option<PlateauRule>,
    pub faults: FaultPolicy,
    /// The model folder `model.init_from` names (resolved: a run dir's newest checkpoint).
    pub init_source: Option<PathBuf>,
    /// `[data]` as the run prepares it: with `model.init_from` and no `data.tokenizer`, the
    /// source's tokenizer.
    pub data: DataConfig,
}

impl RunConfig {
    /// Keys holding paths: relative ones in a config file resolve against its folder.
    pub const PATH_KEYS: [&'static str; 5] =
        ["data.path", "data.inputs", "data.prepared", "data.tokenizer", "model.init_from"];

    /// Resolves defaults < `file` < `overrides` (each `section.key=value`, value in TOML syntax,
    /// bare words taken as strings) and validates the result.
    pub fn resolve(file: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let cfg: Self = config::load(file, overrides, &Self::PATH_KEYS)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Resolves from TOML text (the recipes bundled in the binary, a run's saved config).
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self> {
        let cfg: Self = config::parse(text, overrides)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Everything types alone cannot express: resolving the plan, and dropping it.
    pub fn validate(&self) -> Result<()> {
        self.plan().map(drop)
    }

    pub fn to_toml(&self) -> String {
        config::to_toml(self)
    }

    /// A short stable hash of the resolved config, recorded in every checkpoint.
    pub fn hash(&self) -> String {
        config::config_hash(self)
    }

    /// The typed plan. Machine-independent: `train.device` is resolved when training starts
    /// ([`crate::device::Placement::resolve`]), so a GPU config still validates (and plans) on
    /// a laptop.
    pub fn plan(&self) -> Result<RunPlan> {
        let optim = OptimSpec::from_config(&self.optim)?;
        let t = &self.train;
        let plateau = (self.schedule.kind == ScheduleKind::Plateau).then(|| PlateauRule::from_config(&self.schedule));
        let schedule = self.schedule.resolve(t.max_steps)?;
        if plateau.is_some() {
            check(
                t.eval_every >= 1,
                "train.eval_every",
                t.eval_every,
                ">= 1 with schedule.kind = \"plateau\" (it is driven by validation loss)",
            )?;
        }
        t.check_sizes()?;
        let faults = FaultPolicy::from_config(self)?;
        self.data.validate()?;
        let m = &self.model;
        check((0.0..1.0).contains(&m.dropout), "model.dropout", m.dropout, "0 <= p < 1")?;
        let (spec, init_source) = match config::given(&m.init_from) {
            None => (ModelSpec::from_config(m)?, None),
            Some(path) => {
                config::readable("model.init_from", path)?;
                let folder =
                    checkpoint::resolve_model_dir(path).map_err(|e| Error::config("model.init_from", e.to_string()))?;
                let spec = hf::read_config(&folder.join("config.json"))?;
                m.check_agrees_with(&spec)?;
                (spec, Some(folder))
            }
        };
        let mut data = self.data.clone();
        if let (Some(folder), None) = (&init_source, config::given(&data.tokenizer)) {
            data.tokenizer = folder.join("tokenizer.json");
        }
        let encoder = spec.arch().family() == Family::Encoder;
        if encoder == (t.objective == Objective::Causal) {
            return Err(Error::config(
                "train.objective",
                format!(
                    "{:?} does not fit model style {:?}: causal goes with gpt2 / llama, mlm and mlm+nsp with bert",
                    objective_name(t.objective),
                    spec.style
                ),
            ));
        }
        if encoder && t.activation_checkpointing.is_on() {
            return Err(Error::config(
                "train.activation_checkpointing",
                "is implemented for decoder models (gpt2 / llama styles); BERT-style encoders train without it",
            ));
        }
        t.activation_checkpointing.check(spec.n_layer, "train.activation_checkpointing")?;
        let seq_len = if t.seq_len == 0 { spec.context } else { t.seq_len };
        if seq_len > spec.context {
            return Err(Error::config(
                "train.seq_len",
                format!("{seq_len} exceeds the model's context of {}", spec.context),
            ));
        }
        self.mlm.validate()?;
        self.checkpoint.validate()?;
        self.distributed.validate()?;
        // A group pattern that matches no parameter is a config error.
        let groups =
            param_groups(&self.optim, spec.params().into_iter().map(|p| (p.name.clone(), super::param_role(&p))))?;
        Ok(RunPlan {
            cfg: self.clone(),
            spec,
            objective: t.objective,
            seq_len,
            optim,
            groups,
            schedule,
            plateau,
            faults,
            init_source,
            data,
        })
    }
}

/// The objective as it is written in a config.
pub fn objective_name(o: Objective) -> &'static str {
    match o {
        Objective::Causal => "causal",
        Objective::Mlm => "mlm",
        Objective::MlmNsp => "mlm+nsp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::ScheduleKind;

    fn err(text: &str, overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        RunConfig::from_toml_str(text, &o).unwrap_err().to_string()
    }

    #[test]
    fn layering_defaults_file_overrides() {
        let cfg = RunConfig::from_toml_str(
            "[train]\nmax_steps = 50\nbatch_size = 4\n",
            &["train.batch_size=8".into(), "optim.lr=1e-3".into()],
        )
        .unwrap();
        assert_eq!(cfg.train.max_steps, 50);
        assert_eq!(cfg.train.batch_size, 8);
        assert_eq!(cfg.optim.lr, 1e-3);
        assert_eq!(cfg.train.seed, TrainConfig::default().seed);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err("[train]\nmax_stepz = 5\n", &[]);
        assert!(e.contains("train") && e.contains("max_stepz"), "{e}");
        let e = err("", &["optim.learning_rate=0.1"]);
        assert!(e.contains("learning_rate"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err("[train]\nbatch_size = \"big\"\n", &[]);
        assert!(e.contains("train.batch_size"), "{e}");
    }

    #[test]
    fn bad_value_names_key_value_and_range() {
        let e = err("", &["optim.lr=-1"]);
        assert!(e.contains("optim.lr") && e.contains("-1") && e.contains("positive"), "{e}");
        let e = err("", &["schedule.kind=triangle"]);
        assert!(e.contains("schedule.kind") && e.contains("cosine"), "{e}");
        let e = err("", &["model.preset=nope"]);
        assert!(e.contains("model.preset") && e.contains("nope"), "{e}");
        let e = err("", &["model.preset=bert-tiny", "train.objective=mlm", "train.activation_checkpointing=true"]);
        assert!(e.contains("train.activation_checkpointing") && e.contains("decoder"), "{e}");
        let ok = RunConfig::from_toml_str("", &["train.activation_checkpointing=true".to_string()]).unwrap();
        assert_eq!(ok.train.activation_checkpointing, Checkpointing::All);
        let some = RunConfig::from_toml_str("", &["train.activation_checkpointing=1".to_string()]).unwrap();
        assert_eq!(some.train.activation_checkpointing, Checkpointing::First(1));
        let e = err("", &["model.preset=tiny", "train.activation_checkpointing=9"]);
        assert!(e.contains("train.activation_checkpointing") && e.contains("9 blocks"), "{e}");
    }

    #[test]
    fn plateau_keys_belong_to_the_plateau_schedule() {
        let e = err("", &["schedule.plateau_patience=3"]);
        assert!(e.contains("schedule.plateau_patience") && e.contains("plateau") && e.contains("cosine"), "{e}");
        let e = err("", &["schedule.kind=plateau", "train.eval_every=0"]);
        assert!(e.contains("train.eval_every") && e.contains("validation"), "{e}");
        let e = err("", &["schedule.kind=plateau", "schedule.plateau_factor=1.5"]);
        assert!(e.contains("schedule.plateau_factor"), "{e}");
        let ok = RunConfig::from_toml_str("", &["schedule.kind=plateau".into(), "schedule.plateau_patience=2".into()]);
        assert_eq!(ok.unwrap().schedule.plateau_patience, Some(2));
    }

    /// A config.toml written before the optimizer suite spells out beta1, beta2 and eps; it must
    /// serialise (and so hash) exactly as then, or its runs could no longer resume.
    #[test]
    fn pre_suite_optim_section_serialises_as_before() {
        let cfg = RunConfig::from_toml_str("[optim]\nname = \"adamw\"\nbeta1 = 0.9\nbeta2 = 0.95\neps = 1e-8\n", &[])
            .unwrap();
        assert_eq!(
            serde_json::to_string(&cfg.optim).unwrap(),
            r#"{"name":"adamw","lr":0.0006,"beta1":0.9,"beta2":0.95,"eps":1e-8,"weight_decay":0.1,"decay_embeddings":false,"grad_clip":1.0}"#
        );
    }

    #[test]
    fn flatten_gives_dotted_keys() {
        let cfg = RunConfig::from_toml_str("", &["optim.lr=0.01".into()]).unwrap();
        let flat = config::flatten(&cfg);
        assert_eq!(flat["optim.lr"], toml::Value::Float(0.01));
        assert_eq!(flat["model.preset"], toml::Value::String("tiny".into()));
        assert!(!flat.contains_key("optim.momentum"), "unset optional keys are absent");
    }

    #[test]
    fn distributed_section_is_validated_and_hashed_only_when_set() {
        let e = err("", &["distributed.zero=4"]);
        assert!(e.contains("distributed.zero") && e.contains("ZeRO"), "{e}");
        let e = err("", &["distributed.compress=\"fp8\""]);
        assert!(e.contains("compress") && e.contains("powersgd"), "{e}");
        let e = err("", &["distributed.powersgd_rank=0"]);
        assert!(e.contains("distributed.powersgd_rank"), "{e}");
        let e = err("", &["distributed.timeout_s=0"]);
        assert!(e.contains("distributed.timeout_s"), "{e}");
        assert!(!RunConfig::default().to_toml().contains("distributed"));
        let zero1 = RunConfig::from_toml_str("[distributed]\nzero = 1\n", &[]).unwrap();
        assert_ne!(zero1.hash(), RunConfig::default().hash());
        assert_eq!(RunConfig::from_toml_str(&zero1.to_toml(), &[]).unwrap(), zero1);
    }

    #[test]
    fn round_trips_through_toml_and_hash_is_stable() {
        let cfg = RunConfig::from_toml_str("", &["train.seed=7".into()]).unwrap();
        let back = RunConfig::from_toml_str(&cfg.to_toml(), &[]).unwrap();
        assert_eq!(cfg, back);
        assert_eq!(cfg.hash(), back.hash());
        assert_ne!(cfg.hash(), RunConfig::default().hash());
    }

    /// The keys this redesign added are left out of the saved config at their defaults, so the
    /// hash of every earlier run's config is unchanged (its run still resumes): this is the
    /// hash of the default config before them.
    #[test]
    fn new_keys_at_their_defaults_leave_the_hash_as_before() {
        let toml = RunConfig::default().to_toml();
        assert!(!toml.contains("device") && !toml.contains("precision") && !toml.contains("objective"), "{toml}");
        let plan = RunConfig::default().plan().unwrap();
        assert_eq!((plan.objective, plan.schedule.kind), (Objective::Causal, ScheduleKind::Cosine));
        let cuda = RunConfig::from_toml_str("[train]\ndevice = \"cuda:1\"\nprecision = \"bf16-mixed\"\n", &[]).unwrap();
        assert_eq!((cuda.train.device, cuda.train.precision), (DeviceChoice::Cuda(1), Precision::Bf16Mixed));
        let e = err("", &["train.device=tpu"]);
        assert!(e.contains("train.device") && e.contains("cuda:N"), "{e}");
    }
}
