//! `metrics.jsonl`: one JSON line of [`EpochMetrics`] per finished epoch, appended (a
//! resumed run appends to its own file; readers keep the last line of each epoch).

use super::{EpochEnd, Observer, ObserverResult, RunInfo};
use crate::metrics::{self, EpochMetrics, METRICS_FILE};

/// Appends each epoch's metrics to `metrics.jsonl` in the run directory. `hondo plot` and
/// [`super::TrainingCurves`] read that file.
#[derive(Debug, Default, Clone, Copy)]
pub struct MetricsLog;

impl Observer for MetricsLog {
    /// A resumed run's file is mended first ([`metrics::restore`]): a torn last line is cut
    /// off and the checkpoint's last epoch is restored when its line was lost.
    fn run_started(&mut self, run: &RunInfo<'_>) -> ObserverResult {
        if run.resumed_at.is_none() {
            return Ok(());
        }
        let path = run.run_dir.join(METRICS_FILE);
        match metrics::restore(&path, run.last_epoch) {
            Ok(Some(what)) => super::defer_warning(format!("{}: {what}", path.display())),
            Ok(None) => {}
            // The run can go on; its lines are appended as usual.
            Err(e) => super::defer_warning(format!("{e} (left as it is)")),
        }
        Ok(())
    }

    fn epoch_ended(&mut self, end: &EpochEnd<'_>) -> ObserverResult {
        let path = end.run_dir.join(METRICS_FILE);
        let m: &EpochMetrics = end.metrics;
        metrics::append(&path, m)
            .map_err(|e| format!("cannot append to {}: {e}", path.display()).into())
    }
}
