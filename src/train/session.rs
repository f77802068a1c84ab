//! Assembling a run: everything the config names (device, data, model, pretrained weights,
//! optimizer, schedule, EMA, loss scaling, run directory), restored from a checkpoint when
//! resuming. Nothing is written before all of it is built.

use super::amp::{self, Scaler};
use super::autotune::{self, Layout};
use super::ddp::Ddp;
use super::ema::Ema;
use super::optimizer::Optimizer;
use super::param_groups;
use super::schedule::Schedule;
use super::Trainer;
use crate::checkpoint::{self, atomic};
use crate::config::{Auto, Config, Precision};
use crate::data::loader::{Loader, LoaderOptions, Shard};
use crate::data::normalize::{Normalize, PixelNorm};
use crate::data::{self, seed};
use crate::device;
use crate::models::{self, ModelSpec};
use crate::observe::Observers;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::nn::{ModuleT, VarStore};
use tch::Device;

use super::mix::Mixing;

/// Position and history that a checkpoint carries forward.
#[derive(Debug, Clone, Default)]
pub(super) struct Position {
    pub epoch: usize,
    pub batch: usize,
    pub step: usize,
    pub best: Option<(f64, usize)>,
    pub without_improvement: usize,
    pub metrics: BTreeMap<String, f64>,
    /// The last finished epoch's `metrics.jsonl` line.
    pub last_epoch: Option<crate::metrics::EpochMetrics>,
}

/// Everything a run needs, built from the config.
pub(super) struct Session {
    pub cfg: Config,
    pub spec: ModelSpec,
    pub run_dir: PathBuf,
    pub device: Device,
    pub vs: VarStore,
    pub model: Box<dyn ModuleT>,
    pub num_classes: i64,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub train: Loader,
    pub val: Loader,
    pub normalize: Normalize,
    pub classes: Vec<String>,
    pub steps_per_epoch: usize,
    pub observers: Observers,
    /// The weights' moving average (`train.ema_decay` > 0).
    pub ema: Option<Ema>,
    /// fp16 loss scaling.
    pub scaler: Option<Scaler>,
    pub mixing: Mixing,
    /// Optimizer steps between reads of the device's numbers.
    pub sync_every: usize,
    /// The data-parallel job this process is a rank of.
    pub ddp: Option<Ddp>,
    /// The memory format, and why ([`autotune`]).
    pub layout: Layout,
    /// When to put the CPU allocator's buffers on huge pages.
    pub huge_pages: crate::allocator::HugePagePlan,
    /// Whether the model has BatchNorm layers (a batch of one image is not trained on).
    pub batch_norm: bool,
}

impl Session {
    /// Whether this process writes (the only one, or rank 0 of a data-parallel job).
    pub(super) fn is_main(&self) -> bool {
        self.ddp.as_ref().is_none_or(Ddp::is_main)
    }
}

/// Whether [`prepare`] creates the run directory (training) or touches nothing on disk
/// (the LR range test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunDir {
    Create,
    None,
}

