//! With the `cuda` feature, compiles lmforge's CUDA kernels (`src/cuda/*.cu`) with nvcc (the one
//! `scripts/install-cuda.sh` installs: `CUDA_ROOT/bin/nvcc`, else `nvcc` on PATH) into one fat
//! binary a file in OUT_DIR, where `src/cuda/` includes them: machine code for
//! `sm_{CUDA_COMPUTE_CAP}` (default 90, Hopper), so nothing waits on the driver's JIT compiler,
//! and the same architecture's PTX, which the driver compiles for newer GPUs. Each image is
//! checked to hold both (`src/fatbin.rs`). It also writes `kernel_signatures.rs` there: every
//! kernel's parameter list as the C++ preprocessor reads the sources (`src/kernel_signature.rs`),
//! which each launch's arguments are checked against. Without the feature it does nothing, so
//! the CPU build needs no CUDA toolkit.

use std::path::PathBuf;
use std::process::Command;

#[path = "src/fatbin.rs"]
mod fatbin;

// Only the reading half is used here; the library uses the rest.
#[path = "src/kernel_signature.rs"]
#[allow(dead_code)]
mod kernel_signature;

const KERNELS: [&str; 9] =
    ["norm", "adamw", "adafactor", "attention", "activation", "loss", "embedding", "reduce", "sum_squares"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/cuda");
    println!("cargo::rerun-if-changed=src/fatbin.rs");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=CUDA_ROOT");
    println!("cargo::rerun-if-env-changed=CXX");
    // nvcc reads these itself (CI sets NVCC_APPEND_FLAGS, .ci/cuda): a change must rebuild the images.
    println!("cargo::rerun-if-env-changed=NVCC_APPEND_FLAGS");
    println!("cargo::rerun-if-env-changed=NVCC_PREPEND_FLAGS");
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
    let arch: u32 = cap.parse().unwrap_or_else(|_| panic!("CUDA_COMPUTE_CAP={cap}: expected a number such as 90"));
    // The architecture the images hold machine code for, for the test that checks them.
    println!("cargo::rustc-env=LMFORGE_CUDA_ARCH={arch}");
    for name in KERNELS {
        let src = format!("src/cuda/{name}.cu");
        let image = out.join(format!("{name}.fatbin"));
        let status = Command::new(&nvcc)
            .arg("-fatbin")
            .args(["-gencode", &format!("arch=compute_{arch},code=sm_{arch}")])
            .args(["-gencode", &format!("arch=compute_{arch},code=compute_{arch}")])
            .args(["-O3", "-std=c++17", &src, "-o"])
            .arg(&image)
            .status()
            .unwrap_or_else(|e| {
                panic!("{} cannot run ({e}): scripts/install-cuda.sh installs nvcc (README \"GPUs\")", nvcc.display())
            });
        assert!(status.success(), "nvcc failed on {src}");
        let bytes = std::fs::read(&image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
        if let Err(why) = fatbin::check(&bytes, arch) {
            panic!("{}: {why}", image.display());
        }
    }
    // Every kernel's parameters, for the check of each launch's arguments (cuda::Args).
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let kernels = kernel_signature::read_kernels(&cxx, std::path::Path::new("src/cuda"), &KERNELS)
        .unwrap_or_else(|e| panic!("reading the kernels' signatures: {e}"));
    let mut table = String::from("pub(crate) const SIGNATURES: &[(&str, &[Param])] = &[\n");
    for k in &kernels {
        let params: Vec<String> = k.params.iter().map(|p| p.rust()).collect();
        table.push_str(&format!("    ({:?}, &[{}]),\n", k.name, params.join(", ")));
    }
    table.push_str("];\n");
    let path = out.join("kernel_signatures.rs");
    std::fs::write(&path, table).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
