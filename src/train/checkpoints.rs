//! Writing a run's checkpoints: the model, optimizer, loss-scaler and EMA state with the
//! run's position and metadata ([`crate::checkpoint`] has the format), atomically, as the
//! checkpoint policy says (`last`, `best`, the top-k `epoch-NNNN`).

use super::ema::Ema;
use super::session::{Position, Session};
use crate::checkpoint::{self, atomic, policy, Meta};
use crate::observe::CheckpointKind;
use anyhow::Context;
use tch::nn::VarStore;
use tch::Tensor;

/// The metadata of a checkpoint of `s` at `pos`.
fn meta(s: &Session, pos: &Position) -> Meta {
    Meta {
        hondo_version: env!("CARGO_PKG_VERSION").to_string(),
        arch: s.spec.name().to_string(),
        head: s.spec.arch().is_none().then(|| s.spec.head().to_string()),
        num_classes: s.num_classes,
        classes: s.classes.clone(),
        image_size: s.cfg.data.image_size,
        crop_fraction: s.cfg.data.crop_fraction,
        mean: s.cfg.data.mean,
        std: s.cfg.data.std,
        epoch: pos.epoch,
        batch: pos.batch,
        step: pos.step,
        metrics: pos.metrics.clone(),
        last_epoch: pos.last_epoch.clone(),
        best: pos.best,
        epochs_without_improvement: pos.without_improvement,
        world_size: s.ddp.as_ref().map_or(1, |d| d.size()),
        config: s.cfg.to_toml(),
    }
}

/// A VarStore's tensors by name, sorted and contiguous.
pub(crate) fn model_tensors(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.contiguous()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes the current state to each of `kinds` in the run directory (atomically).
pub(super) fn save_kinds(
    s: &mut Session,
    pos: &Position,
    kinds: &[CheckpointKind],
) -> anyhow::Result<()> {
    if !s.is_main() {
        // Data-parallel: rank 0 writes; the other ranks hold the same state.
        return Ok(());
    }
    let mut optimizer = s.optimizer.state_tensors();
    if let Some(scaler) = &s.scaler {
        optimizer.extend(scaler.state_tensors());
    }
    let ema = s.ema.as_ref().map(Ema::tensors).unwrap_or_default();
    let bytes =
        checkpoint::to_bytes_with_ema(&meta(s, pos), &model_tensors(&s.vs), &optimizer, &ema)?;
    for &kind in kinds {
        let name = match kind {
            CheckpointKind::Last => checkpoint::LAST.to_string(),
            CheckpointKind::Best => checkpoint::BEST.to_string(),
            CheckpointKind::Epoch(e) => checkpoint::epoch_file(e),
        };
        let path = s.run_dir.join(name);
        atomic::write(&path, &bytes)
            .with_context(|| format!("cannot write checkpoint {}", path.display()))?;
        s.observers
            .each("checkpoint_written", |o| o.checkpoint_written(&path, kind))?;
    }
    Ok(())
}

/// Writes `last` (mid-epoch: `checkpoint.every_steps`, or on a stop signal).
pub(super) fn save_last(s: &mut Session, pos: &Position) -> anyhow::Result<()> {
    save_kinds(s, pos, &[CheckpointKind::Last])
}

/// Carries out the checkpoint policy's actions at the end of an epoch.
pub(super) fn apply_actions(
    s: &mut Session,
    pos: &Position,
    actions: &[policy::Action],
) -> anyhow::Result<()> {
    if !s.is_main() {
        return Ok(());
    }
    let kinds: Vec<CheckpointKind> = actions
        .iter()
        .filter_map(|a| match a {
            policy::Action::Last => Some(CheckpointKind::Last),
            policy::Action::Best => Some(CheckpointKind::Best),
            policy::Action::Keep(e) => Some(CheckpointKind::Epoch(*e)),
            policy::Action::Delete(_) => None,
        })
        .collect();
    save_kinds(s, pos, &kinds)?;
    for a in actions {
        if let policy::Action::Delete(e) = a {
            let path = s.run_dir.join(checkpoint::epoch_file(*e));
            if let Err(err) = std::fs::remove_file(&path) {
                s.observers
                    .warning(&format!("could not delete {}: {err}", path.display()))?;
            }
        }
    }
    Ok(())
}
