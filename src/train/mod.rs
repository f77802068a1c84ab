//! Training: [`Trainer`] builds everything a [`Config`] names, trains epoch by epoch,
//! validates, writes checkpoints and resumes from a run directory, reporting through
//! [`crate::observe::Observer`]s. The model is hondo's own (`model.arch`) or yours
//! ([`ModelSpec::custom`]).
//!
//! Launched as a rank of a data-parallel job (torchrun, srun, `hondo train --nproc`: the
//! environment's `WORLD_SIZE`/`RANK` or Slurm's variables), [`Trainer::run`] trains as
//! PyTorch's `DistributedDataParallel` does, on [`crate::dist`]: sharded epochs, gradients
//! averaged during backward, exact metrics over all ranks, and observers and files on rank
//! 0 only (`docs/distributed.md`).
//!
//! Inside: `session.rs` assembles a run, `fit.rs` is the epoch loop, `step.rs` the step
//! loop, `checkpoints.rs` writes checkpoints, `ddp.rs` is the data-parallel side;
//! validation is [`crate::evaluate::evaluate`], the same pass as `hondo eval`.
//!
//! ```no_run
//! use hondo::config::Config;
//! use hondo::observe::{MetricsLog, TrainingCurves};
//! use hondo::train::Trainer;
//!
//! let mut config = Config::default(); // small CNN on the generated shapes set
//! config.train.epochs = 2;
//! let summary = Trainer::new(config)
//!     .observer(MetricsLog)
//!     .observer(TrainingCurves)
//!     .out("runs/example")
//!     .run()?;
//! println!("best {:?} in {}", summary.best, summary.run_dir.display());
//! # Ok::<(), hondo::Error>(())
//! ```

pub(crate) mod amp;
pub mod autotune;
mod checkpoints;
mod ddp;
pub(crate) mod ema;
mod fit;
mod lr_find;
pub(crate) mod mix;
pub mod optimizer;
pub mod param_groups;
pub mod schedule;
mod session;
pub mod signals;
mod step;

pub use lr_find::{lr_find, LrFind, LrFindOptions};
pub use session::to_channels_last;

use crate::config::Config;
use crate::metrics::EpochMetrics;
use crate::models::ModelSpec;
use crate::observe::{Observer, Observers};
use signals::StopSignal;
use std::path::PathBuf;
use std::time::Instant;

/// A training run to start (or resume): the config, the model, where it goes and who
/// watches it. Build it, then call [`Trainer::run`].
pub struct Trainer {
    config: Config,
    model: Option<ModelSpec>,
    out: Option<PathBuf>,
    overwrite: bool,
    force: bool,
    resume: Option<PathBuf>,
    stop: StopSignal,
    observers: Observers,
}

impl Trainer {
    /// A new run of `config` (hondo's model `config.model.arch`, no observers, a fresh
    /// directory under `checkpoint.dir`, no signal handling).
    pub fn new(config: Config) -> Trainer {
        Trainer {
            config,
            model: None,
            out: None,
            overwrite: false,
            force: false,
            resume: None,
            stop: StopSignal::none(),
            observers: Observers::default(),
        }
    }

    /// Trains this network instead of `model.arch` (see [`ModelSpec::custom`]).
    pub fn model(mut self, spec: ModelSpec) -> Trainer {
        self.model = Some(spec);
        self
    }

    /// Uses exactly this run directory (it must not exist, or be empty).
    pub fn out(mut self, dir: impl Into<PathBuf>) -> Trainer {
        self.out = Some(dir.into());
        self
    }

    /// Allows [`Trainer::out`] to name a run directory that is not empty: its contents
    /// are replaced.
    pub fn overwrite(mut self, yes: bool) -> Trainer {
        self.overwrite = yes;
        self
    }

    /// Starts even when the estimated memory of a training step (parameters, optimizer
    /// state, activations, loader queues) exceeds the machine's available memory.
    pub fn force(mut self, yes: bool) -> Trainer {
        self.force = yes;
        self
    }

    /// Continues the run in `dir` from its `last` checkpoint (the config should be the
    /// run's own `config.toml`, with any overrides).
    pub fn resume(mut self, dir: impl Into<PathBuf>) -> Trainer {
        self.resume = Some(dir.into());
        self
    }

    /// Stops at the next step when `stop` fires, after writing a resumable checkpoint.
    pub fn stop_signal(mut self, stop: StopSignal) -> Trainer {
        self.stop = stop;
        self
    }

    /// Adds an observer; observers are called in the order they were added.
    pub fn observer(mut self, o: impl Observer + 'static) -> Trainer {
        self.observers.0.push(Box::new(o));
        self
    }

    /// Adds a boxed observer.
    pub fn boxed_observer(mut self, o: Box<dyn Observer>) -> Trainer {
        self.observers.0.push(o);
        self
    }

