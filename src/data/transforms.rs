//! Train and eval transforms on interleaved RGB8 images, as torchvision defines them:
//! `RandomResizedCrop` (its exact sampling: 10 tries, log-uniform aspect ratio, centre-crop
//! fallback), `RandomHorizontalFlip`, `ColorJitter` (brightness, contrast, saturation), and
//! for evaluation `Resize(image_size / crop_fraction)` + `CenterCrop(image_size)`.
//!
//! Every transform crops first and resamples only the crop region (bilinear with
//! antialiasing, as PIL's resize does), so the work scales with the output, not the source.
//! Each is a pure function of (image, random stream).

use super::shapes::flip_horizontal;
use crate::config::DataConfig;
use fast_image_resize as fr;
use rand::seq::SliceRandom;
use rand::Rng;
use std::cell::RefCell;

/// A borrowed interleaved RGB8 image.
#[derive(Debug, Clone, Copy)]
pub struct RgbRef<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, row-major.
    pub pixels: &'a [u8],
}

impl<'a> From<&'a image::RgbImage> for RgbRef<'a> {
    fn from(image: &'a image::RgbImage) -> RgbRef<'a> {
        RgbRef {
            width: image.width(),
            height: image.height(),
            pixels: image.as_raw(),
        }
    }
}

/// A rectangle of source pixels; fractional for the eval crop, which is expressed in
/// source coordinates of a crop taken after resizing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// Left edge, in source pixels from the left.
    pub left: f64,
    /// Top edge, in source pixels from the top.
    pub top: f64,
    /// Width in source pixels.
    pub width: f64,
    /// Height in source pixels.
    pub height: f64,
}

/// How a [`Transform`] picks the region it resizes to the output size.
#[derive(Debug, Clone, PartialEq)]
enum Crop {
    /// torchvision's `RandomResizedCrop(size, scale, ratio)`.
    Random { scale: [f64; 2], ratio: [f64; 2] },
    /// `Resize(resize_to)` of the shorter side, then `CenterCrop(size)`.
    Center { resize_to: u32 },
}

/// A full sample transform: crop and resize to `size`², then flip and colour jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    size: u32,
    crop: Crop,
    hflip: f64,
    jitter: f64,
}

impl Transform {
    /// The training transform of `cfg.augment`; without `random_resized_crop` it crops like
    /// [`Transform::eval`] and still flips and jitters.
    pub fn train(cfg: &DataConfig) -> Transform {
        let a = &cfg.augment;
        let crop = if a.random_resized_crop {
            Crop::Random {
                scale: a.scale,
                ratio: a.ratio,
            }
        } else {
            Crop::Center {
                resize_to: eval_resize(cfg.image_size, cfg.crop_fraction),
            }
        };
        Transform {
            size: cfg.image_size,
            crop,
            hflip: a.hflip,
            jitter: a.color_jitter,
        }
    }

    /// The evaluation transform of `cfg`: see [`Transform::center`].
    pub fn eval(cfg: &DataConfig) -> Transform {
        Transform::center(cfg.image_size, cfg.crop_fraction)
    }

    /// The evaluation transform, also rebuilt from a checkpoint's `image_size` and
    /// `crop_fraction`: shorter side to `image_size / crop_fraction`, centre crop
    /// `image_size`. It draws nothing from the random stream.
    pub fn center(image_size: u32, crop_fraction: f64) -> Transform {
        Transform {
            size: image_size,
            crop: Crop::Center {
                resize_to: eval_resize(image_size, crop_fraction),
            },
            hflip: 0.0,
            jitter: 0.0,
        }
    }

    /// Side of the square output.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Transforms `image` into `size * size * 3` bytes, drawing from `rng` in a fixed order
    /// (crop, flip, jitter).
    pub fn apply(&self, image: RgbRef, rng: &mut impl Rng) -> Vec<u8> {
        let region = self.region(image.width, image.height, rng);
        self.apply_region(image, region, rng)
    }

