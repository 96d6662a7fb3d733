//! With the `cuda` feature, compiles lmforge's CUDA kernels (`src/cuda/*.cu`) to PTX with nvcc
//! (the one `scripts/install-cuda.sh` installs: `CUDA_ROOT/bin/nvcc`, else `nvcc` on PATH), for
//! `CUDA_COMPUTE_CAP` (default 90, Hopper), into OUT_DIR, where `src/cuda.rs` includes them.
//! Without the feature it does nothing, so the CPU build needs no CUDA toolkit.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: [&str; 6] = ["norm", "adamw", "attention", "activation", "loss", "embedding"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/cuda");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("CUDA_ROOT")
        .map(|root| PathBuf::from(root).join("bin/nvcc"))
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    for name in KERNELS {
        let src = format!("src/cuda/{name}.cu");
        let ptx = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", &format!("-arch=sm_{cap}"), "-O3", "-std=c++17", &src, "-o"])
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| {
                panic!("{} cannot run ({e}): scripts/install-cuda.sh installs nvcc (README \"GPUs\")", nvcc.display())
            });
        assert!(status.success(), "nvcc failed on {src}");
    }
}
