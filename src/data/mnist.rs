//! `data.kind = "mnist"`: the four IDX files of MNIST (`train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
//! uncompressed) in `data.root` or in torchvision's `root/MNIST/raw`. The test set is the
//! validation split; grey digits become RGB and go through the usual transforms.

use super::in_memory::InMemory;
use super::transforms::Transform;
use super::Splits;
use crate::config::DataConfig;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// torchvision's `MNIST.classes`.
pub const CLASSES: [&str; 10] = [
    "0 - zero",
    "1 - one",
    "2 - two",
    "3 - three",
    "4 - four",
    "5 - five",
    "6 - six",
    "7 - seven",
    "8 - eight",
    "9 - nine",
];

/// The train and test sets of `cfg.root`.
pub fn splits(cfg: &DataConfig) -> anyhow::Result<Splits> {
    let dir = find_dir(Path::new(&cfg.root))?;
    let set = |prefix: &str, transform: Transform| -> anyhow::Result<InMemory> {
        let (dims, pixels) = read_idx(&dir.join(format!("{prefix}-images-idx3-ubyte")), 3)?;
        let labels_path = dir.join(format!("{prefix}-labels-idx1-ubyte"));
        let (ldims, labels) = read_idx(&labels_path, 1)?;
        if ldims[0] != dims[0] {
            bail!(
                "{} holds {} labels for {} images",
                labels_path.display(),
                ldims[0],
                dims[0]
            );
        }
        if let Some(bad) = labels.iter().find(|&&l| l > 9) {
            bail!("{}: label {bad} is not a digit", labels_path.display());
        }
        let classes = CLASSES.map(String::from).to_vec();
        let labels = labels.into_iter().map(i64::from).collect();
        Ok(InMemory::new(
            classes,
            pixels,
            labels,
            (dims[2] as u32, dims[1] as u32, 1),
            transform,
        ))
    };
    Ok(Splits {
        train: Arc::new(set("train", Transform::train(cfg))?),
        val: Arc::new(set("t10k", Transform::eval(cfg))?),
    })
}

/// `root`, or `root/MNIST/raw` as torchvision lays it out.
fn find_dir(root: &Path) -> anyhow::Result<PathBuf> {
    for dir in [root.to_path_buf(), root.join("MNIST").join("raw")] {
        if dir.join("train-images-idx3-ubyte").is_file() {
            return Ok(dir);
        }
    }
    bail!("no MNIST files in {} (expected train-images-idx3-ubyte and the other three IDX files, uncompressed)", root.display())
}

/// Reads an IDX file of unsigned bytes with `ndims` dimensions: its dimensions and data.
pub fn read_idx(path: &Path, ndims: usize) -> anyhow::Result<(Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = 4 + 4 * ndims;
    if bytes.len() < header || bytes[..3] != [0, 0, 0x08] || bytes[3] as usize != ndims {
        bail!(
            "{} is not an IDX file of {ndims}-d unsigned bytes",
            path.display()
        );
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims.iter().product::<usize>();
    if bytes.len() - header != expected {
        bail!(
            "{}: header says {dims:?} ({expected} bytes) but the file holds {}",
            path.display(),
            bytes.len() - header
        );
    }
    if dims.contains(&0) {
        bail!("{}: empty dimensions {dims:?}", path.display());
    }
    let mut data = bytes;
    data.drain(..header);
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idx_headers_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x");
        std::fs::write(&p, [0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]).unwrap();
        assert_eq!(read_idx(&p, 1).unwrap(), (vec![3], vec![7, 8, 9]));
        assert!(read_idx(&p, 3)
            .unwrap_err()
            .to_string()
            .contains("not an IDX"));
        std::fs::write(&p, [0, 0, 8, 1, 0, 0, 0, 4, 7, 8, 9]).unwrap();
        assert!(read_idx(&p, 1)
            .unwrap_err()
            .to_string()
            .contains("header says"));
        let err = find_dir(t.path()).unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    }
}
