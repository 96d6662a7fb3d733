//! lmforge: raw text to a trained, evaluated and served transformer language model.
//!
//! The modules follow the data flow, each using only those listed above it:
//!
//! ```text
//! error, fsio      shared vocabulary: typed errors, crash-safe file writes
//! testhooks        LMFORGE_TEST_* fault injection for the reliability tests (off by default)
//! config           config files: defaults < TOML file < --set overrides, paths, hash (each
//!                  component owns its section; train / finetune compose and resolve them)
//! device           where tensors live and in what precision (train.device, train.precision)
//! patience         the one patience rule: reduce-on-plateau, early stopping, the best model
//! tokenizer        train / load / save HF tokenizer.json (byte-level BPE)
//! shards           token ids in a self-describing, memory-mapped binary file
//! corpus           raw text -> cleaned, filtered, deduplicated, split documents -> shards
//! data             prepared shards -> seeded batches and fixed validation windows
//! nn               parameters (trainable / frozen), init, Linear (+ LoRA / adapters, nn::peft), norms, RoPE
//! models           decoders (GPT-2, Llama styles) and the BERT encoder, presets, HF config + names
//! mlm_data         encoder pretraining batches: sentence index, NSP pairs, dynamic MLM masking
//! optim            optimizers (AdamW ... Muon), param groups, clipping, LR schedules
//! faults           non-finite steps (skip / roll back), spikes, checkpoint write failures
//! checkpoint       run-dir layout, checkpoint write/read/retention, manifests, model loading
//! distributed      multi-process data parallelism: collectives (MPI), bucketed all-reduce, ZeRO-1
//! train            the one training loop over any Task (causal LM, masked LM, ...), its step,
//!                  the pretraining front end (`lmforge train`)
//! bench            training throughput / peak memory on this machine (`lmforge bench`)
//! plan             memory / FLOPs / time / cost of a training job before allocating anything
//! metrics          classification metrics (accuracy, P/R/F1 averages, confusion matrix)
//! eval             perplexity and bits per byte
//! finetune         classification fine-tuning (full / LoRA / adapters) on the loop, predict, eval
//! generate         KV-cache sampling (greedy, temperature, top-k, top-p)
//! quickstart       the bundled-corpus demo behind `lmforge quickstart`
//! observe          run observers: start, every metrics row, end (the trainer's bookkeeping hook)
//! ```
//! Below this crate, `lmforge-ops` holds the tensor ops (re-exported as [`ops`]); above it,
//! `lmforge-track` records, searches and reports runs (store, sweeps, reports, TensorBoard), and
//! the `lmforge` binary (crate `lmforge-cli`) is a thin clap layer over both.

pub mod bench;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod corpus;
pub mod data;
pub mod device;
pub mod distributed;
pub mod error;
pub mod eval;
pub mod faults;
pub mod finetune;
pub mod fsio;
pub mod generate;
pub mod gguf;
pub mod metrics;
pub mod mlm_data;
pub mod models;
pub mod nn;
pub mod observe;
pub mod optim;
pub mod patience;
pub mod plan;
pub mod progress;
pub mod quickstart;
pub mod serve;
pub mod shards;
pub mod testhooks;
pub mod tokenizer;
pub mod train;

pub use candle_core::Device;
pub use error::{Error, Result};
/// The tensor ops (crate `lmforge-ops`): fused CPU kernels and their composed references.
pub use lmforge_ops as ops;
