//! Datasets, transforms and the parallel batch loader.
//!
//! A [`Dataset`] returns one transformed sample (an RGB `u8` image of the configured size
//! and a label) from an index and a random stream; the [`loader`] batches samples in worker
//! threads and hands `u8` batches to the trainer, which moves them to the device and
//! normalises them there.

pub mod cifar10;
pub mod decode;
pub mod image_folder;
pub mod in_memory;
pub mod loader;
pub mod mnist;
pub mod normalize;
pub mod seed;
pub mod shapes;
pub mod transforms;

use crate::config::{DataConfig, DataKind};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;

/// One sample: an interleaved RGB image (`size * size * 3` bytes, row-major) and its label.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `size * size * 3` bytes, interleaved RGB, row-major.
    pub image: Vec<u8>,
    /// Class index, 0-based, in the dataset's class order.
    pub label: i64,
}

/// A sample that could not be read: the file (or item) and why.
#[derive(Debug, thiserror::Error)]
#[error("{item}: {reason}")]
pub struct SampleError {
    /// The file path, or a description of the item within a dataset file.
    pub item: String,
    /// Why it could not be read.
    pub reason: String,
}

/// A finite, indexable set of labelled images.
pub trait Dataset: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether the set is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Class names, in label order.
    fn classes(&self) -> &[String];
    /// Side of the square images it returns.
    fn image_size(&self) -> u32;
    /// Sample `index`, transformed; `rng` is private to this (epoch, index).
    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> Result<Sample, SampleError>;
}

/// The training and validation sets of a config.
pub struct Splits {
    /// Training set, with the training transform (augmentation).
    pub train: Arc<dyn Dataset>,
    /// Validation set, with the eval transform.
    pub val: Arc<dyn Dataset>,
}

/// Builds the datasets a config names; errors name the directory or file at fault.
pub fn build(cfg: &DataConfig) -> crate::Result<Splits> {
    crate::error::boundary(|| match cfg.kind {
        DataKind::Shapes => Ok(Splits {
            train: Arc::new(shapes::Shapes::new(cfg, shapes::Split::Train)),
            val: Arc::new(shapes::Shapes::new(cfg, shapes::Split::Val)),
        }),
        DataKind::ImageFolder => image_folder::splits(cfg),
        DataKind::Mnist => mnist::splits(cfg),
        DataKind::Cifar10 => cifar10::splits(cfg),
    })
}
