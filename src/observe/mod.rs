//! Watching a run: the trainer reports everything it does through [`Observer`], and prints
//! nothing itself.
//!
//! The `hondo` binary's progress bar and log lines are one observer; [`MetricsLog`]
//! (`metrics.jsonl`), [`TrainingCurves`] (`training-curves.png`) and [`TensorBoard`] are
//! others, and a library user adds their own (a web hook, an early-stopping rule of their
//! own) the same way, with [`crate::train::Trainer::observer`].
//!
//! Every method has a default that does nothing, so an observer implements only what it
//! needs. A method that returns an error stops the run with
//! [`crate::Error::Observer`], except [`Observer::run_ended`]: the run is over by then, so
//! its errors reach the other observers as warnings instead.
//!
//! ```
//! use hondo::observe::{EpochEnd, Observer, ObserverResult};
//!
//! /// Collects validation accuracy per epoch.
//! #[derive(Default)]
//! struct Accuracies(Vec<f64>);
//!
//! impl Observer for Accuracies {
//!     fn epoch_ended(&mut self, end: &EpochEnd<'_>) -> ObserverResult {
//!         self.0.push(end.metrics.val_acc);
//!         Ok(())
//!     }
//! }
//! ```

mod curves;
mod metrics_log;
mod tensorboard;

pub use curves::TrainingCurves;
pub use metrics_log::MetricsLog;
pub use tensorboard::{TensorBoard, EVENTS_PREFIX};

use crate::metrics::EpochMetrics;
use std::path::Path;

/// What an observer method returns; an error stops the run (see the module docs).
pub type ObserverResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// What the trainer built, reported once before the first step.
#[derive(Debug, Clone)]
pub struct RunInfo<'a> {
    /// The run directory (checkpoints, `config.toml`, metrics).
    pub run_dir: &'a Path,
    /// The model's name as checkpoints record it (`resnet50`, or a custom model's name).
    pub model: &'a str,
    /// The dataset kind (`shapes`, `image_folder`, ...).
    pub data: &'a str,
    /// Class names in label order.
    pub classes: &'a [String],
    /// Images in the training set.
    pub train_images: usize,
    /// Images in the validation set.
    pub val_images: usize,
    /// Epochs in the run.
    pub epochs: usize,
    /// Optimizer steps per epoch.
    pub steps_per_epoch: usize,
    /// The device, as `cpu` or `cuda:N`.
    pub device: String,
    /// `fp32`, `bf16` or `fp16`.
    pub precision: &'static str,
    /// Whether the model and its inputs are in channels-last (NHWC) memory format.
    pub channels_last: bool,
    /// Why that format: `set in the config`, or `auto: ...` with the timing that chose it
    /// ([`crate::train::autotune`]).
    pub layout_reason: &'a str,
    /// The epoch (0-based) and batch a resumed run continues from; `None` for a new run.
    pub resumed_at: Option<(usize, usize)>,
    /// Optimizer steps already done (non-zero only for a resumed run).
    pub step: usize,
    /// For a resumed run, the last finished epoch's metrics as its checkpoint recorded
    /// them. The checkpoints of an epoch are written before [`Observer::epoch_ended`]
    /// runs, so a process killed in between resumes past an epoch its observers never
    /// saw end: an observer that keeps a record per epoch can fill the gap from this
    /// ([`MetricsLog`] does).
    pub last_epoch: Option<&'a EpochMetrics>,
    /// The data-parallel job, when the run is one (observers run on its rank 0 only).
    pub data_parallel: Option<DataParallel>,
}

/// A data-parallel run's shape, as its first line reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataParallel {
    /// Processes training together.
    pub world_size: usize,
    /// The collective backend (`gloo`).
    pub backend: &'static str,
    /// Images per optimizer step over all processes (`train.batch_size` is per process,
    /// times `train.accumulate`).
    pub global_batch: usize,
}

/// The start of an epoch's training.
#[derive(Debug, Clone, Copy)]
pub struct EpochStart {
    /// 0-based epoch.
    pub epoch: usize,
    /// The run's number of epochs.
    pub epochs: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Batches of this epoch already done: non-zero only when a resumed run continues
    /// mid-epoch.
    pub done: usize,
}

/// After an optimizer step, as often as the device's numbers are read back
/// (`train.sync_every`; every step on the CPU).
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    /// 0-based epoch.
    pub epoch: usize,
    /// Optimizer steps done in the run (1-based).
    pub step: usize,
    /// The step's last batch in the epoch (1-based; a step spans several batches under
    /// gradient accumulation).
    pub batch: usize,
    /// Mean training loss per image of the epoch so far.
    pub loss: f64,
    /// Training accuracy of the epoch so far, a fraction from 0 to 1.
    pub acc: f64,
    /// The base group's learning rate of this step.
    pub lr: f64,
    /// Training images per second in the epoch so far (loading included).
    pub images_per_sec: f64,
}

