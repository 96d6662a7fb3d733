//! Causal-LM fine-tuning (`task.kind = "causal_lm"`) as a [`Task`] of the one training loop:
//! instruction / completion tuning of a GPT-2 or Llama model, fully, with LoRA or with
//! bottleneck adapters. Rows are [`super::sft_data`]'s; batches are length-bucketed
//! ([`EpochSchedule`]) and padded on the right; the loss is the mean next-token cross-entropy
//! over the target tokens only — the LM head runs on those positions alone — and a step's loss
//! is the mean over all its target tokens (micro-batches weigh by their targets, as Hugging
//! Face's Trainer counts them). Validation is the loss and perplexity on the validation rows
//! and, every `sft.generate_every` evaluations, greedy generations for the first
//! `sft.generate_rows` of them scored by BLEU, chrF, ROUGE, exact match and token F1; any of
//! them can select the best model and stop early.
//!
//! The best model is written to `RUN_DIR/model/` as it improves ([`save`]): a full fine-tune
//! as a plain Hugging Face folder; LoRA as a PEFT folder (`adapter_config.json` with
//! `task_type = "CAUSAL_LM"`, `adapter_model.safetensors`) that PEFT loads onto the base;
//! adapters as an lmforge adapter folder (`peft_type = "LMFORGE_BOTTLENECK"`). Each carries
//! the tokenizer, the chat template used (`tokenizer_config.json`), `finetune.toml` and a
//! manifest; `generate`, `eval` and `predict` take it with `--adapter` on the base.

use super::batching::{eval_batches, EpochSchedule};
use super::config::{FinetuneConfig, Method};
use super::model::{self, lora_spec, pad_id};
use super::sft_data::SftEncoded;
use crate::chat::ChatTemplate;
use crate::checkpoint::{self, resolve_model_dir, write_manifest};
use crate::distributed::DataParallel;
use crate::error::{Error, IoContext, Result};
use crate::fsio::StagedDir;
use crate::generate::{generate_ids, SamplingConfig};
use crate::metrics::generation::{generation_metrics, GenerationMetrics};
use crate::models::{hf, Decoder, Family, ModelSpec, ParamKind};
use crate::nn::peft::{self, LoraSpec};
use crate::nn::prefix::{self, PrefixShape};
use crate::nn::{DropoutRng, ParamStore};
use crate::tokenizer::TextTokenizer;
use crate::train::{EvalAt, Selection, Task, ValMetrics};
use candle_core::{Device, Tensor};
use serde_json::json;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The base causal LM, its tokenizer, and the folder it came from.
pub struct Base {
    pub spec: ModelSpec,
    pub store: ParamStore,
    pub tokenizer: TextTokenizer,
    pub folder: PathBuf,
}

/// Loads `path` (a run dir, checkpoint or Hugging Face folder of a GPT-2 / Llama causal LM).
pub fn load_base(path: &Path, device: &Device) -> Result<Base> {
    let folder = resolve_model_dir(path)?;
    checkpoint::verify_manifest(&folder)?;
    let spec = hf::read_config(&folder.join("config.json"))?;
    if spec.arch().family() != Family::Decoder {
        return Err(Error::config(
            "model.base",
            format!("{} is a {:?} encoder; causal_lm fine-tunes GPT-2 / Llama decoders", folder.display(), spec.style),
        ));
    }
    let store = checkpoint::load_params(&folder, &spec, device)?;
    let tokenizer = TextTokenizer::load(&folder.join("tokenizer.json"))?;
    Ok(Base { spec, store, tokenizer, folder })
}

