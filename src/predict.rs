//! Classify image files with a checkpoint: the checkpoint's own eval preprocessing (decode,
//! resize the shorter side to `image_size / crop_fraction`, centre crop `image_size`,
//! normalise), batched, and the top-k classes with their probabilities per image.

use crate::checkpoint::{Meta, Restored};
use crate::data::normalize::Normalize;
use crate::data::SampleError;
use fast_image_resize::{images::Image, FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

/// File name extensions read as images (lower case).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "webp", "bmp"];

/// The eval transform of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalTransform {
    /// Side of the square network input.
    pub image_size: u32,
    /// The shorter side is resized to `image_size / crop_fraction` before the centre crop.
    pub crop_fraction: f64,
    /// Largest accepted image side; larger headers are rejected unread.
    pub max_side: u32,
}

impl EvalTransform {
    pub fn from_meta(meta: &Meta, max_side: u32) -> EvalTransform {
        EvalTransform {
            image_size: meta.image_size,
            crop_fraction: meta.crop_fraction,
            max_side,
        }
    }

    /// Resizes and centre-crops interleaved RGB pixels (`width * height * 3` bytes) to
    /// `image_size * image_size * 3` bytes, in one resampling pass: the crop box is mapped
    /// back to source coordinates, as torchvision's `Resize(int(size / crop)) + CenterCrop`
    /// would cut it.
    pub fn apply(&self, rgb: Vec<u8>, width: u32, height: u32) -> Result<Vec<u8>, String> {
        let size = self.image_size;
        let short = width.min(height) as f64;
        let resized_short = (size as f64 / self.crop_fraction).floor().max(size as f64);
        let scale = resized_short / short;
        let side = size as f64 / scale; // the crop's side in source pixels
        let left = (width as f64 - side) / 2.0;
        let top = (height as f64 - side) / 2.0;
        let src =
            Image::from_vec_u8(width, height, rgb, PixelType::U8x3).map_err(|e| e.to_string())?;
        let mut dst = Image::new(size, size, PixelType::U8x3);
        let opts = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(left, top, side, side);
        Resizer::new()
            .resize(&src, &mut dst, &opts)
            .map_err(|e| e.to_string())?;
        Ok(dst.into_vec())
    }
}

/// Reads an image file and applies the eval transform: `image_size² * 3` RGB bytes.
/// Errors name the file and say what is wrong with it.
pub fn load_eval_image(path: &Path, t: &EvalTransform) -> Result<Vec<u8>, SampleError> {
    let err = |reason: String| SampleError {
        item: path.display().to_string(),
        reason,
    };
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| err(format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| err(format!("cannot read: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(t.max_side);
    limits.max_image_height = Some(t.max_side);
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| err(format!("not a readable image: {e}")))?
        .into_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(err("empty image".into()));
    }
    t.apply(img.into_raw(), w, h).map_err(err)
}

/// The image files named by `inputs`: files as given, directories expanded to the image
/// files directly inside them (by extension, sorted by name).
pub fn image_files(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", input.display()))?;
        if !meta.is_dir() {
            out.push(input.clone());
            continue;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(input)
            .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", input.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image_name(p))
            .collect();
        if files.is_empty() {
            anyhow::bail!(
                "{} holds no image files ({})",
                input.display(),
                IMAGE_EXTENSIONS.join(", ")
            );
        }
        files.sort();
        out.extend(files);
    }
    Ok(out)
}

/// Whether the file name has one of [`IMAGE_EXTENSIONS`].
pub fn is_image_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassProb {
    pub class: String,
    pub probability: f64,
}

/// The top-k classes of one image, most probable first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub file: PathBuf,
    pub top: Vec<ClassProb>,
}

/// The name of output `i`: the checkpoint's class name, or `#i` for an output with no name
/// (`model.num_classes` larger than the data's classes).
pub fn class_name(classes: &[String], i: usize) -> String {
    classes.get(i).cloned().unwrap_or_else(|| format!("#{i}"))
}

/// Classifies `files` with a restored checkpoint, `batch_size` images at a time (decoded in
/// parallel); the first unreadable file stops it with an error naming the file.
pub fn predict(
    restored: &Restored,
    files: &[PathBuf],
    k: usize,
    batch_size: usize,
    max_side: u32,
) -> anyhow::Result<Vec<Prediction>> {
    let meta = &restored.meta;
    let device = restored.vs.device();
    let transform = EvalTransform::from_meta(meta, max_side);
    let normalize = Normalize::new(meta.mean, meta.std, device, false);
    let k = k.clamp(1, meta.num_classes as usize);
    let size = meta.image_size as i64;
    let mut out = Vec::with_capacity(files.len());
    for chunk in files.chunks(batch_size.max(1)) {
        let images = chunk
            .par_iter()
            .map(|f| load_eval_image(f, &transform))
            .collect::<Result<Vec<_>, _>>()?;
        let pixels = images.concat();
        let x = Tensor::from_slice(&pixels).view([chunk.len() as i64, size, size, 3]);
        let probs = tch::no_grad(|| {
            restored
                .model
                .forward_t(&normalize.apply(&x), false)
                .softmax(-1, Kind::Float)
        });
        let (p, i) = probs.topk(k as i64, -1, true, true);
        let p = Vec::<f32>::try_from(p.to_device(tch::Device::Cpu).flatten(0, -1))?;
        let i = Vec::<i64>::try_from(i.to_device(tch::Device::Cpu).flatten(0, -1))?;
        for (n, file) in chunk.iter().enumerate() {
            let top = (0..k)
                .map(|j| ClassProb {
                    class: class_name(&meta.classes, i[n * k + j] as usize),
                    probability: p[n * k + j] as f64,
                })
                .collect();
            out.push(Prediction {
                file: file.clone(),
                top,
            });
        }
    }
    Ok(out)
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
        let t = EvalTransform {
            image_size: 8,
            crop_fraction: 0.875,
            max_side: 100,
        };
        let out = t.apply(vec![77u8; 20 * 12 * 3], 20, 12).unwrap();
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
        let t = EvalTransform {
            image_size: 16,
            crop_fraction: 1.0,
            max_side: 100,
        };
        let out = t.apply(px, w, h).unwrap();
        let row: Vec<u8> = (0..16).map(|x| out[x * 3]).collect();
        assert_eq!(&row[..8], &[0; 8]);
        assert_eq!(&row[8..], &[255; 8]);
    }

    #[test]
    fn unreadable_files_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notes.png");
        std::fs::write(&p, "just text").unwrap();
        let t = EvalTransform {
            image_size: 8,
            crop_fraction: 1.0,
            max_side: 100,
        };
        let e = load_eval_image(&p, &t).unwrap_err().to_string();
        assert!(
            e.contains("notes.png") && e.contains("not a readable image"),
            "{e}"
        );
        let e = load_eval_image(&d.path().join("missing.png"), &t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.png") && e.contains("cannot open"),
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
}
