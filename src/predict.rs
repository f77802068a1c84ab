//! Classify image files with a checkpoint: the checkpoint's own eval preprocessing (decode,
//! resize the shorter side to `image_size / crop_fraction`, centre crop `image_size`,
//! normalise), batched, and the top-k classes with their probabilities per image.

use crate::checkpoint::Restored;
use crate::data::decode::decode_bytes;
use crate::data::image_folder::{has_image_extension, EXTENSIONS};
use crate::data::normalize::Normalize;
use crate::data::transforms::{RgbRef, Transform};
use crate::data::{seed, SampleError};
use crate::file::{self, read_regular, MAX_IMAGE_BYTES};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Reads an image file (at most `max_side` pixels a side) and applies the eval `transform`:
/// `image_size² * 3` RGB bytes. Errors name the file and say what is wrong with it.
pub fn load_eval_image(
    path: &Path,
    transform: &Transform,
    max_side: u32,
) -> Result<Vec<u8>, SampleError> {
    let err = |reason: String| SampleError {
        item: path.display().to_string(),
        reason,
    };
    let bytes = read_regular(path, MAX_IMAGE_BYTES).map_err(err)?;
    let image =
        decode_bytes(&bytes, max_side).map_err(|e| err(format!("not a readable image: {e}")))?;
    // The eval transform draws nothing from the stream.
    Ok(transform.apply(RgbRef::from(&image), &mut seed::rng(&[])))
}

/// The image files named by `inputs`: files as given, directories expanded to the image
/// files directly inside them (by extension, as an image folder's are; sorted by name).
/// Only regular files are read (links are followed): naming anything else (a FIFO, a
/// device) is an error naming it, and such an entry of a directory is skipped with a
/// warning. Files are checked against the 64 MiB image limit here, before any model runs.
pub fn image_files(inputs: &[PathBuf]) -> crate::Result<Vec<PathBuf>> {
    crate::error::boundary(|| {
        let mut out = Vec::new();
        for input in inputs {
            let meta = std::fs::metadata(input)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", input.display()))?;
            if !meta.is_dir() {
                file::check(&meta, MAX_IMAGE_BYTES)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", input.display()))?;
                out.push(input.clone());
                continue;
            }
            let mut files = Vec::new();
            for entry in std::fs::read_dir(input)
                .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", input.display()))?
            {
                let path = entry
                    .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", input.display()))?
                    .path();
                if !has_image_extension(&path) {
                    continue;
                }
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => {}
                    Ok(m) => match file::check(&m, MAX_IMAGE_BYTES) {
                        Ok(()) => files.push(path),
                        Err(e) => eprintln!("warning: skipped {}: {e}", path.display()),
                    },
                    Err(e) => eprintln!("warning: skipped {}: cannot read: {e}", path.display()),
                }
            }
            if files.is_empty() {
                anyhow::bail!(
                    "{} holds no image files ({})",
                    input.display(),
                    EXTENSIONS.join(", ")
                );
            }
            files.sort();
            out.extend(files);
        }
        Ok(out)
    })
}

/// A class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassProb {
    /// Class name (`#i` for an output the checkpoint does not name).
    pub class: String,
    /// Softmax probability, in [0, 1].
    pub probability: f64,
}

/// The top-k classes of one image, most probable first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The image file.
    pub file: PathBuf,
    /// The `k` most probable classes, most probable first.
    pub top: Vec<ClassProb>,
}

/// The name of output `i`: the checkpoint's class name, or `#i` for an output with no name
/// (`model.num_classes` larger than the data's classes).
pub fn class_name(classes: &[String], i: usize) -> String {
    classes.get(i).cloned().unwrap_or_else(|| format!("#{i}"))
}

/// The top-`k` classes of images already in memory: `images` is `uint8 [b, h, w, 3]` RGB
/// (as the eval transform gives; `h = w = image_size`), normalised here with the
/// checkpoint's mean and std. One list per image, most probable first.
pub fn classify(
    restored: &Restored,
    images: &Tensor,
    k: usize,
) -> crate::Result<Vec<Vec<ClassProb>>> {
    crate::error::boundary(|| {
        let meta = &restored.meta;
        let device = restored.vs.device();
        let normalize = Normalize::new(meta.mean, meta.std, device, false);
        let k = k.clamp(1, meta.num_classes.max(1) as usize);
        let b = images.size().first().copied().unwrap_or(0) as usize;
        let probs = tch::no_grad(|| {
            restored
                .model
                .forward_t(&normalize.apply(images), false)
                .softmax(-1, Kind::Float)
        });
        if !bool::try_from(probs.f_isfinite()?.f_all()?)? {
            anyhow::bail!("the model's outputs are not finite (NaN or infinite probabilities)");
        }
        let (p, i) = probs.topk(k as i64, -1, true, true);
        let p = Vec::<f32>::try_from(p.to_device(tch::Device::Cpu).flatten(0, -1))?;
        let i = Vec::<i64>::try_from(i.to_device(tch::Device::Cpu).flatten(0, -1))?;
        Ok((0..b)
            .map(|n| {
                (0..k)
                    .map(|j| ClassProb {
                        class: class_name(&meta.classes, i[n * k + j] as usize),
                        probability: p[n * k + j] as f64,
                    })
                    .collect()
            })
            .collect())
    })
}

