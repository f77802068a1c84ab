//! The step loop of one epoch: forward under autocast, loss (with mixing and label
//! smoothing), backward (scaled for fp16 and accumulation), then on every accumulation
//! boundary unscale, clip, the fused optimizer step, EMA and zeroing. The device's numbers
//! (loss, correct, non-finite flag) are read back every `sync_every` steps, in one transfer.

use super::checkpoints::save_last;
use super::mix;
use super::session::{Position, Session};
use super::signals::StopSignal;
use crate::config::NonFinite;
use crate::data::seed;
use crate::metrics::Running;
use crate::observe::{EpochStart, StepReport};
use std::time::Instant;
use tch::{Device, Kind, Reduction, Tensor};

/// How an epoch's training ended.
pub(super) enum EpochEnd {
    Done {
        stats: Running,
        skipped: usize,
        images: usize,
    },
    /// A stop signal, after a resumable checkpoint was written; the exit status to use.
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
    /// float `[4]`: mean loss, correct predictions, 1 if the loss was NaN or infinite, 1 if
    /// another rank's was (data-parallel: the step is skipped everywhere).
    values: Tensor,
}

/// What an epoch has counted so far on the host.
struct EpochCount {
    stats: Running,
    images: usize,
    started: Instant,
}

/// Trains one epoch from `pos` (which it advances), stopping early for `stop`.
pub(super) fn train_epoch(
    s: &mut Session,
    pos: &mut Position,
    stop: &StopSignal,
) -> anyhow::Result<EpochEnd> {
    let cfg = s.cfg.clone();
    let epoch = pos.epoch;
    let accumulate = cfg.train.accumulate;
    let n_batches = s.train.num_batches();
    let start = EpochStart {
        epoch,
        epochs: cfg.train.epochs,
        batches: n_batches,
        done: pos.batch,
    };
    s.observers
        .each("epoch_started", |o| o.epoch_started(&start))?;
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
        let batch = batch.map_err(crate::data::loader::LoadError::in_training)?;
        for e in &batch.skipped {
            s.observers.warning(&format!("skipped {e}"))?;
        }
        skipped += batch.skipped.len();
        b += 1;
        let n = batch.labels.size()[0];
        if n == 0 {
            if let Some(d) = &s.ddp {
                // The other ranks step on this batch: skipping it here would desynchronise
                // their collectives.
                anyhow::bail!(
                    "epoch {} batch {b}: no image of this batch could be read on rank {}, and \
                     in data-parallel training every rank must step (fix or remove the files \
                     warned about above)",
                    epoch + 1,
                    d.rank()
                );
            }
            continue;
        }
        if n == 1 && s.batch_norm {
            // Every rank's shard has as many images, so every rank skips it.
            s.observers.warning(&format!(
                "epoch {} batch {b}: a batch of one image is left out: BatchNorm cannot train \
                 on one image (pick data.train_size and train.batch_size so that no batch \
                 holds just one)",
                epoch + 1
            ))?;
            continue;
        }
        // Every random draw of the step (dropout, mixing) derives from the step number, so
        // a resumed run repeats it exactly; data-parallel ranks draw their own.
        let rank = s
            .ddp
            .as_ref()
            .filter(|d| d.size() > 1)
            .map(|d| d.rank() as u64);
        let mut parts = vec![cfg.train.seed, seed::tag::STEP, pos.step as u64, b as u64];
        parts.extend(rank);
        tch::manual_seed(seed::combine(&parts) as i64 & i64::MAX);
        let last_of_epoch = b == n_batches;
        let syncs = b % accumulate == 0 || last_of_epoch;
        if let Some(d) = &mut s.ddp {
            d.before_forward(syncs)?;
        }
        let x = s.normalize.apply(&batch.images);
        let y = batch.labels.to_device(s.device);
        let (x, soft_targets) = if s.mixing.enabled() {
            let seed =
                seed::combine(&[cfg.train.seed, seed::tag::MIXING, pos.step as u64, b as u64]);
            let (x, t) = s.mixing.apply(x, &y, seed);
            (x, Some(t))
        } else {
            (x, None)
        };
        let (logits, loss) = s.forward_loss(&x, &y, soft_targets.as_ref())?;
        let bad = loss.isfinite().logical_not().to_kind(Kind::Float);
        s.backward(&(loss.shallow_clone() / accumulate as f64))?;
        if let (true, Some(d)) = (syncs, &mut s.ddp) {
            d.after_backward()?;
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
                    Tensor::zeros_like(&bad),
                ],
                0,
            ),
        });
        window_bad = Some(match window_bad {
            None => bad,
            Some(w) => w.maximum(&bad),
        });
        if syncs {
            // Non-zero skips the update on the device: a NaN loss (policy applied when the
            // numbers are read back) or, with fp16, overflowing gradients.
            let mut skip = window_bad.take().expect("a micro-batch ran");
            let stop_here = if last_of_epoch { None } else { stop.pending() };
            // Data-parallel: every rank skips if any rank's loss was not finite, and stops
            // if any rank was signalled.
            let stop_now = match &s.ddp {
                Some(d) => {
                    let (agreed, code) = d.agree(&skip, stop_here)?;
                    if let Some(p) = pending.last_mut() {
                        p.values.get(3).copy_(&agreed);
                    }
                    skip = agreed;
                    code
                }
                None => stop_here,
            };
            let lr = cfg.optimizer.lr * s.schedule.factor(pos.step);
            s.update(lr, Some(skip))?;
            if let Some(ema) = &s.ema {
                ema.update()?;
            }
            pos.step += 1;
            pos.batch = b;
            if s.device == tch::Device::Cpu
                && s.huge_pages
                    .after_step(pos.step, cfg.train.epochs * s.steps_per_epoch)
            {
                s.observers.message(
                    "the steps left are long enough to repay huge pages: the CPU buffers \
                     move to them in the next step (HONDO_HUGEPAGES=0 keeps 4 KiB pages)",
                )?;
            }
            if let Some(p) = pending.last_mut() {
                p.lr = Some(lr);
            }
            let save_now = cfg.checkpoint.every_steps > 0
                && pos.step % cfg.checkpoint.every_steps == 0
                && !last_of_epoch;
            if last_of_epoch || save_now || stop_now.is_some() || pos.step % s.sync_every == 0 {
                // Before anything is saved: a NaN never reaches a checkpoint.
                read_back(s, &mut pending, &mut count, epoch)?;
            }
            if save_now {
                save_last(s, pos)?;
            }
            if let Some(code) = stop_now {
                return Ok(EpochEnd::Interrupted(code));
            }
        }
    }
    read_back(s, &mut pending, &mut count, epoch)?;
    Ok(EpochEnd::Done {
        stats: count.stats,
        skipped,
        images: count.images,
    })
}

