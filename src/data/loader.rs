//! The batch loader: samples are read and transformed in parallel on a worker pool, batches
//! are assembled in order by a producer thread and queued (bounded by `prefetch`), so
//! loading overlaps the training step and memory is bounded by the queue, not the dataset.
//!
//! Sample order and augmentation are pure functions of (seed, epoch, index): the same
//! batches come out whatever the number of workers, and an epoch can start at any batch.
//!
//! An epoch never ends short in silence: a worker that panics becomes a [`LoadError::Failed`]
//! naming the sample, and a producer that stops before its last batch for any other reason
//! ends the epoch with one too.

use super::normalize::PixelNorm;
use super::{seed, Dataset, SampleError};
use crossbeam_channel::{bounded, Receiver};
use rand::seq::SliceRandom;
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

/// How a [`Loader`] batches a dataset.
#[derive(Debug, Clone)]
pub struct LoaderOptions {
    /// Samples per batch, at least 1 (the last batch may be smaller unless `drop_last`).
    pub batch_size: usize,
    /// Shuffle every epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    /// Drop a last, incomplete batch.
    pub drop_last: bool,
    /// Seed of the shuffle order and of each sample's augmentation stream.
    pub seed: u64,
    /// Worker threads; 0 picks one per core.
    pub workers: usize,
    /// Batches queued ahead of the consumer.
    pub prefetch: usize,
    /// Stop at the first unreadable sample instead of skipping it.
    pub fail_on_error: bool,
    /// Put batches in pinned (page-locked) memory for fast, asynchronous copies to CUDA.
    pub pin_memory: bool,
    /// Only this process's share of each epoch (data-parallel training); `None`: all.
    pub shard: Option<Shard>,
    /// Normalise in the workers: batches of `f32 [b, 3, h, w]` model input (in the
    /// normaliser's layout) instead of `u8 [b, h, w, 3]`; for training on the CPU, where
    /// the bytes need not travel.
    pub normalize: Option<PixelNorm>,
}

impl Default for LoaderOptions {
    /// Batches of 32 in dataset order, one worker per core, 4 batches queued, stopping at
    /// the first unreadable sample.
    fn default() -> LoaderOptions {
        LoaderOptions {
            batch_size: 32,
            shuffle: false,
            drop_last: false,
            seed: 0,
            workers: 0,
            prefetch: 4,
            fail_on_error: true,
            pin_memory: false,
            shard: None,
            normalize: None,
        }
    }
}

/// One process's share of every epoch in data-parallel training, as PyTorch's
/// `DistributedSampler` deals it: the epoch's order (the same on every rank: same seed and
/// epoch) is, with `pad`, extended by repeating its start to a multiple of `world`, and rank
/// `r` takes positions `r, r + world, r + 2 world, ...`. With padding every rank gets the
/// same number of samples (and batches), so their steps stay in lock-step, and each sample
/// is seen once per epoch, the first `pad` ones twice; without it (validation) every sample
/// is seen exactly once, and the ranks' shares differ by at most one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This process's rank, 0 to `world - 1`.
    pub rank: usize,
    /// Processes sharing the epoch.
    pub world: usize,
    /// Repeat samples so that every rank has the same count.
    pub pad: bool,
}

impl Shard {
    /// This rank's positions of an epoch of `order` (see [`Shard`]).
    pub fn take(&self, order: &[usize]) -> Vec<usize> {
        let world = self.world.max(1);
        let n = order.len();
        let total = if self.pad && n > 0 {
            n.div_ceil(world) * world
        } else {
            n
        };
        (self.rank..total)
            .step_by(world)
            .map(|i| order[i % n])
            .collect()
    }

    /// Samples this rank gets of an epoch of `n`.
    pub fn len(&self, n: usize) -> usize {
        let world = self.world.max(1);
        if self.pad {
            n.div_ceil(world)
        } else {
            n / world + usize::from(self.rank < n % world)
        }
    }

    /// Whether this rank gets no sample of an epoch of `n`.
    pub fn is_empty(&self, n: usize) -> bool {
        self.len(n) == 0
    }
}

/// Why an epoch's batches stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A sample could not be read and [`LoaderOptions::fail_on_error`] is set.
    #[error(transparent)]
    Sample(#[from] SampleError),
    /// The loader itself failed (a worker panicked, the producer died): a bug, not the data.
    #[error("data loader failed: {0}")]
    Failed(String),
}

