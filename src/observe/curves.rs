//! `training-curves.png`, drawn from `metrics.jsonl` when the run ends.

use super::{Observer, ObserverResult};
use std::path::Path;

/// Draws the run's training curves ([`crate::plot::curves`]) once the run is over; values
/// left out of the picture are passed on as warnings. Needs [`super::MetricsLog`] (or
/// another writer of `metrics.jsonl`) before it.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrainingCurves;

impl Observer for TrainingCurves {
    fn run_ended(&mut self, run_dir: &Path) -> ObserverResult {
        let curves = crate::plot::curves(run_dir).map_err(|e| format!("plot: {e}"))?;
        // Values that could not be drawn (a diverged loss): said, not silently dropped.
        for note in curves.notes {
            super::defer_warning(format!("{}: {note}", curves.path.display()));
        }
        Ok(())
    }
}
