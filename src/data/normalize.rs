//! Loader batches (`u8 [b, h, w, 3]`) to network input (`f32 [b, 3, h, w]`, normalised) on
//! the target device: the bytes travel, not floats, and the arithmetic runs where the model
//! does.

use tch::{Device, Kind, Tensor};

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
        let m: Vec<f32> = mean.iter().map(|m| (m * 255.0) as f32).collect();
        let s: Vec<f32> = std.iter().map(|s| (1.0 / (s * 255.0)) as f32).collect();
        Normalize {
            mean: Tensor::from_slice(&m).view([1, 3, 1, 1]).to_device(device),
            inv_std: Tensor::from_slice(&s).view([1, 3, 1, 1]).to_device(device),
            channels_last,
        }
    }

    /// `[b, h, w, 3]` bytes to `[b, 3, h, w]` floats on the device. With channels-last the
    /// NHWC bytes are viewed as NCHW with channels-last strides: no copy at all.
    pub fn apply(&self, images: &Tensor) -> Tensor {
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
}
