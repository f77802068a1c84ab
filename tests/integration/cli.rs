//! The `hondo` binary end to end, in temporary directories.

use super::common::{hondo, no_panic, write, TINY};
use predicates::prelude::*;

#[test]
fn info_prints_versions() {
    hondo()
        .arg("info")
        .assert()
        .success()
        .stdout(predicate::str::contains("libtorch  2.11.0").and(predicate::str::contains("cuda")));
    // The fused BatchNorm + ReLU says whether it is on, and the switch turns it off.
    hondo()
        .arg("info")
        .assert()
        .success()
        .stdout(predicate::str::contains("bn+relu   fused on"));
    hondo()
        .arg("info")
        .env("HONDO_FUSED_BN", "0")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "bn+relu   fused off (HONDO_FUSED_BN=0)",
        ));
}

#[test]
fn config_prints_the_effective_config() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "c.toml", "[optimizer]\nlr = 0.3\n");
    hondo()
        .args(["config", cfg.to_str().unwrap(), "--set", "train.epochs=7"])
        .assert()
        .success()
        .stdout(predicate::str::contains("lr = 0.3").and(predicate::str::contains("epochs = 7")));
}

#[test]
fn train_writes_a_run_directory_and_a_summary() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let out = d.path().join("run");
    hondo()
        .args([
            "train",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.epochs=1",
            "--device",
            "cpu",
        ])
        .assert()
        .success()
        .stderr(
            predicate::str::contains("done: 1 epochs")
                .and(predicate::str::contains("best val_acc"))
                .and(no_panic()),
        );
    for f in [
        "last.safetensors",
        "best.safetensors",
        "config.toml",
        "metrics.jsonl",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // A second run into the same --out is refused and leaves the first intact.
    let before = std::fs::read(out.join("last.safetensors")).unwrap();
    hondo()
        .args([
            "train",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .assert()
        .failure()
        .stderr(predicate::str::contains("--resume").and(no_panic()));
    assert_eq!(before, std::fs::read(out.join("last.safetensors")).unwrap());
    // Resume with more epochs continues the same run.
    hondo()
        .args([
            "train",
            "--resume",
            out.to_str().unwrap(),
            "--set",
            "train.epochs=2",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("done: 2 epochs"));
}

#[test]
fn runs_without_out_get_fresh_directories() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let base = d.path().join("runs");
    for _ in 0..2 {
        hondo()
            .args([
                "train",
                cfg.to_str().unwrap(),
                "-q",
                "--set",
                "train.epochs=1",
                "--set",
                "data.train_size=64",
                "--set",
            ])
            .arg(format!("checkpoint.dir={:?}", base.to_str().unwrap()))
            .assert()
            .success();
    }
    let mut names: Vec<String> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["small_cnn-shapes", "small_cnn-shapes-2"]);
}

#[test]
fn bad_input_gives_one_clear_message_and_a_failure_status() {
    let d = tempfile::tempdir().unwrap();
    let tiny = write(d.path(), "tiny.toml", TINY);
    let tiny = tiny.to_str().unwrap();
    let bad_toml = write(d.path(), "bad.toml", "[model\n");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["train".into(), "/nonexistent.toml".into()],
            "/nonexistent.toml",
        ),
        (
            vec!["train".into(), bad_toml.to_str().unwrap().into()],
            "bad.toml:1:",
        ),
        (
            vec![
                "train".into(),
                tiny.into(),
                "--set".into(),
                "model.arch=resnet19".into(),
            ],
            "model.arch",
        ),
        (
            vec![
                "train".into(),
                tiny.into(),
                "--set".into(),
                "optimizer.lr=-1".into(),
            ],
            "optimizer.lr",
        ),
        (
            vec![
                "train".into(),
                tiny.into(),
                "--set".into(),
                "checkpoint.dir=\"/proc/hondo-no\"".into(),
            ],
            "/proc/hondo-no",
        ),
        (
            vec![
                "train".into(),
                "--resume".into(),
                d.path().to_str().unwrap().into(),
            ],
            "not a hondo run directory",
        ),
        (
            vec!["train".into(), tiny.into(), "--device".into(), "tpu".into()],
            "train.device",
        ),
        (
            vec!["config".into(), bad_toml.to_str().unwrap().into()],
            "bad.toml:1:",
        ),
    ];
    for (args, needle) in cases {
        hondo().args(&args).assert().failure().stderr(
            predicate::str::contains(needle)
                .and(predicate::str::starts_with("error: "))
                .and(no_panic()),
        );
    }
    if !hondo::device::cuda_available() {
        hondo()
            .args(["train", tiny, "--device", "cuda"])
            .assert()
            .failure()
            .stderr(predicate::str::contains("CUDA was requested but").and(no_panic()));
    }
}
