//! The batch loader: samples are read and transformed in parallel on a worker pool, batches
//! are assembled in order by a producer thread and queued (bounded by `prefetch`), so
//! loading overlaps the training step and memory is bounded by the queue, not the dataset.
//!
//! Sample order and augmentation are pure functions of (seed, epoch, index): the same
//! batches come out whatever the number of workers, and an epoch can start at any batch.

use super::{seed, Dataset, SampleError};
use crossbeam_channel::{bounded, Receiver};
use rand::seq::SliceRandom;
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Kind, Tensor};

/// How a [`Loader`] batches a dataset.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    /// Shuffle every epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Drop a last, incomplete batch.
    pub drop_last: bool,
    pub seed: u64,
    /// Worker threads; 0 picks one per core.
    pub workers: usize,
    /// Batches queued ahead of the consumer.
    pub prefetch: usize,
    /// Stop at the first unreadable sample instead of skipping it.
    pub fail_on_error: bool,
    /// Put batches in pinned (page-locked) memory for fast, asynchronous copies to CUDA.
    pub pin_memory: bool,
}

/// One batch: `images` is `u8 [b, h, w, 3]`, `labels` is `i64 [b]`.
pub struct Batch {
    pub images: Tensor,
    pub labels: Tensor,
    /// Samples skipped in this batch, with the reason.
    pub skipped: Vec<SampleError>,
}

pub struct Loader {
    dataset: Arc<dyn Dataset>,
    opts: LoaderOptions,
    pool: Arc<rayon::ThreadPool>,
}

impl Loader {
    pub fn new(dataset: Arc<dyn Dataset>, opts: LoaderOptions) -> anyhow::Result<Loader> {
        let workers = if opts.workers == 0 {
            default_workers()
        } else {
            opts.workers
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("hondo-loader-{i}"))
            .build()?;
        Ok(Loader {
            dataset,
            opts,
            pool: Arc::new(pool),
        })
    }

    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.dataset.len(), self.opts.batch_size);
        if self.opts.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.opts.shuffle {
            order.shuffle(&mut seed::rng(&[self.opts.seed, seed::tag::SHUFFLE, epoch as u64]));
        }
        order
    }

    /// The batches of `epoch`, starting at batch `start` (for a resume mid-epoch).
    pub fn epoch(&self, epoch: usize, start: usize) -> Batches {
        let order = self.order(epoch);
        let (tx, rx) = bounded(self.opts.prefetch.max(1));
        let dataset = self.dataset.clone();
        let pool = self.pool.clone();
        let opts = self.opts.clone();
        let n = self.num_batches();
        let handle = std::thread::Builder::new()
            .name("hondo-batcher".into())
            .spawn(move || {
                for b in start..n {
                    let end = ((b + 1) * opts.batch_size).min(order.len());
                    let indices = &order[b * opts.batch_size..end];
                    let batch = make_batch(dataset.as_ref(), &pool, &opts, epoch, indices);
                    let stop = batch.is_err();
                    if tx.send(batch).is_err() || stop {
                        return;
                    }
                }
            })
            .expect("spawn loader thread");
        Batches {
            rx,
            handle: Some(handle),
        }
    }
}

/// One worker per core, leaving libtorch its own threads when there are few cores.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn make_batch(
    dataset: &dyn Dataset,
    pool: &rayon::ThreadPool,
    opts: &LoaderOptions,
    epoch: usize,
    indices: &[usize],
) -> Result<Batch, SampleError> {
    use rayon::prelude::*;
    let size = dataset.image_size() as usize;
    let samples: Vec<_> = pool.install(|| {
        indices
            .par_iter()
            .map(|&i| {
                dataset.get(
                    i,
                    &mut seed::rng(&[opts.seed, seed::tag::AUGMENT, epoch as u64, i as u64]),
                )
            })
            .collect()
    });
    let mut pixels = Vec::with_capacity(indices.len() * size * size * 3);
    let mut labels = Vec::with_capacity(indices.len());
    let mut skipped = Vec::new();
    for s in samples {
        match s {
            Ok(s) => {
                debug_assert_eq!(s.image.len(), size * size * 3);
                pixels.extend_from_slice(&s.image);
                labels.push(s.label);
            }
            Err(e) if opts.fail_on_error => return Err(e),
            Err(e) => skipped.push(e),
        }
    }
    let b = labels.len() as i64;
    let mut images = Tensor::from_slice(&pixels).view([b, size as i64, size as i64, 3]);
    if opts.pin_memory {
        images = images.pin_memory(tch::Device::Cuda(0));
    }
    Ok(Batch {
        images,
        labels: Tensor::from_slice(&labels).to_kind(Kind::Int64),
        skipped,
    })
}

/// The batches of one epoch, in order.
pub struct Batches {
    rx: Receiver<Result<Batch, SampleError>>,
    handle: Option<JoinHandle<()>>,
}

impl Iterator for Batches {
    type Item = Result<Batch, SampleError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Unblock the producer (its next send fails), then wait for it.
        let (_, dead) = bounded(0);
        self.rx = dead;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DataConfig;
    use crate::data::shapes::{Shapes, Split};

    fn loader(workers: usize) -> Loader {
        let cfg = DataConfig {
            train_size: 50,
            image_size: 16,
            ..Default::default()
        };
        let opts = LoaderOptions {
            batch_size: 8,
            shuffle: true,
            drop_last: false,
            seed: 7,
            workers,
            prefetch: 2,
            fail_on_error: true,
            pin_memory: false,
        };
        Loader::new(Arc::new(Shapes::new(&cfg, Split::Train)), opts).unwrap()
    }

    #[test]
    fn batches_do_not_depend_on_worker_count() {
        let collect = |l: &Loader| -> Vec<(Vec<u8>, Vec<i64>)> {
            l.epoch(1, 0)
                .map(|b| {
                    let b = b.unwrap();
                    (
                        Vec::<u8>::try_from(b.images.flatten(0, -1)).unwrap(),
                        Vec::<i64>::try_from(&b.labels).unwrap(),
                    )
                })
                .collect()
        };
        let one = collect(&loader(1));
        assert_eq!(one.len(), 7);
        assert_eq!(one.iter().map(|b| b.1.len()).sum::<usize>(), 50);
        assert_eq!(one, collect(&loader(2)));
    }

    #[test]
    fn epochs_shuffle_differently_and_start_can_skip() {
        let l = loader(2);
        assert_ne!(l.order(0), l.order(1));
        let mut sorted = l.order(3);
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(l.epoch(0, 5).count(), 2);
    }

    #[test]
    fn dropping_mid_epoch_stops_the_producer() {
        let l = loader(1);
        let mut it = l.epoch(0, 0);
        assert!(it.next().is_some());
        drop(it);
    }
}