    /// The first half of [`Transform::apply`]: the source region of a `width` x `height`
    /// image that becomes the output (drawing the crop from `rng`). Needs only the size, so
    /// a decoder can read no more of the file than the region needs.
    pub fn region(&self, width: u32, height: u32, rng: &mut impl Rng) -> Region {
        match self.crop {
            Crop::Random { scale, ratio } => {
                random_resized_crop_region(width, height, scale, ratio, rng)
            }
            Crop::Center { resize_to } => center_crop_region(width, height, resize_to, self.size),
        }
    }

    /// The second half of [`Transform::apply`]: resizes `region` of `image` to the output
    /// size, then flips and jitters (drawing from `rng`).
    pub fn apply_region(&self, image: RgbRef, region: Region, rng: &mut impl Rng) -> Vec<u8> {
        let mut out = resize_region(image, region, self.size);
        if self.hflip > 0.0 && rng.gen::<f64>() < self.hflip {
            flip_horizontal(&mut out, self.size as usize);
        }
        if self.jitter > 0.0 {
            color_jitter(&mut out, self.jitter, rng);
        }
        out
    }
}

/// timm's and torchvision's reference scripts: `floor(crop / crop_fraction)`.
fn eval_resize(image_size: u32, crop_fraction: f64) -> u32 {
    ((image_size as f64 / crop_fraction).floor() as u32).max(image_size)
}

/// A uniform draw from `[lo, hi)` (or exactly `lo` when the range is empty), as
/// `torch.empty(1).uniform_(lo, hi)`.
fn uniform(lo: f64, hi: f64, rng: &mut impl Rng) -> f64 {
    lo + (hi - lo) * rng.gen::<f64>()
}

/// torchvision's `RandomResizedCrop.get_params` for a `width` x `height` image: up to 10
/// draws of an area fraction in `scale` and a log-uniform aspect ratio in `ratio`; the first
/// that fits is placed uniformly at random. Otherwise a centre crop of the whole image,
/// clamped to `ratio`. Sides are rounded half to even, as Python's `round`.
pub fn random_resized_crop_region(
    width: u32,
    height: u32,
    scale: [f64; 2],
    ratio: [f64; 2],
    rng: &mut impl Rng,
) -> Region {
    let (w, h) = (width as f64, height as f64);
    let area = w * h;
    let (log_lo, log_hi) = (ratio[0].ln(), ratio[1].ln());
    for _ in 0..10 {
        let target_area = area * uniform(scale[0], scale[1], rng);
        let aspect = uniform(log_lo, log_hi, rng).exp();
        let cw = (target_area * aspect).sqrt().round_ties_even();
        let ch = (target_area / aspect).sqrt().round_ties_even();
        if cw > 0.0 && cw <= w && ch > 0.0 && ch <= h {
            let top = rng.gen_range(0..=height - ch as u32);
            let left = rng.gen_range(0..=width - cw as u32);
            return Region {
                left: left as f64,
                top: top as f64,
                width: cw,
                height: ch,
            };
        }
    }
    let in_ratio = w / h;
    let (cw, ch) = if in_ratio < ratio[0] {
        (w, (w / ratio[0]).round_ties_even())
    } else if in_ratio > ratio[1] {
        ((h * ratio[1]).round_ties_even(), h)
    } else {
        (w, h)
    };
    Region {
        left: ((w - cw) / 2.0).floor(),
        top: ((h - ch) / 2.0).floor(),
        width: cw,
        height: ch,
    }
}

/// The source region that `Resize(resize_to)` (shorter side, longer side truncated as
/// torchvision does) followed by `CenterCrop(size)` keeps, in source pixels.
pub fn center_crop_region(width: u32, height: u32, resize_to: u32, size: u32) -> Region {
    let (w, h, s) = (width as f64, height as f64, resize_to as f64);
    let (rw, rh) = if width <= height {
        (s, (s * h / w).floor())
    } else {
        ((s * w / h).floor(), s)
    };
    let (sx, sy) = (rw / w, rh / h);
    let crop_left = ((rw - size as f64) / 2.0).round_ties_even().max(0.0);
    let crop_top = ((rh - size as f64) / 2.0).round_ties_even().max(0.0);
    let left = crop_left / sx;
    let top = crop_top / sy;
    Region {
        left,
        top,
        width: (size as f64 / sx).min(w - left),
        height: (size as f64 / sy).min(h - top),
    }
}

