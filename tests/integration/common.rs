//! Helpers shared by the integration tests.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The built `hondo` binary.
pub fn hondo() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("hondo").unwrap()
}

/// A tiny shapes run: small images, few samples, two quick epochs.
pub const TINY: &str = r#"
[model]
arch = "small_cnn"
width = 16
[data]
kind = "shapes"
image_size = 16
train_size = 512
val_size = 256
workers = 2
[optimizer]
lr = 0.1
[schedule]
warmup_epochs = 0.5
[train]
epochs = 2
batch_size = 32
threads = 2
"#;

/// Writes `text` as `name` in `dir` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/python/{script}` (with `PYTHONPATH=.pydeps`) into a fresh directory and
/// returns it, cached in cargo's per-target temporary directory as `{prefix}-{hash of the
/// script}` so each script version runs once. `extra_args(final_dir)` gives the arguments
/// after the output directory.
pub fn python_fixtures(
    script: &str,
    prefix: &str,
    extra_args: impl Fn(&Path) -> Vec<OsString>,
) -> PathBuf {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let repo = repo();
    let script_path = repo.join("tests/python").join(script);
    let source = std::fs::read(&script_path).unwrap_or_else(|e| panic!("read {script}: {e}"));
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    let tmp_root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp_root.join(format!("{prefix}-{:016x}", h.finish()));
    if dir.join("done").exists() {
        return dir;
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir_in(tmp_root)
        .expect("create a temporary directory");
    let status = Command::new("python3")
        .arg(&script_path)
        .arg(tmp.path())
        .args(extra_args(&dir))
        .env("PYTHONPATH", repo.join(".pydeps"))
        .status()
        .unwrap_or_else(|e| {
            panic!("run python3 (PYTHONPATH=.pydeps) for tests/python/{script}: {e}")
        });
    assert!(status.success(), "{script} failed: {status}");
    std::fs::write(tmp.path().join("done"), b"").unwrap();
    let tmp = tmp.keep();
    // Another test process may have finished first: keep its copy.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(
            dir.join("done").exists(),
            "could not move fixtures to {}",
            dir.display()
        );
    }
    dir
}