/// Builds the run `t` describes.
///
/// In a data-parallel job (`ddp`), every rank builds the same run; only rank 0 creates the
/// run directory and writes to it, the other ranks learn its path from rank 0. Rank 0's
/// weights (after pretrained weights and a resume are loaded) overwrite every rank's.
pub(super) fn prepare(
    t: &mut Trainer,
    dir: RunDir,
    mut ddp: Option<Ddp>,
) -> anyhow::Result<(Session, Position)> {
    let main = ddp.as_ref().is_none_or(Ddp::is_main);
    let world = ddp.as_ref().map_or(1, Ddp::size);
    let mut cfg = t.config.clone();
    // Named weights (`torchvision:...`, `hf:...`): the cached file, and its preprocessing
    // for the data keys the config leaves at their defaults. A resumed run has its
    // effective config already.
    let mut hub_note = None;
    let pretrained_file = match cfg.model.pretrained.clone() {
        Some(p) if crate::weights::hub::is_name(&p) && t.resume.is_none() => {
            let r = crate::weights::hub::resolve(&p, cfg.model.check_hash)
                .map_err(crate::weights::WeightsError::from)
                .with_context(|| format!("model.pretrained = {p:?}"))?;
            if t.model.is_none() && r.arch != cfg.model.arch {
                bail!(
                    "model.pretrained = {p:?} holds {} weights but model.arch = {}",
                    r.arch.name(),
                    cfg.model.arch.name()
                );
            }
            if let Some(pre) = r.preprocessing {
                hub_note = apply_preprocessing(&mut cfg, &pre);
                // The cache's file may claim anything: the ranges hold for it too.
                crate::config::check(&cfg, &format!("the preprocessing of {p:?}"))?;
            }
            Some(r.path)
        }
        Some(p) => Some(PathBuf::from(p)),
        None => None,
    };
    let spec = t
        .model
        .clone()
        .unwrap_or_else(|| ModelSpec::builtin(&cfg.model));
    spec.check_name().map_err(anyhow::Error::msg)?;
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    let device = cfg
        .train
        .device
        .resolve()
        .map_err(|e| anyhow::Error::from(e).context("train.device"))?;
    if let (Some(d), true) = (&ddp, device.is_cuda()) {
        bail!(
            "train.device = {}: data-parallel training (rank {} of {}) runs on CPU tensors \
             with Gloo; the NCCL backend for CUDA is not built yet (set train.device = \"cpu\")",
            device::name(device),
            d.rank(),
            d.size()
        );
    }
    crate::budget::check(&cfg, device.is_cuda(), t.force)?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }

    // Resume: the checkpoint must exist and be readable before anything is written.
    // The `last` checkpoint a resume reads (empty for a new run), named in its errors.
    let last_file = t
        .resume
        .as_deref()
        .map(|d| d.join(checkpoint::LAST))
        .unwrap_or_default();
    let resume = match &t.resume {
        Some(dir) => {
            if std::fs::symlink_metadata(&last_file).is_err() {
                bail!(
                    "{} is not a hondo run directory: {} not found",
                    dir.display(),
                    last_file.display()
                );
            }
            Some(checkpoint::read(&last_file)?)
        }
        None => None,
    };

    let splits = data::build(&cfg.data)?;
    let classes = splits.train.classes().to_vec();
    if splits.val.classes() != classes.as_slice() {
        bail!(
            "the validation classes {:?} differ from the training classes {:?}",
            splits.val.classes(),
            classes
        );
    }
    if splits.train.is_empty() || splits.val.is_empty() {
        bail!("the training or validation set is empty");
    }
    let num_classes = match cfg.model.num_classes {
        None => classes.len(),
        Some(n) if n < classes.len() => bail!(
            "model.num_classes = {n} but the data has {} classes",
            classes.len()
        ),
        Some(n) => n,
    } as i64;

    // Before the seeded initialisation: the timing draws random numbers of its own.
    let mut layout = autotune::choose_layout(&cfg, &spec, num_classes, device, main);
    if let (Some(d), Auto::Auto) = (&ddp, cfg.train.channels_last) {
        layout.channels_last = d.share(if layout.channels_last { "1" } else { "0" })? == "1";
    }

    tch::manual_seed(seed::combine(&[cfg.train.seed, seed::tag::MODEL_INIT]) as i64 & i64::MAX);
    let vs = VarStore::new(device);
    let model = spec.build(&vs.root(), num_classes);
    models::check_unique_names(&vs)?;
    // BatchNorm in training needs two values per channel: a batch of one image whose
    // feature map shrinks to 1x1 would give NaN running variances (PyTorch refuses it).
    let batch_norm = vs.variables().keys().any(|k| k.ends_with("running_var"));
    if batch_norm {
        let world = ddp.as_ref().map_or(1, |d| d.size());
        if cfg.train.batch_size < 2 {
            bail!(
                "train.batch_size = {}: the model's BatchNorm layers cannot train on one image \
                 per batch; use 2 or more",
                cfg.train.batch_size
            );
        }
        if splits.train.len().div_ceil(world) < 2 {
            bail!(
                "the training set has {} image(s) for {world} process(es): the model's \
                 BatchNorm layers need at least 2 per process",
                splits.train.len()
            );
        }
    }

    let mut observers = std::mem::take(&mut t.observers);
    if cfg.checkpoint.tensorboard && main {
        observers.0.push(Box::new(crate::observe::TensorBoard::new(
            cfg.checkpoint.tensorboard_every_steps,
        )));
    }
    if let Some(note) = hub_note {
        observers.message(&note)?;
    }
    if let (Some(pretrained), None) = (&pretrained_file, &resume) {
        let line = load_pretrained(&vs, &spec, num_classes, pretrained, &cfg)?;
        observers.message(&line)?;
    }
    if layout.channels_last {
        to_channels_last(&vs);
    }

    let mut pos = Position::default();
    let mut resumed_world = 1;
    if let Some(ckpt) = &resume {
        resumed_world = ckpt.meta.world_size;
        if ckpt.meta.arch != spec.name() {
            return Err(
                crate::Error::Checkpoint(checkpoint::CheckpointError::OtherModel {
                    path: last_file.clone(),
                    found: ckpt.meta.arch.clone(),
                    expected: spec.name().to_string(),
                })
                .into(),
            );
        }
        checkpoint::copy_exact(&vs, &ckpt.model).context("loading the checkpoint's weights")?;
        pos = Position {
            epoch: ckpt.meta.epoch,
            batch: ckpt.meta.batch,
            step: ckpt.meta.step,
            best: ckpt.meta.best,
            without_improvement: ckpt.meta.epochs_without_improvement,
            metrics: ckpt.meta.metrics.clone(),
            last_epoch: ckpt.meta.last_epoch.clone(),
        };
    }
    let frozen = param_groups::apply_freeze(&vs, &cfg.model.freeze);
    let unmatched = param_groups::unmatched_prefixes(&vs, &cfg.model.freeze);
    if !unmatched.is_empty() {
        bail!(
            "model.freeze: {:?} match no parameter of {}",
            unmatched,
            spec.name()
        );
    }
    if frozen > 0 {
        observers.message(&format!(
            "frozen: {frozen} tensors under {:?}",
            cfg.model.freeze
        ))?;
    }
    let mut optimizer = Optimizer::new(&cfg.optimizer, param_groups::build(&vs, &cfg.optimizer));
    let mut scaler = (cfg.train.precision == Precision::Fp16).then(|| Scaler::new(device));
    let ema =
        (cfg.train.ema_decay > 0.0).then(|| Ema::new(&vs, &spec, num_classes, cfg.train.ema_decay));
    if let Some(ckpt) = resume {
        let file = || format!("restoring the optimizer state from {}", last_file.display());
        let state = match &mut scaler {
            Some(scaler) => scaler.load_state(ckpt.optimizer).with_context(file)?,
            None => amp::without_scaler(ckpt.optimizer),
        };
        optimizer.load_state(state).with_context(file)?;
        // A checkpoint without EMA (turned on at resume) starts the average at the weights.
        if let (Some(ema), false) = (&ema, ckpt.ema.is_empty()) {
            checkpoint::copy_exact(&ema.vs, &ckpt.ema)
                .context("loading the checkpoint's EMA weights")?;
        }
    }
    if let Some(d) = &ddp {
        // DDP's start: rank 0's parameters and buffers (and EMA) everywhere.
        d.broadcast_vars(&vs)?;
        if let Some(ema) = &ema {
            d.broadcast_vars(&ema.vs)?;
        }
    }
    if let Some(d) = &mut ddp {
        d.attach(&vs)?;
    }
    let mixing = Mixing {
        mixup_alpha: cfg.train.mixup_alpha,
        cutmix_alpha: cfg.train.cutmix_alpha,
        label_smoothing: cfg.train.label_smoothing,
        num_classes,
    };
    let sync_every = match cfg.train.sync_every {
        0 if device.is_cuda() => 20,
        0 => 1,
        n => n,
    };

    // Each rank's share of an epoch: padded in training (every rank steps as often),
    // exact in validation (every image counted once).
    let shard = |pad: bool| {
        ddp.as_ref().map(|d| Shard {
            rank: d.rank(),
            world: d.size(),
            pad,
        })
    };
    let loader_opts = |shuffle: bool| LoaderOptions {
        batch_size: cfg.train.batch_size,
        shuffle,
        drop_last: false,
        seed: cfg.train.seed,
        workers: cfg.data.workers,
        prefetch: cfg.data.prefetch,
        fail_on_error: cfg.data.on_error == crate::config::OnError::Fail,
        pin_memory: device.is_cuda(),
        shard: shard(shuffle),
        // On the CPU the workers normalise into the model's layout (see `data::normalize`).
        normalize: (device == Device::Cpu)
            .then(|| PixelNorm::new(cfg.data.mean, cfg.data.std, layout.channels_last)),
    };
    let train = Loader::new(splits.train, loader_opts(true))?;
    let val = Loader::new(splits.val, loader_opts(false))?;
    let steps_per_epoch = train.num_batches().div_ceil(cfg.train.accumulate);
    if t.resume.is_some() && resumed_world == world && pos.batch > train.num_batches() {
        bail!(
            "{}: the checkpoint says {} batches of epoch {} are done, but an epoch has {} \
             (with train.batch_size = {} on {world} process(es))",
            last_file.display(),
            pos.batch,
            pos.epoch + 1,
            train.num_batches(),
            cfg.train.batch_size
        );
    }
    if t.resume.is_some() && resumed_world != world {
        // `batch` counted the batches of each of `resumed_world` processes: continue after
        // as many images (the same ones: a rank's share interleaves the epoch's order), at
        // an accumulation boundary; the step count (and so the schedule) is this world's.
        let acc = cfg.train.accumulate;
        let images = pos.batch * cfg.train.batch_size * resumed_world;
        let mut batch = (images / (cfg.train.batch_size * world)).min(train.num_batches());
        batch -= batch % acc;
        observers.message(&format!(
            "resuming a run of {resumed_world} process(es) with {world}: epoch {}, batch {} \
             becomes batch {batch}",
            pos.epoch + 1,
            pos.batch
        ))?;
        pos.batch = batch;
        pos.step = pos.epoch * steps_per_epoch + batch / acc;
    }
    let schedule = Schedule::new(&cfg.schedule, steps_per_epoch, cfg.train.epochs);
    let normalize = Normalize::new(cfg.data.mean, cfg.data.std, device, layout.channels_last);

    let run_dir = match (&t.resume, &t.out) {
        _ if dir == RunDir::None || !main => PathBuf::new(),
        (Some(dir), _) => dir.clone(),
        (None, Some(out)) => crate::run_dir::create_exact(out, t.overwrite)?,
        (None, None) => {
            let name = cfg
                .checkpoint
                .name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", spec.name(), cfg.data.kind.name()));
            crate::run_dir::create_fresh(Path::new(&cfg.checkpoint.dir), &name)?
        }
    };
    if dir == RunDir::Create && main {
        crate::run_dir::probe_writable(&run_dir)?;
        atomic::write(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())
            .with_context(|| format!("cannot write {}", run_dir.join("config.toml").display()))?;
    }
    let run_dir = match &ddp {
        Some(d) => {
            let shared = PathBuf::from(d.share(&run_dir.to_string_lossy())?);
            d.remember_run_dir(&shared.to_string_lossy())?;
            shared
        }
        None => run_dir,
    };

    Ok((
        Session {
            cfg,
            spec,
            run_dir,
            device,
            vs,
            model,
            num_classes,
            optimizer,
            schedule,
            train,
            val,
            normalize,
            classes,
            steps_per_epoch,
            observers,
            ema,
            scaler,
            mixing,
            sync_every,
            ddp,
            layout,
            huge_pages: Default::default(),
            batch_norm,
        },
        pos,
    ))
}

