//! Text generation with a KV cache: the prompt is run once (prefill), then each new token
//! costs one position. Sampling is greedy (temperature 0) or temperature + top-k + top-p
//! (nucleus), drawn from a seeded ChaCha generator so the same seed gives the same text.
//! Generation stops at the end-of-text token or after `max_new_tokens`. When the context is
//! full, the cache is rebuilt from the most recent half-context of tokens.

use crate::checkpoint::LoadedModel;
use crate::error::{Error, Result};
use crate::models::{Decoder, KvCache, Piece};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub max_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    /// 0 = no top-k filter.
    pub top_k: usize,
    /// 1.0 = no nucleus filter.
    pub top_p: f64,
    pub seed: u64,
    /// Stop at this token id (the tokenizer's end-of-text).
    pub eos_id: Option<u32>,
    /// Stop at any of these ids too (a chat template's end of turn, e.g. `<|im_end|>`).
    pub stop_ids: Vec<u32>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 200,
            temperature: 0.8,
            top_k: 200,
            top_p: 1.0,
            seed: 1337,
            eos_id: None,
            stop_ids: Vec::new(),
        }
    }
}

impl SamplingConfig {
    /// Range checks: `top_p` in (0, 1], `temperature` ≥ 0 (errors name the setting).
    pub fn validate(&self) -> Result<()> {
        if self.top_p.is_nan() || self.top_p <= 0.0 || self.top_p > 1.0 {
            return Err(Error::config("top_p", format!("must be in (0, 1], got {}", self.top_p)));
        }
        if self.temperature.is_nan() || self.temperature < 0.0 {
            return Err(Error::config("temperature", format!("must be >= 0 (0 = greedy), got {}", self.temperature)));
        }
        Ok(())
    }
}

/// Picks the next token from a row of logits.
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut ChaCha8Rng) -> u32 {
    if cfg.temperature <= 0.0 {
        return argmax(logits);
    }
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    // Sort descending by logit; ties broken by id so the order is deterministic.
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if cfg.top_k > 0 {
        idx.truncate(cfg.top_k);
    }
    let max = logits[idx[0]] as f64;
    let mut probs: Vec<f64> = idx.iter().map(|&i| ((logits[i] as f64 - max) / cfg.temperature).exp()).collect();
    let z: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= z);
    if cfg.top_p < 1.0 {
        // Keep the smallest prefix whose mass reaches top_p (always at least one token).
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= cfg.top_p {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        idx.truncate(keep);
        let z: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= z);
    }
    let r: f64 = rng.random();
    let mut acc = 0.0;
    for (p, &i) in probs.iter().zip(&idx) {
        acc += p;
        if r < acc {
            return i as u32;
        }
    }
    *idx.last().expect("at least one candidate") as u32
}

/// Index of the largest value (the first on ties).
pub(crate) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates token ids after `prompt`. With `use_cache` false, every step recomputes the whole
/// sequence (the reference the cached path is tested against). `on_token` sees each new id.
pub fn generate_ids(
    model: &Decoder,
    device: &Device,
    prompt: &[u32],
    cfg: &SamplingConfig,
    use_cache: bool,
    mut on_token: impl FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    cfg.validate()?;
    if prompt.is_empty() {
        return Err(Error::Invalid(
            "the prompt is empty and the tokenizer has no end-of-text token to start from".into(),
        ));
    }
    let ctx = model.spec.context;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut seq: Vec<u32> = prompt[prompt.len().saturating_sub(ctx)..].to_vec();
    let mut out = Vec::new();
    let mut cache = KvCache::new(model.spec.n_layer);
    let mut pending: Vec<u32> = seq.clone(); // tokens not yet in the cache
    for _ in 0..cfg.max_new_tokens {
        let logits = if use_cache {
            if cache.len() + pending.len() > ctx {
                // Context full: restart from the most recent half context.
                let keep = (ctx / 2).max(1);
                cache = KvCache::new(model.spec.n_layer);
                pending = seq[seq.len() - keep..].to_vec();
            }
            // The serving engine's forward, so `generate` and `serve` pick the same tokens.
            let start = cache.len();
            let l = model.forward_pieces(&mut [Piece { tokens: &pending, start, cache: &mut cache }])?;
            pending.clear();
            l.unsqueeze(0)?
        } else {
            let window = &seq[seq.len().saturating_sub(ctx)..];
            let x = Tensor::from_slice(window, (1, window.len()), device)?;
            model.forward(&x, 0, None)?
        };
        let (_, t, _) = logits.dims3()?;
        let last: Vec<f32> = logits.squeeze(0)?.get(t - 1)?.to_vec1()?;
        let next = sample(&last, cfg, &mut rng);
        if Some(next) == cfg.eos_id || cfg.stop_ids.contains(&next) {
            break;
        }
        seq.push(next);
        pending.push(next);
        out.push(next);
        on_token(next)?;
    }
    Ok(out)
}

/// Generates text after `prompt`, calling `on_text` with each newly decoded piece (streaming).
pub fn generate_text(
    model: &LoadedModel,
    prompt: &str,
    cfg: &SamplingConfig,
    mut on_text: impl FnMut(&str) -> Result<()>,
) -> Result<String> {
    let mut prompt_ids = model.tokenizer.encode(prompt)?;
    if prompt_ids.is_empty() {
        prompt_ids.extend(model.tokenizer.eos_id());
    }
    let mut cfg = cfg.clone();
    cfg.eos_id = cfg.eos_id.or(model.tokenizer.eos_id());
    let mut ids = Vec::new();
    let mut shown = 0usize;
    let tok = &model.tokenizer;
    generate_ids(model.decoder()?, model.params.device(), &prompt_ids, &cfg, true, |id| {
        ids.push(id);
        // Byte-level tokens can split a UTF-8 character: emit only once it decodes whole.
        let text = tok.decode(&ids)?;
        if !text.ends_with('\u{FFFD}') && text.len() > shown {
            on_text(&text[shown..])?;
            shown = text.len();
        }
        Ok(())
    })?;
    let text = tok.decode(&ids)?;
    if text.len() > shown {
        on_text(&text[shown..])?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_settings_are_checked_by_name() {
        assert!(SamplingConfig::default().validate().is_ok());
        for (cfg, name) in [
            (SamplingConfig { top_p: 0.0, ..Default::default() }, "top_p"),
            (SamplingConfig { top_p: 1.5, ..Default::default() }, "top_p"),
            (SamplingConfig { temperature: -0.1, ..Default::default() }, "temperature"),
            (SamplingConfig { temperature: f64::NAN, ..Default::default() }, "temperature"),
        ] {
            assert!(cfg.validate().unwrap_err().to_string().contains(name), "{cfg:?}");
        }
    }

    #[test]
    fn greedy_is_argmax_and_filters_hold() {
        let logits = [0.1f32, 3.0, 2.9, -1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let greedy = SamplingConfig { temperature: 0.0, ..Default::default() };
        assert_eq!(sample(&logits, &greedy, &mut rng), 1);
        let top2 = SamplingConfig { temperature: 1.0, top_k: 2, ..Default::default() };
        for _ in 0..200 {
            assert!(matches!(sample(&logits, &top2, &mut rng), 1 | 2));
        }
        let nucleus = SamplingConfig { temperature: 1.0, top_k: 0, top_p: 0.3, ..Default::default() };
        for _ in 0..50 {
            assert_eq!(sample(&logits, &nucleus, &mut rng), 1, "top-p 0.3 keeps only the best token");
        }
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let cfg = SamplingConfig { temperature: 1.0, top_k: 0, ..Default::default() };
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..20).map(|_| sample(&logits, &cfg, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