/// Refuses a model whose tensors hold NaN or infinite values (a run that diverged), which
/// would otherwise classify everything with probability NaN: the error names the first such
/// tensor (by name) and how many of its values are bad.
pub fn check_finite(vs: &tch::nn::VarStore) -> crate::Result<()> {
    crate::error::boundary(|| {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, t) in vars {
            if !t.is_floating_point() {
                continue;
            }
            let bad = t.f_isfinite()?.f_logical_not()?.f_sum(Kind::Int64)?;
            let bad = i64::try_from(bad)?;
            if bad > 0 {
                anyhow::bail!(
                    "tensor `{name}` holds {bad} NaN or infinite value(s) of {}: the weights are \
                 unusable (a run that diverged?)",
                    t.numel()
                );
            }
        }
        Ok(())
    })
}

/// Classifies `files` with a restored checkpoint, `batch_size` images at a time (decoded in
/// parallel); the first unreadable file stops it with an error naming the file.
pub fn predict(
    restored: &Restored,
    files: &[PathBuf],
    k: usize,
    batch_size: usize,
    max_side: u32,
) -> crate::Result<Vec<Prediction>> {
    crate::error::boundary(|| {
        check_finite(&restored.vs)?;
        let meta = &restored.meta;
        crate::budget::check_inference(
            &restored.config,
            meta.image_size,
            meta.num_classes as usize,
            batch_size.max(1),
            restored.vs.device().is_cuda(),
        )?;
        let transform = Transform::center(meta.image_size, meta.crop_fraction);
        let size = meta.image_size as i64;
        let mut out = Vec::with_capacity(files.len());
        for chunk in files.chunks(batch_size.max(1)) {
            let images = chunk
                .par_iter()
                .map(|f| load_eval_image(f, &transform, max_side))
                .collect::<Result<Vec<_>, _>>()?;
            let pixels = images.concat();
            let x = Tensor::from_slice(&pixels).view([chunk.len() as i64, size, size, 3]);
            let ranked = classify(restored, &x, k)?;
            for (file, top) in chunk.iter().zip(ranked) {
                out.push(Prediction {
                    file: file.clone(),
                    top,
                });
            }
        }
        Ok(out)
    })
}

/// Predictions as a text table: one line per image and class.
pub fn table(predictions: &[Prediction]) -> String {
    let width = predictions
        .iter()
        .map(|p| p.file.display().to_string().len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!(
        "{:<width$}  {:>4}  {:<16} {:>8}\n",
        "file", "rank", "class", "prob"
    );
    for p in predictions {
        for (r, c) in p.top.iter().enumerate() {
            let file = if r == 0 {
                p.file.display().to_string()
            } else {
                String::new()
            };
            s += &format!(
                "{file:<width$}  {:>4}  {:<16} {:>7.2}%\n",
                r + 1,
                c.class,
                c.probability * 100.0
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_keeps_a_uniform_image_uniform_and_sized() {
        let t = Transform::center(8, 0.875);
        let px = vec![77u8; 20 * 12 * 3];
        let img = RgbRef {
            width: 20,
            height: 12,
            pixels: &px,
        };
        let out = t.apply(img, &mut seed::rng(&[]));
        assert_eq!(out.len(), 8 * 8 * 3);
        assert!(out.iter().all(|&v| v == 77));
    }

    #[test]
    fn centre_crop_takes_the_middle() {
        // Left half black, right half white, 32x16: the centre crop of the resized image
        // (shorter side 16 -> 16 with crop_fraction 1) is columns 8..24, half and half.
        let (w, h) = (32u32, 16u32);
        let mut px = vec![0u8; (w * h * 3) as usize];
        for y in 0..h {
            for x in w / 2..w {
                let i = ((y * w + x) * 3) as usize;
                px[i..i + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let t = Transform::center(16, 1.0);
        let img = RgbRef {
            width: w,
            height: h,
            pixels: &px,
        };
        let out = t.apply(img, &mut seed::rng(&[]));
        let row: Vec<u8> = (0..16).map(|x| out[x * 3]).collect();
        assert_eq!(&row[..8], &[0; 8]);
        assert_eq!(&row[8..], &[255; 8]);
    }

    #[test]
    fn unreadable_files_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notes.png");
        std::fs::write(&p, "just text").unwrap();
        let t = Transform::center(8, 1.0);
        let e = load_eval_image(&p, &t, 100).unwrap_err().to_string();
        assert!(
            e.contains("notes.png") && e.contains("not a readable image"),
            "{e}"
        );
        let e = load_eval_image(&d.path().join("missing.png"), &t, 100)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.png") && e.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn directories_expand_to_their_images() {
        let d = tempfile::tempdir().unwrap();
        for f in ["b.png", "a.JPG", "c.txt"] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        let files = image_files(&[d.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(names, ["a.JPG", "b.png"]);
        assert!(image_files(&[d.path().join("nope")]).is_err());
    }

    #[test]
    fn only_regular_files_are_inputs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.png"), "").unwrap();
        let zero = d.path().join("zero.png");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = image_files(std::slice::from_ref(&zero))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("zero.png") && err.contains("not a regular file"),
            "{err}"
        );
        // In a directory, it is skipped (with a warning).
        assert_eq!(
            image_files(&[d.path().to_path_buf()]).unwrap(),
            [d.path().join("a.png")]
        );
        let t = Transform::center(8, 1.0);
        let e = load_eval_image(&zero, &t, 100).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
