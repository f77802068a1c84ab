//! What hondo writes, under hostile conditions: exports onto a full filesystem or past a
//! file-size limit (the previous export survives byte for byte), plots of absurd metrics
//! (drawing terminates), checkpoints whose weights are NaN (refused, not `NaN%`) and eval of
//! a model with 20 000 classes (bounded memory and output).

use super::common::{assert_refused, no_panic, run_bounded, snapshot, Bounded};
use hondo::checkpoint::{self, Meta};
use hondo::config;
use hondo::models::Model;
use predicates::prelude::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::nn::VarStore;
use tch::{Device, Tensor};

const CONFIG: &str = r#"
[model]
arch = "small_cnn"
width = 4
[data]
kind = "shapes"
image_size = 16
train_size = 64
val_size = 32
workers = 1
[train]
epochs = 1
batch_size = 8
threads = 1
"#;

const LIMIT: Duration = Duration::from_secs(60);

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn p(path: &Path) -> &OsStr {
    path.as_os_str()
}

/// Writes a small CNN checkpoint with `num_classes` outputs named `c00000`, `c00001`, ...
/// as `dir/name`, its tensors rewritten by `edit`.
fn checkpoint_with(
    dir: &Path,
    name: &str,
    num_classes: i64,
    edit: impl Fn(&Tensor) -> Tensor,
) -> PathBuf {
    let cfg = config::load_str(CONFIG, "test config", &[]).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let _model = Model::new(&vs.root(), &cfg.model, num_classes);
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, edit(&t)))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let meta = Meta {
        head: None,
        hondo_version: "test".into(),
        arch: "small_cnn".into(),
        num_classes,
        classes: (0..num_classes).map(|i| format!("c{i:05}")).collect(),
        image_size: 16,
        crop_fraction: 1.0,
        mean: [0.5; 3],
        std: [0.25; 3],
        epoch: 1,
        batch: 0,
        step: 8,
        metrics: BTreeMap::new(),
        last_epoch: None,
        best: None,
        epochs_without_improvement: 0,
        world_size: 1,
        config: CONFIG.into(),
    };
    let path = dir.join(name);
    std::fs::write(&path, checkpoint::to_bytes(&meta, &tensors, &[]).unwrap()).unwrap();
    path
}

fn checkpoint(dir: &Path, num_classes: i64) -> PathBuf {
    checkpoint_with(dir, "ckpt.safetensors", num_classes, |t| t.copy())
}

/// `per_class` 16x16 PNGs in `dir/<class>/` for each of `classes`.
fn image_folder(dir: &Path, classes: &[&str], per_class: usize) {
    for (c, class) in classes.iter().enumerate() {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..per_class {
            let px: Vec<u8> = (0..16 * 16 * 3)
                .map(|j| ((j * 7 + c * 50 + i * 13) % 256) as u8)
                .collect();
            image::save_buffer(
                dir.join(class).join(format!("{i}.png")),
                &px,
                16,
                16,
                image::ColorType::Rgb8,
            )
            .unwrap();
        }
    }
}

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (with the reason printed) where this process may not mount: CI runs as root.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs (not root?): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    /// Fills the filesystem: the next write of any size fails with ENOSPC.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..1]).is_ok() {}
        let _ = f.sync_all();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

const FORMATS: [(&str, &str); 3] = [
    ("torchscript", "model.pt"),
    ("ot", "model.ot"),
    ("safetensors", "model.safetensors"),
];

fn export_args<'a>(ckpt: &'a Path, format: &'a str, out: &'a Path) -> Vec<&'a OsStr> {
    vec![
        os("export"),
        p(ckpt),
        os("--format"),
        os(format),
        os("--out"),
        p(out),
    ]
}

#[test]
fn export_onto_a_full_filesystem_keeps_the_previous_export() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(d.path(), 4);
    let Some(fs) = Tmpfs::mount(&d.path().join("full"), "1m") else {
        return;
    };
    for (format, name) in FORMATS {
        let out = fs.0.join(name);
        let b = run_bounded(&export_args(&ckpt, format, &out), &[], LIMIT);
        assert_eq!(b.code, Some(0), "{format}: {}", b.stderr);
    }
    fs.fill();
    let before = snapshot(&fs.0);
    for (format, name) in FORMATS {
        let out = fs.0.join(name);
        let b = run_bounded(&export_args(&ckpt, format, &out), &[], LIMIT);
        assert_refused(&b, &[name, "No space left"]);
        assert_eq!(snapshot(&fs.0), before, "{format} changed the filesystem");
    }
}

