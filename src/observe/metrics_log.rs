//! `metrics.jsonl`: one JSON line of [`EpochMetrics`] per finished epoch, appended (a
//! resumed run appends to its own file; readers keep the last line of each epoch).

use super::{EpochEnd, Observer, ObserverResult};
use crate::metrics::{self, EpochMetrics, METRICS_FILE};

/// Appends each epoch's metrics to `metrics.jsonl` in the run directory. `hondo plot` and
/// [`super::TrainingCurves`] read that file.
#[derive(Debug, Default, Clone, Copy)]
pub struct MetricsLog;

impl Observer for MetricsLog {
    fn epoch_ended(&mut self, end: &EpochEnd<'_>) -> ObserverResult {
        let path = end.run_dir.join(METRICS_FILE);
        let m: &EpochMetrics = end.metrics;
        metrics::append(&path, m)
            .map_err(|e| format!("cannot append to {}: {e}", path.display()).into())
    }
}
