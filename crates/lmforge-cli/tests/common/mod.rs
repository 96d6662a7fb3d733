//! Helpers shared by the end-to-end tests: running the binary.
#![allow(dead_code)] // each test crate uses a subset

use std::process::{Command, Output};

pub fn lmforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lmforge")).args(args).env("RUST_LOG", "warn").output().expect("lmforge runs")
}

pub fn ok(args: &[&str]) -> String {
    let out = lmforge(args);
    assert!(
        out.status.success(),
        "lmforge {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
