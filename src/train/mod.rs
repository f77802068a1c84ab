//! The training loop: builds everything a config names, trains epoch by epoch, validates,
//! writes checkpoints and metrics, and resumes from a run directory.

pub mod amp;
pub mod ema;
pub mod metrics;
pub mod mix;
pub mod optimizer;
pub mod param_groups;
pub mod progress;
pub mod schedule;
pub mod shim;
pub mod signals;

use crate::checkpoint::{self, atomic, policy, Meta};
use crate::config::{Config, NonFinite, Precision, TrainConfig};
use crate::data::loader::{LoadError, Loader, LoaderOptions};
use crate::data::normalize::Normalize;
use crate::data::{self, seed};
use crate::device::{self, DeviceSpec};
use crate::models::{self, Model};
use amp::Scaler;
use anyhow::{bail, Context};
use ema::Ema;
use metrics::{EpochMetrics, Running};
use mix::Mixing;
use optimizer::Optimizer;
use progress::Progress;
use schedule::Schedule;
use signals::StopSignal;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Reduction, Tensor};

/// How to start a run.
pub struct TrainOptions {
    /// The effective configuration (file + overrides).
    pub config: Config,
    /// Use exactly this run directory.
    pub out: Option<PathBuf>,
    /// Allow `out` to be a non-empty directory.
    pub overwrite: bool,
    /// Continue the run in this directory (its `last` checkpoint).
    pub resume: Option<PathBuf>,
    /// No progress output (warnings still show).
    pub quiet: bool,
    /// Ctrl-C / SIGTERM flag.
    pub stop: StopSignal,
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
    pub run_dir: PathBuf,
    pub outcome: Outcome,
    pub epochs_done: usize,
    pub last: Option<EpochMetrics>,
    pub best: Option<(f64, usize)>,
    pub monitor: String,
    pub seconds: f64,
}

/// Position and history that a checkpoint carries forward.
#[derive(Debug, Clone, Default)]
struct Position {
    epoch: usize,
    batch: usize,
    step: usize,
    best: Option<(f64, usize)>,
    without_improvement: usize,
    metrics: std::collections::BTreeMap<String, f64>,
}

/// Everything a run needs, built from the config.
struct Session {
    cfg: Config,
    run_dir: PathBuf,
    device: Device,
    vs: VarStore,
    model: Model,
    optimizer: Optimizer,
    schedule: Schedule,
    train: Loader,
    val: Loader,
    normalize: Normalize,
    classes: Vec<String>,
    steps_per_epoch: usize,
    progress: Progress,
    /// The weights' moving average (`train.ema_decay` > 0).
    ema: Option<Ema>,
    /// fp16 loss scaling.
    scaler: Option<Scaler>,
    mixing: Mixing,
    /// Optimizer steps between reads of the device's numbers.
    sync_every: usize,
}