/// The chat template a run uses: `sft.chat_template_file`, else ChatML when asked, else the
/// base folder's, else ChatML.
pub fn chat_template(cfg: &FinetuneConfig, base: &Base) -> Result<ChatTemplate> {
    if let Some(file) = crate::config::given(&cfg.sft.chat_template_file) {
        let source = std::fs::read_to_string(file).at(file)?;
        let eos = crate::chat::eos_text(&base.tokenizer)?;
        return ChatTemplate::new(&source, "", &eos, &file.display().to_string());
    }
    if cfg.sft.chat_template == "auto" {
        if let Some(t) = ChatTemplate::from_model_dir(&base.folder)? {
            return Ok(t);
        }
    }
    ChatTemplate::chatml_for(&base.tokenizer)
}

/// Sets up the method on a freshly loaded base: LoRA / adapters / prefix freeze the base (norms
/// train with `finetune.train_norms`) and add their seeded tensors. Returns the LoRA settings.
pub fn prepare(store: &mut ParamStore, spec: &ModelSpec, cfg: &FinetuneConfig) -> Result<Option<LoraSpec>> {
    let method = cfg.finetune.method;
    if method == Method::Full {
        return Ok(None);
    }
    let norms: Vec<String> = spec
        .params()
        .into_iter()
        .filter(|p| matches!(p.kind, ParamKind::NormWeight | ParamKind::NormBias))
        .map(|p| p.name)
        .collect();
    let train_norms = cfg.finetune.train_norms;
    store.freeze_where(|n| !(train_norms && norms.iter().any(|m| m == n)));
    let seed = cfg.train.seed;
    let modules = peft::linear_modules(&model::backbone_params(spec, crate::models::HeadKind::Sequence));
    if method == Method::Lora {
        let l = lora_spec(spec, cfg);
        let chosen = peft::select_modules(&modules, &l.targets, "lora.target_modules")?;
        peft::add_lora(store, &chosen, &l, seed)?;
        return Ok(Some(l));
    }
    if method == Method::Prefix {
        let shape = PrefixShape::of(spec);
        prefix::add_prefix(store, &cfg.prefix.spec(shape), shape, seed)?;
        return Ok(None);
    }
    let mods = model::adapter_modules(spec, &cfg.adapter.target_modules)?;
    peft::add_adapters(store, &mods.iter().collect::<Vec<_>>(), cfg.adapter.size, seed)?;
    Ok(None)
}

/// A padded batch of rows with the flat positions of their targets.
struct Collated {
    ids: Tensor,
    /// (N) u32 positions `row · width + t` whose next token is a target.
    rows: Tensor,
    /// (N) u32 the target tokens.
    targets: Tensor,
    n: usize,
}

fn collate(items: &[&SftEncoded], pad: u32, width: usize, device: &Device) -> Result<Collated> {
    let mut ids = Vec::with_capacity(items.len() * width);
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (r, e) in items.iter().enumerate() {
        for &t in &e.targets {
            rows.push((r * width) as u32 + t);
            targets.push(e.ids[t as usize + 1]);
        }
        ids.extend_from_slice(&e.ids);
        ids.extend(std::iter::repeat_n(pad, width - e.ids.len()));
    }
    let n = rows.len();
    Ok(Collated {
        ids: Tensor::from_vec(ids, (items.len(), width), device)?,
        rows: Tensor::from_vec(rows, n, device)?,
        targets: Tensor::from_vec(targets, n, device)?,
        n,
    })
}

/// Mean target-token loss over `rows` (token-weighted), and the number of targets.
pub fn mean_loss(
    decoder: &Decoder,
    rows: &[SftEncoded],
    batch: usize,
    pad: u32,
    device: &Device,
) -> Result<(f64, usize)> {
    let lengths: Vec<usize> = rows.iter().map(|e| e.ids.len()).collect();
    let (mut sum, mut count) = (0.0f64, 0usize);
    for b in eval_batches(&lengths, batch) {
        let items: Vec<&SftEncoded> = b.iter().map(|&i| &rows[i]).filter(|e| !e.targets.is_empty()).collect();
        let Some(width) = items.iter().map(|e| e.ids.len()).max() else { continue };
        let c = collate(&items, pad, width, device)?;
        let loss = decoder.loss_at(&c.ids, &c.rows, &c.targets, None)?.to_scalar::<f32>()? as f64;
        sum += loss * c.n as f64;
        count += c.n;
    }
    Ok((sum / count.max(1) as f64, count))
}