/// Takes named weights' preprocessing for the data keys still at their defaults (the
/// config did not set them); returns the line that says which, if any.
fn apply_preprocessing(
    cfg: &mut Config,
    pre: &crate::weights::hub::Preprocessing,
) -> Option<String> {
    let default = crate::config::DataConfig::default();
    let d = &mut cfg.data;
    let mut taken = Vec::new();
    take(&mut d.mean, default.mean, pre.mean, "data.mean", &mut taken);
    take(&mut d.std, default.std, pre.std, "data.std", &mut taken);
    take(
        &mut d.image_size,
        default.image_size,
        pre.image_size,
        "data.image_size",
        &mut taken,
    );
    take(
        &mut d.crop_fraction,
        default.crop_fraction,
        pre.crop_fraction,
        "data.crop_fraction",
        &mut taken,
    );
    (!taken.is_empty()).then(|| {
        format!(
            "preprocessing of {}: {}",
            cfg.model.pretrained.as_deref().unwrap_or_default(),
            taken.join(", ")
        )
    })
}

/// Sets `field` to `value` when it is still at its `default`, saying so in `taken`.
fn take<T: PartialEq + Copy + std::fmt::Debug>(
    field: &mut T,
    default: T,
    value: T,
    key: &str,
    taken: &mut Vec<String>,
) {
    if *field == default && *field != value {
        *field = value;
        taken.push(format!("{key} = {value:?}"));
    }
}