    /// Trains. Errors name the file, key or tensor at fault; a checkpoint already written
    /// is never lost.
    ///
    /// A panic inside the run (in your model's `forward_t`, an observer, or hondo) is caught
    /// and returned as [`Error::Other`](crate::Error::Other) naming it; checkpoints
    /// already written are kept.
    ///
    /// Launched as a rank, it joins the data-parallel job first (see the module docs):
    /// observers added here run on rank 0 only, and `train.sync_batchnorm` applies to
    /// hondo's own BatchNorm layers (a custom model's layers normalise per process).
    pub fn run(self) -> crate::Result<Summary> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_inner())) {
            Ok(result) => result,
            Err(payload) => Err(crate::Error::Other(format!(
                "training stopped: a panic in the model, an observer or hondo: {}; \
                 checkpoints already written are kept",
                crate::error::panic_message(payload.as_ref())
            ))),
        }
    }

    fn run_inner(mut self) -> crate::Result<Summary> {
        let started = Instant::now();
        let ddp = self.join()?;
        let _sync_bn = SyncBatchNorm::set(ddp.as_ref(), self.config.train.sync_batchnorm);
        let resumed = self.resume.is_some();
        let (mut s, pos) = session::prepare(&mut self, session::RunDir::Create, ddp)?;
        let mut observers = std::mem::take(&mut s.observers);
        let info = s.run_info(&pos, resumed);
        observers.each("run_started", |o| o.run_started(&info))?;
        // What starting found (a mended metrics log) is said now, not after the first step.
        observers.flush_deferred()?;
        s.observers = observers;
        Ok(fit::fit(s, pos, &self.stop, started)?)
    }
}

impl Trainer {
    /// Joins the data-parallel job the environment describes (torchrun, srun, `hondo
    /// train --nproc`), if any: checks that every rank has the same config, and in a
    /// restarted attempt (torchrun `--max-restarts`) continues the earlier attempt's run
    /// directory, from its `last` checkpoint when it has one. Observers are rank 0's only.
    fn join(&mut self) -> anyhow::Result<Option<ddp::Ddp>> {
        let world = match crate::dist::World::from_env() {
            Err(e) => anyhow::bail!("the launch environment: {e}"),
            Ok(None) => return Ok(None),
            Ok(Some(w)) => w,
        };
        let t = &self.config.train;
        let d = ddp::Ddp::join(world, t.dist_timeout_s, t.dist_bucket_mib)?;
        d.check_same_config(&self.config.to_toml())?;
        // Rank 0 decides where a restarted attempt goes; every rank follows.
        let mut decision = String::new();
        if let (Some(dir), None) = (d.earlier_run_dir()?, &self.resume) {
            let last = std::path::Path::new(&dir).join(crate::checkpoint::LAST);
            let how = if last.is_file() { "resume" } else { "fresh" };
            decision = format!("{how}\n{dir}");
        }
        let decision = d.share(&decision)?;
        match decision.split_once('\n') {
            Some(("resume", dir)) => {
                self.resume = Some(dir.into());
                self.out = None;
                self.observers.message(&format!(
                    "restart {} of this job: resuming {dir}",
                    d.world().restart_count
                ))?;
            }
            Some((_, dir)) => {
                self.out = Some(dir.into());
                self.overwrite = true;
            }
            None => {}
        }
        if !d.is_main() {
            self.observers = Observers::default();
        }
        Ok(Some(d))
    }
}

/// `train.sync_batchnorm` for the length of a run: hondo's BatchNorm layers all-reduce
/// their statistics over the job's group while it lives.
struct SyncBatchNorm(bool);

impl SyncBatchNorm {
    fn set(ddp: Option<&ddp::Ddp>, on: bool) -> SyncBatchNorm {
        match ddp {
            Some(d) if on => {
                crate::dist::set_sync_batchnorm(Some(d.group().clone()));
                SyncBatchNorm(true)
            }
            _ => SyncBatchNorm(false),
        }
    }
}

impl Drop for SyncBatchNorm {
    fn drop(&mut self) {
        if self.0 {
            crate::dist::set_sync_batchnorm(None);
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// All epochs done.
    Finished,
    /// Early stopping: no improvement for `patience` epochs.
    EarlyStopped,
    /// Stopped by a signal after writing a resumable checkpoint; the exit status to use.
    Interrupted(i32),
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// How it ended.
    pub outcome: Outcome,
    /// Epochs finished (including those of earlier attempts of a resumed run).
    pub epochs_done: usize,
    /// The last finished epoch's metrics (of this attempt).
    pub last: Option<EpochMetrics>,
    /// The best monitored value and its epoch (1-based).
    pub best: Option<(f64, usize)>,
    /// The monitored metric's name.
    pub monitor: String,
    /// Wall time of this attempt.
    pub seconds: f64,
    /// This process's rank in a data-parallel job (0 otherwise): only rank 0 wrote.
    pub rank: usize,
    /// Processes that trained (1 unless data-parallel).
    pub world_size: usize,
}
