//! `data.kind = "cifar10"`: the binary version of CIFAR-10 (`data_batch_1.bin` to
//! `data_batch_5.bin`, `test_batch.bin`, `batches.meta.txt`) in `data.root` or in
//! `root/cifar-10-batches-bin`. Each record is a label byte and 3 planes of 32x32; the
//! planes are interleaved into RGB once, at load. The test batch is the validation split.
//! Only regular files are read, batches of at most 1 GiB and `batches.meta.txt` of at most
//! 1 MiB (regular files only).

use super::in_memory::InMemory;
use super::transforms::Transform;
use super::Splits;
use crate::config::DataConfig;
use crate::file::{read_regular, MAX_DATASET_BYTES, MAX_TEXT_BYTES};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SIDE: usize = 32;
const RECORD: usize = 1 + 3 * SIDE * SIDE;

/// The names in `batches.meta.txt` of the official archive, used when that file is absent.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// The train and test sets of `cfg.root`.
pub(crate) fn splits(cfg: &DataConfig) -> anyhow::Result<Splits> {
    let dir = find_dir(Path::new(&cfg.root))?;
    let classes = class_names(&dir)?;
    let set = |files: &[String], transform: Transform| -> anyhow::Result<InMemory> {
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for f in files {
            read_batch(&dir.join(f), classes.len(), &mut pixels, &mut labels)?;
        }
        Ok(InMemory::new(
            classes.clone(),
            pixels,
            labels,
            (SIDE as u32, SIDE as u32, 3),
            transform,
        ))
    };
    let train: Vec<String> = (1..=5).map(|i| format!("data_batch_{i}.bin")).collect();
    Ok(Splits {
        train: Arc::new(set(&train, Transform::train(cfg))?),
        val: Arc::new(set(&["test_batch.bin".into()], Transform::eval(cfg))?),
    })
}

/// `root`, or `root/cifar-10-batches-bin` as the archive unpacks.
fn find_dir(root: &Path) -> anyhow::Result<PathBuf> {
    for dir in [root.to_path_buf(), root.join("cifar-10-batches-bin")] {
        // Present (even as a link to nowhere or a device): reading it says what is wrong.
        if dir.join("data_batch_1.bin").symlink_metadata().is_ok() {
            return Ok(dir);
        }
    }
    bail!(
        "no CIFAR-10 binary batches in {} (expected data_batch_1.bin ... test_batch.bin)",
        root.display()
    )
}

/// Non-empty lines of `batches.meta.txt`, or the standard names when it is missing.
fn class_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let path = dir.join("batches.meta.txt");
    if !path.exists() {
        return Ok(CLASSES.map(String::from).to_vec());
    }
    let bytes = read_regular(&path, MAX_TEXT_BYTES)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("{} is not UTF-8 text", path.display()))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() < 2 {
        bail!(
            "{} names {} classes, expected one per line",
            path.display(),
            names.len()
        );
    }
    Ok(names)
}

/// Appends the records of one batch file: RGB interleaved pixels and labels.
fn read_batch(
    path: &Path,
    num_classes: usize,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<i64>,
) -> anyhow::Result<()> {
    let bytes = read_regular(path, MAX_DATASET_BYTES)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        bail!(
            "{}: {} bytes is not a whole number of {RECORD}-byte records",
            path.display(),
            bytes.len()
        );
    }
    let plane = SIDE * SIDE;
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        let label = record[0] as usize;
        if label >= num_classes {
            bail!(
                "{}: record {i} has label {label}, but there are {num_classes} classes",
                path.display()
            );
        }
        labels.push(label as i64);
        let (r, g, b) = (
            &record[1..][..plane],
            &record[1 + plane..][..plane],
            &record[1 + 2 * plane..][..plane],
        );
        pixels.extend((0..plane).flat_map(|p| [r[p], g[p], b[p]]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_interleaved_and_checked() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("b.bin");
        let mut rec = vec![3u8];
        rec.extend([vec![10u8; 1024], vec![20; 1024], vec![30; 1024]].concat());
        std::fs::write(&p, &rec).unwrap();
        let (mut px, mut y) = (vec![], vec![]);
        read_batch(&p, 10, &mut px, &mut y).unwrap();
        assert_eq!((y, &px[..6]), (vec![3], &[10, 20, 30, 10, 20, 30][..]));
        assert!(read_batch(&p, 3, &mut px, &mut vec![])
            .unwrap_err()
            .to_string()
            .contains("label 3"));
        std::fs::write(&p, &rec[..100]).unwrap();
        assert!(read_batch(&p, 10, &mut px, &mut vec![])
            .unwrap_err()
            .to_string()
            .contains("records"));
        assert_eq!(class_names(t.path()).unwrap()[0], "airplane");
    }
}