/// Trains as `opts` says. Errors are reported with the file, key or tensor at fault.
pub fn run(opts: TrainOptions) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (mut s, mut pos) = prepare(&opts)?;
    let cfg = s.cfg.clone();
    let monitor = cfg.checkpoint.monitor.clone();
    let mut last = None;
    let mut outcome = Outcome::Finished;
    s.progress.println(&format!(
        "run {}: {} on {} ({} classes, {} train / {} val images), {} epochs of {} steps, device {}, {}{}",
        s.run_dir.display(),
        cfg.model.arch.name(),
        format!("{:?}", cfg.data.kind).to_lowercase(),
        s.classes.len(),
        s.train.dataset().len(),
        s.val.dataset().len(),
        cfg.train.epochs,
        s.steps_per_epoch,
        device::name(s.device),
        format!("{:?}", cfg.train.precision).to_lowercase(),
        if cfg.train.channels_last {
            ", channels-last"
        } else {
            ""
        },
    ));

    while pos.epoch < cfg.train.epochs {
        let epoch = pos.epoch;
        if cfg.model.unfreeze_at_epoch > 0
            && epoch + 1 >= cfg.model.unfreeze_at_epoch
            && !cfg.model.freeze.is_empty()
        {
            let n = param_groups::apply_freeze(&s.vs, &[]);
            debug_assert_eq!(n, 0);
            if epoch + 1 == cfg.model.unfreeze_at_epoch && pos.batch == 0 {
                s.progress.println(&format!(
                    "epoch {}: unfreezing {:?}",
                    epoch + 1,
                    cfg.model.freeze
                ));
            }
        }
        let t0 = Instant::now();
        let trained = train_epoch(&mut s, &mut pos, &opts.stop)?;
        let (train_stats, skipped_train, images) = match trained {
            EpochEnd::Done {
                stats,
                skipped,
                images,
            } => (stats, skipped, images),
            EpochEnd::Interrupted(code) => {
                save(&s, &pos, &[checkpoint::LAST])?;
                s.progress.finish_epoch();
                eprintln!(
                    "interrupted at epoch {} batch {}: checkpoint written to {}\nresume with: hondo train --resume {}",
                    epoch + 1,
                    pos.batch,
                    s.run_dir.join(checkpoint::LAST).display(),
                    s.run_dir.display()
                );
                outcome = Outcome::Interrupted(code);
                break;
            }
        };
        let train_seconds = t0.elapsed().as_secs_f64();
        let precision = cfg.train.precision;
        let (val_stats, skipped_val) = evaluate(
            &s.model,
            &s.val,
            &s.normalize,
            precision,
            epoch,
            &s.progress,
        )?;
        let ema_stats = match &s.ema {
            Some(e) => Some(
                evaluate(
                    &e.model,
                    &s.val,
                    &s.normalize,
                    precision,
                    epoch,
                    &s.progress,
                )?
                .0,
            ),
            None => None,
        };
        s.progress.finish_epoch();
        let m = EpochMetrics {
            epoch: epoch + 1,
            step: pos.step,
            train_loss: train_stats.loss(),
            train_acc: train_stats.acc(),
            val_loss: val_stats.loss(),
            val_acc: val_stats.acc(),
            lr: cfg.optimizer.lr * s.schedule.factor(pos.step.saturating_sub(1)),
            images_per_sec: images as f64 / train_seconds,
            seconds: t0.elapsed().as_secs_f64(),
            skipped: skipped_train + skipped_val,
            val_loss_ema: ema_stats.map(|e| e.loss()),
            val_acc_ema: ema_stats.map(|e| e.acc()),
        };
        let value = m.get(&monitor).expect("validated monitor");
        let kept = checkpoint::list_kept(&s.run_dir, &monitor);
        let actions = policy::plan(
            epoch + 1,
            value,
            cfg.checkpoint.mode,
            pos.best.map(|b| b.0),
            &kept,
            cfg.checkpoint.keep_top_k,
        );
        if actions.contains(&policy::Action::Best) {
            pos.best = Some((value, epoch + 1));
            pos.without_improvement = 0;
        } else {
            pos.without_improvement += 1;
        }
        pos.epoch += 1;
        pos.batch = 0;
        pos.metrics = [
            ("val_acc", Some(m.val_acc)),
            ("val_loss", Some(m.val_loss)),
            ("train_acc", Some(m.train_acc)),
            ("train_loss", Some(m.train_loss)),
            ("val_acc_ema", m.val_acc_ema),
            ("val_loss_ema", m.val_loss_ema),
        ]
        .into_iter()
        // JSON has no NaN: a metric that is not finite (all steps skipped) is left out.
        .filter_map(|(k, v)| Some((k.to_string(), v.filter(|v| v.is_finite())?)))
        .collect();
        apply_actions(&s, &pos, &actions)?;
        metrics::append(&s.run_dir.join("metrics.jsonl"), &m).with_context(|| {
            format!(
                "cannot append to {}",
                s.run_dir.join("metrics.jsonl").display()
            )
        })?;
        s.progress.println(&format!(
            "epoch {}/{}: train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}%{} | lr {:.3e} | {:.0} img/s | {:.1}s{}{}",
            epoch + 1,
            cfg.train.epochs,
            m.train_loss,
            m.train_acc * 100.0,
            m.val_loss,
            m.val_acc * 100.0,
            match m.val_acc_ema {
                Some(a) => format!(" (ema {:.2}%)", a * 100.0),
                None => String::new(),
            },
            m.lr,
            m.images_per_sec,
            m.seconds,
            if m.skipped > 0 { format!(" | {} files skipped", m.skipped) } else { String::new() },
            if actions.contains(&policy::Action::Best) { " *" } else { "" },
        ));
        last = Some(m);
        if cfg.train.early_stop_patience > 0
            && pos.without_improvement >= cfg.train.early_stop_patience
        {
            s.progress.println(&format!(
                "early stopping: {monitor} has not improved for {} epochs",
                pos.without_improvement
            ));
            outcome = Outcome::EarlyStopped;
            break;
        }
        if let Some(code) = opts.stop.pending() {
            eprintln!(
                "interrupted after epoch {}: resume with: hondo train --resume {}",
                epoch + 1,
                s.run_dir.display()
            );
            outcome = Outcome::Interrupted(code);
            break;
        }
    }
    if let Err(e) = crate::plot::training_curves(&s.run_dir) {
        s.progress.warn(&format!("plot: {e:#}"));
    }
    Ok(Summary {
        run_dir: s.run_dir.clone(),
        outcome,
        epochs_done: pos.epoch,
        last,
        best: pos.best,
        monitor,
        seconds: started.elapsed().as_secs_f64(),
    })
}

