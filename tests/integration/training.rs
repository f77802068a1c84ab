//! Training through the library: the loss falls, accuracy beats chance, checkpoints
//! round-trip bit-exactly, and a resumed run continues exactly where it stopped.

use super::common::{assert_same_tensors, TINY};
use hondo::checkpoint;
use hondo::config::{load_str, Config, Override};
use hondo::metrics;
use hondo::observe::{EpochEnd, MetricsLog, Observer, ObserverResult};
use hondo::train::{self, Outcome, Trainer};
use std::path::Path;

fn config(extra: &[&str]) -> Config {
    let o: Vec<Override> = extra.iter().map(|s| s.parse().unwrap()).collect();
    load_str(TINY, "tiny.toml", &o).unwrap()
}

/// libtorch's RNG and thread count are process-wide: runs in this binary take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn train_into(dir: &Path, cfg: Config, resume: bool) -> train::Summary {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t = Trainer::new(cfg).observer(MetricsLog);
    let t = if resume { t.resume(dir) } else { t.out(dir) };
    t.run().unwrap()
}

#[test]
fn loss_falls_and_accuracy_beats_chance() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let s = train_into(
        &run,
        config(&["train.epochs=3", "data.train_size=2000"]),
        false,
    );
    assert_eq!(s.outcome, Outcome::Finished);
    let m = metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(m.len(), 3);
    assert!(m[2].train_loss < 0.7 * m[0].train_loss, "{m:?}");
    // Four balanced classes: chance is 25%.
    assert!(m[2].val_acc > 0.5, "{m:?}");
    for f in [
        "last.safetensors",
        "best.safetensors",
        "config.toml",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // The effective config is written beside the run and parses back to the same config.
    let written = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert_eq!(
        load_str(&written, "config.toml", &[]).unwrap(),
        config(&["train.epochs=3", "data.train_size=2000"])
    );
}

#[test]
fn checkpoint_weights_round_trip_bit_exactly() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    train_into(&run, config(&["train.epochs=1"]), false);
    let path = run.join(checkpoint::LAST);
    let file = checkpoint::read(&path).unwrap();
    let restored = checkpoint::restore(&path, tch::Device::Cpu).unwrap();
    let vars = restored.vs.variables();
    assert_eq!(vars.len(), file.model.len());
    for (name, t) in &file.model {
        let v = &vars[name];
        assert_eq!(v.kind(), t.kind(), "{name}");
        assert!(v.equal(t), "{name} differs after loading");
    }
    // Saving the restored model and reading it back gives the same tensors again.
    let names: Vec<_> = vars.into_iter().collect();
    let again = d.path().join("again.safetensors");
    std::fs::write(
        &again,
        checkpoint::to_bytes(&file.meta, &names, &file.optimizer).unwrap(),
    )
    .unwrap();
    let second = checkpoint::read(&again).unwrap();
    assert_eq!(second.meta, file.meta);
    assert_eq!(second.model.len(), file.model.len());
    for ((n1, t1), (n2, t2)) in file.model.iter().zip(&second.model) {
        assert!(
            n1 == n2 && t1.kind() == t2.kind() && t1.equal(t2),
            "{n1} changed on the second round trip"
        );
    }
    assert!(file
        .optimizer
        .iter()
        .any(|(n, _)| n.ends_with(".momentum_buffer")));
}

