//! Semantic checks that types cannot express; each problem names its key and what is allowed.
//!
//! Every number has a finite range, checked by [`Problems::range`] (also the place where NaN
//! and infinities fail: they are in no finite range). The ranges are documented on the
//! fields in `config/mod.rs`; they bound what sizes memory, threads and loops, so a typo of a
//! few digits is an error here instead of an abort, a hang or an out-of-memory kill later.

use super::{Config, DataKind, MonitorMode, ScheduleKind};
use std::fmt::Display;
use std::ops::{Bound, RangeBounds};

/// Epochs (and epoch counts such as milestones, patience) are at most this.
pub(crate) const MAX_EPOCHS: usize = 10_000;
/// The largest integer TOML can write: seeds above it could not round-trip `hondo config`.
const MAX_TOML_INT: u64 = i64::MAX as u64;

/// The problems found so far, as `key: message`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn fail(&mut self, key: &str, msg: impl Display) {
        self.0.push(format!("{key}: {msg}"));
    }

    fn check(&mut self, ok: bool, key: &str, msg: impl Display) {
        if !ok {
            self.fail(key, msg);
        }
    }

    /// `value` must lie in `range` (finite bounds; NaN lies in none): the message names the
    /// key, the range in interval notation and the value.
    fn range<T, R>(&mut self, key: &str, value: T, range: R)
    where
        T: PartialOrd + Display,
        R: RangeBounds<T>,
    {
        if !range.contains(&value) {
            self.fail(key, format!("must be in {}, got {value}", interval(&range)));
        }
    }

    /// As [`Problems::range`] for each element, named `key[i]`.
    fn each<T, R>(&mut self, key: &str, values: &[T], range: R)
    where
        T: PartialOrd + Display + Copy,
        R: RangeBounds<T> + Clone,
    {
        for (i, v) in values.iter().enumerate() {
            self.range(&format!("{key}[{i}]"), *v, range.clone());
        }
    }
}

/// `[a, b]`, `(a, b)`, `[a, b)`... of a range.
fn interval<T: Display, R: RangeBounds<T>>(r: &R) -> String {
    let lo = match r.start_bound() {
        Bound::Included(v) => format!("[{v}"),
        Bound::Excluded(v) => format!("({v}"),
        Bound::Unbounded => "(-inf".into(),
    };
    let hi = match r.end_bound() {
        Bound::Included(v) => format!("{v}]"),
        Bound::Excluded(v) => format!("{v})"),
        Bound::Unbounded => "inf)".into(),
    };
    format!("{lo}, {hi}")
}

/// `(lo, hi]`: std has no syntax for an excluded start.
fn above<T>(lo: T, hi: T) -> (Bound<T>, Bound<T>) {
    (Bound::Excluded(lo), Bound::Included(hi))
}

/// `(lo, hi)`.
fn between<T>(lo: T, hi: T) -> (Bound<T>, Bound<T>) {
    (Bound::Excluded(lo), Bound::Excluded(hi))
}