enum EpochEnd {
    Done {
        stats: Running,
        skipped: usize,
        images: usize,
    },
    Interrupted(i32),
}

/// A micro-batch whose numbers are still on the device.
struct Pending {
    /// The optimizer step it belongs to (1-based) and its batch in the epoch (1-based).
    step: usize,
    batch: usize,
    n: i64,
    /// The learning rate, when this micro-batch ended an optimizer step.
    lr: Option<f64>,
    /// float `[3]`: mean loss, correct predictions, 1 if the loss was NaN or infinite.
    values: Tensor,
}

/// What an epoch has counted so far on the host.
struct EpochCount {
    stats: Running,
    images: usize,
    started: Instant,
}

fn train_epoch(s: &mut Session, pos: &mut Position, stop: &StopSignal) -> anyhow::Result<EpochEnd> {
    let cfg = &s.cfg;
    let epoch = pos.epoch;
    let accumulate = cfg.train.accumulate;
    let n_batches = s.train.num_batches();
    s.progress
        .start_epoch(epoch, cfg.train.epochs, n_batches, pos.batch);
    let mut count = EpochCount {
        stats: Running::default(),
        images: 0,
        started: Instant::now(),
    };
    let mut skipped = 0;
    let mut pending: Vec<Pending> = Vec::with_capacity(s.sync_every * accumulate);
    // Whether any loss of the accumulation window was NaN or infinite (float scalar).
    let mut window_bad: Option<Tensor> = None;
    let mut b = pos.batch;
    for batch in s.train.epoch(epoch, pos.batch) {
        let batch = batch.map_err(LoadError::in_training)?;
        for e in &batch.skipped {
            s.progress.warn(&format!("skipped {e}"));
        }
        skipped += batch.skipped.len();
        b += 1;
        let n = batch.labels.size()[0];
        if n == 0 {
            continue;
        }
        // Every random draw of the step (dropout, mixing) derives from the step number, so
        // a resumed run repeats it exactly.
        tch::manual_seed(
            seed::combine(&[cfg.train.seed, 0x57e9, pos.step as u64, b as u64]) as i64 & i64::MAX,
        );
        let x = s.normalize.apply(&batch.images);
        let y = batch.labels.to_device(s.device);
        let (x, soft_targets) = if s.mixing.enabled() {
            let seed = seed::combine(&[cfg.train.seed, 0x31c5, pos.step as u64, b as u64]);
            let (x, t) = s.mixing.apply(x, &y, seed);
            (x, Some(t))
        } else {
            (x, None)
        };
        let (logits, loss) = {
            let _autocast = amp::autocast(cfg.train.precision, s.device)?;
            let logits = s.model.forward_t(&x, true);
            let loss = match &soft_targets {
                Some(t) => mix::soft_cross_entropy(&logits, t),
                None => logits.cross_entropy_loss::<Tensor>(
                    &y,
                    None,
                    Reduction::Mean,
                    -100,
                    cfg.train.label_smoothing,
                ),
            };
            (logits, loss)
        };
        let bad = loss.isfinite().logical_not().to_kind(Kind::Float);
        let scaled = loss.shallow_clone() / accumulate as f64;
        match &s.scaler {
            Some(scaler) => scaler.scale(&scaled).backward(),
            None => scaled.backward(),
        }
        let correct = logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Float);
        pending.push(Pending {
            step: pos.step + 1,
            batch: b,
            n,
            lr: None,
            values: Tensor::stack(
                &[
                    loss.detach().to_kind(Kind::Float),
                    correct,
                    bad.shallow_clone(),
                ],
                0,
            ),
        });
        window_bad = Some(match window_bad {
            None => bad,
            Some(w) => w.maximum(&bad),
        });
        let last_of_epoch = b == n_batches;
        if b % accumulate == 0 || last_of_epoch {
            let grads = s.optimizer.grads();
            // Non-zero skips the update on the device: a NaN loss (policy applied when the
            // numbers are read back) or, with fp16, overflowing gradients.
            let mut skip = window_bad.take().expect("a micro-batch ran");
            if let Some(scaler) = &mut s.scaler {
                skip = skip.maximum(scaler.unscale(&grads)?);
            }
            if cfg.train.grad_clip > 0.0 {
                let _norm = shim::clip_grad_norm(&grads, cfg.train.grad_clip)?;
            }
            let lr = cfg.optimizer.lr * s.schedule.factor(pos.step);
            s.optimizer.step(lr, Some(&skip))?;
            if let Some(scaler) = &mut s.scaler {
                scaler.update();
            }
            if let Some(ema) = &s.ema {
                ema.update()?;
            }
            drop(grads);
            s.optimizer.zero_grad()?;
            pos.step += 1;
            pos.batch = b;
            if let Some(p) = pending.last_mut() {
                p.lr = Some(lr);
            }
            let save_now = cfg.checkpoint.every_steps > 0
                && pos.step % cfg.checkpoint.every_steps == 0
                && !last_of_epoch;
            let stop_now = if last_of_epoch { None } else { stop.pending() };
            if last_of_epoch || save_now || stop_now.is_some() || pos.step % s.sync_every == 0 {
                // Before anything is saved: a NaN never reaches a checkpoint.
                read_back(
                    &mut pending,
                    &mut count,
                    &cfg.train,
                    epoch,
                    &s.run_dir,
                    &s.progress,
                )?;
            }
            if save_now {
                save(s, pos, &[checkpoint::LAST])?;
            }
            if let Some(code) = stop_now {
                return Ok(EpochEnd::Interrupted(code));
            }
        }
    }
    read_back(
        &mut pending,
        &mut count,
        &s.cfg.train,
        epoch,
        &s.run_dir,
        &s.progress,
    )?;
    Ok(EpochEnd::Done {
        stats: count.stats,
        skipped,
        images: count.images,
    })
}