impl Session {
    /// The forward pass in training mode under the run's autocast, and the training loss:
    /// cross-entropy with `train.label_smoothing`, or against `soft` (mixed) targets.
    pub(super) fn forward_loss(
        &self,
        x: &Tensor,
        y: &Tensor,
        soft: Option<&Tensor>,
    ) -> anyhow::Result<(Tensor, Tensor)> {
        let _autocast = crate::ops::autocast(self.cfg.train.precision, self.device)?;
        let logits = self.model.forward_t(x, true);
        let loss = match soft {
            Some(t) => mix::soft_cross_entropy(&logits, t),
            None => logits.f_cross_entropy_loss::<Tensor>(
                y,
                None,
                Reduction::Mean,
                -100,
                self.cfg.train.label_smoothing,
            )?,
        };
        Ok((logits, loss))
    }

    /// Backward of `loss`, scaled first under fp16 loss scaling (in a data-parallel run,
    /// the Reducer all-reduces the gradients during it: a lost peer is an error here).
    pub(super) fn backward(&self, loss: &Tensor) -> anyhow::Result<()> {
        let loss = match &self.scaler {
            Some(scaler) => scaler.scale(loss),
            None => loss.shallow_clone(),
        };
        loss.f_backward().map_err(|e| {
            anyhow::anyhow!("backward pass: {}", crate::dist::trim_cxx(&e.to_string()))
        })
    }

