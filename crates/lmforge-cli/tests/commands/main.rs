//! End-to-end tests of the `lmforge` binary, one module a command family. They are one test
//! executable rather than one each (each would compile and link its own copy of the helpers and
//! their dependencies), so the test build is shorter and the runner keeps both cores busy
//! across modules. `cargo test -p lmforge-cli --test commands MODULE::` runs one module.

mod common;

mod automation;
mod causal;
mod cli;
mod finetune;
mod plan;
mod qa;
mod regression;
mod reliability;
mod serve;
mod token_cls;
