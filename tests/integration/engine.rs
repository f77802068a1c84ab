//! The training engine: optimizer parity with `torch.optim` (tests/python/optim_parity.py),
//! faults (SIGINT, SIGTERM, kill -9, NaN), early stopping, mixed precision, EMA, mixup and
//! CutMix, and exact resume with all of them on.

use super::common::{assert_same_tensors, repo, write, TINY};
use hondo::checkpoint;
use hondo::config::{OptimizerConfig, OptimizerKind};
use hondo::metrics;
use hondo::train;
use hondo::train::optimizer::{Optimizer, ParamGroup};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// `hondo train` on TINY in `dir/<run>` with `sets`, stderr piped. Every run is its own
/// process: libtorch's RNG is process-wide, and other test modules train in this one.
fn train_cmd(dir: &Path, run: &str, sets: &[&str], resume: bool) -> Command {
    let cfg = write(dir, "tiny.toml", TINY);
    let run = dir.join(run);
    let mut args: Vec<String> = if resume {
        vec!["--resume".into(), run.display().to_string()]
    } else {
        vec![
            cfg.display().to_string(),
            "--out".into(),
            run.display().to_string(),
        ]
    };
    for s in sets {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    super::common::train_cmd(&args)
}

/// Runs to the end; returns the exit status and stderr.
fn train_to_end(dir: &Path, run: &str, sets: &[&str], resume: bool) -> (Option<i32>, String) {
    let out = train_cmd(dir, run, sets, resume)
        .output()
        .expect("run hondo");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn train_ok(dir: &Path, run: &str, sets: &[&str], resume: bool) -> String {
    let (code, err) = train_to_end(dir, run, sets, resume);
    assert_eq!(code, Some(0), "hondo train {sets:?} failed:\n{err}");
    err
}

// ---------------------------------------------------------------------------------------
// Optimizer parity

/// torch.optim's results.
fn expected() -> HashMap<String, Tensor> {
    {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("optim.safetensors");
        let status = Command::new("python3")
            .arg(repo().join("tests/python/optim_parity.py"))
            .arg(&out)
            .env("PYTHONPATH", repo().join(".pydeps"))
            .status()
            .expect("run python3 (PYTHONPATH=.pydeps) for tests/python/optim_parity.py");
        assert!(status.success(), "optim_parity.py failed: {status}");
        let (tensors, _) = hondo::tensor_io::deserialize(&std::fs::read(&out).unwrap()).unwrap();
        tensors.into_iter().collect()
    }
}

fn parity(
    want: &HashMap<String, Tensor>,
    case: &str,
    kind: OptimizerKind,
    extra: impl Fn(&mut OptimizerConfig),
    fused: bool,
) {
    let (lr, wd) = match case {
        "sgd" => (0.1, [1e-3, 0.0]),
        "sgd_momentum" => (0.1, [0.0, 0.0]),
        "sgd_nesterov_wd" => (0.1, [1e-2, 5e-4]),
        "adam" => (1e-2, [0.0, 0.0]),
        "adam_wd" => (1e-2, [1e-2, 0.1]),
        "adamw" => (1e-2, [5e-2, 0.0]),
        _ => unreachable!(),
    };
    let factors = [1.0, 0.8, 0.5, 0.5, 0.2];
    let params: Vec<Tensor> = (0..3)
        .map(|i| {
            let t = want[&format!("init.{i}")].copy();
            // The fused path also sees a channels-last parameter, as in training.
            let t = if fused && t.dim() == 4 {
                t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
            } else {
                t
            };
            t.set_requires_grad(true)
        })
        .collect();
    let named = |i: usize| (format!("p{i}"), params[i].shallow_clone());
    let groups = vec![
        ParamGroup {
            label: "a".into(),
            params: vec![named(0), named(1)],
            lr_scale: 1.0,
            weight_decay: wd[0],
        },
        ParamGroup {
            label: "b".into(),
            params: vec![named(2)],
            lr_scale: 0.1,
            weight_decay: wd[1],
        },
    ];
    let mut cfg = OptimizerConfig {
        name: kind,
        fused,
        ..Default::default()
    };
    extra(&mut cfg);
    let mut opt = Optimizer::new(&cfg, groups);
    for (k, f) in factors.iter().enumerate() {
        for (i, p) in params.iter().enumerate() {
            let mut p = p.shallow_clone();
            p.zero_grad();
            (&p * &want[&format!("grad.{k}.{i}")])
                .sum(Kind::Float)
                .backward();
        }
        opt.step(lr * f, None).unwrap();
    }
    let state: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
    let close = |what: &str, got: &Tensor, want: &Tensor| {
        let got = got.to_kind(Kind::Double);
        let want = want.to_kind(Kind::Double);
        let err = (&got - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]).max(1e-3);
        assert!(
            err <= 1e-6 * scale,
            "{case} (fused {fused}) {what}: max error {err:e} (scale {scale:e})"
        );
    };
    for i in 0..3 {
        close(
            &format!("param {i}"),
            &params[i],
            &want[&format!("{case}.param.{i}")],
        );
        for (field, ours) in [
            ("momentum_buffer", "momentum_buffer"),
            ("exp_avg", "exp_avg"),
            ("exp_avg_sq", "exp_avg_sq"),
        ] {
            if let Some(w) = want.get(&format!("{case}.{field}.{i}")) {
                let got = state
                    .get(&format!("p{i}.{ours}"))
                    .unwrap_or_else(|| panic!("{case}: no {field} for p{i}"));
                close(&format!("{field} {i}"), got, w);
            }
        }
        if let Some(w) = want.get(&format!("{case}.step.{i}")) {
            close("step", &state[&format!("p{i}.step")], w);
        }
    }
}

fn sgd(momentum: f64, nesterov: bool) -> impl Fn(&mut OptimizerConfig) {
    move |c| {
        c.momentum = momentum;
        c.nesterov = nesterov;
    }
}

fn adam(b1: f64, b2: f64, eps: f64) -> impl Fn(&mut OptimizerConfig) {
    move |c| {
        c.betas = [b1, b2];
        c.eps = eps;
    }
}

#[test]
fn optimizers_match_torch_optim_reference_and_fused() {
    let want = expected();
    let want = &want;
    for fused in [false, true] {
        parity(want, "sgd", OptimizerKind::Sgd, sgd(0.0, false), fused);
        parity(
            want,
            "sgd_momentum",
            OptimizerKind::Sgd,
            sgd(0.9, false),
            fused,
        );
        parity(
            want,
            "sgd_nesterov_wd",
            OptimizerKind::Sgd,
            sgd(0.9, true),
            fused,
        );
        parity(
            want,
            "adam",
            OptimizerKind::Adam,
            adam(0.9, 0.999, 1e-8),
            fused,
        );
        parity(
            want,
            "adam_wd",
            OptimizerKind::Adam,
            adam(0.8, 0.99, 1e-6),
            fused,
        );
        parity(
            want,
            "adamw",
            OptimizerKind::Adamw,
            adam(0.9, 0.999, 1e-8),
            fused,
        );
    }
}

#[test]
fn a_flagged_step_changes_nothing() {
    for (kind, fused) in [
        (OptimizerKind::Sgd, true),
        (OptimizerKind::Adamw, true),
        (OptimizerKind::Adam, false),
    ] {
        let p = Tensor::from_slice(&[1.0f32, -2.0]).set_requires_grad(true);
        let group = ParamGroup {
            label: "all".into(),
            params: vec![("w".into(), p.shallow_clone())],
            lr_scale: 1.0,
            weight_decay: 0.1,
        };
        let cfg = OptimizerConfig {
            name: kind,
            fused,
            ..Default::default()
        };
        let mut opt = Optimizer::new(&cfg, vec![group]);
        (&p * 3.0).sum(Kind::Float).backward();
        opt.step(0.1, Some(&Tensor::from(0.0f32))).unwrap();
        let after_one = p.copy();
        let state: Vec<_> = opt
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        opt.step(0.1, Some(&Tensor::from(1.0f32))).unwrap();
        assert!(p.equal(&after_one), "{kind:?} moved on a flagged step");
        assert_same_tensors(
            &format!("{kind:?} state on a flagged step"),
            &state,
            &opt.state_tensors(),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Faults through the binary

fn spawn(dir: &Path, sets: &[&str], resume: bool) -> Child {
    train_cmd(dir, "run", sets, resume)
        .spawn()
        .expect("start hondo")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Stderr lines until one contains `needle` (which is returned with the lines before it);
/// the rest is drained by a thread into the returned handle.
fn wait_for_line(child: &mut Child, needle: &str) -> (String, std::thread::JoinHandle<String>) {
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("hondo ended before printing `{needle}`:\n{seen}");
        }
        seen.push_str(&line);
        if line.contains(needle) {
            break;
        }
    }
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut s);
        s
    });
    (seen, rest)
}