    /// One optimizer update at `lr` from the accumulated gradients: unscaled (fp16, an
    /// overflow joining `skip`), clipped (`train.grad_clip`), stepped (not where `skip` is
    /// non-zero: decided on the device), the scaler updated and the gradients cleared.
    pub(super) fn update(&mut self, lr: f64, skip: Option<Tensor>) -> anyhow::Result<()> {
        let grads = self.optimizer.grads();
        let mut skip = skip;
        if let Some(scaler) = &mut self.scaler {
            let overflow = scaler.unscale(&grads)?;
            skip = Some(match skip {
                Some(s) => s.maximum(overflow),
                None => overflow.shallow_clone(),
            });
        }
        if self.cfg.train.grad_clip > 0.0 {
            let _norm = crate::shim::clip_grad_norm(&grads, self.cfg.train.grad_clip)?;
        }
        self.optimizer.step(lr, skip.as_ref())?;
        if let Some(scaler) = &mut self.scaler {
            scaler.update();
        }
        drop(grads);
        self.optimizer.zero_grad()?;
        Ok(())
    }
}

/// Reads the pending micro-batches' numbers from the device in one transfer, applies the
/// NaN policy (naming the exact step) and reports the steps to the observers.
fn read_back(
    s: &mut Session,
    pending: &mut Vec<Pending>,
    count: &mut EpochCount,
    epoch: usize,
) -> anyhow::Result<()> {
    s.observers.flush_deferred()?;
    if pending.is_empty() {
        return Ok(());
    }
    let values: Vec<Tensor> = pending.iter().map(|p| p.values.shallow_clone()).collect();
    let values = Vec::<f32>::try_from(
        Tensor::stack(&values, 0)
            .to_device(Device::Cpu)
            .flatten(0, -1),
    )
    .map_err(|e| anyhow::anyhow!("reading the step's numbers from the device: {e}"))?;
    for (p, v) in pending.iter().zip(values.chunks_exact(4)) {
        let (loss, correct, bad) = (v[0] as f64, v[1] as i64, v[2] != 0.0 || v[3] != 0.0);
        let elsewhere = if v[2] == 0.0 { " on another rank" } else { "" };
        if bad {
            match s.cfg.train.on_nonfinite {
                NonFinite::Stop if !elsewhere.is_empty() => anyhow::bail!(
                    "non-finite loss{elsewhere} at step {} (epoch {}, batch {}): stopping \
                     (train.on_nonfinite = \"stop\"); the last checkpoint is kept",
                    p.step,
                    epoch + 1,
                    p.batch
                ),
                NonFinite::Stop => {
                    return Err(crate::Error::Diverged {
                        loss,
                        step: p.step,
                        epoch: epoch + 1,
                        batch: p.batch,
                        run_dir: s.run_dir.clone(),
                    }
                    .into())
                }
                NonFinite::Skip => s.observers.warning(&format!(
                    "non-finite loss{elsewhere} at step {} (epoch {}, batch {}): step skipped",
                    p.step,
                    epoch + 1,
                    p.batch
                ))?,
            }
        } else {
            count.stats.add(loss, correct, p.n);
            count.images += p.n as usize;
        }
        if let Some(lr) = p.lr {
            let report = StepReport {
                epoch,
                step: p.step,
                batch: p.batch,
                loss: count.stats.loss(),
                acc: count.stats.acc(),
                lr,
                images_per_sec: count.images as f64 / count.started.elapsed().as_secs_f64(),
            };
            s.observers.each("step", |o| o.step(&report))?;
        }
    }
    pending.clear();
    Ok(())
}