/// Runs the binary (a process of its own: libtorch's RNG is process-wide, and other tests
/// in this binary draw from it concurrently).
#[test]
fn a_panicking_custom_model_is_an_error_not_a_crash_and_keeps_its_checkpoints() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    // The model panics on its 4th forward pass: the first epoch (2 training batches, one
    // validation batch) and its checkpoint complete.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let spec = hondo::ModelSpec::custom("flaky", |p: &tch::nn::Path, classes| {
        let fc = tch::nn::linear(p / "fc", 3 * 16 * 16, classes, Default::default());
        tch::nn::func_t(move |x, _train| {
            if CALLS.fetch_add(1, Ordering::SeqCst) >= 3 {
                panic!("shape bug in my model");
            }
            x.flatten(1, -1).apply(&fc)
        })
    });
    let cfg = config(&["train.epochs=3", "data.train_size=64", "data.val_size=32"]);
    let per_epoch = 64 / cfg.train.batch_size + 32_usize.div_ceil(cfg.train.batch_size);
    assert_eq!(
        per_epoch, 3,
        "the first epoch (3 passes) finishes, the second panics"
    );
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let err = Trainer::new(cfg).model(spec).out(&run).run().unwrap_err();
    assert!(matches!(err, hondo::Error::Other(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("panic") && msg.contains("shape bug in my model"),
        "{msg}"
    );
    // The first epoch's checkpoint is intact.
    let last = checkpoint::read(&run.join("last.safetensors")).unwrap();
    assert_eq!(last.meta.arch, "flaky");
}

fn hondo_train(cfg: Option<&Path>, args: &[&str]) {
    let mut all: Vec<&std::ffi::OsStr> = cfg.map(|c| c.as_os_str()).into_iter().collect();
    all.push("-q".as_ref());
    all.extend(args.iter().map(std::ffi::OsStr::new));
    super::common::train_ok(&all);
}

/// Stops the run at the end of the first epoch, after its checkpoints and before the
/// observers added after it see the epoch: where a SIGKILL would leave a run whose `last`
/// says "epoch 1 done" and whose `metrics.jsonl` lacks epoch 1.
struct StopAtFirstEpochEnd;

impl Observer for StopAtFirstEpochEnd {
    fn epoch_ended(&mut self, end: &EpochEnd<'_>) -> ObserverResult {
        match end.metrics.epoch {
            1 => Err("stopped here".into()),
            _ => Ok(()),
        }
    }
}

/// Keeps the warnings a run reports.
#[derive(Clone, Default)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Observer for Warnings {
    fn warning(&mut self, text: &str) -> ObserverResult {
        self.0.lock().unwrap().push(text.to_string());
        Ok(())
    }
}

#[test]
fn a_resume_restores_the_metrics_line_lost_after_its_checkpoint_and_cuts_a_torn_one() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let cfg = config(&[
        "train.epochs=2",
        "checkpoint.tensorboard=true",
        "checkpoint.tensorboard_every_steps=1",
    ]);
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let e = Trainer::new(cfg.clone())
        .observer(StopAtFirstEpochEnd)
        .observer(MetricsLog)
        .out(&run)
        .run()
        .unwrap_err();
    assert!(e.to_string().contains("stopped here"), "{e}");
    let meta = checkpoint::read_meta(&run.join(checkpoint::LAST)).unwrap();
    let first = meta
        .last_epoch
        .clone()
        .expect("the checkpoint records epoch 1's line");
    assert_eq!((meta.epoch, meta.batch, first.epoch), (1, 0, 1));
    let log = run.join(metrics::METRICS_FILE);
    assert!(!log.exists(), "MetricsLog never saw epoch 1");
    // And a kill while appending a line leaves a torn one.
    let line = serde_json::to_string(&first).unwrap();
    std::fs::write(&log, &line.as_bytes()[..line.len() / 2]).unwrap();

    let warnings = Warnings::default();
    let s = Trainer::new(cfg)
        .observer(MetricsLog)
        .observer(warnings.clone())
        .resume(&run)
        .run()
        .unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    let m = metrics::read(&log).unwrap();
    assert_eq!(m.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(m[0], first, "epoch 1 as the checkpoint recorded it");
    assert_eq!(m[1].step, 2 * first.step);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 2, "the torn line is gone: {text}");
    let w = warnings.0.lock().unwrap();
    assert!(
        w.iter()
            .any(|w| w.contains("torn last line") && w.contains("restored epoch 1's line")),
        "{w:?}"
    );
    // TensorBoard (added after the observers above, so it never saw epoch 1 end either)
    // has each epoch once at its last step, and every step's scalars once.
    let tb = super::common::python_json("read_tensorboard.py", &run);
    let steps = |tag: &str| -> Vec<i64> {
        tb["scalars"][tag]
            .as_array()
            .unwrap_or_else(|| panic!("no tag {tag}: {tb}"))
            .iter()
            .map(|p| p[0].as_i64().unwrap())
            .collect()
    };
    let ends: Vec<i64> = m.iter().map(|m| m.step as i64).collect();
    for tag in ["train/loss", "val/acc"] {
        assert_eq!(steps(tag), ends, "{tag}");
    }
    let val_acc = tb["scalars"]["val/acc"][0][1].as_f64().unwrap();
    assert_eq!(val_acc as f32, first.val_acc as f32);
    assert_eq!(steps("train/lr"), (1..=ends[1]).collect::<Vec<_>>());
}