/// The end of an epoch: its metrics, after validation and after its checkpoints were
/// written.
#[derive(Debug, Clone)]
pub struct EpochEnd<'a> {
    /// The epoch's line of `metrics.jsonl`.
    pub metrics: &'a EpochMetrics,
    /// The run's number of epochs.
    pub epochs: usize,
    /// Whether this epoch is the best so far by `checkpoint.monitor`.
    pub is_best: bool,
    /// Optimizer steps done in the run by the end of this epoch.
    pub step: usize,
    /// The run directory.
    pub run_dir: &'a Path,
}

/// Which checkpoint a write was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    /// `last.safetensors`: the resumable state.
    Last,
    /// `best.safetensors`.
    Best,
    /// `epoch-NNNN.safetensors`, one of the top-k.
    Epoch(usize),
}

/// Callbacks of a training run. See the module docs.
#[allow(unused_variables)]
pub trait Observer {
    /// Once, after everything is built and before the first step.
    fn run_started(&mut self, run: &RunInfo<'_>) -> ObserverResult {
        Ok(())
    }
    /// At the start of each epoch's training.
    fn epoch_started(&mut self, start: &EpochStart) -> ObserverResult {
        Ok(())
    }
    /// After optimizer steps, when their numbers have been read back from the device.
    fn step(&mut self, step: &StepReport) -> ObserverResult {
        Ok(())
    }
    /// After each epoch's validation and checkpoints.
    fn epoch_ended(&mut self, end: &EpochEnd<'_>) -> ObserverResult {
        Ok(())
    }
    /// After a checkpoint file was written (atomically).
    fn checkpoint_written(&mut self, path: &Path, kind: CheckpointKind) -> ObserverResult {
        Ok(())
    }
    /// A line of information (frozen layers, pretrained weights loaded, unfreezing, early
    /// stopping, interruption).
    fn message(&mut self, text: &str) -> ObserverResult {
        Ok(())
    }
    /// Something the user should know that did not stop the run (a skipped file, a skipped
    /// non-finite step, an observer's failure at the end).
    fn warning(&mut self, text: &str) -> ObserverResult {
        Ok(())
    }
    /// Once, when the run is over (finished, stopped early or interrupted). Errors here
    /// become warnings to the other observers.
    fn run_ended(&mut self, run_dir: &Path) -> ObserverResult {
        Ok(())
    }
}

/// Warnings raised where no observer is at hand (a kernel falling back, a guard failing
/// to restore state); the trainer passes them on to its observers at the next step.
static DEFERRED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Queues a warning for the running trainer's observers (the library never prints).
pub(crate) fn defer_warning(text: String) {
    let mut q = DEFERRED.lock().unwrap_or_else(|e| e.into_inner());
    // Bounded: a repeating failure is said a few times, not once per step forever.
    if q.len() < 16 && !q.contains(&text) {
        q.push(text);
    }
}

/// The observers of one run, called in order.
#[derive(Default)]
pub(crate) struct Observers(pub(crate) Vec<Box<dyn Observer>>);

impl Observers {
    /// Calls `f` on every observer; the first error stops the run.
    pub(crate) fn each(
        &mut self,
        what: &'static str,
        mut f: impl FnMut(&mut dyn Observer) -> ObserverResult,
    ) -> crate::Result<()> {
        for o in &mut self.0 {
            f(o.as_mut()).map_err(|source| crate::Error::Observer { what, source })?;
        }
        Ok(())
    }

    pub(crate) fn message(&mut self, text: &str) -> crate::Result<()> {
        self.each("message", |o| o.message(text))
    }

    pub(crate) fn warning(&mut self, text: &str) -> crate::Result<()> {
        self.each("warning", |o| o.warning(text))
    }

    /// Passes on the warnings queued by [`defer_warning`].
    pub(crate) fn flush_deferred(&mut self) -> crate::Result<()> {
        let queued = std::mem::take(&mut *DEFERRED.lock().unwrap_or_else(|e| e.into_inner()));
        for w in queued {
            self.warning(&w)?;
        }
        Ok(())
    }

    /// Ends the run for every observer; failures are passed on as warnings.
    pub(crate) fn run_ended(&mut self, run_dir: &Path) {
        let mut failures = Vec::new();
        for o in &mut self.0 {
            if let Err(e) = o.run_ended(run_dir) {
                failures.push(e.to_string());
            }
        }
        // What observers queued while ending (notes on the curves drawn).
        failures.extend(std::mem::take(
            &mut *DEFERRED.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        for f in failures {
            for o in &mut self.0 {
                let _ = o.warning(&f);
            }
        }
    }
}