const LONG: &[&str] = &[
    "train.device=\"cpu\"",
    "train.epochs=2",
    "data.train_size=800",
    "train.log_every=1",
    "schedule.name=constant",
    "schedule.warmup_epochs=0",
];

fn interrupt_then_resume(sig: &str, code: i32) {
    let d = tempfile::tempdir().unwrap();
    let mut child = spawn(d.path(), LONG, false);
    let (_, rest) = wait_for_line(&mut child, "step 3 ");
    signal(&child, sig);
    let status = child.wait().unwrap();
    let err = rest.join().unwrap();
    assert_eq!(status.code(), Some(code), "{err}");
    let run = d.path().join("run");
    assert!(
        err.contains(&format!(
            "resume with: hondo train --resume {}",
            run.display()
        )),
        "{err}"
    );
    let c = checkpoint::read(&run.join(checkpoint::LAST)).unwrap();
    assert!(c.meta.step >= 3, "{:?}", c.meta);
    train_ok(d.path(), "run", &[], true);
    let m = metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(m.last().unwrap().epoch, 2);
}

#[test]
fn sigint_writes_a_resumable_checkpoint_and_exits_130() {
    interrupt_then_resume("-INT", 130);
}

#[test]
fn sigterm_exits_143() {
    interrupt_then_resume("-TERM", 143);
}

