//! The library's integration tests through its public API, one module a stage or task. They are
//! one test executable rather than one each: each executable links the whole library and
//! instantiates candle's generics again, so nine of them cost the test build about a minute of
//! compiling and linking, and one lets the test runner keep both cores busy across modules.
//! `cargo test --test api MODULE::` runs one module. The parity, gradient-presence and NCCL
//! tests stay executables of their own: `scripts/gpu-prepare.sh` packs exactly those for a GPU
//! machine.

#[path = "../common/mod.rs"]
mod common;

mod corpus;
mod finetune;
mod gguf;
mod hostile;
mod multilingual;
mod prefix;
mod qa;
mod token_cls;
mod web;
