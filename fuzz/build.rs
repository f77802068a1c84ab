//! The link set-up of hondo's own build.rs, for these binaries: rpath to libtorch's `lib/` and
//! libtorch's OpenMP runtime for hondo's C++ shim.
fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .expect("torch-sys did not report libtorch's lib directory: run `bash scripts/setup.sh`");
    let lib = std::path::PathBuf::from(lib);
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg={}", lib.join("libgomp.so.1").display());
    println!("cargo:rerun-if-changed=build.rs");
}