#[test]
fn kill_9_at_random_moments_never_corrupts_and_resume_finishes() {
    use rand::{Rng, SeedableRng};
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let sets = [
        LONG,
        &["checkpoint.every_steps=2", "checkpoint.keep_top_k=2"],
    ]
    .concat();
    let mut resume = false;
    for round in 0..3 {
        let mut child = spawn(d.path(), &sets, resume);
        let stderr = child.stderr.take().unwrap();
        let drain = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        // Once a checkpoint exists, kill at a random moment (mid-write included).
        let t0 = Instant::now();
        while !run.join(checkpoint::LAST).exists() && t0.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1500)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let log = drain.join().unwrap();
        let mut n = 0;
        for e in std::fs::read_dir(&run).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "safetensors") {
                checkpoint::read(&p).unwrap_or_else(|e| {
                    panic!(
                        "round {round} (seed {seed}): {} is corrupt: {e}\n{log}",
                        p.display()
                    )
                });
                n += 1;
            }
        }
        assert!(n >= 1, "round {round}: no checkpoint\n{log}");
        resume = true;
    }
    let out = spawn(d.path(), &sets, true).wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "seed {seed}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(m.iter().map(|m| m.epoch).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn tensorboard_reads_every_tag_and_step_once_across_a_killed_and_resumed_run() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let sets = [
        LONG,
        &[
            "checkpoint.every_steps=2",
            "checkpoint.tensorboard=true",
            "checkpoint.tensorboard_every_steps=1",
        ],
    ]
    .concat();
    // Killed mid-epoch: it logged steps past its last checkpoint (every 2 steps), which the
    // resumed attempt runs again.
    let mut child = spawn(d.path(), &sets, false);
    let (_, rest) = wait_for_line(&mut child, "step 7 ");
    let _ = child.kill();
    let _ = child.wait();
    drop(rest);
    let killed_at = checkpoint::read(&run.join(checkpoint::LAST))
        .unwrap()
        .meta
        .step;
    train_ok(d.path(), "run", &[], true);

    // TensorBoard's own EventAccumulator reads the run directory.
    let tb = super::common::python_json("read_tensorboard.py", &run);
    assert_eq!(
        tb["files"].as_array().unwrap().len(),
        1,
        "one file, appended: {tb}"
    );
    let scalars = &tb["scalars"];
    let steps = |tag: &str| -> Vec<i64> {
        scalars[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no tag {tag}: {tb}"))
            .iter()
            .map(|p| p[0].as_i64().unwrap())
            .collect()
    };
    let m = metrics::read(&run.join("metrics.jsonl")).unwrap();
    let total = m.last().unwrap().step as i64;
    for tag in ["train/lr", "train/images_per_sec"] {
        assert_eq!(
            steps(tag),
            (1..=total).collect::<Vec<_>>(),
            "{tag}: every step once (killed after step {killed_at})"
        );
    }
    for (tag, f) in [
        (
            "train/loss",
            (|e: &metrics::EpochMetrics| e.train_loss) as fn(&_) -> f64,
        ),
        ("train/acc", |e| e.train_acc),
        ("val/loss", |e| e.val_loss),
        ("val/acc", |e| e.val_acc),
    ] {
        let points = scalars[tag].as_array().unwrap();
        assert_eq!(points.len(), m.len(), "{tag}: one point per epoch");
        for (p, e) in points.iter().zip(&m) {
            assert_eq!(p[0].as_i64().unwrap(), e.step as i64, "{tag} step");
            assert_eq!(p[1].as_f64().unwrap() as f32, f(e) as f32, "{tag} value");
        }
    }
    let lr = scalars["train/lr"].as_array().unwrap();
    assert!(
        lr.iter()
            .all(|p| (p[1].as_f64().unwrap() - 0.1).abs() < 1e-6),
        "constant lr 0.1"
    );
}

