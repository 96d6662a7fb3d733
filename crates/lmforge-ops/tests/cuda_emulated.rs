//! lmforge's CUDA kernels (`src/cuda/*.cu`) run on the CPU: `src/cuda/emu/check.cpp` includes
//! them with `src/cuda/emu/cuda_emu.h` standing in for the CUDA runtime (a block's threads as
//! fibers; shared memory, block and warp barriers and warp shuffles emulated; warps run ahead of
//! each other, so a missing barrier changes the results) and compares every kernel with plain
//! double-precision loops of its math. This checks the kernels' indexing, tiling, masking,
//! barriers and arithmetic on every machine, GPU or not; the `on_cuda` unit tests check them on
//! a GPU against the reference ops.
//!
//! Needs a C++20 compiler (`$CXX`, else `c++`); without one the test says so and passes.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn the_cuda_kernels_match_plain_loops_when_emulated_on_the_cpu() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/cuda/emu/check.cpp");
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cuda-emulated-check");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let build = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-DLMFORGE_CUDA_EMU", "-Wall", "-Wno-unknown-pragmas"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output();
    let build = match build {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: no C++ compiler ({cxx}: {e}); set CXX to a C++20 compiler to run the emulated kernels");
            return;
        }
    };
    assert!(build.status.success(), "{cxx} failed on {}:\n{}", src.display(), String::from_utf8_lossy(&build.stderr));
    let run = Command::new(&exe).output().expect("the emulated check runs");
    let report = String::from_utf8_lossy(&run.stdout);
    println!("{report}");
    // A barrier the threads of a block or warp do not all reach is reported on stderr.
    let emulator = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "a CUDA kernel disagrees with its loops on the CPU:\n{report}{emulator}");
    assert!(report.contains("all kernels match"), "{report}");
}
