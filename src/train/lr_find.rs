//! The learning-rate range test (Smith 2015; fastai's `lr_find`, Lightning's `lr_find`):
//! train the config's model, data and optimizer for a few hundred steps while the learning
//! rate grows exponentially from `start` to `end`, record the loss, stop once it diverges,
//! and suggest the rate where the smoothed loss falls fastest (Lightning's suggestion).
//!
//! Everything is built in memory as [`super::Trainer`] builds it (pretrained weights,
//! freezing, channels-last, autocast, fp16 loss scaling, per-group rates), each step is the
//! trainer's own forward, backward and update, and nothing is written: no run directory,
//! no checkpoint; the weights file it starts from is only read.

use super::session::{self, RunDir};
use super::Trainer;
use crate::config::Config;
use crate::models::ModelSpec;
use tch::Kind;

/// How the range test runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrFindOptions {
    /// The first learning rate (of the base group; other groups keep their `lr_scale`).
    pub start: f64,
    /// The last learning rate.
    pub end: f64,
    /// Steps from `start` to `end` (at most; the test stops when the loss diverges).
    pub steps: usize,
    /// Stop once the smoothed loss exceeds this multiple of the best smoothed loss.
    pub diverge: f64,
}

impl Default for LrFindOptions {
    /// fastai's and Lightning's defaults: 1e-7 to 10 over 100 steps, stop at 4x the best.
    fn default() -> Self {
        LrFindOptions {
            start: 1e-7,
            end: 10.0,
            steps: 100,
            diverge: 4.0,
        }
    }
}

impl LrFindOptions {
    /// Checks the options: `0 < start < end <= 1e6`, 10 to 10000 steps, `diverge` in
    /// (1, 100].
    pub fn check(&self) -> crate::Result<()> {
        let mut problems = Vec::new();
        if !(self.start > 0.0 && self.start < self.end && self.end <= 1e6) {
            problems.push(format!(
                "--start {} and --end {}: need 0 < start < end <= 1e6",
                self.start, self.end
            ));
        }
        if !(10..=10_000).contains(&self.steps) {
            problems.push(format!("--steps {}: must be in [10, 10000]", self.steps));
        }
        if !(self.diverge > 1.0 && self.diverge <= 100.0) {
            problems.push(format!("--diverge {}: must be in (1, 100]", self.diverge));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(crate::Error::Other(problems.join("; "))),
        }
    }
}

/// What the range test measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LrFind {
    /// The learning rate of each step taken.
    pub lrs: Vec<f64>,
    /// The training loss of each step.
    pub losses: Vec<f64>,
    /// The smoothed loss (exponential moving average, bias-corrected, beta 0.98).
    pub smoothed: Vec<f64>,
    /// The suggested learning rate: the steepest descent of the smoothed loss.
    pub suggestion: f64,
    /// The step index of the suggestion.
    pub suggestion_index: usize,
    /// Whether the test stopped because the loss diverged (else it reached `end`).
    pub diverged: bool,
}

/// Runs the range test for `config` (hondo's model `model.arch`, or `spec`).
pub fn lr_find(
    config: Config,
    spec: Option<ModelSpec>,
    opts: &LrFindOptions,
) -> crate::Result<LrFind> {
    opts.check()?;
    let mut t = Trainer::new(config);
    if let Some(spec) = spec {
        t = t.model(spec);
    }
    crate::error::boundary(|| run(&mut t, opts))
}

const BETA: f64 = 0.98;