// ---------------------------------------------------------------------------------------
// NaN, early stopping

#[test]
fn nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let cpu = "train.device=\"cpu\"";
    train_ok(
        d.path(),
        "run",
        &[cpu, "train.epochs=1", "train.sync_every=4"],
        false,
    );
    let before = std::fs::read(run.join(checkpoint::LAST)).unwrap();
    let (code, e) = train_to_end(
        d.path(),
        "run",
        &[
            cpu,
            "train.epochs=4",
            "train.sync_every=4",
            "optimizer.lr=1e6",
        ],
        true,
    );
    assert!(code.is_some_and(|c| c != 0), "{e}");
    assert!(
        e.contains("at step ") && e.contains("last good checkpoint"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    let step: usize = e
        .split("at step ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step number in: {e}"));
    assert!(step > 16, "{e}"); // epoch 1 (16 steps) was fine
    assert_eq!(std::fs::read(run.join(checkpoint::LAST)).unwrap(), before);
    let c = checkpoint::read(&run.join(checkpoint::LAST)).unwrap();
    assert_eq!((c.meta.epoch, c.meta.step), (1, 16));

    // With `skip`, the same run goes on to the end, warning at each skipped step (at this
    // rate the weights themselves may overflow: skipping guards the update, not the model).
    let err = train_ok(
        d.path(),
        "run",
        &[
            cpu,
            "train.epochs=3",
            "optimizer.lr=1e6",
            "train.on_nonfinite=\"skip\"",
        ],
        true,
    );
    assert!(err.contains("step skipped"), "{err}");
    let c = checkpoint::read(&run.join(checkpoint::LAST)).unwrap();
    assert_eq!(c.meta.epoch, 3);
}

#[test]
fn early_stopping_ends_the_run() {
    let d = tempfile::tempdir().unwrap();
    // A learning rate too small to change anything: val_acc never improves after epoch 1.
    let err = train_ok(
        d.path(),
        "run",
        &[
            "train.device=\"cpu\"",
            "train.epochs=6",
            "optimizer.lr=1e-30",
            "train.early_stop_patience=2",
            "data.train_size=128",
        ],
        false,
    );
    assert!(err.contains("early stopping"), "{err}");
    let m = metrics::read(&d.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(m.len(), 3, "{err}");
}

// ---------------------------------------------------------------------------------------
// Precision, EMA, mixing

/// Trains TINY for 3 epochs into `dir/run` with `extra`: the loss falls and validation
/// accuracy reaches `min_acc` (chance is 25%: four balanced classes).
fn learns(dir: &Path, extra: &[&str], min_acc: f64) -> Vec<metrics::EpochMetrics> {
    let args = [&["train.epochs=3", "data.train_size=1500"], extra].concat();
    train_ok(dir, "run", &args, false);
    let run = dir.join("run");
    let m = metrics::read(&run.join("metrics.jsonl")).unwrap();
    assert!(m[2].train_loss < 0.9 * m[0].train_loss, "{extra:?}: {m:?}");
    assert!(m[2].val_acc > min_acc, "{extra:?}: {m:?}");
    m
}

/// Channels-last is the default; the contiguous (NCHW) layout still trains.
#[test]
fn contiguous_layout_learns() {
    let d = tempfile::tempdir().unwrap();
    learns(
        d.path(),
        &["train.device=\"cpu\"", "train.channels_last=false"],
        0.5,
    );
}

#[test]
fn bf16_autocast_on_cpu_learns() {
    let d = tempfile::tempdir().unwrap();
    learns(
        d.path(),
        &[
            "train.device=\"cpu\"",
            "train.precision=\"bf16\"",
            "train.channels_last=true",
        ],
        0.5,
    );
}

#[test]
fn ema_mixup_and_cutmix_learn_and_ema_is_saved() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let m = learns(
        d.path(),
        &[
            "train.device=\"cpu\"",
            "train.ema_decay=0.9",
            "train.mixup_alpha=0.2",
            "train.cutmix_alpha=1.0",
            "checkpoint.monitor=\"val_acc_ema\"",
        ],
        // Mixed targets learn more slowly in three short epochs.
        0.4,
    );
    let ema_acc = m[2].val_acc_ema.expect("val_acc_ema logged");
    assert!(ema_acc > 0.4, "{m:?}");
    let c = checkpoint::read(&run.join(checkpoint::LAST)).unwrap();
    assert_eq!(c.ema.len(), c.model.len());
    assert!(c.meta.metrics.contains_key("val_acc_ema"));
    // The average differs from the weights but has the same names.
    let names: Vec<&String> = c.model.iter().map(|(n, _)| n).collect();
    assert_eq!(names, c.ema.iter().map(|(n, _)| n).collect::<Vec<_>>());
    assert!(c
        .model
        .iter()
        .zip(&c.ema)
        .any(|((_, a), (_, b))| !a.equal(b)));
}

