//! Loader batches to network input (`f32 [b, 3, h, w]`, normalised).
//!
//! For CUDA the loader hands over bytes (`u8 [b, h, w, 3]`): the bytes travel, not floats,
//! and [`Normalize`] does the arithmetic on the device. On the CPU the loader's workers
//! normalise each sample as they finish it ([`PixelNorm`], a table lookup per byte written
//! straight into the batch in the model's memory layout): one pass, in parallel, instead of
//! libtorch's three passes over the batch (permute, convert, normalise) on the training
//! thread; [`Normalize::apply`] then passes such a batch through.

use tch::{Device, Kind, Tensor};

/// Per-channel normalisation of interleaved RGB bytes into floats, as a lookup table:
/// `(byte - mean * 255) * (1 / (std * 255))`, computed in `f32` in the same two roundings as
/// [`Normalize`]'s libtorch arithmetic, so both give bit-identical inputs.
#[derive(Clone)]
pub struct PixelNorm {
    lut: Box<[[f32; 256]; 3]>,
    channels_last: bool,
}

impl std::fmt::Debug for PixelNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PixelNorm")
            .field("channels_last", &self.channels_last)
            .finish_non_exhaustive()
    }
}

impl PixelNorm {
    /// From `mean` and `std` on the 0..1 scale (RGB); `channels_last` writes each image as
    /// `[h, w, 3]` (the NHWC memory of a channels-last `[b, 3, h, w]` batch), otherwise as
    /// `[3, h, w]` planes (contiguous NCHW).
    pub fn new(mean: [f64; 3], std: [f64; 3], channels_last: bool) -> PixelNorm {
        let (m, s) = constants(mean, std);
        let mut lut = Box::new([[0f32; 256]; 3]);
        for c in 0..3 {
            for (b, v) in lut[c].iter_mut().enumerate() {
                *v = (b as f32 - m[c]) * s[c];
            }
        }
        PixelNorm { lut, channels_last }
    }

    /// Whether images are written in NHWC order (see [`PixelNorm::new`]).
    pub fn channels_last(&self) -> bool {
        self.channels_last
    }

    /// Normalises one interleaved RGB image `hwc` (`h * w * 3` bytes) into `out` (as many
    /// floats), in this normaliser's layout.
    ///
    /// # Panics
    /// If the lengths differ or are not a multiple of 3 (the loader checks both first).
    pub fn write(&self, hwc: &[u8], out: &mut [f32]) {
        assert!(hwc.len() == out.len() && hwc.len() % 3 == 0);
        let [r, g, b] = &*self.lut;
        if self.channels_last {
            for (px, o) in hwc.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
                o[0] = r[px[0] as usize];
                o[1] = g[px[1] as usize];
                o[2] = b[px[2] as usize];
            }
        } else {
            let plane = hwc.len() / 3;
            let (or, rest) = out.split_at_mut(plane);
            let (og, ob) = rest.split_at_mut(plane);
            for (i, px) in hwc.chunks_exact(3).enumerate() {
                or[i] = r[px[0] as usize];
                og[i] = g[px[1] as usize];
                ob[i] = b[px[2] as usize];
            }
        }
    }
}

/// `mean * 255` and `1 / (std * 255)` in `f32`, the constants both normalisers use.
fn constants(mean: [f64; 3], std: [f64; 3]) -> ([f32; 3], [f32; 3]) {
    (
        mean.map(|m| (m * 255.0) as f32),
        std.map(|s| (1.0 / (s * 255.0)) as f32),
    )
}

/// Per-channel normalisation, prepared once per device.
pub struct Normalize {
    /// `mean * 255`, shaped `[1, 3, 1, 1]`.
    mean: Tensor,
    /// `1 / (std * 255)`, shaped `[1, 3, 1, 1]`.
    inv_std: Tensor,
    channels_last: bool,
}

impl Normalize {
    /// From `mean` and `std` on the 0..1 scale (RGB), on `device`; `channels_last` keeps the
    /// output in NHWC memory order instead of making it contiguous NCHW.
    pub fn new(mean: [f64; 3], std: [f64; 3], device: Device, channels_last: bool) -> Normalize {
        let (m, s) = constants(mean, std);
        Normalize {
            mean: Tensor::from_slice(&m).view([1, 3, 1, 1]).to_device(device),
            inv_std: Tensor::from_slice(&s).view([1, 3, 1, 1]).to_device(device),
            channels_last,
        }
    }

    /// `[b, h, w, 3]` bytes to `[b, 3, h, w]` floats on the device. With channels-last the
    /// NHWC bytes are viewed as NCHW with channels-last strides: no copy at all. A float
    /// batch was normalised by the loader already ([`PixelNorm`], the same constants and
    /// layout): it is only moved to the device.
    pub fn apply(&self, images: &Tensor) -> Tensor {
        if images.kind() == Kind::Float {
            return images.to_device(self.mean.device());
        }
        let x = images
            .to_device_(self.mean.device(), Kind::Uint8, true, false)
            .permute([0, 3, 1, 2]);
        let x = if self.channels_last {
            x
        } else {
            x.contiguous()
        };
        (x.to_kind(Kind::Float) - &self.mean) * &self.inv_std
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_per_channel_in_both_layouts() {
        let img = Tensor::from_slice(&[0u8, 128, 255, 255, 0, 128]).view([1, 1, 2, 3]);
        for cl in [false, true] {
            let x = Normalize::new([0.5; 3], [0.5; 3], Device::Cpu, cl).apply(&img);
            assert_eq!(x.size(), [1, 3, 1, 2]);
            let v = Vec::<f32>::try_from(x.contiguous().flatten(0, -1)).unwrap();
            let expect = [-1.0, 1.0, 0.0039, -1.0, 1.0, 0.0039];
            for (a, b) in v.iter().zip(expect) {
                assert!((a - b).abs() < 1e-3, "{v:?}");
            }
        }
    }

    #[test]
    fn pixel_norm_is_bit_identical_to_the_libtorch_arithmetic_in_both_layouts() {
        let (h, w) = (5usize, 7usize);
        let bytes: Vec<u8> = (0..h * w * 3).map(|i| (i * 37 % 256) as u8).collect();
        let img = Tensor::from_slice(&bytes).view([1, h as i64, w as i64, 3]);
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        for cl in [false, true] {
            let reference = Normalize::new(mean, std, Device::Cpu, cl).apply(&img);
            let mut out = vec![0f32; bytes.len()];
            PixelNorm::new(mean, std, cl).write(&bytes, &mut out);
            let ours = if cl {
                Tensor::from_slice(&out)
                    .view([1, h as i64, w as i64, 3])
                    .permute([0, 3, 1, 2])
            } else {
                Tensor::from_slice(&out).view([1, 3, h as i64, w as i64])
            };
            assert_eq!(ours.size(), reference.size());
            let (a, b) = (
                Vec::<f32>::try_from(ours.contiguous().flatten(0, -1)).unwrap(),
                Vec::<f32>::try_from(reference.contiguous().flatten(0, -1)).unwrap(),
            );
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "channels_last={cl}"
            );
            // A normalised batch passes through unchanged.
            let passed = Normalize::new(mean, std, Device::Cpu, cl).apply(&ours);
            assert!(passed.equal(&ours));
        }
    }
}
