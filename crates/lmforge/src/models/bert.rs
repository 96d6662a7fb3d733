//! BERT (Devlin et al. 2019; Hugging Face `BertForPreTraining`): word, learned position and
//! token-type embeddings, post-LayerNorm blocks with bidirectional attention over right-padded
//! rows, an erf-GELU MLP, the pooler, the MLM head tied to the word embeddings and the
//! next-sentence head. The network is [`super::Encoder`]; this file is the family's entry in the
//! registry: presets, names, the HF config, heads, memory terms.

use super::arch::{Architecture, ClassificationHead, Family, HeadKind, HfFields, ParamList};
use super::decoder::{DecoderEnds, LayerParts};
use super::{ModelSpec, ParamInfo, ParamKind, Style};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::ops::Kernels;
use serde_json::{json, Value};

pub struct Bert;

/// A BERT shape: context 512, MLP 4·C wide, two token types.
fn bert(vocab: usize, d_model: usize, n_layer: usize, n_head: usize) -> ModelSpec {
    ModelSpec {
        style: Style::Bert,
        vocab_size: vocab,
        context: 512,
        d_model,
        n_layer,
        n_head,
        n_kv_head: n_head,
        head_dim: d_model / n_head.max(1),
        d_ff: 4 * d_model,
        norm_eps: 1e-12,
        rope_theta: 10_000.0,
        tie_embeddings: true,
        type_vocab_size: 2,
    }
}

impl Architecture for Bert {
    fn style(&self) -> Style {
        Style::Bert
    }