#[test]
fn resume_is_exact_with_every_engine_feature_on() {
    let d = tempfile::tempdir().unwrap();
    let features = [
        "train.device=\"cpu\"",
        // Warm-up and a constant rate: the factor depends on the step only, not the length.
        "schedule.name=constant",
        "schedule.warmup_epochs=0.5",
        "model.dropout=0.2",
        "train.ema_decay=0.8",
        "train.mixup_alpha=0.4",
        "train.cutmix_alpha=1.0",
        "train.accumulate=2",
        "train.grad_clip=1.0",
        "train.precision=\"bf16\"",
        "train.channels_last=true",
        "optimizer.name=\"adamw\"",
        "optimizer.lr=0.003",
        "train.sync_every=3",
    ];
    let with = |epochs: &'static str| [&features[..], &[epochs]].concat();
    train_ok(d.path(), "straight", &with("train.epochs=2"), false);
    train_ok(d.path(), "split", &with("train.epochs=1"), false);
    train_ok(d.path(), "split", &with("train.epochs=2"), true);
    let (straight, split) = (d.path().join("straight"), d.path().join("split"));
    let a = checkpoint::read(&straight.join(checkpoint::LAST)).unwrap();
    let b = checkpoint::read(&split.join(checkpoint::LAST)).unwrap();
    assert_eq!(a.meta.step, b.meta.step);
    for (what, x, y) in [
        ("model", &a.model, &b.model),
        ("optimizer", &a.optimizer, &b.optimizer),
        ("ema", &a.ema, &b.ema),
    ] {
        assert!(!x.is_empty(), "no {what} tensors");
        assert_same_tensors(what, x, y);
    }
}

#[test]
fn fp16_with_loss_scaling_learns_and_saves_the_scaler() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    learns(
        d.path(),
        &["train.device=\"cpu\"", "train.precision=\"fp16\""],
        0.5,
    );
    let c = checkpoint::read(&run.join(checkpoint::LAST)).unwrap();
    let scale = c
        .optimizer
        .iter()
        .find(|(n, _)| n == "scaler.scale")
        .expect("scaler state saved");
    assert!(scale.1.double_value(&[]) > 0.0);
}

/// The CUDA path end to end: fp16 autocast with loss scaling, channels-last, fused
/// optimizer kernels and EMA on the GPU.
#[test]
#[ignore = "needs a CUDA device: run with `cargo test -- --ignored cuda` on a GPU machine"]
fn cuda_fp16_channels_last_learns() {
    assert!(hondo::device::cuda_available(), "no CUDA device");
    let d = tempfile::tempdir().unwrap();
    learns(
        d.path(),
        &[
            "train.device=\"cuda\"",
            "train.precision=\"fp16\"",
            "train.channels_last=true",
            "train.ema_decay=0.9",
        ],
        0.5,
    );
}

#[test]
fn channels_last_weights_have_channels_last_strides() {
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _m = hondo::models::Model::new(&vs.root(), &Default::default(), 4);
    train::to_channels_last(&vs);
    for (n, t) in vs.variables() {
        if t.dim() == 4 {
            assert!(hondo::ops::is_channels_last(&t), "{n}: {:?}", t.stride());
        }
    }
}
