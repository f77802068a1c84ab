//! Hostile configs end to end: numbers out of range (including TOML's `inf` and `nan`) and
//! runs too big for the machine are refused before anything is built or written, with one
//! `error:` line naming the key; `--overwrite` replaces a run and touches nothing else; a
//! run monitoring a loss keeps the epoch with the lowest loss as `best`.

use super::common::{assert_refused, run_bounded, snapshot, write, Bounded, TINY};
use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

fn hondo_bounded(args: &[&str], limit_s: u64) -> Bounded {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run_bounded(&args, &[], Duration::from_secs(limit_s))
}

fn train(cfg: &Path, out: &Path, extra: &[&str]) -> Bounded {
    let mut args = vec![
        "train",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    hondo_bounded(&args, 120)
}

#[test]
fn a_step_too_big_for_the_machine_is_refused_before_allocating() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let before = snapshot(d.path());
    let out = d.path().join("run");
    // 32 images of 4096 x 4096: hundreds of GiB of activations.
    let b = train(&cfg, &out, &["--set", "data.image_size=4096"]);
    assert_refused(&b, &["data.image_size", "train.batch_size", "--force"]);
    assert!(b.stderr.contains("MemAvailable"), "{}", b.stderr);
    assert!(b.seconds < 30.0, "took {:.1}s", b.seconds);
    assert!(b.peak_rss_mib < 1024, "peak RSS {} MiB", b.peak_rss_mib);
    assert!(!out.exists(), "a run directory was created");
    assert_eq!(before, snapshot(d.path()));
}

#[test]
fn out_of_range_numbers_are_refused_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let out = d.path().join("run");
    for (set, key) in [
        ("train.mixup_alpha=inf", "train.mixup_alpha"),
        ("schedule.warmup_epochs=inf", "schedule.warmup_epochs"),
        ("optimizer.weight_decay=inf", "optimizer.weight_decay"),
        ("data.std=[0.2, inf, 0.2]", "data.std[1]"),
        ("data.workers=1000000", "data.workers"),
        ("train.threads=1000000", "train.threads"),
        ("model.width=1000000", "model.width"),
        ("model.num_classes=1000000000", "model.num_classes"),
    ] {
        let b = train(&cfg, &out, &["--set", set]);
        assert_refused(&b, &[key, "must be in"]);
        assert!(b.seconds < 30.0, "{set}: took {:.1}s", b.seconds);
        assert!(!out.exists(), "{set}: a run directory was created");
    }
}

#[test]
fn nan_in_the_file_is_refused_naming_the_file_and_key() {
    let d = tempfile::tempdir().unwrap();
    let text = format!("{TINY}\n[data.augment]\nhflip = 0.5\n").replace(
        "kind = \"shapes\"",
        "kind = \"shapes\"\nmean = [0.5, nan, 0.5]",
    );
    let cfg = write(d.path(), "nan.toml", &text);
    let b = hondo_bounded(&["config", cfg.to_str().unwrap()], 30);
    assert_refused(&b, &["nan.toml", "data.mean[1]", "got NaN"]);
    let b = train(&cfg, &d.path().join("run"), &[]);
    assert_refused(&b, &["nan.toml", "data.mean[1]"]);
}

#[test]
fn a_contradictory_monitor_and_mode_are_refused_naming_both() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let b = hondo_bounded(
        &[
            "config",
            cfg.to_str().unwrap(),
            "--set",
            "checkpoint.monitor=val_loss",
            "--set",
            "checkpoint.mode=max",
        ],
        30,
    );
    assert_refused(&b, &["checkpoint.mode", "checkpoint.monitor"]);
}

/// `(epoch, value of key)` of each line of `metrics.jsonl`.
fn metric(run: &Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["epoch"].as_u64().unwrap(), v[key].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn monitoring_val_loss_keeps_the_lowest_loss_as_best() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let run = d.path().join("run");
    // A high rate makes the loss move both ways over a few short epochs.
    let b = train(
        &cfg,
        &run,
        &[
            "--set",
            "checkpoint.monitor=val_loss",
            "--set",
            "train.epochs=4",
            "--set",
            "data.train_size=256",
            "--set",
            "data.val_size=128",
            "--set",
            "optimizer.lr=0.5",
        ],
    );
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    let losses = metric(&run, "val_loss");
    assert_eq!(losses.len(), 4);
    let lowest = losses
        .iter()
        .min_by(|a, b| a.1.partial_cmp(&b.1).unwrap())
        .unwrap();
    assert!(
        b.stderr.contains(&format!(
            "best val_loss {:.4} (epoch {})",
            lowest.1, lowest.0
        )),
        "lowest {lowest:?} of {losses:?} is not best in:\n{}",
        b.stderr
    );
    // The config written into the run keeps the direction implicit, and resumes with it.
    let written = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(written.contains("monitor = \"val_loss\""), "{written}");
    assert!(!written.contains("mode ="), "{written}");
}

#[test]
fn overwrite_replaces_a_run_and_only_a_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let run = d.path().join("run");
    let small = ["--set", "data.train_size=128", "--set", "data.val_size=64"];
    let mut first = small.to_vec();
    first.extend([
        "--set",
        "train.epochs=3",
        "--set",
        "checkpoint.keep_top_k=3",
    ]);
    let b = train(&cfg, &run, &first);
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    assert_eq!(metric(&run, "val_acc").len(), 3);
    assert!(run.join("epoch-0003.safetensors").is_file());

    let mut second = small.to_vec();
    second.extend([
        "--set",
        "train.epochs=1",
        "--set",
        "checkpoint.keep_top_k=3",
        "--overwrite",
    ]);
    let b = train(&cfg, &run, &second);
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    let epochs: Vec<u64> = metric(&run, "val_acc").iter().map(|m| m.0).collect();
    assert_eq!(epochs, vec![1], "metrics.jsonl holds only the new run");
    let mut files: Vec<String> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("epoch-"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec!["epoch-0001.safetensors"],
        "no stale epoch files"
    );

    // A directory that is not a run is refused and left exactly as it was.
    let photos = d.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    std::fs::write(photos.join("cat.jpg"), b"not a run").unwrap();
    std::fs::create_dir(photos.join("album")).unwrap();
    std::fs::write(photos.join("album").join("dog.jpg"), b"woof").unwrap();
    let before = snapshot(&photos);
    let mut args = small.to_vec();
    args.push("--overwrite");
    let b = train(&cfg, &photos, &args);
    assert_refused(&b, &[photos.to_str().unwrap(), "not a hondo run directory"]);
    assert_eq!(before, snapshot(&photos));
}