/// Every problem in `c`, as `key: message`; empty when the config is valid.
pub fn problems(c: &Config) -> Vec<String> {
    let mut p = Problems::default();
    let m = &c.model;
    p.range("model.width", m.width, 1..=1024);
    p.range("model.dropout", m.dropout, 0.0..1.0);
    if let Some(n) = m.num_classes {
        p.range("model.num_classes", n, 2..=100_000);
    }
    if let Some(path) = &m.pretrained {
        p.check(!path.is_empty(), "model.pretrained", "must not be empty");
    }

    let d = &c.data;
    p.range("data.image_size", d.image_size, 8..=4096);
    p.check(
        (2..=6).contains(&d.num_shapes),
        "data.num_shapes",
        format!(
            "must be 2..=6 (circle, square, triangle, cross, ring, bar), got {}",
            d.num_shapes
        ),
    );
    if d.kind == DataKind::Shapes {
        p.range("data.train_size", d.train_size, 1..=10_000_000);
        p.range("data.val_size", d.val_size, 1..=10_000_000);
    } else {
        p.check(
            !d.root.is_empty(),
            "data.root",
            format!("is required for data.kind = {:?}", d.kind),
        );
    }
    p.range("data.val_fraction", d.val_fraction, 0.0..1.0);
    p.range("data.seed", d.seed, 0..=MAX_TOML_INT);
    p.range("data.workers", d.workers, 0..=256);
    p.range("data.prefetch", d.prefetch, 1..=64);
    p.each("data.mean", &d.mean, 0.0..=1.0);
    p.each("data.std", &d.std, 0.001..=10.0);
    p.range("data.crop_fraction", d.crop_fraction, 0.25..=1.0);
    p.range("data.max_image_side", d.max_image_side, 1..=65_536);
    let a = &d.augment;
    p.each("data.augment.scale", &a.scale, above(0.0, 1.0));
    p.check(
        a.scale[0].partial_cmp(&a.scale[1]) != Some(std::cmp::Ordering::Greater),
        "data.augment.scale",
        format!("must be [min, max] with min <= max, got {:?}", a.scale),
    );
    p.each("data.augment.ratio", &a.ratio, 0.1..=10.0);
    p.check(
        a.ratio[0].partial_cmp(&a.ratio[1]) != Some(std::cmp::Ordering::Greater),
        "data.augment.ratio",
        format!("must be [min, max] with min <= max, got {:?}", a.ratio),
    );
    p.range("data.augment.hflip", a.hflip, 0.0..=1.0);
    p.range("data.augment.color_jitter", a.color_jitter, 0.0..=1.0);

    let o = &c.optimizer;
    p.range("optimizer.lr", o.lr, above(0.0, 1e6));
    p.range("optimizer.momentum", o.momentum, 0.0..1.0);
    p.range("optimizer.weight_decay", o.weight_decay, 0.0..=1.0);
    p.each("optimizer.betas", &o.betas, 0.0..1.0);
    p.range("optimizer.eps", o.eps, above(0.0, 1.0));
    p.check(
        !o.nesterov || o.momentum > 0.0,
        "optimizer.nesterov",
        "needs optimizer.momentum > 0",
    );
    for (i, g) in o.groups.iter().enumerate() {
        p.check(
            !g.prefixes.is_empty(),
            &format!("optimizer.groups[{i}].prefixes"),
            "must name at least one prefix",
        );
        p.range(
            &format!("optimizer.groups[{i}].lr_scale"),
            g.lr_scale,
            0.0..=1000.0,
        );
        if let Some(wd) = g.weight_decay {
            p.range(
                &format!("optimizer.groups[{i}].weight_decay"),
                wd,
                0.0..=1.0,
            );
        }
    }

    let s = &c.schedule;
    p.range(
        "schedule.warmup_epochs",
        s.warmup_epochs,
        0.0..=MAX_EPOCHS as f64,
    );
    p.range("schedule.warmup_factor", s.warmup_factor, above(0.0, 1.0));
    p.range("schedule.gamma", s.gamma, above(0.0, 1.0));
    p.range("schedule.min_lr_factor", s.min_lr_factor, 0.0..=1.0);
    p.range("schedule.pct_start", s.pct_start, between(0.0, 1.0));
    p.range("schedule.step_epochs", s.step_epochs, 1..=MAX_EPOCHS);
    p.each("schedule.milestones", &s.milestones, 1..=MAX_EPOCHS);
    if s.name == ScheduleKind::Multistep {
        p.check(
            !s.milestones.is_empty(),
            "schedule.milestones",
            "must list at least one epoch for multistep",
        );
    }
    p.check(
        s.milestones.windows(2).all(|w| w[0] < w[1]),
        "schedule.milestones",
        format!("must be increasing, got {:?}", s.milestones),
    );

    let t = &c.train;
    if let Some(e) = m.unfreeze_at_epoch {
        p.range("model.unfreeze_at_epoch", e, 1..=t.epochs.max(1));
        p.check(
            !m.freeze.is_empty(),
            "model.unfreeze_at_epoch",
            "needs model.freeze to name what to unfreeze",
        );
    }
    p.range("train.epochs", t.epochs, 1..=MAX_EPOCHS);
    p.range("train.batch_size", t.batch_size, 1..=65_536);
    p.range("train.seed", t.seed, 0..=MAX_TOML_INT);
    p.range("train.threads", t.threads, 0..=1024);
    p.range("train.accumulate", t.accumulate, 1..=1024);
    p.range("train.log_every", t.log_every, 0..=1_000_000);
    p.range("train.sync_every", t.sync_every, 0..=10_000);
    p.range(
        "train.early_stop_patience",
        t.early_stop_patience,
        0..=MAX_EPOCHS,
    );
    p.range("train.label_smoothing", t.label_smoothing, 0.0..1.0);
    p.range("train.grad_clip", t.grad_clip, 0.0..=1e6);
    p.range("train.ema_decay", t.ema_decay, 0.0..1.0);
    p.range("train.dist_timeout_s", t.dist_timeout_s, 1.0..=86_400.0);
    p.range(
        "train.dist_bucket_mib",
        t.dist_bucket_mib,
        above(0.0, 1024.0),
    );
    p.range("train.mixup_alpha", t.mixup_alpha, 0.0..=100.0);
    p.range("train.cutmix_alpha", t.cutmix_alpha, 0.0..=100.0);

    let k = &c.checkpoint;
    p.check(
        !k.monitor.needs_ema() || t.ema_decay > 0.0,
        "checkpoint.monitor",
        format!("`{}` needs train.ema_decay > 0", k.monitor),
    );
    if let Some(mode) = k.mode {
        let natural = k.monitor.mode();
        p.check(
            mode == natural,
            "checkpoint.mode",
            format!(
                "`{}` contradicts checkpoint.monitor = `{}`, which improves by going {} \
                 (leave checkpoint.mode unset to infer it)",
                mode_name(mode),
                k.monitor,
                if natural == MonitorMode::Max {
                    "up (max)"
                } else {
                    "down (min)"
                },
            ),
        );
    }
    p.range("checkpoint.keep_top_k", k.keep_top_k, 0..=1000);
    p.range("checkpoint.every_steps", k.every_steps, 0..=1_000_000_000);
    p.range(
        "checkpoint.tensorboard_every_steps",
        k.tensorboard_every_steps,
        1..=1_000_000,
    );
    p.check(!k.dir.is_empty(), "checkpoint.dir", "must not be empty");
    if let Some(name) = &k.name {
        p.check(
            !name.is_empty() && !name.contains('/') && name != "." && name != "..",
            "checkpoint.name",
            format!("must be a plain directory name, got `{name}`"),
        );
    }
    p.0
}