#[test]
fn resume_continues_and_matches_an_uninterrupted_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = super::common::write(d.path(), "tiny.toml", TINY);
    let constant = [
        "--set",
        "schedule.name=constant",
        "--set",
        "schedule.warmup_epochs=0",
        "--set",
        "model.dropout=0.2",
    ];
    let straight = d.path().join("straight");
    let split = d.path().join("split");
    hondo_train(
        Some(&cfg),
        &[
            &constant[..],
            &[
                "--set",
                "train.epochs=4",
                "--out",
                straight.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    hondo_train(
        Some(&cfg),
        &[
            &constant[..],
            &["--set", "train.epochs=2", "--out", split.to_str().unwrap()],
        ]
        .concat(),
    );
    hondo_train(
        None,
        &[
            "--resume",
            split.to_str().unwrap(),
            "--set",
            "train.epochs=4",
        ],
    );
    let m = metrics::read(&split.join("metrics.jsonl")).unwrap();
    assert_eq!(m.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let a = checkpoint::read(&straight.join(checkpoint::LAST)).unwrap();
    let b = checkpoint::read(&split.join(checkpoint::LAST)).unwrap();
    assert_eq!(a.meta.step, b.meta.step);
    assert!(!a.model.is_empty() && !a.optimizer.is_empty());
    assert_same_tensors("model, straight against resumed", &a.model, &b.model);
    assert_same_tensors(
        "optimizer, straight against resumed",
        &a.optimizer,
        &b.optimizer,
    );
}

#[test]
fn lr_find_suggests_a_rate_that_trains_where_100x_does_not_and_writes_nothing_else() {
    use super::common::{hondo, train_ok, write};
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", super::common::TINY);
    let cfg = cfg.to_str().unwrap();
    // A checkpoint to start from, which the range test must only read.
    let base = d.path().join("base");
    train_ok(&[
        cfg,
        "--out",
        base.to_str().unwrap(),
        "--set",
        "train.epochs=1",
        "--quiet",
    ]);
    let start_from = base.join("last.safetensors");
    let before = std::fs::read(&start_from).unwrap();
    let png = d.path().join("lr.png");
    let lr_find = |extra: &[&str]| {
        hondo()
            .current_dir(d.path())
            .args(["lr-find", cfg, "--png", png.to_str().unwrap()])
            .args(["--set", "checkpoint.dir=runs"])
            .args(extra)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone()
    };
    let r: serde_json::Value = serde_json::from_slice(&lr_find(&["--json"])).unwrap();
    let s = r["suggestion"].as_f64().unwrap();
    let lrs = r["lrs"].as_array().unwrap();
    assert!(lrs.len() >= 10 && lrs.len() <= 100, "{}", lrs.len());
    assert!(s > 1e-7 && s < 10.0, "{s}");
    assert_eq!(image::image_dimensions(&png).unwrap(), (900, 560));
    assert!(!d.path().join("runs").exists(), "no run directory");
    // From a checkpoint: only read.
    let set = format!("model.pretrained={:?}", start_from.to_str().unwrap());
    lr_find(&["--set", &set]);
    assert_eq!(
        std::fs::read(&start_from).unwrap(),
        before,
        "the weights file is unchanged"
    );
    assert!(!d.path().join("runs").exists());

    // Training briefly at the suggestion converges; at 100x it does not.
    let train_at = |lr: f64, name: &str| -> metrics::EpochMetrics {
        let run = d.path().join(name);
        let lr = format!("optimizer.lr={lr}");
        train_ok(&[
            cfg,
            "--out",
            run.to_str().unwrap(),
            "--set",
            &lr,
            "--set",
            "train.epochs=6",
            "--set",
            "schedule.name=\"constant\"",
            "--set",
            "schedule.warmup_epochs=0",
            "--quiet",
        ]);
        metrics::read(&run.join("metrics.jsonl"))
            .unwrap()
            .pop()
            .unwrap()
    };
    let chance_loss = 4f64.ln();
    let good = train_at(s, "at-suggestion");
    // The training loss falls well below chance's and validation beats chance.
    assert!(
        good.train_loss < chance_loss - 0.3 && good.val_acc > 0.35,
        "at the suggestion {s}: {good:?}"
    );
    let bad = train_at(100.0 * s, "at-100x");
    assert!(
        (bad.train_loss.is_nan() || bad.train_loss >= good.train_loss + 0.3)
            && bad.val_acc < good.val_acc - 0.1,
        "at 100x the suggestion {}: {bad:?}",
        100.0 * s
    );
}

/// `train.channels_last = "auto"` (the default): the first run on a machine times both
/// layouts and remembers the winner in the cache, the next run reads it, the first line says
/// which and why, and an explicit value wins without any timing.
#[test]
fn auto_layout_is_timed_once_remembered_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let cfg = super::common::write(d.path(), "tiny.toml", TINY);
    let cache = d.path().join("cache");
    let run = |out: &str, extra: &[&str]| {
        let mut cmd = super::common::train_cmd(&[cfg.as_os_str()]);
        cmd.args(["--set", "train.epochs=1", "--out"])
            .arg(d.path().join(out))
            .args(extra)
            .env("HONDO_CACHE", &cache)
            .env_remove("HONDO_AUTOTUNE");
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{err}");
        let first = err
            .lines()
            .find(|l| l.starts_with("run "))
            .unwrap()
            .to_string();
        let saved = std::fs::read_to_string(d.path().join(out).join("config.toml")).unwrap();
        (first, saved)
    };
    let (first, saved) = run("a", &[]);
    assert!(
        first.contains("(auto: ") && first.contains("s/step, timed in"),
        "{first}"
    );
    assert!(cache.join("autotune.json").is_file());
    let chosen = first.contains(", channels-last (auto");
    assert!(chosen || first.contains(", NCHW (auto"), "{first}");
    // The run directory's config keeps what the user wrote.
    assert!(saved.contains("channels_last = \"auto\""), "{saved}");
    let (again, _) = run("b", &[]);
    assert!(again.contains("timed earlier on this machine"), "{again}");
    assert_eq!(again.contains(", channels-last (auto"), chosen, "{again}");
    let (fixed, saved) = run("c", &["--set", "train.channels_last=false"]);
    assert!(
        !fixed.contains("auto") && !fixed.contains("channels-last"),
        "{fixed}"
    );
    assert!(saved.contains("channels_last = false"), "{saved}");

    let bad = super::common::train_cmd(&[cfg.as_os_str()])
        .args(["--set", "train.channels_last=sometimes"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("train.channels_last") && err.contains("\"auto\""),
        "{err}"
    );
}

#[test]
fn batchnorm_never_trains_on_one_image_and_never_checkpoints_nan_statistics() {
    let d = tempfile::tempdir().unwrap();
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 17 images in batches of 16: the last holds one, and at 8 px the last stage is 1x1,
    // where its variance is 0/0.
    let cfg = config(&[
        "data.image_size=8",
        "data.train_size=17",
        "train.batch_size=16",
        "train.epochs=1",
    ]);
    let warnings = Warnings::default();
    let run = d.path().join("run");
    let s = Trainer::new(cfg)
        .observer(MetricsLog)
        .observer(warnings.clone())
        .out(&run)
        .run()
        .unwrap();
    assert_eq!(s.outcome, Outcome::Finished);
    let m = metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert!(m[0].val_loss.is_finite(), "{m:?}");
    assert_eq!(m[0].step, 1, "the single-image batch took no step");
    let w = warnings.0.lock().unwrap();
    assert!(
        w.iter().any(|w| w.contains("a batch of one image")),
        "{w:?}"
    );
    let c = checkpoint::read(&run.join(checkpoint::LAST)).unwrap();
    for (name, t) in &c.model {
        let finite = t.isfinite().all().int64_value(&[]) == 1;
        assert!(finite, "{name} is not finite");
    }
    // One image per batch, or per process, is refused before anything is built.
    for (sets, why) in [
        (&["train.batch_size=1"][..], "train.batch_size = 1"),
        (&["data.train_size=1"][..], "at least 2 per process"),
    ] {
        let e = Trainer::new(config(sets))
            .out(d.path().join("refused"))
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{e}");
        assert!(!d.path().join("refused").join("last.safetensors").exists());
    }
}
