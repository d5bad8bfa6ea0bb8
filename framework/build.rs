//! Build facts for run records: the git commit this build comes from and candle's version
//! (read from Cargo.lock, the version actually compiled in); with the `cuda` feature, the PTX of
//! the fused ops' kernels (src/ops/kernels.cu).

use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) {
        println!("cargo:rustc-env=LOSA_GIT_COMMIT={commit}");
    }
    // Rebuild when HEAD moves (a commit, a checkout); not on every edit of the index.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = Path::new(&dir);
        println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
        if let Some(head) = std::fs::read_to_string(dir.join("HEAD"))
            .ok()
            .and_then(|h| h.strip_prefix("ref: ").map(|r| r.trim().to_owned()))
        {
            let common =
                git(&["rev-parse", "--git-common-dir"]).map(|c| root.join(c)).unwrap_or(dir.to_owned());
            println!("cargo:rerun-if-changed={}", common.join(&head).display());
            println!("cargo:rerun-if-changed={}", common.join("packed-refs").display());
        }
    }
    let lock = root.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).unwrap_or_default();
    let version = text
        .split("[[package]]")
        .find(|p| p.contains("name = \"candle-core\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LOSA_CANDLE_VERSION={version}");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        compile_ptx();
    }
}

/// Compiles src/ops/kernels.cu to PTX with nvcc, as candle-kernels compiles candle's own kernels
/// (ahead of time, so a broken kernel fails the build here rather than at run time on the GPU
/// machine, and that machine needs no NVRTC). PTX for `compute_<CUDA_COMPUTE_CAP>` (default 90,
/// as the project's GPU build) is JIT-compiled by the driver for the card it runs on.
fn compile_ptx() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ops/kernels.cu");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("losa_ops.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("running {nvcc} (the CUDA toolkit, see ../shared/GPU.md): {e}"));
    assert!(status.success(), "{nvcc} failed on {}", src.display());
}