/// Where mounting is not allowed, a file-size limit (`RLIMIT_FSIZE`, as `ulimit -f` sets)
/// makes the same write calls fail (EFBIG instead of ENOSPC): hondo ignores SIGXFSZ, so the
/// write fails as on a full disk instead of the signal killing the process.
#[test]
fn export_past_a_file_size_limit_keeps_the_previous_export() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(d.path(), 4);
    let dir = d.path().join("out");
    std::fs::create_dir(&dir).unwrap();
    for (format, name) in FORMATS {
        let b = run_bounded(&export_args(&ckpt, format, &dir.join(name)), &[], LIMIT);
        assert_eq!(b.code, Some(0), "{format}: {}", b.stderr);
    }
    let before = snapshot(&dir);
    for (format, name) in FORMATS {
        let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("hondo"));
        cmd.args(export_args(&ckpt, format, &dir.join(name)))
            .env("RUST_BACKTRACE", "1");
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 1024,
                    rlim_max: 1024,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = std::time::Instant::now();
        let out = assert_cmd::Command::from_std(cmd)
            .timeout(LIMIT)
            .output()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        let b = Bounded {
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            seconds: started.elapsed().as_secs_f64(),
            peak_rss_mib: 0,
        };
        assert_refused(&b, &[name, "File too large"]);
        assert_eq!(snapshot(&dir), before, "{format} changed the directory");
    }
}

/// One `metrics.jsonl` line.
fn metrics_line(epoch: u64, loss: f64, acc: f64, lr: f64) -> String {
    serde_json::json!({
        "epoch": epoch, "step": epoch.saturating_mul(10),
        "train_loss": loss, "train_acc": acc, "val_loss": loss, "val_acc": acc,
        "lr": lr, "images_per_sec": 100.0, "seconds": 1.0, "skipped": 0,
    })
    .to_string()
}

#[test]
fn plots_of_absurd_metrics_terminate_and_say_what_was_left_out() {
    let cases: Vec<(&str, Vec<String>, bool)> = vec![
        (
            "near f64::MAX",
            vec![
                metrics_line(1, 2.0, 0.5, 0.1),
                metrics_line(2, 1.7e308, 1.7e308, 1.7e308),
                metrics_line(3, -1.7e308, -1.7e308, -1.7e308),
                metrics_line(4, 1.0, 0.6, 0.05),
            ],
            true,
        ),
        (
            "only absurd values",
            vec![
                metrics_line(1, 1.7e308, 1.7e308, 1.7e308),
                metrics_line(2, -1.7e308, -1.7e308, 1.7e308),
            ],
            true,
        ),
        (
            "zero range",
            (1..=5).map(|e| metrics_line(e, 0.0, 0.0, 0.0)).collect(),
            false,
        ),
        ("one point", vec![metrics_line(1, 3.0, 0.2, 1e-3)], false),
        (
            "tiny values far from zero",
            (1..=4)
                .map(|e| metrics_line(e, 1e11 + e as f64 * 1e-4, 0.5, 1e-300))
                .collect(),
            false,
        ),
        (
            "thousands of epochs",
            (1..=3000)
                .map(|e| metrics_line(e, 1.0 / e as f64, 0.5, 0.1))
                .collect(),
            false,
        ),
        (
            "huge epoch numbers",
            vec![
                metrics_line(1, 1.0, 0.5, 0.1),
                metrics_line(u64::MAX / 2, 0.5, 0.6, 0.1),
            ],
            false,
        ),
    ];
    for (what, lines, noted) in cases {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
        let b = run_bounded(&[os("plot"), p(d.path())], &[], Duration::from_secs(30));
        assert_eq!(b.code, Some(0), "{what}: {}", b.stderr);
        assert!(no_panic().eval(&b.stderr), "{what}: {}", b.stderr);
        assert!(b.seconds < 30.0, "{what}: {}s", b.seconds);
        let png = d.path().join(hondo::plot::TRAINING_CURVES);
        assert_eq!(
            image::image_dimensions(&png).unwrap(),
            (1500, 480),
            "{what}"
        );
        assert_eq!(
            b.stderr.contains("warning:") && b.stderr.contains("not drawn"),
            noted,
            "{what}: {}",
            b.stderr
        );
    }
}

#[test]
fn nan_weights_are_refused_by_predict_and_eval() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = checkpoint_with(d.path(), "diverged.safetensors", 2, |t| {
        if t.is_floating_point() {
            t.full_like(f64::NAN)
        } else {
            t.copy()
        }
    });
    let images = d.path().join("images");
    image_folder(&images, &["c00000", "c00001"], 1);
    let before = snapshot(d.path());
    let img = images.join("c00000/0.png");
    let b = run_bounded(
        &[os("predict"), p(&ckpt), p(&img), os("--device"), os("cpu")],
        &[],
        LIMIT,
    );
    assert_refused(&b, &["diverged.safetensors", "NaN", "tensor `"]);
    assert!(!b.stdout.contains("NaN%"), "{}", b.stdout);
    let png = d.path().join("cm.png");
    let b = run_bounded(
        &[
            os("eval"),
            p(&ckpt),
            os("--data"),
            p(&images),
            os("--device"),
            os("cpu"),
            os("--png"),
            p(&png),
        ],
        &[],
        LIMIT,
    );
    assert_refused(&b, &["diverged.safetensors", "NaN", "tensor `"]);
    assert_eq!(snapshot(d.path()), before);
}

