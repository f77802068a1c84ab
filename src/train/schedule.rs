//! Learning-rate schedules, evaluated per optimizer step: a factor of the peak rate.

use crate::config::{ScheduleConfig, ScheduleKind};
use std::f64::consts::PI;

/// A schedule bound to a run's length.
#[derive(Debug, Clone)]
pub struct Schedule {
    cfg: ScheduleConfig,
    steps_per_epoch: usize,
    total_steps: usize,
    warmup_steps: usize,
}

impl Schedule {
    /// `cfg` over `epochs` epochs of `steps_per_epoch` optimizer steps (at least 1).
    /// Warm-up lasts `cfg.warmup_epochs` (rounded to whole steps, at most the run); none
    /// for one-cycle, which warms up by itself.
    pub fn new(cfg: &ScheduleConfig, steps_per_epoch: usize, epochs: usize) -> Schedule {
        let steps_per_epoch = steps_per_epoch.max(1);
        let total_steps = steps_per_epoch * epochs;
        let warmup_steps = if cfg.name == ScheduleKind::OneCycle {
            0 // one-cycle has its own warm-up phase
        } else {
            ((cfg.warmup_epochs * steps_per_epoch as f64).round() as usize).min(total_steps)
        };
        Schedule {
            cfg: cfg.clone(),
            steps_per_epoch,
            total_steps,
            warmup_steps,
        }
    }

    /// Factor of the peak learning rate at optimizer step `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        let c = &self.cfg;
        if step < self.warmup_steps {
            let t = step as f64 / self.warmup_steps as f64;
            return c.warmup_factor + (1.0 - c.warmup_factor) * t;
        }
        let epoch = step / self.steps_per_epoch;
        let cosine = |from: f64, to: f64, t: f64| {
            to + (from - to) * 0.5 * (1.0 + (PI * t.clamp(0.0, 1.0)).cos())
        };
        match c.name {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Step => c.gamma.powi((epoch / c.step_epochs.max(1)) as i32),
            ScheduleKind::Multistep => c
                .gamma
                .powi(c.milestones.iter().filter(|m| **m <= epoch).count() as i32),
            ScheduleKind::Cosine => {
                let span = (self.total_steps - self.warmup_steps).max(1) as f64;
                cosine(
                    1.0,
                    c.min_lr_factor,
                    (step - self.warmup_steps) as f64 / span,
                )
            }
            ScheduleKind::OneCycle => {
                // As torch's OneCycleLR (cosine): from peak/25 up to the peak, then down.
                let up = ((c.pct_start * self.total_steps as f64) as usize).max(1);
                if step < up {
                    cosine(1.0 / 25.0, 1.0, step as f64 / up as f64)
                } else {
                    let span = (self.total_steps - up).max(1) as f64;
                    cosine(1.0, c.min_lr_factor, (step - up) as f64 / span)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(name: ScheduleKind, warmup: f64) -> Schedule {
        let cfg = ScheduleConfig {
            name,
            warmup_epochs: warmup,
            milestones: vec![2, 3],
            step_epochs: 2,
            ..Default::default()
        };
        Schedule::new(&cfg, 10, 4)
    }

    #[test]
    fn warmup_is_linear_then_cosine_reaches_the_floor() {
        let s = sched(ScheduleKind::Cosine, 1.0);
        assert!((s.factor(0) - 0.1).abs() < 1e-12);
        assert!((s.factor(5) - 0.55).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        assert!(s.factor(39) < 0.01);
        assert!((0..39).all(|i| i < 10 || s.factor(i + 1) <= s.factor(i)));
    }

    #[test]
    fn step_and_multistep_decay_at_epochs() {
        let s = sched(ScheduleKind::Step, 0.0);
        assert_eq!((s.factor(19), s.factor(20)), (1.0, 0.1));
        let m = sched(ScheduleKind::Multistep, 0.0);
        assert_eq!(m.factor(19), 1.0);
        assert!((m.factor(20) - 0.1).abs() < 1e-12 && (m.factor(30) - 0.01).abs() < 1e-12);
        assert_eq!(sched(ScheduleKind::Constant, 0.0).factor(33), 1.0);
    }

    #[test]
    fn one_cycle_rises_then_falls() {
        let s = sched(ScheduleKind::OneCycle, 1.0);
        assert!((s.factor(0) - 0.04).abs() < 1e-12);
        assert!((s.factor(10) - 1.0).abs() < 1e-12);
        assert!(s.factor(39) < 0.01);
    }
}
