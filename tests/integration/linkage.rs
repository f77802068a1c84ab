//! The binary finds libtorch without LD_LIBRARY_PATH, links only libtorch's CPU library,
//! and loads the CUDA backend at run time (`hondo::device::cuda_backend`).

use std::process::Command;

#[test]
fn binary_needs_libtorch_and_has_an_rpath() {
    let out = Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_hondo")])
        .output()
        .expect("readelf runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Shared library: [libtorch_cpu.so]"), "{text}");
    // The CUDA half is ~235 MiB resident once loaded: never at start-up.
    for lib in ["libtorch.so", "libtorch_cuda.so"] {
        assert!(
            !text.contains(&format!("Shared library: [{lib}]")),
            "{lib} is NEEDED:\n{text}"
        );
    }
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

/// `hondo info` on a machine without a CUDA driver does not load the CUDA backend; with
/// `--device cuda` the error says why.
#[test]
fn cuda_backend_is_loaded_only_with_a_driver() {
    let out = super::common::hondo().arg("info").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if hondo::device::cuda_available() {
        // A GPU machine: the backend is loaded and the devices are listed.
        assert!(text.contains("libtorch_cuda loaded"), "{text}");
        assert!(text.contains("cuda:0 "), "{text}");
        return;
    }
    assert!(
        text.contains("libtorch_cuda not loaded (no CUDA driver"),
        "{text}"
    );
    let maps_before_cuda = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps_before_cuda.contains("libcublas"),
        "CUDA libraries mapped in the test process"
    );
}