#[test]
fn eval_of_twenty_thousand_classes_is_bounded() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(d.path(), 20_000);
    let images = d.path().join("images");
    image_folder(&images, &["c00003", "c07777", "c19999"], 2);
    let png = d.path().join("cm.png");
    let args = [
        os("eval"),
        p(&ckpt),
        os("--data"),
        p(&images),
        os("--device"),
        os("cpu"),
        os("--png"),
        p(&png),
        os("--workers"),
        os("1"),
    ];
    let b = run_bounded(&args, &[], LIMIT);
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    assert!(no_panic().eval(&b.stderr), "{}", b.stderr);
    // A dense 20 000² matrix alone would be 3.2 GB.
    assert!(b.peak_rss_mib < 1500, "peak RSS {} MiB", b.peak_rss_mib);
    assert!(
        b.stdout
            .contains("20000 classes: showing the 30 with the most mistakes"),
        "{}",
        b.stdout
    );
    assert!(
        b.stdout.lines().count() < 200,
        "{} lines",
        b.stdout.lines().count()
    );
    assert!(
        b.stderr.contains("note: the picture shows the 30 classes"),
        "{}",
        b.stderr
    );
    let (w, h) = image::image_dimensions(&png).unwrap();
    assert!(w < 2000 && h < 2000, "{w}x{h}");

    let mut json_args = args.to_vec();
    json_args.push(os("--json"));
    let b = run_bounded(&json_args, &[], LIMIT);
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    assert!(b.peak_rss_mib < 1500, "peak RSS {} MiB", b.peak_rss_mib);
    let report: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    assert_eq!(report["images"], 6);
    assert_eq!(report["confusion"], serde_json::json!([]));
    assert_eq!(report["per_class"].as_array().unwrap().len(), 20_000);
    let mistakes = report["mistakes"].as_array().unwrap();
    let counted: u64 = mistakes.iter().map(|m| m["count"].as_u64().unwrap()).sum();
    let correct: u64 = report["per_class"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["correct"].as_u64().unwrap())
        .sum();
    assert_eq!(counted + correct, 6);
    assert!(
        b.stderr.contains("no dense `confusion` matrix"),
        "{}",
        b.stderr
    );
}

/// `hondo eval CKPT --device cpu --png PNG`.
fn eval_png<'a>(ckpt: &'a Path, png: &'a Path) -> Vec<&'a OsStr> {
    vec![
        os("eval"),
        p(ckpt),
        os("--device"),
        os("cpu"),
        os("--png"),
        p(png),
    ]
}

#[test]
fn outputs_never_replace_their_input_a_checkpoint_or_a_runs_files() {
    let d = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(d.path(), 4);
    let other = d.path().join("other.safetensors");
    std::fs::copy(&ckpt, &other).unwrap();
    let cfg = d.path().join("cfg.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let run = d.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::write(run.join("config.toml"), CONFIG).unwrap();
    std::fs::copy(&ckpt, run.join("last.safetensors")).unwrap();
    let run_config = run.join("config.toml");
    let before = snapshot(d.path());
    let cases: Vec<(Vec<&OsStr>, &Path, &str)> = vec![
        (
            export_args(&ckpt, "safetensors", &ckpt),
            &ckpt,
            "this command's input",
        ),
        (
            export_args(&ckpt, "torchscript", &other),
            &other,
            "hondo checkpoint",
        ),
        (
            export_args(&ckpt, "safetensors", &run_config),
            &run_config,
            "belongs to the run",
        ),
        (eval_png(&ckpt, &other), &other, "hondo checkpoint"),
        (
            vec![
                os("lr-find"),
                p(&cfg),
                os("--steps"),
                os("5"),
                os("--png"),
                p(&cfg),
                os("--set"),
                os("train.device=\"cpu\""),
            ],
            &cfg,
            "this command's input",
        ),
        (eval_png(&ckpt, &cfg), &cfg, "not a PNG"),
    ];
    for (args, out, why) in cases {
        let b = run_bounded(&args, &[], LIMIT);
        assert_refused(&b, &[out.to_str().unwrap(), why]);
        assert_eq!(snapshot(d.path()), before, "{args:?} changed files");
    }
    // What hondo wrote before it replaces: an export, a PNG.
    let export = d.path().join("model.safetensors");
    let png = d.path().join("confusion.png");
    let images = d.path().join("images");
    image_folder(&images, &["c00000", "c00001", "c00002", "c00003"], 2);
    for _ in 0..2 {
        let b = run_bounded(&export_args(&ckpt, "safetensors", &export), &[], LIMIT);
        assert_eq!(b.code, Some(0), "{}", b.stderr);
        let eval = [eval_png(&ckpt, &png), vec![os("--data"), p(&images)]].concat();
        let b = run_bounded(&eval, &[], LIMIT);
        assert_eq!(b.code, Some(0), "{}", b.stderr);
    }
}