impl LoadError {
    /// As an error of a training run, whose `data.on_error = "fail"` is why an unreadable
    /// sample stops it.
    pub fn in_training(self) -> anyhow::Error {
        match self {
            LoadError::Sample(e) => anyhow::anyhow!("{e} (data.on_error = \"fail\")"),
            e => e.into(),
        }
    }
}

/// One batch: `images` is `u8 [b, h, w, 3]` (or normalised floats), `labels` is `i64 [b]`.
pub struct Batch {
    /// `u8 [b, h, w, 3]` with `h = w` the dataset's image size; `b` excludes skipped samples.
    /// With [`LoaderOptions::normalize`]: `f32 [b, 3, h, w]`, contiguous or with
    /// channels-last strides as the normaliser says.
    pub images: Tensor,
    /// `i64 [b]` class labels, in the order of `images`.
    pub labels: Tensor,
    /// Samples skipped in this batch, with the reason.
    pub skipped: Vec<SampleError>,
}

/// Batches a dataset per epoch on its own worker pool, in a deterministic order.
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    opts: LoaderOptions,
    pool: Arc<rayon::ThreadPool>,
}

impl Loader {
    /// A loader of `dataset` with a pool of `opts.workers` threads (0: one per core); fails
    /// only if the pool cannot be built.
    pub fn new(dataset: Arc<dyn Dataset>, opts: LoaderOptions) -> crate::Result<Loader> {
        crate::error::boundary(|| {
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
        })
    }

    /// The dataset being batched.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        let n = self.opts.shard.map_or(n, |s| s.len(n));
        let b = self.opts.batch_size;
        if self.opts.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample order of `epoch` (this rank's share of it, with [`LoaderOptions::shard`]).
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.opts.shuffle {
            order.shuffle(&mut seed::rng(&[
                self.opts.seed,
                seed::tag::SHUFFLE,
                epoch as u64,
            ]));
        }
        match self.opts.shard {
            Some(shard) => shard.take(&order),
            None => order,
        }
    }

    /// The batches of `epoch`, starting at batch `start` (for a resume mid-epoch).
    pub fn epoch(&self, epoch: usize, start: usize) -> Batches {
        let order = self.order(epoch);
        let (tx, rx) = bounded(self.opts.prefetch.max(1));
        let dataset = self.dataset.clone();
        let pool = self.pool.clone();
        let opts = self.opts.clone();
        let n = self.num_batches();
        let spawned = std::thread::Builder::new()
            .name("hondo-batcher".into())
            .spawn(move || {
                for b in start..n {
                    let end = ((b + 1) * opts.batch_size).min(order.len());
                    let indices = &order[b * opts.batch_size..end];
                    let batch = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        make_batch(dataset.as_ref(), &pool, &opts, epoch, indices)
                    }))
                    .unwrap_or_else(|p| {
                        Err(LoadError::Failed(format!(
                            "batch {b} of epoch {epoch} panicked: {}",
                            crate::error::panic_message(p.as_ref())
                        )))
                    });
                    let stop = batch.is_err();
                    if tx.send(batch).is_err() || stop {
                        return;
                    }
                }
            });
        let (handle, failed) = match spawned {
            Ok(h) => (Some(h), None),
            Err(e) => (
                None,
                Some(LoadError::Failed(format!("cannot start its thread: {e}"))),
            ),
        };
        Batches {
            rx,
            handle,
            failed,
            remaining: n.saturating_sub(start),
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
) -> Result<Batch, LoadError> {
    let size = dataset.image_size() as usize;
    let (n, s) = (indices.len(), size as i64);
    let per = size * size * 3;
    // The batch is allocated once and every worker writes its samples straight into their
    // rows: nothing is assembled or copied after the pool is done.
    let (kind, shape) = match &opts.normalize {
        None => (Kind::Uint8, [n as i64, s, s, 3]),
        Some(p) if p.channels_last() => (Kind::Float, [n as i64, s, s, 3]),
        Some(_) => (Kind::Float, [n as i64, 3, s, s]),
    };
    let mut images = Tensor::f_empty(shape, (kind, Device::Cpu)).map_err(|e| {
        LoadError::Failed(format!(
            "cannot allocate a batch of {n} images of {size}x{size}: {e}"
        ))
    })?;
    let outcomes = match &opts.normalize {
        None => fill(
            dataset,
            pool,
            opts,
            epoch,
            indices,
            rows_mut::<u8>(&mut images, per),
            |img, row| row.copy_from_slice(img),
        ),
        Some(norm) => fill(
            dataset,
            pool,
            opts,
            epoch,
            indices,
            rows_mut::<f32>(&mut images, per),
            |img, row| norm.write(img, row),
        ),
    };
    let mut labels = Vec::with_capacity(n);
    let mut kept = Vec::with_capacity(n);
    let mut skipped = Vec::new();
    for (row, outcome) in outcomes.into_iter().enumerate() {
        match outcome? {
            Ok(label) => {
                labels.push(label);
                kept.push(row as i64);
            }
            Err(e) if opts.fail_on_error => return Err(e.into()),
            Err(e) => skipped.push(e),
        }
    }
    if kept.len() < n {
        images = images.index_select(0, &Tensor::from_slice(&kept));
    }
    if opts
        .normalize
        .as_ref()
        .is_some_and(PixelNorm::channels_last)
    {
        images = images.permute([0, 3, 1, 2]);
    }
    if opts.pin_memory {
        images = images.pin_memory(Device::Cuda(0));
    }
    Ok(Batch {
        images,
        labels: Tensor::from_slice(&labels).to_kind(Kind::Int64),
        skipped,
    })
}