fn mode_name(m: MonitorMode) -> &'static str {
    match m {
        MonitorMode::Max => "max",
        MonitorMode::Min => "min",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, Monitor, Override};

    #[test]
    fn defaults_are_valid() {
        assert_eq!(problems(&Config::default()), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut c = Config::default();
        c.optimizer.lr = 0.0;
        c.train.batch_size = 0;
        let p = problems(&c);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("optimizer.lr:"));
        assert!(p[1].starts_with("train.batch_size:"));
    }

    #[test]
    fn intervals_read_as_written() {
        assert_eq!(interval(&(1..=4)), "[1, 4]");
        assert_eq!(interval(&(0.0..1.0)), "[0, 1)");
        assert_eq!(interval(&above(0.0, 10.0)), "(0, 10]");
        assert_eq!(interval(&between(0.0, 1.0)), "(0, 1)");
    }

    /// The message of loading `set` over an empty file, or "" when it loads.
    fn load_err(set: &[&str]) -> String {
        let o: Vec<Override> = set.iter().map(|s| s.parse().unwrap()).collect();
        match load_str("", "t.toml", &o) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    /// `key=value` is refused, the message naming the key, `range` and the value as shown.
    fn refused(kv: &str, range: &str, shown: &str) {
        let e = load_err(&[kv]);
        let key = kv.split('=').next().unwrap();
        let key = key.split('[').next().unwrap();
        assert!(e.contains(key), "{kv}: no key in {e:?}");
        assert!(e.contains(range), "{kv}: no range {range} in {e:?}");
        assert!(
            e.contains(&format!("got {shown}")),
            "{kv}: no value in {e:?}"
        );
    }

    #[test]
    fn sizes_of_memory_and_threads_are_bounded() {
        refused("data.image_size=100000", "[8, 4096]", "100000");
        refused("model.width=100000", "[1, 1024]", "100000");
        refused("model.num_classes=10000000", "[2, 100000]", "10000000");
        refused("model.num_classes=1", "[2, 100000]", "1");
        refused("data.workers=100000", "[0, 256]", "100000");
        refused("train.threads=100000", "[0, 1024]", "100000");
        refused("data.prefetch=100000", "[1, 64]", "100000");
        refused("data.prefetch=0", "[1, 64]", "0");
        refused("train.batch_size=1000000", "[1, 65536]", "1000000");
        refused("train.accumulate=100000", "[1, 1024]", "100000");
        refused("train.sync_every=1000000000", "[0, 10000]", "1000000000");
        refused(
            "data.train_size=100000000000",
            "[1, 10000000]",
            "100000000000",
        );
        refused("data.max_image_side=1000000", "[1, 65536]", "1000000");
    }

    #[test]
    fn counts_of_epochs_and_steps_are_bounded() {
        refused("train.epochs=100000000", "[1, 10000]", "100000000");
        refused("train.log_every=10000000000", "[0, 1000000]", "10000000000");
        refused("train.early_stop_patience=100000", "[0, 10000]", "100000");
        refused("checkpoint.keep_top_k=100000", "[0, 1000]", "100000");
        refused("checkpoint.tensorboard_every_steps=0", "[1, 1000000]", "0");
        refused(
            "checkpoint.every_steps=10000000000",
            "[0, 1000000000]",
            "10000000000",
        );
        refused("schedule.step_epochs=0", "[1, 10000]", "0");
        refused("schedule.milestones=[5, 100000]", "[1, 10000]", "100000");
        assert!(load_err(&["train.seed=-1"]).contains("train.seed"));
    }

    #[test]
    fn non_finite_floats_are_refused_everywhere() {
        // TOML's own `inf`, `-inf` and `nan` literals, through --set as through a file.
        for (key, range) in [
            ("train.mixup_alpha", "[0, 100]"),
            ("train.cutmix_alpha", "[0, 100]"),
            ("train.label_smoothing", "[0, 1)"),
            ("train.grad_clip", "[0, 1000000]"),
            ("train.ema_decay", "[0, 1)"),
            ("train.dist_timeout_s", "[1, 86400]"),
            ("train.dist_bucket_mib", "(0, 1024]"),
            ("schedule.warmup_epochs", "[0, 10000]"),
            ("schedule.warmup_factor", "(0, 1]"),
            ("schedule.gamma", "(0, 1]"),
            ("schedule.min_lr_factor", "[0, 1]"),
            ("schedule.pct_start", "(0, 1)"),
            ("optimizer.lr", "(0, 1000000]"),
            ("optimizer.momentum", "[0, 1)"),
            ("optimizer.weight_decay", "[0, 1]"),
            ("optimizer.eps", "(0, 1]"),
            ("model.dropout", "[0, 1)"),
            ("data.crop_fraction", "[0.25, 1]"),
            ("data.val_fraction", "[0, 1)"),
            ("data.augment.hflip", "[0, 1]"),
            ("data.augment.color_jitter", "[0, 1]"),
        ] {
            refused(&format!("{key}=inf"), range, "inf");
            refused(&format!("{key}=nan"), range, "NaN");
            refused(&format!("{key}=-inf"), range, "-inf");
        }
    }

    #[test]
    fn arrays_name_the_element() {
        refused("data.mean=[0.5, nan, 0.5]", "[0, 1]", "NaN");
        assert!(load_err(&["data.mean=[0.5, nan, 0.5]"]).contains("data.mean[1]"));
        refused("data.std=[0.2, 0.2, inf]", "[0.001, 10]", "inf");
        assert!(load_err(&["data.std=[0.2, 0.2, inf]"]).contains("data.std[2]"));
        refused("data.std=[0.2, 0, 0.2]", "[0.001, 10]", "0");
        refused("optimizer.betas=[0.9, 1.0]", "[0, 1)", "1");
        refused("data.augment.scale=[0.5, inf]", "(0, 1]", "inf");
        refused("data.augment.ratio=[nan, 1.0]", "[0.1, 10]", "NaN");
        assert!(load_err(&["data.augment.scale=[0.9, 0.5]"]).contains("min <= max"));
    }

    #[test]
    fn optional_values_are_checked_when_set() {
        let group = "optimizer.groups=[{prefixes=[\"fc\"], weight_decay=inf}]";
        refused(group, "[0, 1]", "inf");
        assert!(load_err(&[group]).contains("optimizer.groups[0].weight_decay"));
        let group = "optimizer.groups=[{prefixes=[\"fc\"], lr_scale=nan}]";
        assert!(load_err(&[group]).contains("optimizer.groups[0].lr_scale"));
        refused("model.unfreeze_at_epoch=9", "[1, 8]", "9");
    }

    #[test]
    fn a_file_with_inf_and_nan_literals_is_refused_naming_the_keys() {
        let e = load_str(
            "[train]\nmixup_alpha = inf\n[data]\nmean = [nan, 0.4, 0.4]\n",
            "f.toml",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("f.toml"), "{e}");
        assert!(
            e.contains("train.mixup_alpha: must be in [0, 100], got inf"),
            "{e}"
        );
        assert!(
            e.contains("data.mean[0]: must be in [0, 1], got NaN"),
            "{e}"
        );
    }

    #[test]
    fn monitor_mode_is_inferred_and_a_contradiction_refused() {
        let c = load_str("[checkpoint]\nmonitor = \"val_loss\"\n", "m.toml", &[]).unwrap();
        assert_eq!(c.checkpoint.monitor, Monitor::ValLoss);
        assert_eq!(c.checkpoint.mode, None);
        assert_eq!(c.checkpoint.mode(), MonitorMode::Min);
        let c = load_str("[checkpoint]\nmonitor = \"train_acc\"\n", "m.toml", &[]).unwrap();
        assert_eq!(c.checkpoint.mode(), MonitorMode::Max);
        let c = load_str(
            "[checkpoint]\nmonitor = \"val_loss\"\nmode = \"min\"\n",
            "m.toml",
            &[],
        )
        .unwrap();
        assert_eq!(c.checkpoint.mode(), MonitorMode::Min);
        let e = load_str(
            "[checkpoint]\nmonitor = \"val_loss\"\nmode = \"max\"\n",
            "m.toml",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("checkpoint.mode"), "{e}");
        assert!(e.contains("checkpoint.monitor = `val_loss`"), "{e}");
        let e = load_err(&["checkpoint.monitor=val_acc_ema"]);
        assert!(e.contains("needs train.ema_decay > 0"), "{e}");
        let e = load_err(&["checkpoint.monitor=acc"]);
        assert!(e.contains("checkpoint.monitor"), "{e}");
        assert!(e.contains("val_acc, val_loss, train_acc"), "{e}");
    }
}