/// How generations are made and cut: greedy, at most `max_new_tokens`, ending at the
/// end-of-text token or the chat template's end of turn.
pub struct Generation<'a> {
    pub tokenizer: &'a TextTokenizer,
    /// Text that ends a reply (`<|im_end|>`): cut there, and stop at it when it is one token.
    pub turn_end: Option<String>,
    pub sampling: SamplingConfig,
}

impl<'a> Generation<'a> {
    /// Greedy generation (or `sampling`'s settings) for `template`'s turns with `tokenizer`.
    pub fn new(tokenizer: &'a TextTokenizer, template: &ChatTemplate, sampling: SamplingConfig) -> Self {
        let turn_end = template.turn_end();
        let mut sampling = SamplingConfig { eos_id: sampling.eos_id.or(tokenizer.eos_id()), ..sampling };
        sampling.stop_ids.extend(turn_end.as_deref().and_then(|t| tokenizer.token_id(t)));
        Self { tokenizer, turn_end, sampling }
    }

    /// The reply to one prompt (token ids), decoded, cut at the end of turn and trimmed.
    pub fn reply(&self, decoder: &Decoder, device: &Device, prompt: &[u32]) -> Result<String> {
        let start: Vec<u32> = match (prompt.is_empty(), self.tokenizer.eos_id()) {
            (true, Some(eos)) => vec![eos],
            _ => prompt.to_vec(),
        };
        let ids = generate_ids(decoder, device, &start, &self.sampling, true, |_| Ok(()))?;
        let text = self.tokenizer.decode(&ids)?;
        let end = crate::serve::stop_at(&text, self.turn_end.as_slice()).unwrap_or(text.len());
        Ok(text[..end].trim().to_string())
    }

    /// Replies to every row's prompt, and their metrics against the rows' references.
    pub fn score(
        &self,
        decoder: &Decoder,
        device: &Device,
        rows: &[SftEncoded],
    ) -> Result<(Vec<String>, GenerationMetrics)> {
        let predictions: Vec<String> =
            rows.iter().map(|r| self.reply(decoder, device, &r.prompt)).collect::<Result<_>>()?;
        let references: Vec<Vec<String>> = rows.iter().map(|r| r.references.clone()).collect();
        let m = generation_metrics(&predictions, &references);
        Ok((predictions, m))
    }
}

pub struct CausalTuning<'a> {
    pub cfg: &'a FinetuneConfig,
    pub spec: ModelSpec,
    pub store: ParamStore,
    decoder: Decoder,
    tokenizer: &'a TextTokenizer,
    template: &'a ChatTemplate,
    lora: Option<LoraSpec>,
    train: &'a [SftEncoded],
    batches: EpochSchedule,
    validation: Option<&'a [SftEncoded]>,
    pad: u32,
    base_folder: PathBuf,
}

impl<'a> CausalTuning<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &'a FinetuneConfig,
        (spec, store, base_folder): (ModelSpec, ParamStore, PathBuf),
        lora: Option<LoraSpec>,
        tokenizer: &'a TextTokenizer,
        template: &'a ChatTemplate,
        train: &'a [SftEncoded],
        validation: Option<&'a [SftEncoded]>,
    ) -> Result<Self> {
        cfg.train.activation_checkpointing.check(spec.n_layer, "train.activation_checkpointing")?;
        let decoder = Decoder::new(&spec, &store)?.with_activation_checkpointing(cfg.train.activation_checkpointing);
        let t = &cfg.train;
        let lengths = train.iter().map(|e| e.ids.len()).collect();
        Ok(Self {
            cfg,
            spec,
            store,
            decoder,
            tokenizer,
            template,
            lora,
            train,
            batches: EpochSchedule::new(lengths, t.batch_size, t.grad_accum, t.bucket_batches, t.seed),
            validation,
            pad: pad_id(tokenizer),
            base_folder,
        })
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    fn micro_items(&self, step: u64, micro: usize) -> Result<Vec<&SftEncoded>> {
        Ok(self.batches.micro(step, micro)?.into_iter().map(|i| &self.train[i]).collect())
    }

    /// Whether the evaluation `at` generates.
    fn generates_at(&self, at: EvalAt) -> bool {
        let every = if self.cfg.selects_by_generation() { 1 } else { self.cfg.sft.generate_every };
        every > 0 && (at.index % every == 0 || at.last)
    }
}

