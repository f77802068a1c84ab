//! The epoch loop: unfreezing, an epoch of steps, validation (of the model and of its
//! EMA), the checkpoint policy, early stopping and stop signals.

use super::checkpoints::{apply_actions, save_last};
use super::session::{Position, Session};
use super::step::{train_epoch, EpochEnd as Trained};
use super::{param_groups, Outcome, Summary};
use crate::checkpoint::{self, policy};
use crate::evaluate::{evaluate, Evaluation};
use crate::metrics::EpochMetrics;
use crate::observe::EpochEnd;
use crate::train::signals::StopSignal;
use std::time::Instant;

/// Trains `s` from `pos` to the end (or an early stop, or a signal).
pub(super) fn fit(
    mut s: Session,
    mut pos: Position,
    stop: &StopSignal,
    started: Instant,
) -> anyhow::Result<Summary> {
    let cfg = s.cfg.clone();
    let monitor = cfg.checkpoint.monitor.name().to_string();
    let mut last = None;
    let mut outcome = Outcome::Finished;
    while pos.epoch < cfg.train.epochs {
        let epoch = pos.epoch;
        if let Some(unfreeze_at) = cfg
            .model
            .unfreeze_at_epoch
            .filter(|e| epoch + 1 >= *e && !cfg.model.freeze.is_empty())
        {
            let n = param_groups::apply_freeze(&s.vs, &[]);
            debug_assert_eq!(n, 0);
            if let Some(d) = &mut s.ddp {
                // The Reducer covers the parameters that now train too.
                d.attach(&s.vs)?;
            }
            if epoch + 1 == unfreeze_at && pos.batch == 0 {
                s.observers.message(&format!(
                    "epoch {}: unfreezing {:?}",
                    epoch + 1,
                    cfg.model.freeze
                ))?;
            }
        }
        let t0 = Instant::now();
        let (train_stats, skipped_train, images) = match train_epoch(&mut s, &mut pos, stop)? {
            Trained::Done {
                stats,
                skipped,
                images,
            } => (stats, skipped, images),
            Trained::Interrupted(code) => {
                save_last(&mut s, &pos)?;
                s.observers.message(&format!(
                    "interrupted at epoch {} batch {}: checkpoint written to {}\nresume with: hondo train --resume {}",
                    epoch + 1,
                    pos.batch,
                    s.run_dir.join(checkpoint::LAST).display(),
                    s.run_dir.display()
                ))?;
                outcome = Outcome::Interrupted(code);
                break;
            }
        };
        let train_seconds = t0.elapsed().as_secs_f64();
        let (train_stats, skipped_train, images) = match &s.ddp {
            // Every rank's counts: the epoch's metrics are the job's, not rank 0's share.
            Some(d) => {
                let v = d.sum(&[
                    train_stats.loss_sum,
                    train_stats.correct as f64,
                    train_stats.seen as f64,
                    skipped_train as f64,
                    images as f64,
                ])?;
                let stats = crate::metrics::Running {
                    loss_sum: v[0],
                    correct: v[1] as i64,
                    seen: v[2] as i64,
                };
                (stats, v[3] as usize, v[4] as usize)
            }
            None => (train_stats, skipped_train, images),
        };
        if let Some(d) = &s.ddp {
            // Validation (and the checkpoints) see rank 0's BatchNorm statistics and EMA
            // on every rank, and every rank holds the same weights.
            d.broadcast_buffers()?;
            if let Some(ema) = &s.ema {
                d.broadcast_vars(&ema.vs)?;
            }
            d.check_identical(&s.vs, epoch)?;
        }
        let val = validate(&mut s, false)?;
        let ema = if s.ema.is_some() {
            Some(validate(&mut s, true)?)
        } else {
            None
        };
        let m = EpochMetrics {
            epoch: epoch + 1,
            step: pos.step,
            train_loss: train_stats.loss(),
            train_acc: train_stats.acc(),
            val_loss: val.report.loss,
            val_acc: val.report.top1,
            lr: cfg.optimizer.lr * s.schedule.factor(pos.step.saturating_sub(1)),
            images_per_sec: images as f64 / train_seconds,
            seconds: t0.elapsed().as_secs_f64(),
            skipped: skipped_train + val.skipped.len(),
            val_loss_ema: ema.as_ref().map(|e| e.report.loss),
            val_acc_ema: ema.as_ref().map(|e| e.report.top1),
        };
        let value = m.get(&monitor).expect("validated monitor");
        let kept = if s.is_main() {
            checkpoint::list_kept(&s.run_dir, &monitor)
        } else {
            Vec::new()
        };
        let actions = policy::plan(
            epoch + 1,
            value,
            cfg.checkpoint.mode(),
            pos.best.map(|b| b.0),
            &kept,
            cfg.checkpoint.keep_top_k,
        );
        let is_best = actions.contains(&policy::Action::Best);
        if is_best {
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
        // A checkpoint of NaN statistics would only fail later, in eval or predict.
        if let Some(name) = non_finite_buffer(&s.vs) {
            if cfg.train.on_nonfinite == crate::config::NonFinite::Stop {
                anyhow::bail!(
                    "after epoch {}, the model's buffer `{name}` is not finite (NaN or \
                     infinite BatchNorm statistics); this epoch's checkpoints are not written, \
                     earlier ones are kept (train.on_nonfinite = \"skip\" goes on)",
                    epoch + 1
                );
            }
            s.observers.warning(&format!(
                "after epoch {}, the model's buffer `{name}` is not finite; its checkpoints \
                 are written as they are (train.on_nonfinite = \"skip\")",
                epoch + 1
            ))?;
        }
        pos.last_epoch = Some(m.clone());
        apply_actions(&mut s, &pos, &actions)?;
        let end = EpochEnd {
            metrics: &m,
            epochs: cfg.train.epochs,
            is_best,
            step: pos.step,
            run_dir: &s.run_dir,
        };
        let observers = &mut s.observers;
        observers.each("epoch_ended", |o| o.epoch_ended(&end))?;
        last = Some(m);
        if cfg.train.early_stop_patience > 0
            && pos.without_improvement >= cfg.train.early_stop_patience
        {
            s.observers.message(&format!(
                "early stopping: {monitor} has not improved for {} epochs",
                pos.without_improvement
            ))?;
            outcome = Outcome::EarlyStopped;
            break;
        }
        let code = match &s.ddp {
            Some(d) => d.agree_stop(stop.pending())?,
            None => stop.pending(),
        };
        if let Some(code) = code {
            s.observers.message(&format!(
                "interrupted after epoch {}: resume with: hondo train --resume {}",
                epoch + 1,
                s.run_dir.display()
            ))?;
            outcome = Outcome::Interrupted(code);
            break;
        }
    }
    if let Some(share) = s.ddp.as_ref().and_then(|d| d.comm_share()) {
        s.observers.message(&format!(
            "data-parallel: {:.1}% of forward + backward time spent waiting for the gradients' \
             all-reduce",
            share * 100.0
        ))?;
    }
    s.observers.run_ended(&s.run_dir);
    Ok(Summary {
        run_dir: s.run_dir.clone(),
        outcome,
        epochs_done: pos.epoch,
        last,
        best: pos.best,
        monitor,
        seconds: started.elapsed().as_secs_f64(),
        rank: s.ddp.as_ref().map_or(0, |d| d.rank()),
        world_size: s.ddp.as_ref().map_or(1, |d| d.size()),
    })
}

/// Validates the model (or its EMA) with [`crate::evaluate::evaluate`], passing skipped
/// files on as warnings.
///
/// Data-parallel: each rank evaluates its share of the set (possibly none) and the counts
/// are summed, so the loss and accuracy are exactly those of one evaluation of the set.
fn validate(s: &mut Session, ema: bool) -> anyhow::Result<Evaluation> {
    let model = match (&s.ema, ema) {
        (Some(e), true) => e.model.as_ref(),
        _ => s.model.as_ref(),
    };
    // A rank whose share is empty (fewer images than ranks) evaluates nothing.
    let local = (s.ddp.is_none() || s.val.num_batches() > 0)
        .then(|| {
            evaluate(
                model,
                &s.val,
                &s.normalize,
                s.cfg.train.precision,
                &s.classes,
                s.num_classes as usize,
                false,
            )
        })
        .transpose()?;
    let mut e = local.unwrap_or_else(|| Evaluation {
        report: crate::evaluate::Accumulator::new(&s.classes, s.num_classes as usize).report(),
        skipped: Vec::new(),
    });
    if let Some(d) = &s.ddp {
        let r = &mut e.report;
        let n = if r.images > 0 { r.images as f64 } else { 0.0 };
        let mine = if n > 0.0 {
            [n, r.loss * n, (r.top1 * n).round()]
        } else {
            [0.0; 3]
        };
        let v = d.sum(&mine)?;
        if v[0] == 0.0 {
            anyhow::bail!("the validation set is empty");
        }
        r.images = v[0] as u64;
        r.loss = v[1] / v[0];
        r.top1 = v[2] / v[0];
    }
    if !ema {
        for w in &e.skipped {
            s.observers.warning(&format!("skipped {w}"))?;
        }
    }
    Ok(e)
}

/// The first BatchNorm running statistic of `vs` that holds a NaN or an infinity.
fn non_finite_buffer(vs: &tch::nn::VarStore) -> Option<String> {
    let mut vars: Vec<_> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| n.ends_with("running_mean") || n.ends_with("running_var"))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter()
        .find(|(_, t)| {
            t.f_isfinite()
                .and_then(|f| f.f_all())
                .is_ok_and(|a| a.int64_value(&[]) == 0)
        })
        .map(|(n, _)| n)
}