/// Reads the pending micro-batches' numbers from the device in one transfer, applies the
/// NaN policy (naming the exact step) and updates the progress display.
fn read_back(
    pending: &mut Vec<Pending>,
    count: &mut EpochCount,
    cfg: &TrainConfig,
    epoch: usize,
    run_dir: &Path,
    progress: &Progress,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let values: Vec<Tensor> = pending.iter().map(|p| p.values.shallow_clone()).collect();
    let values = Vec::<f32>::try_from(
        Tensor::stack(&values, 0)
            .to_device(Device::Cpu)
            .flatten(0, -1),
    )
    .context("reading the step's numbers from the device")?;
    for (p, v) in pending.iter().zip(values.chunks_exact(3)) {
        let (loss, correct, bad) = (v[0] as f64, v[1] as i64, v[2] != 0.0);
        if bad {
            match cfg.on_nonfinite {
                NonFinite::Stop => bail!(
                    "loss is {loss} at step {} (epoch {}, batch {}): stopping; the last good checkpoint in {} is kept \
                     (lower optimizer.lr, or set train.on_nonfinite = \"skip\")",
                    p.step,
                    epoch + 1,
                    p.batch,
                    run_dir.display()
                ),
                NonFinite::Skip => progress.warn(&format!(
                    "non-finite loss at step {} (epoch {}, batch {}): step skipped",
                    p.step,
                    epoch + 1,
                    p.batch
                )),
            }
        } else {
            count.stats.add(loss, correct, p.n);
            count.images += p.n as usize;
        }
        if let Some(lr) = p.lr {
            progress.update(&progress::StepReport {
                epoch,
                step: p.step,
                batch: p.batch,
                loss: count.stats.loss(),
                acc: count.stats.acc(),
                lr,
                images_per_sec: count.images as f64 / count.started.elapsed().as_secs_f64(),
            });
        }
    }
    pending.clear();
    Ok(())
}