impl Task for CausalTuning<'_> {
    fn params(&self) -> &ParamStore {
        &self.store
    }

    fn micro_rows(&self, step: u64, micro: usize) -> Result<usize> {
        Ok(self.batches.micro(step, micro)?.len())
    }

    fn micro_weight(&self, step: u64, micro: usize) -> Result<usize> {
        Ok(self.micro_items(step, micro)?.iter().map(|e| e.targets.len()).sum())
    }

    fn loss(&self, step: u64, micro: usize, rows: Range<usize>, dropout: &mut DropoutRng) -> Result<Tensor> {
        let all = self.micro_items(step, micro)?;
        let total: usize = all.iter().map(|e| e.targets.len()).sum();
        // Every share padded to the micro-batch's longest row: the same shapes in any split.
        let width = all.iter().map(|e| e.ids.len()).max().unwrap_or(1);
        let c = collate(&all[rows], self.pad, width, self.device())?;
        if c.n == 0 {
            // No target in this share: a zero loss that still reaches every parameter.
            let first = Tensor::zeros(1, candle_core::DType::U32, self.device())?;
            return Ok((self.decoder.loss_at(&c.ids, &first, &first, Some(dropout))? * 0.0)?);
        }
        let loss = self.decoder.loss_at(&c.ids, &c.rows, &c.targets, Some(dropout))?;
        Ok(if c.n == total { loss } else { (loss * (c.n as f64 / total as f64))? })
    }

    fn tokens_per_micro_batch(&self) -> u64 {
        (self.batches.mean_length() * self.cfg.train.batch_size as f64).round() as u64
    }

    fn steps_per_epoch(&self) -> Option<u64> {
        Some(self.batches.steps_per_epoch())
    }

    /// Every process evaluates the whole validation split (not split over processes yet).
    fn validate(&self, _dp: &DataParallel, at: EvalAt) -> Result<ValMetrics> {
        let Some(val) = self.validation else {
            return Err(Error::Invalid("no validation split (data.validation) to evaluate".into()));
        };
        let (loss, _) = mean_loss(&self.decoder, val, self.cfg.train.eval_batch_size, self.pad, self.device())?;
        let mut v = ValMetrics { loss, ppl: loss.exp(), bits_per_byte: None, extra: Vec::new() };
        if self.generates_at(at) {
            let s = &self.cfg.sft;
            let sampling = SamplingConfig { max_new_tokens: s.max_new_tokens, temperature: 0.0, ..Default::default() };
            let g = Generation::new(self.tokenizer, self.template, sampling);
            let subset = &val[..s.generate_rows.min(val.len())];
            let (predictions, m) = g.score(&self.decoder, self.device(), subset)?;
            v.extra.extend(m.named());
            if let Some(p) = predictions.first() {
                tracing::info!("step {}: generated for line {}: {p:?}", at.step, subset[0].line);
            }
        }
        Ok(v)
    }

    fn val_split(&self) -> &'static str {
        "validation"
    }

    fn selection(&self) -> Selection {
        super::selection(self.cfg)
    }

    fn write_model(&self, dir: &Path) -> Result<()> {
        super::task::write_trainable(&self.store, dir)
    }

    fn restore_weights(&self, dir: Option<&Path>) -> Result<()> {
        let tensors = match dir {
            Some(dir) => super::task::read_trainable(dir, self.device())?,
            None => {
                // The initial weights: the base again, prepared by the same seeded rule.
                let mut fresh = load_base(&self.cfg.model.base, self.device())?;
                prepare(&mut fresh.store, &self.spec, self.cfg)?;
                fresh.store.vars().iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect()
            }
        };
        super::task::set_trainable(&self.store, &tensors)
    }

    fn keep_best(&self, run_dir: &Path) -> Result<()> {
        save(&run_dir.join("model"), self)?;
        Ok(())
    }

    fn describe(&self) -> String {
        let (trainable, total) = (self.store.num_trainable(), self.store.num_params());
        let t = &self.cfg.train;
        format!(
            "{} causal-LM fine-tuning of a {:?} model: {trainable} of {total} parameters trainable ({:.2}%); \
             {} train rows, {} per step ({} x {}), {} steps per epoch; chat template: {}",
            self.cfg.finetune.method.name(),
            self.spec.style,
            100.0 * trainable as f64 / total.max(1) as f64,
            self.train.len(),
            self.batches.global_batch(),
            t.batch_size,
            t.grad_accum,
            self.batches.steps_per_epoch(),
            self.template.origin,
        )
    }
}