    fn model_type(&self) -> &'static str {
        "bert"
    }

    fn family(&self) -> Family {
        Family::Encoder
    }

    fn preset_names(&self) -> &'static [&'static str] {
        &["bert-tiny", "bert-mini", "bert-quickstart", "bert-base"]
    }

    fn preset(&self, name: &str) -> Option<ModelSpec> {
        Some(match name {
            // Google's compact BERTs (Turc et al. 2019) and BERT-base, WordPiece vocabulary 30522.
            "bert-tiny" => bert(30522, 128, 2, 2),
            "bert-mini" => bert(30522, 256, 4, 4),
            "bert-base" => bert(30522, 768, 12, 12),
            // The bundled-corpus recipe: a small vocabulary and context for CPU minutes.
            "bert-quickstart" => ModelSpec { context: 128, ..bert(2048, 192, 4, 4) },
            _ => return None,
        })
    }

    fn validate(&self, s: &ModelSpec) -> Result<()> {
        super::gpt2::Gpt2.validate(s)?;
        if s.type_vocab_size == 0 || !s.tie_embeddings {
            return Err(Error::config(
                "model.type_vocab_size",
                "BERT needs type_vocab_size >= 1 and its MLM decoder tied to the word embeddings",
            ));
        }
        Ok(())
    }

    fn params(&self, s: &ModelSpec) -> Vec<ParamInfo> {
        // HF `BertForPreTraining` order. BERT initialises every matrix N(0, 0.02), residual
        // outputs included, so none is a `ResidualProjection`.
        let (c, f, v, tv) = (s.d_model, s.d_ff, s.vocab_size, s.type_vocab_size);
        let m = ParamKind::Matrix;
        let mut out = ParamList::new();
        let e = "bert.embeddings";
        out.add(format!("{e}.word_embeddings.weight"), vec![v, c], ParamKind::Embedding, (v, c));
        out.add(format!("{e}.position_embeddings.weight"), vec![s.context, c], ParamKind::Embedding, (s.context, c));
        out.add(format!("{e}.token_type_embeddings.weight"), vec![tv, c], ParamKind::Embedding, (tv, c));
        out.layer_norm(&format!("{e}.LayerNorm"), c);
        for i in 0..s.n_layer {
            let p = format!("bert.encoder.layer.{i}");
            for q in ["query", "key", "value"] {
                out.linear(&format!("{p}.attention.self.{q}"), c, c, m, true);
            }
            out.linear(&format!("{p}.attention.output.dense"), c, c, m, true);
            out.layer_norm(&format!("{p}.attention.output.LayerNorm"), c);
            out.linear(&format!("{p}.intermediate.dense"), c, f, m, true);
            out.linear(&format!("{p}.output.dense"), f, c, m, true);
            out.layer_norm(&format!("{p}.output.LayerNorm"), c);
        }
        out.linear("bert.pooler.dense", c, c, m, true);
        out.linear("cls.predictions.transform.dense", c, c, m, true);
        out.layer_norm("cls.predictions.transform.LayerNorm", c);
        out.add("cls.predictions.bias", vec![v], ParamKind::Bias, (c, v));
        out.linear("cls.seq_relationship", c, 2, m, true);
        out.0
    }

    fn embedding_name(&self) -> &'static str {
        "bert.embeddings.word_embeddings.weight"
    }

    fn spec_from_hf(&self, v: &Value) -> std::result::Result<ModelSpec, String> {
        let f = HfFields(v);
        let act = f.text("hidden_act").unwrap_or("gelu");
        if act != "gelu" {
            return Err(format!("hidden_act {act:?} is not supported (gelu, the erf form, only)"));
        }
        let pos = f.text("position_embedding_type").unwrap_or("absolute");
        if pos != "absolute" {
            return Err(format!("position_embedding_type {pos:?} is not supported (absolute only)"));
        }
        let (d, h) = (f.int("hidden_size")?, f.int("num_attention_heads")?);
        let mut s = bert(f.int("vocab_size")?, d, f.int("num_hidden_layers")?, h);
        s.context = f.int("max_position_embeddings")?;
        s.d_ff = f.int("intermediate_size")?;
        s.norm_eps = f.float("layer_norm_eps", 1e-12);
        s.type_vocab_size = f.int_or("type_vocab_size", 2);
        Ok(s)
    }

    fn hf_config(&self, s: &ModelSpec) -> Value {
        json!({
            "architectures": ["BertForPreTraining"],
            "model_type": "bert",
            "vocab_size": s.vocab_size,
            "max_position_embeddings": s.context,
            "type_vocab_size": s.type_vocab_size,
            "hidden_size": s.d_model,
            "intermediate_size": s.d_ff,
            "num_hidden_layers": s.n_layer,
            "num_attention_heads": s.n_head,
            "hidden_act": "gelu",
            "layer_norm_eps": s.norm_eps,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
            "position_embedding_type": "absolute",
            "initializer_range": 0.02,
            "pad_token_id": 0,
            "tie_word_embeddings": true,
        })
    }

    /// A `BertModel` folder (no task head) names the backbone without the `bert.` prefix.
    fn hf_param_name(&self, key: &str) -> String {
        if key.starts_with("embeddings.") || key.starts_with("encoder.") || key.starts_with("pooler.") {
            format!("bert.{key}")
        } else {
            key.to_string()
        }
    }

    /// The pooler and the pretraining heads: a `BertModel` backbone has none of the heads, some
    /// exports have no pooler.
    fn is_optional_param(&self, name: &str) -> bool {
        name.starts_with("cls.") || name.starts_with("bert.pooler.")
    }

    fn backbone_class(&self) -> Option<&'static str> {
        Some("BertModel")
    }

    fn classification_head(&self, kind: HeadKind) -> ClassificationHead {
        match kind {
            HeadKind::Sequence => ClassificationHead {
                module: "classifier",
                hf_class: "BertForSequenceClassification",
                bias: true,
                unused: &[],
                supported: true,
            },
            HeadKind::Token => ClassificationHead {
                module: "classifier",
                hf_class: "BertForTokenClassification",
                bias: true,
                unused: &["bert.pooler."],
                supported: true,
            },
            HeadKind::Span => ClassificationHead {
                module: "qa_outputs",
                hf_class: "BertForQuestionAnswering",
                bias: true,
                unused: &["bert.pooler."],
                supported: true,
            },
        }
    }

    fn lora_targets(&self) -> &'static [&'static str] {
        &["query", "value"]
    }

    fn decoder_layer(&self, _p: &ParamStore, _s: &ModelSpec, _i: usize) -> Result<LayerParts> {
        Err(Error::Invalid("a BERT spec builds an Encoder, not a Decoder".into()))
    }

    fn decoder_ends(&self, _p: &ParamStore, _s: &ModelSpec) -> Result<DecoderEnds> {
        Err(Error::Invalid("a BERT spec builds an Encoder, not a Decoder".into()))
    }

    /// GPT-2's count: separate q, k, v projections and a post-norm per branch keep the same
    /// within a few C per token (checked against the allocator with `examples/memprobe.rs`).
    fn cpu_layer_elems(&self, s: &ModelSpec, scores: u64, kernels: Kernels) -> u64 {
        super::gpt2::Gpt2.cpu_layer_elems(s, scores, kernels)
    }

    /// GPT-2's count (embeddings, final norm, head).
    fn cpu_head_elems(&self, s: &ModelSpec, kernels: Kernels) -> u64 {
        super::gpt2::Gpt2.cpu_head_elems(s, kernels)
    }

    fn mlp_activations(&self) -> u64 {
        2
    }
}
