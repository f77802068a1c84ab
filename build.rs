//! Link-time set-up for libtorch.
//!
//! - rpath to libtorch's `lib/` so binaries and test binaries run without `LD_LIBRARY_PATH`
//!   (torch-sys declares `links = "tch"` and exports `DEP_TCH_LIBTORCH_LIB`);
//! - only libtorch's CPU library is NEEDED (the default `--as-needed` drops `libtorch.so` and
//!   `libtorch_cuda.so`): the CUDA backend costs ~235 MiB of resident memory just loaded,
//!   so `hondo::device::cuda_backend` dlopens it at run time when a CUDA driver is there;
//! - compiles `csrc/shim.cpp` (fused optimizer kernels, foreach ops, autocast state: what tch
//!   does not bind), `csrc/batch_norm_relu.cpp` (a fused BatchNorm + ReLU) and `csrc/export.cpp`
//!   (TorchScript serialised into memory) against the same libtorch headers.
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
    println!("cargo:rustc-env=HONDO_LIBTORCH_LIB={}", lib.display());
    compile_shim(&lib);

    // Versions for `hondo info`: libtorch's from the pip package, tch's from our manifest.
    let version_py = lib.parent().map(|d| d.join("version.py"));
    let libtorch = version_py
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim_matches(['\'', '"']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HONDO_LIBTORCH_VERSION={libtorch}");
    let manifest = std::fs::read_to_string("Cargo.toml").unwrap_or_default();
    let tch = manifest
        .lines()
        .find_map(|l| l.strip_prefix("tch = \"="))
        .and_then(|v| v.split('"').next())
        .unwrap_or("unknown");
    println!("cargo:rustc-env=HONDO_TCH_VERSION={tch}");
    println!("cargo:rerun-if-changed=Cargo.toml");
}

/// The C++ shim, built like torch-sys builds tch's own glue: C++17, the CXX11 ABI, and
/// libtorch's two include directories.
fn compile_shim(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=csrc/shim.cpp");
    println!("cargo:rerun-if-changed=csrc/cpu_allocator.cpp");
    println!("cargo:rerun-if-changed=csrc/batch_norm_relu.cpp");
    println!("cargo:rerun-if-changed=csrc/batch_norm_relu_kernels.inc");
    println!("cargo:rerun-if-changed=csrc/export.cpp");
    println!("cargo:rerun-if-changed=csrc/guard.h");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-env-changed=HONDO_GLOO_INCLUDE");
    let include = lib
        .parent()
        .map(|d| d.join("include"))
        .expect("libtorch's lib directory has a parent");
    // gloo's headers (scripts/setup.sh puts them beside the wheel's torch/ in the cache).
    let gloo = std::env::var_os("HONDO_GLOO_INCLUDE")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let torch = lib.parent().and_then(|d| d.parent());
            torch.map(|d| d.join("gloo/include")).unwrap_or_default()
        });
    assert!(
        gloo.join("gloo/config.h").is_file(),
        "gloo's headers are not at {} (csrc/dist.cpp needs them): run `bash scripts/setup.sh`, \
         or set HONDO_GLOO_INCLUDE",
        gloo.display()
    );
    cc::Build::new()
        .cpp(true)
        .file("csrc/shim.cpp")
        .file("csrc/cpu_allocator.cpp")
        .file("csrc/batch_norm_relu.cpp")
        .file("csrc/export.cpp")
        .file("csrc/dist.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .define("USE_C10D_GLOO", None)
        .flag("-std=c++17")
        // The fused kernels are hot loops: optimised even in dev and test builds, vectorised
        // by `omp simd`, and parallel through ATen's inline OpenMP `parallel_for`.
        .opt_level(3)
        .flag("-fopenmp")
        // The same rounding wherever an expression appears: the backward recomputes the
        // forward's ReLU mask and must get the same signs.
        .flag("-ffp-contract=off")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .compile("hondo_shim");
    // `-fopenmp` code calls into libgomp: link libtorch's own copy (one OpenMP runtime).
    println!(
        "cargo:rustc-link-arg={}",
        lib.join("libgomp.so.1").display()
    );
}