impl CausalTuning<'_> {
    fn device(&self) -> &Device {
        self.store.device()
    }
}

/// Writes the model folder of a causal fine-tune (see the module docs), staged and renamed.
pub fn save(dir: &Path, task: &CausalTuning) -> Result<PathBuf> {
    let (cfg, store) = (task.cfg, &task.store);
    let staged = StagedDir::new(dir)?;
    let p = staged.path();
    let base = task.base_folder.display().to_string();
    // Trainable tensors other than LoRA factors (norms with finetune.train_norms, adapters).
    let trained: Vec<String> = store.vars().keys().filter(|n| !peft::is_lora_factor(n)).cloned().collect();
    match (cfg.finetune.method, &task.lora) {
        (Method::Full, _) => checkpoint::write_hf_files(p, &task.spec, store, task.tokenizer)?,
        (Method::Lora, Some(l)) => {
            let modules = peft::modules_of(&trained);
            peft::save_peft(p, store, l, &l.targets, &modules, &trained, &base, Some("CAUSAL_LM"))?;
            task.tokenizer.save(&p.join("tokenizer.json"))?;
        }
        (Method::Prefix, _) => {
            let shape = PrefixShape::of(&task.spec);
            let base_tensors: Vec<String> = trained.into_iter().filter(|n| !prefix::is_prefix_param(n)).collect();
            let spec = cfg.prefix.spec(shape);
            prefix::save_peft(p, store, &spec, shape, &base_tensors, &base, "CAUSAL_LM")?;
            task.tokenizer.save(&p.join("tokenizer.json"))?;
        }
        _ => {
            let config = json!({
                "peft_type": peft::BOTTLENECK,
                "task_type": "CAUSAL_LM",
                "base_model_name_or_path": base,
                "adapter_size": cfg.adapter.size,
                "target_modules": cfg.adapter.target_modules,
            });
            crate::fsio::write_json_atomic(&p.join("adapter_config.json"), &config)?;
            let tensors = trained.iter().map(|n| Ok((n.clone(), store.get(n)?))).collect::<Result<Vec<_>>>()?;
            let bytes = crate::nn::serialize_tensors(tensors.into_iter())?;
            crate::fsio::write_atomic(&p.join("adapter_model.safetensors"), &bytes)?;
            task.tokenizer.save(&p.join("tokenizer.json"))?;
        }
    }
    let t = task.template;
    let tc = json!({ "chat_template": t.source(), "bos_token": t.bos_token, "eos_token": t.eos_token });
    crate::fsio::write_json_atomic(&p.join("tokenizer_config.json"), &tc)?;
    std::fs::write(p.join("finetune.toml"), cfg.to_toml()).at(p.join("finetune.toml"))?;
    write_manifest(p)?;
    staged.commit()
}