/// Loss and accuracy of `model` on `loader`, in eval mode.
/// Sums stay on the device until the end: one read per evaluation.
pub fn evaluate(
    model: &Model,
    loader: &Loader,
    normalize: &Normalize,
    precision: Precision,
    epoch: usize,
    progress: &Progress,
) -> anyhow::Result<(Running, usize)> {
    let mut stats = Running::default();
    let mut skipped = 0;
    // [loss sum, correct] on the device.
    let mut sums: Option<Tensor> = None;
    tch::no_grad(|| -> anyhow::Result<()> {
        for batch in loader.epoch(epoch, 0) {
            let batch = batch.map_err(LoadError::in_training)?;
            for e in &batch.skipped {
                progress.warn(&format!("skipped {e}"));
            }
            skipped += batch.skipped.len();
            let n = batch.labels.size()[0];
            if n == 0 {
                continue;
            }
            let x = normalize.apply(&batch.images);
            let y = batch.labels.to_device(x.device());
            let logits = {
                let _autocast = amp::autocast(precision, x.device())?;
                model.forward_t(&x, false)
            };
            let loss = logits.to_kind(Kind::Float).cross_entropy_loss::<Tensor>(
                &y,
                None,
                Reduction::Sum,
                -100,
                0.0,
            );
            let correct = logits.argmax(-1, false).eq_tensor(&y).sum(Kind::Float);
            let batch_sums = Tensor::stack(
                &[loss.to_kind(Kind::Double), correct.to_kind(Kind::Double)],
                0,
            );
            sums = Some(match sums.take() {
                None => batch_sums,
                Some(s) => s + batch_sums,
            });
            stats.seen += n;
        }
        Ok(())
    })?;
    if let Some(sums) = sums {
        let v = Vec::<f64>::try_from(sums.to_device(Device::Cpu))
            .context("reading the evaluation's numbers from the device")?;
        stats.loss_sum = v[0];
        stats.correct = v[1].round() as i64;
    }
    Ok((stats, skipped))
}

