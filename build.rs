//! Link-time set-up for libtorch.
//!
//! - rpath to libtorch's `lib/` so binaries and test binaries run without `LD_LIBRARY_PATH`
//!   (torch-sys declares `links = "tch"` and exports `DEP_TCH_LIBTORCH_LIB`);
//! - `--no-as-needed -ltorch` so `libtorch.so` (and through it `libtorch_cuda.so`) stays
//!   NEEDED: with the default `--as-needed` the CUDA backend is dropped and never seen.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_else(|_| {
        panic!("torch-sys did not report libtorch's lib directory: run `bash scripts/setup.sh`")
    });
    let lib = PathBuf::from(lib);
    if !lib.join("libtorch.so").exists() {
        eprintln!(
            "error: libtorch not found at {}: run `bash scripts/setup.sh` first",
            lib.display()
        );
        std::process::exit(1);
    }
    // Resolve the checkout's `.libtorch` link so the rpath names the per-user cache.
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-env=HONDO_LIBTORCH_LIB={}", lib.display());
}