fn run(t: &mut Trainer, opts: &LrFindOptions) -> anyhow::Result<LrFind> {
    let (mut s, _) = session::prepare(t, RunDir::None, None)?;
    let ratio = (opts.end / opts.start).powf(1.0 / (opts.steps - 1) as f64);
    let (mut lrs, mut losses, mut smoothed) = (Vec::new(), Vec::new(), Vec::new());
    let (mut avg, mut best) = (0.0f64, f64::INFINITY);
    let mut diverged = false;
    let mut epoch = 0;
    'outer: loop {
        let mut any = false;
        for batch in s.train.epoch(epoch, 0) {
            let batch = batch.map_err(crate::data::loader::LoadError::in_training)?;
            if batch.labels.size()[0] == 0 {
                continue;
            }
            any = true;
            let i = lrs.len();
            let lr = opts.start * ratio.powi(i as i32);
            let x = s.normalize.apply(&batch.images);
            let y = batch.labels.to_device(s.device);
            let (_, loss) = s.forward_loss(&x, &y, None)?;
            s.backward(&loss)?;
            s.update(lr, None)?;
            let value = loss.to_kind(Kind::Double).double_value(&[]);
            lrs.push(lr);
            losses.push(value);
            if !value.is_finite() {
                diverged = true;
                smoothed.push(f64::INFINITY);
                break 'outer;
            }
            avg = BETA * avg + (1.0 - BETA) * value;
            let smooth = avg / (1.0 - BETA.powi(i as i32 + 1));
            smoothed.push(smooth);
            best = best.min(smooth);
            if i > 0 && smooth > opts.diverge * best {
                diverged = true;
                break 'outer;
            }
            if lrs.len() == opts.steps {
                break 'outer;
            }
        }
        if !any {
            anyhow::bail!("the training set gave no batch");
        }
        epoch += 1;
    }
    let suggestion_index = steepest(&smoothed);
    Ok(LrFind {
        suggestion: lrs[suggestion_index],
        suggestion_index,
        lrs,
        losses,
        smoothed,
        diverged,
    })
}

/// Index of the steepest descent of `smoothed` (central differences, as `np.gradient`) on
/// the way down to its minimum: points past the minimum are noise of a loss that no longer
/// falls, and the first tenth (at least 1) is skipped as Lightning skips 10 of its 100.
fn steepest(smoothed: &[f64]) -> usize {
    let n = smoothed.len();
    if n < 3 {
        return 0;
    }
    let minimum = (0..n)
        .filter(|&i| smoothed[i].is_finite())
        .min_by(|&a, &b| smoothed[a].total_cmp(&smoothed[b]))
        .unwrap_or(0);
    let skip_begin = (n / 10).max(1);
    let grad = |i: usize| -> f64 {
        if i == 0 {
            smoothed[1] - smoothed[0]
        } else if i == n - 1 {
            smoothed[n - 1] - smoothed[n - 2]
        } else {
            (smoothed[i + 1] - smoothed[i - 1]) / 2.0
        }
    };
    (skip_begin.min(minimum)..=minimum.min(n - 2))
        .filter(|&i| grad(i).is_finite())
        .min_by(|&a, &b| grad(a).total_cmp(&grad(b)))
        .unwrap_or(minimum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suggestion_is_the_steepest_descent() {
        // Flat, then falling fastest around index 6, then rising.
        let s = [3.0, 3.0, 3.0, 2.9, 2.7, 2.3, 1.6, 1.0, 0.8, 0.9, 2.0, 5.0];
        assert_eq!(steepest(&s), 6);
        // A fall after the minimum (noise of a loss that has stopped falling) is not it.
        let s = [3.0, 3.0, 2.8, 2.2, 2.1, 2.05, 4.0, 3.0, 2.6, 3.5];
        assert_eq!(steepest(&s), 2);
        assert_eq!(steepest(&[1.0, 2.0]), 0);
    }

    #[test]
    fn options_are_checked() {
        assert!(LrFindOptions::default().check().is_ok());
        let bad = LrFindOptions {
            start: 1.0,
            end: 0.1,
            steps: 5,
            diverge: 1.0,
        };
        let e = bad.check().unwrap_err().to_string();
        assert!(
            e.contains("--start") && e.contains("--steps") && e.contains("--diverge"),
            "{e}"
        );
    }
}