fn prepare(opts: &TrainOptions) -> anyhow::Result<(Session, Position)> {
    let cfg = opts.config.clone();
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    let device = DeviceSpec::parse(&cfg.train.device)
        .and_then(|d| d.resolve())
        .map_err(|e| anyhow::anyhow!("train.device: {e}"))?;
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }

    // Resume: the checkpoint must exist and be readable before anything is written.
    let resume = match &opts.resume {
        Some(dir) => {
            let path = dir.join(checkpoint::LAST);
            if !path.is_file() {
                bail!(
                    "{} is not a hondo run directory: {} not found",
                    dir.display(),
                    path.display()
                );
            }
            Some(checkpoint::read(&path)?)
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
        0 => classes.len(),
        n if n < classes.len() => bail!(
            "model.num_classes = {n} but the data has {} classes",
            classes.len()
        ),
        n => n,
    } as i64;

    tch::manual_seed(seed::combine(&[cfg.train.seed, 0x1417]) as i64 & i64::MAX);
    let vs = VarStore::new(device);
    let model = Model::new(&vs.root(), &cfg.model, num_classes);
    models::assert_unique_names(&vs);

    let progress = Progress::new(opts.quiet, cfg.train.log_every);
    if !cfg.model.pretrained.is_empty() && resume.is_none() {
        load_pretrained(&vs, &model, &cfg, &progress)?;
    }
    if cfg.train.channels_last {
        to_channels_last(&vs);
    }

    let mut pos = Position::default();
    if let Some(ckpt) = &resume {
        if ckpt.meta.arch != cfg.model.arch.name() {
            bail!(
                "the checkpoint is a {} but the config says model.arch = {}",
                ckpt.meta.arch,
                cfg.model.arch.name()
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
        };
    }
    let frozen = param_groups::apply_freeze(&vs, &cfg.model.freeze);
    let unmatched = param_groups::unmatched_prefixes(&vs, &cfg.model.freeze);
    if !unmatched.is_empty() {
        bail!(
            "model.freeze: {:?} match no parameter of {}",
            unmatched,
            cfg.model.arch.name()
        );
    }
    if frozen > 0 {
        progress.println(&format!(
            "frozen: {frozen} tensors under {:?}",
            cfg.model.freeze
        ));
    }
    let mut optimizer = Optimizer::new(&cfg.optimizer, param_groups::build(&vs, &cfg.optimizer));
    let mut scaler = (cfg.train.precision == Precision::Fp16).then(|| Scaler::new(device));
    let ema = (cfg.train.ema_decay > 0.0)
        .then(|| Ema::new(&vs, &cfg.model, num_classes, cfg.train.ema_decay));
    if let Some(ckpt) = resume {
        let state = match &mut scaler {
            Some(scaler) => scaler.load_state(ckpt.optimizer),
            None => amp::without_scaler(ckpt.optimizer),
        };
        optimizer
            .load_state(state)
            .context("restoring the optimizer state")?;
        // A checkpoint without EMA (turned on at resume) starts the average at the weights.
        if let (Some(ema), false) = (&ema, ckpt.ema.is_empty()) {
            checkpoint::copy_exact(&ema.vs, &ckpt.ema)
                .context("loading the checkpoint's EMA weights")?;
        }
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

    let workers = cfg.data.workers;
    let loader_opts = |shuffle: bool| LoaderOptions {
        batch_size: cfg.train.batch_size,
        shuffle,
        drop_last: false,
        seed: cfg.train.seed,
        workers,
        prefetch: cfg.data.prefetch,
        fail_on_error: cfg.data.on_error == crate::config::OnError::Fail,
        pin_memory: device.is_cuda(),
    };
    let train = Loader::new(splits.train, loader_opts(true))?;
    let val = Loader::new(splits.val, loader_opts(false))?;
    let steps_per_epoch = train.num_batches().div_ceil(cfg.train.accumulate);
    let schedule = Schedule::new(&cfg.schedule, steps_per_epoch, cfg.train.epochs);
    let normalize = Normalize::new(cfg.data.mean, cfg.data.std, device, cfg.train.channels_last);

    let run_dir = match (&opts.resume, &opts.out) {
        (Some(dir), _) => dir.clone(),
        (None, Some(out)) => crate::run_dir::create_exact(out, opts.overwrite)?,
        (None, None) => {
            let name = if cfg.checkpoint.name.is_empty() {
                format!(
                    "{}-{}",
                    cfg.model.arch.name(),
                    format!("{:?}", cfg.data.kind).to_lowercase()
                )
            } else {
                cfg.checkpoint.name.clone()
            };
            crate::run_dir::create_fresh(Path::new(&cfg.checkpoint.dir), &name)?
        }
    };
    crate::run_dir::probe_writable(&run_dir)?;
    atomic::write(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())
        .with_context(|| format!("cannot write {}", run_dir.join("config.toml").display()))?;

    Ok((
        Session {
            cfg,
            run_dir,
            device,
            vs,
            model,
            optimizer,
            schedule,
            train,
            val,
            normalize,
            classes,
            steps_per_epoch,
            progress,
            ema,
            scaler,
            mixing,
            sync_every,
        },
        pos,
    ))
}

/// Loads `model.pretrained` into the fresh model; a head of another class count is left
/// freshly initialised, and the run says so in one line.
fn load_pretrained(
    vs: &VarStore,
    model: &Model,
    cfg: &Config,
    progress: &Progress,
) -> anyhow::Result<()> {
    let path = Path::new(&cfg.model.pretrained);
    let report =
        crate::weights::load_pretrained(vs, path, model.info().classifier, cfg.model.strict)
            .with_context(|| format!("model.pretrained = {:?}", cfg.model.pretrained))?;
    let head = if report.head_reinitialised.is_empty() {
        String::new()
    } else {
        format!(
            " (the file's head does not fit {} classes)",
            model.num_classes
        )
    };
    progress.println(&format!(
        "pretrained {}: {}{head}",
        path.display(),
        report.summary()
    ));
    Ok(())
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

fn meta(s: &Session, pos: &Position) -> Meta {
    Meta {
        hondo_version: env!("CARGO_PKG_VERSION").to_string(),
        arch: s.cfg.model.arch.name().to_string(),
        num_classes: s.model.num_classes,
        classes: s.classes.clone(),
        image_size: s.cfg.data.image_size,
        crop_fraction: s.cfg.data.crop_fraction,
        mean: s.cfg.data.mean,
        std: s.cfg.data.std,
        epoch: pos.epoch,
        batch: pos.batch,
        step: pos.step,
        metrics: pos.metrics.clone(),
        best: pos.best,
        epochs_without_improvement: pos.without_improvement,
        config: s.cfg.to_toml(),
    }
}

fn model_tensors(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.contiguous()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes the current state to each of `names` in the run directory (atomically).
fn save(s: &Session, pos: &Position, names: &[&str]) -> anyhow::Result<()> {
    let mut optimizer = s.optimizer.state_tensors();
    if let Some(scaler) = &s.scaler {
        optimizer.extend(scaler.state_tensors());
    }
    let ema = s.ema.as_ref().map(Ema::tensors).unwrap_or_default();
    let bytes =
        checkpoint::to_bytes_with_ema(&meta(s, pos), &model_tensors(&s.vs), &optimizer, &ema)?;
    for name in names {
        let path = s.run_dir.join(name);
        atomic::write(&path, &bytes)
            .with_context(|| format!("cannot write checkpoint {}", path.display()))?;
    }
    Ok(())
}

fn apply_actions(s: &Session, pos: &Position, actions: &[policy::Action]) -> anyhow::Result<()> {
    let mut names: Vec<String> = Vec::new();
    for a in actions {
        match a {
            policy::Action::Last => names.push(checkpoint::LAST.into()),
            policy::Action::Best => names.push(checkpoint::BEST.into()),
            policy::Action::Keep(e) => names.push(checkpoint::epoch_file(*e)),
            policy::Action::Delete(_) => {}
        }
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    save(s, pos, &refs)?;
    for a in actions {
        if let policy::Action::Delete(e) = a {
            let path = s.run_dir.join(checkpoint::epoch_file(*e));
            if let Err(err) = std::fs::remove_file(&path) {
                s.progress
                    .warn(&format!("could not delete {}: {err}", path.display()));
            }
        }
    }
    Ok(())
}
