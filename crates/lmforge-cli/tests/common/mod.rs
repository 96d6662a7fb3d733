//! Helpers shared by the end-to-end tests: running the binary.
#![allow(dead_code)] // each test crate uses a subset

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn lmforge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lmforge"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env("LMFORGE_DB", test_db())
        .output()
        .expect("lmforge runs")
}

/// The experiment store these tests' runs are recorded in: under the target dir, never the repo.
pub fn test_db() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-tests.db")
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