/// Reads `indices` on the pool, each sample written by `write` into its row of `rows`;
/// per row, the label or why the sample was skipped (in order), or why the batch failed.
#[allow(clippy::type_complexity)]
fn fill<T: Send>(
    dataset: &dyn Dataset,
    pool: &rayon::ThreadPool,
    opts: &LoaderOptions,
    epoch: usize,
    indices: &[usize],
    rows: Vec<&mut [T]>,
    write: impl Fn(&[u8], &mut [T]) + Sync,
) -> Vec<Result<Result<i64, SampleError>, LoadError>> {
    use rayon::prelude::*;
    let want = dataset.image_size() as usize;
    pool.install(|| {
        rows.into_par_iter()
            .zip(indices.par_iter())
            .map(|(row, &i)| {
                let rng = &mut seed::rng(&[opts.seed, seed::tag::AUGMENT, epoch as u64, i as u64]);
                let sample =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dataset.get(i, rng)))
                        .map_err(|p| {
                            LoadError::Failed(format!(
                                "reading sample {i} panicked: {}",
                                crate::error::panic_message(p.as_ref())
                            ))
                        })?;
                match sample {
                    Err(e) => Ok(Err(e)),
                    Ok(s) if s.image.len() != row.len() => Err(LoadError::Failed(format!(
                        "sample {i} has {} bytes, not {want}x{want}x3",
                        s.image.len()
                    ))),
                    Ok(s) => {
                        write(&s.image, row);
                        Ok(Ok(s.label))
                    }
                }
            })
            .collect()
    })
}

/// The elements of `t`, a fresh contiguous CPU tensor of `T`s, as rows of `per` elements,
/// to be filled in place.
fn rows_mut<T: tch::kind::Element>(t: &mut Tensor, per: usize) -> Vec<&mut [T]> {
    let n = t.numel();
    assert!(
        t.device() == Device::Cpu && t.kind() == T::KIND && t.is_contiguous(),
        "rows_mut needs a contiguous CPU tensor of the element type"
    );
    if n == 0 || per == 0 {
        return Vec::new();
    }
    // SAFETY: `t` is a contiguous CPU tensor of `n` elements of `T` (checked above), and
    // `n > 0`, so its data pointer is valid and aligned for `n` `T`s. The slice borrows `t`
    // mutably: the tensor stays alive and nothing else reads or writes its storage (it was
    // just allocated and no view of it exists) while the slice lives. Every bit pattern is
    // a valid `u8` / `f32`, and every element is written before it is read.
    let all = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut T, n) };
    all.chunks_mut(per).collect()
}

/// The batches of one epoch, in order; an error item ends it.
pub struct Batches {
    rx: Receiver<Result<Batch, LoadError>>,
    handle: Option<JoinHandle<()>>,
    /// A failure to report before anything else.
    failed: Option<LoadError>,
    /// Batches still to come: the producer stopping before they did is an error.
    remaining: usize,
}

