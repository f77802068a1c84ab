//! `training-curves.png`, drawn from `metrics.jsonl` when the run ends.

use super::{Observer, ObserverResult};
use std::path::Path;

/// Draws the run's training curves ([`crate::plot::training_curves`]) once the run is
/// over. Needs [`super::MetricsLog`] (or another writer of `metrics.jsonl`) before it.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrainingCurves;

impl Observer for TrainingCurves {
    fn run_ended(&mut self, run_dir: &Path) -> ObserverResult {
        crate::plot::training_curves(run_dir)
            .map(|_| ())
            .map_err(|e| format!("plot: {e:#}").into())
    }
}
