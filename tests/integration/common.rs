//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

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