impl Iterator for Batches {
    type Item = Result<Batch, LoadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            self.remaining = 0;
            return Some(Err(e));
        }
        if self.remaining == 0 {
            return None;
        }
        match self.rx.recv() {
            Ok(item) => {
                // Nothing follows an error.
                self.remaining = if item.is_ok() { self.remaining - 1 } else { 0 };
                Some(item)
            }
            Err(_) => {
                // The producer ended without sending every batch, or an error: say why.
                let why = match self.handle.take().map(JoinHandle::join) {
                    Some(Err(p)) => format!(
                        "its thread panicked: {}",
                        crate::error::panic_message(p.as_ref())
                    ),
                    _ => "its thread stopped early".into(),
                };
                let left = std::mem::take(&mut self.remaining);
                Some(Err(LoadError::Failed(format!(
                    "{why} ({left} batches of the epoch not produced)"
                ))))
            }
        }
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
    use crate::data::normalize::Normalize;
    use crate::data::shapes::{Shapes, Split};
    use crate::data::Sample;
    use rand_chacha::ChaCha8Rng;

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
            shard: None,
            normalize: None,
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
    fn shards_deal_an_epoch_as_distributed_sampler() {
        let order: Vec<usize> = (0..10).rev().collect(); // 9, 8, ..., 0
        let shard = |rank, pad| Shard {
            rank,
            world: 3,
            pad,
        };
        // Padded to 12: positions 10 and 11 repeat the order's start (9 and 8).
        assert_eq!(shard(0, true).take(&order), [9, 6, 3, 0]);
        assert_eq!(shard(1, true).take(&order), [8, 5, 2, 9]);
        assert_eq!(shard(2, true).take(&order), [7, 4, 1, 8]);
        // Without padding every sample once; shares differ by one at most.
        let mut all: Vec<usize> = (0..3).flat_map(|r| shard(r, false).take(&order)).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        for r in 0..3 {
            assert_eq!(shard(r, true).len(10), 4);
            assert_eq!(shard(r, false).len(10), shard(r, false).take(&order).len());
        }
        assert!(shard(2, false).is_empty(2));
        assert!(shard(0, true).take(&[]).is_empty());
    }

    #[test]
    fn a_sharded_loader_gives_each_rank_its_share_of_the_same_epoch() {
        let cfg = DataConfig {
            train_size: 10,
            image_size: 16,
            ..Default::default()
        };
        let ds: Arc<dyn Dataset> = Arc::new(Shapes::new(&cfg, Split::Train));
        let loader = |shard| {
            Loader::new(
                ds.clone(),
                LoaderOptions {
                    batch_size: 2,
                    shuffle: true,
                    drop_last: false,
                    seed: 7,
                    workers: 1,
                    prefetch: 1,
                    fail_on_error: true,
                    pin_memory: false,
                    shard,
                    normalize: None,
                },
            )
            .unwrap()
        };
        let whole = loader(None).order(3);
        let parts: Vec<Vec<usize>> = (0..2)
            .map(|rank| {
                loader(Some(Shard {
                    rank,
                    world: 2,
                    pad: true,
                }))
                .order(3)
            })
            .collect();
        assert_eq!(
            parts[0],
            whole.iter().copied().step_by(2).collect::<Vec<_>>()
        );
        assert_eq!(
            parts[1],
            whole.iter().copied().skip(1).step_by(2).collect::<Vec<_>>()
        );
        let sharded = loader(Some(Shard {
            rank: 1,
            world: 2,
            pad: true,
        }));
        assert_eq!(sharded.num_batches(), 3);
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

    /// 20 samples of 4x4, each with its own pixels; `get` panics at `panic_at`, returns a
    /// wrong-sized image at `short_at`, or an unreadable sample at `bad_at`.
    struct Faulty {
        classes: Vec<String>,
        panic_at: Option<usize>,
        short_at: Option<usize>,
        bad_at: Option<usize>,
    }

    impl Dataset for Faulty {
        fn len(&self) -> usize {
            20
        }
        fn classes(&self) -> &[String] {
            &self.classes
        }
        fn image_size(&self) -> u32 {
            4
        }
        fn get(&self, index: usize, _: &mut ChaCha8Rng) -> Result<Sample, SampleError> {
            if self.panic_at == Some(index) {
                panic!("deliberate failure at {index}");
            }
            if self.bad_at == Some(index) {
                return Err(SampleError {
                    item: format!("sample {index}"),
                    reason: "deliberately unreadable".into(),
                });
            }
            let n = if self.short_at == Some(index) { 5 } else { 48 };
            Ok(Sample {
                image: (0..n).map(|k| (index * 13 + k * 5) as u8).collect(),
                label: index as i64 % 2,
            })
        }
    }

    fn faulty(panic_at: Option<usize>, short_at: Option<usize>, workers: usize) -> Loader {
        faulty_with(panic_at, short_at, None, workers, None)
    }

    fn faulty_with(
        panic_at: Option<usize>,
        short_at: Option<usize>,
        bad_at: Option<usize>,
        workers: usize,
        normalize: Option<PixelNorm>,
    ) -> Loader {
        let ds = Faulty {
            classes: vec!["a".into(), "b".into()],
            panic_at,
            short_at,
            bad_at,
        };
        let opts = LoaderOptions {
            batch_size: 4,
            shuffle: false,
            drop_last: false,
            seed: 0,
            workers,
            prefetch: 2,
            // A panic is not an unreadable sample: it ends the epoch even when skipping.
            fail_on_error: false,
            pin_memory: false,
            shard: None,
            normalize,
        };
        Loader::new(Arc::new(ds), opts).unwrap()
    }

    #[test]
    fn a_panicking_sample_ends_the_epoch_with_an_error_naming_it() {
        for workers in [1, 3] {
            let items: Vec<_> = faulty(Some(9), None, workers).epoch(0, 0).collect();
            assert_eq!(
                items.len(),
                3,
                "two good batches, then the error, then nothing"
            );
            assert!(items[..2].iter().all(Result::is_ok));
            let err = items[2].as_ref().err().unwrap().to_string();
            assert!(
                err.contains("data loader failed")
                    && err.contains("sample 9")
                    && err.contains("deliberate failure at 9"),
                "{err}"
            );
            let err = LoadError::Failed("x".into()).in_training().to_string();
            assert!(!err.contains("on_error"), "{err}");
        }
    }

    #[test]
    fn a_wrong_sized_sample_is_an_error_not_a_bad_view() {
        let items: Vec<_> = faulty(None, Some(2), 1).epoch(0, 0).collect();
        assert_eq!(items.len(), 1);
        let err = items[0].as_ref().err().unwrap().to_string();
        assert!(err.contains("5 bytes, not 4x4x3"), "{err}");
    }

    #[test]
    fn a_skipped_sample_leaves_the_same_normalised_batch_in_both_layouts() {
        // Sample 5 (in the second batch of 4) is unreadable: that batch keeps 3 rows, and the
        // worker-normalised batch must equal the u8 batch normalised afterwards, bit for bit,
        // whatever the layout and worker count.
        let (mean, std) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);
        let bytes: Vec<Batch> = faulty_with(None, None, Some(5), 1, None)
            .epoch(0, 0)
            .map(Result::unwrap)
            .collect();
        assert_eq!(bytes.len(), 5);
        assert_eq!(bytes[1].images.size(), [3, 4, 4, 3]);
        assert_eq!(bytes[1].skipped.len(), 1);
        for channels_last in [false, true] {
            let after = Normalize::new(mean, std, Device::Cpu, channels_last);
            for workers in [1, 3] {
                let norm = Some(PixelNorm::new(mean, std, channels_last));
                let batches: Vec<Batch> = faulty_with(None, None, Some(5), workers, norm)
                    .epoch(0, 0)
                    .map(Result::unwrap)
                    .collect();
                assert_eq!(batches.len(), bytes.len());
                for (got, want) in batches.iter().zip(&bytes) {
                    let expect = after.apply(&want.images);
                    assert_eq!(got.images.size(), expect.size());
                    assert_eq!(got.images.kind(), Kind::Float);
                    assert_eq!(
                        got.images.stride(),
                        expect.stride(),
                        "layout {channels_last}"
                    );
                    let bits = |t: &Tensor| -> Vec<u32> {
                        Vec::<f32>::try_from(t.contiguous().flatten(0, -1))
                            .unwrap()
                            .iter()
                            .map(|v| v.to_bits())
                            .collect()
                    };
                    assert_eq!(bits(&got.images), bits(&expect));
                    assert_eq!(
                        Vec::<i64>::try_from(&got.labels).unwrap(),
                        Vec::<i64>::try_from(&want.labels).unwrap()
                    );
                    assert_eq!(got.skipped.len(), want.skipped.len());
                }
            }
        }
    }

    #[test]
    fn a_producer_that_stops_early_is_an_error() {
        // A producer that died before sending any of its 3 batches.
        let (tx, rx) = bounded::<Result<Batch, LoadError>>(1);
        drop(tx);
        let mut batches = Batches {
            rx,
            handle: Some(std::thread::spawn(|| panic!("producer died"))),
            failed: None,
            remaining: 3,
        };
        let err = batches.next().unwrap().err().unwrap().to_string();
        assert!(
            err.contains("panicked: producer died") && err.contains("3 batches"),
            "{err}"
        );
        assert!(batches.next().is_none());
    }

    #[test]
    fn dropping_mid_epoch_stops_the_producer() {
        let l = loader(1);
        let mut it = l.epoch(0, 0);
        assert!(it.next().is_some());
        drop(it);
    }
}
