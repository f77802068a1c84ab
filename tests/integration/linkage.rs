//! The binary finds libtorch without LD_LIBRARY_PATH and keeps libtorch.so (and so CUDA)
//! as a NEEDED library.

use std::process::Command;

#[test]
fn binary_needs_libtorch_and_has_an_rpath() {
    let out = Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_hondo")])
        .output()
        .expect("readelf runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Shared library: [libtorch.so]"),
        "libtorch.so not NEEDED:\n{text}"
    );
    assert!(text.contains("Shared library: [libtorch_cpu.so]"), "{text}");
    let rpath = text
        .lines()
        .find(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
        .expect("an rpath entry");
    assert!(rpath.contains("torch/lib"), "{rpath}");
}

#[test]
fn binary_runs_without_ld_library_path() {
    let out = super::common::hondo()
        .env_remove("LD_LIBRARY_PATH")
        .arg("info")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libtorch  2.11.0"), "{text}");
    assert!(text.contains("tch       0.24.0"), "{text}");
}