thread_local! {
    /// Resizers keep scratch buffers between calls: one per worker thread.
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

/// Resamples `region` of `image` to `size` x `size` (bilinear, antialiased when shrinking).
pub fn resize_region(image: RgbRef, region: Region, size: u32) -> Vec<u8> {
    let src =
        fr::images::ImageRef::new(image.width, image.height, image.pixels, fr::PixelType::U8x3)
            .expect("pixel buffer matches the image size");
    let mut out = vec![0u8; size as usize * size as usize * 3];
    let mut dst = fr::images::Image::from_slice_u8(size, size, &mut out, fr::PixelType::U8x3)
        .expect("sized above");
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
        .crop(region.left, region.top, region.width, region.height);
    RESIZER
        .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
        .expect("crop regions lie inside the image");
    out
}

/// torchvision's `ColorJitter(brightness=s, contrast=s, saturation=s)`: factors uniform in
/// `[max(0, 1 - s), 1 + s]`, the three adjustments applied in random order, each clamped.
pub fn color_jitter(pixels: &mut [u8], strength: f64, rng: &mut impl Rng) {
    let mut order = [0, 1, 2];
    order.shuffle(rng);
    let lo = (1.0 - strength).max(0.0);
    let factors: [f32; 3] = std::array::from_fn(|_| uniform(lo, 1.0 + strength, rng) as f32);
    let gray = |p: &[f32]| 0.2989 * p[0] + 0.587 * p[1] + 0.114 * p[2];
    let mut x: Vec<f32> = pixels.iter().map(|&p| p as f32).collect();
    for op in order {
        let f = factors[op];
        match op {
            // Brightness: blend with black.
            0 => x.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 255.0)),
            // Contrast: blend with the mean grey level of the whole image.
            1 => {
                let mean = x.chunks_exact(3).map(gray).sum::<f32>() / (x.len() / 3) as f32;
                x.iter_mut()
                    .for_each(|v| *v = (f * *v + (1.0 - f) * mean).clamp(0.0, 255.0));
            }
            // Saturation: blend each pixel with its own grey level.
            _ => {
                for p in x.chunks_exact_mut(3) {
                    let g = gray(p);
                    p.iter_mut()
                        .for_each(|v| *v = (f * *v + (1.0 - f) * g).clamp(0.0, 255.0));
                }
            }
        }
    }
    for (p, v) in pixels.iter_mut().zip(x) {
        *p = v.round() as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::seed;

    fn image(w: u32, h: u32) -> Vec<u8> {
        (0..w * h)
            .flat_map(|i| {
                [
                    (i % w * 255 / w.max(2)) as u8,
                    (i / w * 255 / h.max(2)) as u8,
                    77,
                ]
            })
            .collect()
    }

    #[test]
    fn random_crops_respect_scale_and_ratio() {
        let mut rng = seed::rng(&[1]);
        for i in 0..500 {
            let (w, h) = (50 + i % 300, 40 + (i * 7) % 200);
            let r = random_resized_crop_region(w, h, [0.08, 1.0], [3.0 / 4.0, 4.0 / 3.0], &mut rng);
            assert!(
                r.left >= 0.0 && r.top >= 0.0 && r.width >= 1.0 && r.height >= 1.0,
                "{r:?}"
            );
            assert!(
                r.left + r.width <= w as f64 && r.top + r.height <= h as f64,
                "{r:?} in {w}x{h}"
            );
            assert_eq!(
                (
                    r.left.fract(),
                    r.top.fract(),
                    r.width.fract(),
                    r.height.fract()
                ),
                (0.0, 0.0, 0.0, 0.0)
            );
            let area = r.width * r.height / (w * h) as f64;
            // Rounding of the sides can push the area a little outside the range.
            assert!(area > 0.06 && area <= 1.0, "{area}");
        }
    }

    #[test]
    fn random_crop_falls_back_to_a_ratio_clamped_centre_crop() {
        // A 1000x10 strip: no crop with ratio <= 4/3 and area >= 8% fits in 10 tries.
        let r = random_resized_crop_region(
            1000,
            10,
            [0.08, 1.0],
            [3.0 / 4.0, 4.0 / 3.0],
            &mut seed::rng(&[2]),
        );
        assert_eq!(
            r,
            Region {
                left: 493.0,
                top: 0.0,
                width: 13.0,
                height: 10.0
            }
        );
        // Full-image crop when scale and ratio force it.
        let r = random_resized_crop_region(30, 30, [1.0, 1.0], [1.0, 1.0], &mut seed::rng(&[3]));
        assert_eq!(
            r,
            Region {
                left: 0.0,
                top: 0.0,
                width: 30.0,
                height: 30.0
            }
        );
    }

    #[test]
    fn centre_crop_matches_resize_then_crop() {
        // 400x300 -> Resize(256) gives 341x256, CenterCrop(224) starts at (58.5 -> 58, 16).
        let r = center_crop_region(400, 300, 256, 224);
        let s = 256.0 / 300.0;
        assert!(
            (r.left - 58.0 / (341.0 / 400.0)).abs() < 1e-9 && (r.top - 16.0 / s).abs() < 1e-9,
            "{r:?}"
        );
        assert!((r.height - 224.0 / s).abs() < 1e-9);
        // Square image, resize_to == size: the whole image.
        assert_eq!(
            center_crop_region(32, 32, 32, 32),
            Region {
                left: 0.0,
                top: 0.0,
                width: 32.0,
                height: 32.0
            }
        );
    }

    #[test]
    fn resize_of_a_whole_same_size_image_is_the_identity() {
        let px = image(16, 16);
        let img = RgbRef {
            width: 16,
            height: 16,
            pixels: &px,
        };
        let full = Region {
            left: 0.0,
            top: 0.0,
            width: 16.0,
            height: 16.0,
        };
        assert_eq!(resize_region(img, full, 16), px);
        // A constant image stays constant under any crop and scale.
        let flat = vec![42u8; 40 * 30 * 3];
        let img = RgbRef {
            width: 40,
            height: 30,
            pixels: &flat,
        };
        let out = resize_region(
            img,
            Region {
                left: 3.5,
                top: 2.0,
                width: 20.25,
                height: 11.0,
            },
            24,
        );
        assert!(out.iter().all(|&v| v == 42));
    }

    #[test]
    fn transforms_are_deterministic_per_stream() {
        let cfg = DataConfig {
            image_size: 24,
            augment: crate::config::AugmentConfig {
                color_jitter: 0.4,
                ..Default::default()
            },
            ..Default::default()
        };
        let px = image(60, 45);
        let img = RgbRef {
            width: 60,
            height: 45,
            pixels: &px,
        };
        let t = Transform::train(&cfg);
        let a = t.apply(img, &mut seed::rng(&[5]));
        assert_eq!(a.len(), 24 * 24 * 3);
        assert_eq!(a, t.apply(img, &mut seed::rng(&[5])));
        assert_ne!(a, t.apply(img, &mut seed::rng(&[6])));
        let e = Transform::eval(&cfg);
        assert_eq!(
            e.apply(img, &mut seed::rng(&[1])),
            e.apply(img, &mut seed::rng(&[2]))
        );
    }

    #[test]
    fn flip_probability_one_mirrors_the_crop() {
        let cfg = DataConfig {
            image_size: 16,
            crop_fraction: 1.0,
            ..Default::default()
        };
        let px = image(16, 16);
        let img = RgbRef {
            width: 16,
            height: 16,
            pixels: &px,
        };
        let mut t = Transform::eval(&cfg);
        t.hflip = 1.0;
        let mut expect = px.clone();
        flip_horizontal(&mut expect, 16);
        assert_eq!(t.apply(img, &mut seed::rng(&[0])), expect);
    }

    #[test]
    fn jitter_keeps_grey_grey_and_zero_strength_is_identity() {
        let mut grey = vec![100u8; 8 * 8 * 3];
        color_jitter(&mut grey, 0.5, &mut seed::rng(&[4]));
        assert!(grey.chunks_exact(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        let mut px = image(8, 8);
        let before = px.clone();
        color_jitter(&mut px, 0.0, &mut seed::rng(&[4]));
        assert_eq!(px, before);
        color_jitter(&mut px, 0.8, &mut seed::rng(&[4]));
        assert_ne!(px, before);
    }
}