/// Loads `model.pretrained` into the fresh model; a head of another class count is left
/// freshly initialised. Returns the line that says what was loaded.
fn load_pretrained(
    vs: &VarStore,
    spec: &ModelSpec,
    num_classes: i64,
    path: &Path,
    cfg: &Config,
) -> anyhow::Result<String> {
    let report = crate::weights::load_pretrained_ema(
        vs,
        path,
        spec.head(),
        cfg.model.strict,
        cfg.model.pretrained_ema,
    )
    .with_context(|| format!("model.pretrained = {:?}", path.display().to_string()))?;
    let head = if report.head_reinitialised.is_empty() {
        String::new()
    } else {
        format!(" (the file's head does not fit {num_classes} classes)")
    };
    Ok(format!(
        "pretrained {}: {}{head}",
        path.display(),
        report.summary()
    ))
}

/// Re-lays 4-d weights in channels-last (NHWC) memory order; shapes are unchanged. The
/// permute-copy-permute gives exactly `contiguous(memory_format=channels_last)` strides
/// (tested), which convolutions keep for their outputs and gradients.
pub fn to_channels_last(vs: &VarStore) {
    tch::no_grad(|| {
        for (_, mut t) in vs.variables() {
            if t.dim() == 4 {
                let cl = t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
                t.set_data(&cl);
            }
        }
    });
}

impl Session {
    /// The run's first report to the observers.
    pub(super) fn run_info<'a>(
        &'a self,
        pos: &'a Position,
        resumed: bool,
    ) -> crate::observe::RunInfo<'a> {
        crate::observe::RunInfo {
            run_dir: &self.run_dir,
            model: self.spec.name(),
            data: self.cfg.data.kind.name(),
            classes: &self.classes,
            train_images: self.train.dataset().len(),
            val_images: self.val.dataset().len(),
            epochs: self.cfg.train.epochs,
            steps_per_epoch: self.steps_per_epoch,
            device: device::name(self.device),
            precision: self.cfg.train.precision.name(),
            channels_last: self.layout.channels_last,
            layout_reason: &self.layout.reason,
            resumed_at: resumed.then_some((pos.epoch, pos.batch)),
            last_epoch: pos.last_epoch.as_ref().filter(|_| resumed),
            step: pos.step,
            data_parallel: self.ddp.as_ref().map(|d| crate::observe::DataParallel {
                world_size: d.size(),
                backend: "gloo",
                global_batch: d.size() * self.cfg.train.batch_size * self.cfg.train.accumulate,
            }),
        }
    }
}
