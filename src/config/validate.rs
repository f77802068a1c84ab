//! Semantic checks that types cannot express; each problem names its key and what is allowed.

use super::{Config, DataKind, ScheduleKind};

/// Every problem in `c`, as `key: message`; empty when the config is valid.
pub fn problems(c: &Config) -> Vec<String> {
    let mut p = Vec::new();
    let mut check = |ok: bool, key: &str, msg: String| {
        if !ok {
            p.push(format!("{key}: {msg}"));
        }
    };
    let m = &c.model;
    check(
        m.width >= 1,
        "model.width",
        format!("must be >= 1, got {}", m.width),
    );
    check(
        (0.0..1.0).contains(&m.dropout),
        "model.dropout",
        format!("must be in [0, 1), got {}", m.dropout),
    );
    check(
        m.num_classes != 1,
        "model.num_classes",
        "must be 0 (from the data) or >= 2, got 1".into(),
    );

    let d = &c.data;
    check(
        d.image_size >= 8,
        "data.image_size",
        format!("must be >= 8, got {}", d.image_size),
    );
    check(
        (2..=6).contains(&d.num_shapes),
        "data.num_shapes",
        format!(
            "must be 2..=6 (circle, square, triangle, cross, ring, bar), got {}",
            d.num_shapes
        ),
    );
    if d.kind == DataKind::Shapes {
        check(
            d.train_size >= 1,
            "data.train_size",
            format!("must be >= 1, got {}", d.train_size),
        );
        check(
            d.val_size >= 1,
            "data.val_size",
            format!("must be >= 1, got {}", d.val_size),
        );
    } else {
        check(
            !d.root.is_empty(),
            "data.root",
            format!("is required for data.kind = {:?}", d.kind),
        );
    }
    check(
        (0.0..1.0).contains(&d.val_fraction),
        "data.val_fraction",
        format!("must be in [0, 1), got {}", d.val_fraction),
    );
    check(
        d.prefetch >= 1,
        "data.prefetch",
        format!("must be >= 1, got {}", d.prefetch),
    );
    check(
        d.std.iter().all(|s| *s > 0.0),
        "data.std",
        format!("every value must be > 0, got {:?}", d.std),
    );
    check(
        d.crop_fraction > 0.0 && d.crop_fraction <= 1.0,
        "data.crop_fraction",
        format!("must be in (0, 1], got {}", d.crop_fraction),
    );
    check(
        d.max_image_side >= 1,
        "data.max_image_side",
        "must be >= 1".into(),
    );
    let a = &d.augment;
    check(
        a.scale[0] > 0.0 && a.scale[0] <= a.scale[1] && a.scale[1] <= 1.0,
        "data.augment.scale",
        format!("must be 0 < min <= max <= 1, got {:?}", a.scale),
    );
    check(
        a.ratio[0] > 0.0 && a.ratio[0] <= a.ratio[1],
        "data.augment.ratio",
        format!("must be 0 < min <= max, got {:?}", a.ratio),
    );
    check(
        (0.0..=1.0).contains(&a.hflip),
        "data.augment.hflip",
        format!("must be a probability in [0, 1], got {}", a.hflip),
    );
    check(
        (0.0..=1.0).contains(&a.color_jitter),
        "data.augment.color_jitter",
        format!("must be in [0, 1], got {}", a.color_jitter),
    );

    let o = &c.optimizer;
    check(
        o.lr > 0.0 && o.lr.is_finite(),
        "optimizer.lr",
        format!("must be > 0, got {}", o.lr),
    );
    check(
        (0.0..1.0).contains(&o.momentum),
        "optimizer.momentum",
        format!("must be in [0, 1), got {}", o.momentum),
    );
    check(
        o.weight_decay >= 0.0,
        "optimizer.weight_decay",
        format!("must be >= 0, got {}", o.weight_decay),
    );
    check(
        o.betas.iter().all(|b| (0.0..1.0).contains(b)),
        "optimizer.betas",
        format!("each must be in [0, 1), got {:?}", o.betas),
    );
    check(
        o.eps > 0.0,
        "optimizer.eps",
        format!("must be > 0, got {}", o.eps),
    );
    check(
        !o.nesterov || o.momentum > 0.0,
        "optimizer.nesterov",
        "needs optimizer.momentum > 0".into(),
    );
    for (i, g) in o.groups.iter().enumerate() {
        check(
            !g.prefixes.is_empty(),
            &format!("optimizer.groups[{i}].prefixes"),
            "must name at least one prefix".into(),
        );
        check(
            g.lr_scale >= 0.0,
            &format!("optimizer.groups[{i}].lr_scale"),
            format!("must be >= 0, got {}", g.lr_scale),
        );
    }

    let s = &c.schedule;
    check(
        s.warmup_epochs >= 0.0,
        "schedule.warmup_epochs",
        format!("must be >= 0, got {}", s.warmup_epochs),
    );
    check(
        s.warmup_factor > 0.0 && s.warmup_factor <= 1.0,
        "schedule.warmup_factor",
        format!("must be in (0, 1], got {}", s.warmup_factor),
    );
    check(
        s.gamma > 0.0 && s.gamma <= 1.0,
        "schedule.gamma",
        format!("must be in (0, 1], got {}", s.gamma),
    );
    check(
        (0.0..=1.0).contains(&s.min_lr_factor),
        "schedule.min_lr_factor",
        format!("must be in [0, 1], got {}", s.min_lr_factor),
    );
    check(
        s.pct_start > 0.0 && s.pct_start < 1.0,
        "schedule.pct_start",
        format!("must be in (0, 1), got {}", s.pct_start),
    );
    if s.name == ScheduleKind::Step {
        check(
            s.step_epochs >= 1,
            "schedule.step_epochs",
            format!("must be >= 1, got {}", s.step_epochs),
        );
    }
    if s.name == ScheduleKind::Multistep {
        check(
            !s.milestones.is_empty(),
            "schedule.milestones",
            "must list at least one epoch for multistep".into(),
        );
        check(
            s.milestones.windows(2).all(|w| w[0] < w[1]),
            "schedule.milestones",
            format!("must be increasing, got {:?}", s.milestones),
        );
    }

    check(
        m.unfreeze_at_epoch <= c.train.epochs,
        "model.unfreeze_at_epoch",
        format!(
            "must be at most train.epochs ({}), got {}",
            c.train.epochs, m.unfreeze_at_epoch
        ),
    );
    check(
        m.unfreeze_at_epoch == 0 || !m.freeze.is_empty(),
        "model.unfreeze_at_epoch",
        "needs model.freeze to name what to unfreeze".into(),
    );
    let t = &c.train;
    check(
        t.epochs >= 1,
        "train.epochs",
        format!("must be >= 1, got {}", t.epochs),
    );
    check(
        t.batch_size >= 1,
        "train.batch_size",
        format!("must be >= 1, got {}", t.batch_size),
    );
    check(
        t.accumulate >= 1,
        "train.accumulate",
        format!("must be >= 1, got {}", t.accumulate),
    );
    check(
        (0.0..1.0).contains(&t.label_smoothing),
        "train.label_smoothing",
        format!("must be in [0, 1), got {}", t.label_smoothing),
    );
    check(
        t.grad_clip >= 0.0,
        "train.grad_clip",
        format!("must be >= 0, got {}", t.grad_clip),
    );
    check(
        (0.0..1.0).contains(&t.ema_decay),
        "train.ema_decay",
        format!("must be in [0, 1), got {}", t.ema_decay),
    );
    check(
        t.mixup_alpha >= 0.0,
        "train.mixup_alpha",
        format!("must be >= 0, got {}", t.mixup_alpha),
    );
    check(
        t.cutmix_alpha >= 0.0,
        "train.cutmix_alpha",
        format!("must be >= 0, got {}", t.cutmix_alpha),
    );
    let device = crate::device::DeviceSpec::parse(&t.device);
    check(
        device.is_ok(),
        "train.device",
        device.err().unwrap_or_default(),
    );

    let k = &c.checkpoint;
    let ema_monitor = k.monitor == "val_acc_ema" || k.monitor == "val_loss_ema";
    check(
        k.monitor == "val_acc" || k.monitor == "val_loss" || (ema_monitor && t.ema_decay > 0.0),
        "checkpoint.monitor",
        if ema_monitor {
            format!("`{}` needs train.ema_decay > 0", k.monitor)
        } else {
            format!(
                "must be one of val_acc, val_loss, val_acc_ema, val_loss_ema, got `{}`",
                k.monitor
            )
        },
    );
    check(
        !k.dir.is_empty(),
        "checkpoint.dir",
        "must not be empty".into(),
    );
    check(
        !k.name.contains('/') && k.name != "." && k.name != "..",
        "checkpoint.name",
        format!("must be a plain directory name, got `{}`", k.name),
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
