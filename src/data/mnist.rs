//! `data.kind = "mnist"`: the four IDX files of MNIST (`train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`,
//! uncompressed) in `data.root` or in torchvision's `root/MNIST/raw`. The test set is the
//! validation split; grey digits become RGB and go through the usual transforms. Only
//! regular files of at most 1 GiB are read, and a header must describe exactly the bytes
//! its file holds.

use super::in_memory::InMemory;
use super::transforms::Transform;
use super::Splits;
use crate::config::DataConfig;
use crate::file::{open_regular, read_bounded, MAX_DATASET_BYTES};
use anyhow::{bail, Context};
use std::io::Read;
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
pub(crate) fn splits(cfg: &DataConfig) -> anyhow::Result<Splits> {
    let dir = find_dir(Path::new(&cfg.root))?;
    let set = |prefix: &str, transform: Transform| -> anyhow::Result<InMemory> {
        let images = dir.join(format!("{prefix}-images-idx3-ubyte"));
        let (dims, pixels) = read_idx(&images, 3)?;
        // As for image files: no sample decodes to more than max_image_side² pixels.
        if dims[1].max(dims[2]) > cfg.max_image_side as usize {
            bail!(
                "{}: images of {}x{} pixels, over data.max_image_side = {}",
                images.display(),
                dims[2],
                dims[1],
                cfg.max_image_side
            );
        }
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
        // Present (even as a link to nowhere or a device): reading it says what is wrong.
        if dir
            .join("train-images-idx3-ubyte")
            .symlink_metadata()
            .is_ok()
        {
            return Ok(dir);
        }
    }
    bail!("no MNIST files in {} (expected train-images-idx3-ubyte and the other three IDX files, uncompressed)", root.display())
}

/// Reads an IDX file of unsigned bytes with `ndims` dimensions: its dimensions and data.
/// Only a regular file of at most [`MAX_DATASET_BYTES`] is read, and the header's size
/// (with checked arithmetic) must match the file's before the data is read.
pub(crate) fn read_idx(path: &Path, ndims: usize) -> anyhow::Result<(Vec<usize>, Vec<u8>)> {
    let fail = |reason: String| anyhow::anyhow!("{}: {reason}", path.display());
    let (mut file, len) = open_regular(path, MAX_DATASET_BYTES).map_err(fail)?;
    let header = 4 + 4 * ndims;
    let mut head = vec![0u8; header];
    let not_idx = || {
        anyhow::anyhow!(
            "{} is not an IDX file of {ndims}-d unsigned bytes",
            path.display()
        )
    };
    if len < header as u64 {
        return Err(not_idx());
    }
    file.read_exact(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if head[..3] != [0, 0, 0x08] || head[3] as usize != ndims {
        return Err(not_idx());
    }
    let dims: Vec<usize> = head[4..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let held = len - header as u64;
    let expected = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
    if expected != Some(held) {
        let claim = expected.map_or_else(|| "more than 2^64".into(), |n| n.to_string());
        bail!(
            "{}: header says {dims:?} ({claim} bytes) but the file holds {held}",
            path.display()
        );
    }
    if dims.contains(&0) {
        bail!("{}: empty dimensions {dims:?}", path.display());
    }
    let data = read_bounded(file, held, held).map_err(fail)?;
    if data.len() as u64 != held {
        bail!(
            "{}: {} bytes of data read, {held} expected (the file changed while it was read)",
            path.display(),
            data.len()
        );
    }
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
        // 2^32-1 cubed overflows 64 bits; 65536 * 65536 * 65536 wraps to exactly 0.
        for dims in [[u32::MAX; 3], [1 << 16; 3]] {
            let mut bytes = vec![0, 0, 8, 3];
            for d in dims {
                bytes.extend(d.to_be_bytes());
            }
            std::fs::write(&p, &bytes).unwrap();
            let err = read_idx(&p, 3).unwrap_err().to_string();
            assert!(
                err.contains("header says") && err.contains(&p.display().to_string()),
                "{err}"
            );
        }
        let err = read_idx(Path::new("/dev/zero"), 3).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = find_dir(t.path()).unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    }
}
