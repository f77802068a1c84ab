//! A dataset of equally sized raw images held in memory (MNIST, CIFAR-10), transformed on
//! read like image-folder files.

use super::transforms::{RgbRef, Transform};
use super::{Dataset, Sample, SampleError};
use rand_chacha::ChaCha8Rng;

/// Raw `u8` images of one size, `channels` interleaved (1 for grey, 3 for RGB).
pub struct InMemory {
    classes: Vec<String>,
    pixels: Vec<u8>,
    labels: Vec<i64>,
    width: u32,
    height: u32,
    channels: usize,
    transform: Transform,
}

impl InMemory {
    /// `pixels` holds `labels.len()` images of `width * height * channels` bytes each.
    pub fn new(
        classes: Vec<String>,
        pixels: Vec<u8>,
        labels: Vec<i64>,
        (width, height, channels): (u32, u32, usize),
        transform: Transform,
    ) -> InMemory {
        assert!(
            channels == 1 || channels == 3,
            "1 or 3 channels, got {channels}"
        );
        assert_eq!(
            pixels.len(),
            labels.len() * width as usize * height as usize * channels
        );
        InMemory {
            classes,
            pixels,
            labels,
            width,
            height,
            channels,
            transform,
        }
    }

    /// The label of every image, in order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }
}

impl Dataset for InMemory {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn classes(&self) -> &[String] {
        &self.classes
    }

    fn image_size(&self) -> u32 {
        self.transform.size()
    }

    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Sample, SampleError> {
        let n = self.width as usize * self.height as usize * self.channels;
        let raw = &self.pixels[index * n..][..n];
        let rgb: Vec<u8>;
        let pixels = if self.channels == 3 {
            raw
        } else {
            rgb = raw.iter().flat_map(|&v| [v, v, v]).collect();
            &rgb
        };
        let image = self.transform.apply(
            RgbRef {
                width: self.width,
                height: self.height,
                pixels,
            },
            rng,
        );
        Ok(Sample {
            image,
            label: self.labels[index],
        })
    }
}
