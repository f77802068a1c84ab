//! Which checkpoint files to write and delete after an epoch: a pure function of the
//! metric history, unit-tested without files (burn's checkpointing strategy, timm's saver).

use crate::config::MonitorMode;

/// One file operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Write `last` (always).
    Last,
    /// Write `best` (the monitored metric improved).
    Best,
    /// Keep this epoch among the top k as `epoch-NNNN`.
    Keep(usize),
    /// Delete the `epoch-NNNN` file of this epoch (pushed out of the top k).
    Delete(usize),
}

/// Whether `value` beats `best` in `mode`.
pub fn improves(value: f64, best: Option<f64>, mode: MonitorMode) -> bool {
    match best {
        None => value.is_finite(),
        Some(b) => match mode {
            MonitorMode::Max => value > b,
            MonitorMode::Min => value < b,
        },
    }
}

/// Plans the writes for `epoch` with metric `value`. `best` is the best value so far and
/// `kept` the (epoch, value) pairs now on disk as `epoch-NNNN`; `k` of them are kept.
pub fn plan(
    epoch: usize,
    value: f64,
    mode: MonitorMode,
    best: Option<f64>,
    kept: &[(usize, f64)],
    k: usize,
) -> Vec<Action> {
    let mut actions = vec![Action::Last];
    if improves(value, best, mode) {
        actions.push(Action::Best);
    }
    if k > 0 && value.is_finite() {
        let mut all: Vec<(usize, f64)> =
            kept.iter().copied().filter(|(e, _)| *e != epoch).collect();
        all.push((epoch, value));
        // Best first; ties keep the earlier epoch.
        all.sort_by(|a, b| {
            let ord = a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal);
            let ord = if mode == MonitorMode::Max {
                ord.reverse()
            } else {
                ord
            };
            ord.then(a.0.cmp(&b.0))
        });
        let (keep, drop) = all.split_at(all.len().min(k));
        if keep.iter().any(|(e, _)| *e == epoch) {
            actions.push(Action::Keep(epoch));
        }
        actions.extend(
            drop.iter()
                .filter(|(e, _)| *e != epoch)
                .map(|(e, _)| Action::Delete(*e)),
        );
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    #[test]
    fn best_only_on_improvement() {
        assert_eq!(
            plan(1, 0.5, MonitorMode::Max, None, &[], 0),
            vec![Last, Best]
        );
        assert_eq!(
            plan(2, 0.4, MonitorMode::Max, Some(0.5), &[], 0),
            vec![Last]
        );
        assert_eq!(
            plan(2, 0.4, MonitorMode::Min, Some(0.5), &[], 0),
            vec![Last, Best]
        );
        assert_eq!(
            plan(2, f64::NAN, MonitorMode::Max, None, &[], 2),
            vec![Last]
        );
    }

    #[test]
    fn top_k_keeps_the_best_and_deletes_the_pushed_out() {
        let kept = [(1, 0.5), (2, 0.7)];
        assert_eq!(
            plan(3, 0.6, MonitorMode::Max, Some(0.7), &kept, 2),
            vec![Last, Keep(3), Delete(1)]
        );
        assert_eq!(
            plan(3, 0.4, MonitorMode::Max, Some(0.7), &kept, 2),
            vec![Last]
        );
        assert_eq!(
            plan(3, 0.9, MonitorMode::Max, Some(0.7), &kept, 3),
            vec![Last, Best, Keep(3)]
        );
        assert_eq!(
            plan(3, 0.1, MonitorMode::Min, Some(0.5), &kept, 1),
            vec![Last, Best, Keep(3), Delete(1), Delete(2)]
        );
    }
}
