//! The library's examples run as a user would run them; each checks its own claims and
//! exits non-zero when one fails (`cargo test` builds the examples before the tests).

use std::path::PathBuf;
use std::process::Command;

fn example(name: &str) -> PathBuf {
    // target/<profile>/deps/integration-HASH -> target/<profile>/examples/NAME
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.is_file(),
        "{} is not built: `cargo test` builds the examples (`cargo build --example {name}`)",
        path.display()
    );
    path
}

fn run(name: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(example(name))
        .arg(d.path())
        .output()
        .expect("run the example");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "example {name} failed:\n{text}");
    text
}

/// A network defined in the example trains above chance, resumes bit-exactly and exports.
#[test]
fn bring_your_own_model_trains_resumes_and_exports() {
    let text = run("custom_model");
    assert!(text.contains("bit-identical"), "{text}");
    assert!(text.contains("exported"), "{text}");
}

/// The parts alone: a ResNet, weights with a report, the loader, checkpoints, evaluation
/// and prediction on tensors.
#[test]
fn parts_work_without_the_trainer() {
    let text = run("parts");
    assert!(text.contains("re-initialised head"), "{text}");
    assert!(text.contains("predict: first image"), "{text}");
}
