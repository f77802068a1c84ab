//! Hostile data through the binary: files that are not regular files (FIFOs, links to
//! `/dev/zero` and `/dev/urandom`), directory link loops, IDX headers that lie, and a stop
//! signal while the process is stuck before its training loop. Every run is bounded in time
//! (a hang fails) and, where memory is the point, in peak memory.

use super::common::{assert_refused, run_bounded, snapshot, write, Bounded};
use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Far below what reading `/dev/zero` until the limit would take.
const RSS_MIB: u64 = 2000;

fn os(p: &Path) -> &OsStr {
    p.as_os_str()
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A small RGB PNG.
fn png(path: &Path, side: u32, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        image::Rgb([shade, (x * 9) as u8, (y * 5) as u8])
    });
    img.save(path).unwrap();
}

const TRAIN: &str = r#"
[model]
arch = "small_cnn"
width = 8
[data]
image_size = 16
workers = 1
[optimizer]
lr = 0.05
[train]
epochs = 1
batch_size = 4
threads = 1
device = "cpu"
"#;

/// A config for `kind` data in `root`, and the command line that trains it into `dir/run`.
fn train_args(dir: &Path, kind: &str, root: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let cfg = write(dir, "cfg.toml", TRAIN);
    let mut args: Vec<std::ffi::OsString> = vec!["train".into(), cfg.into()];
    args.extend(["--out".into(), dir.join("run").into()]);
    for s in [
        format!("data.kind=\"{kind}\""),
        format!("data.root={:?}", root.to_str().unwrap()),
    ]
    .iter()
    .map(String::as_str)
    .chain(extra.iter().copied())
    {
        args.extend(["--set".into(), s.into()]);
    }
    args
}

fn run(args: &[std::ffi::OsString], envs: &[(&str, &str)], limit_s: u64) -> Bounded {
    let args: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    run_bounded(&args, envs, Duration::from_secs(limit_s))
}

/// A checkpoint trained once per test process on the shapes set.
fn checkpoint() -> &'static Path {
    static CKPT: OnceLock<PathBuf> = OnceLock::new();
    CKPT.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("hostile-data-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let cfg = write(&dir, "cfg.toml", TRAIN);
        let b = run(
            &[
                "train".into(),
                cfg.into(),
                "--out".into(),
                dir.join("run").into(),
                "--set".into(),
                "data.train_size=32".into(),
                "--set".into(),
                "data.val_size=16".into(),
            ],
            &[],
            120,
        );
        assert_eq!(b.code, Some(0), "{}", b.stderr);
        dir.join("run").join("last.safetensors")
    })
}

// ---------------------------------------------------------------------------------------
// Files that are not regular files

#[test]
fn predict_refuses_fifos_and_device_links_by_name_without_reading_them() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo.png");
    mkfifo(&fifo);
    let zero = d.path().join("zero.png");
    symlink("/dev/zero", &zero).unwrap();
    let random = d.path().join("random.jpg");
    symlink("/dev/urandom", &random).unwrap();
    let good = d.path().join("good.png");
    png(&good, 20, 100);
    let before = snapshot(d.path());
    for (bad, kind) in [
        (&fifo, "a FIFO"),
        (&zero, "a character device"),
        (&random, "a character device"),
    ] {
        let b = run_bounded(
            &[
                OsStr::new("predict"),
                os(checkpoint()),
                os(&good),
                os(bad),
                OsStr::new("--device"),
                OsStr::new("cpu"),
            ],
            &[],
            Duration::from_secs(60),
        );
        assert_refused(&b, &[bad.to_str().unwrap(), "not a regular file", kind]);
        assert!(b.peak_rss_mib < RSS_MIB, "{} MiB", b.peak_rss_mib);
        assert!(b.seconds < 30.0, "{} s", b.seconds);
    }
    // In a folder they are skipped with a warning each, and the image is classified.
    let b = run_bounded(
        &[
            OsStr::new("predict"),
            os(checkpoint()),
            os(d.path()),
            OsStr::new("--device"),
            OsStr::new("cpu"),
        ],
        &[],
        Duration::from_secs(60),
    );
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    assert!(b.stdout.contains("good.png"), "{}", b.stdout);
    for name in ["fifo.png", "zero.png", "random.jpg"] {
        assert!(
            b.stderr
                .lines()
                .any(|l| l.starts_with("warning: skipped") && l.contains(name)),
            "{name}: {}",
            b.stderr
        );
    }
    assert_eq!(snapshot(d.path()), before);
}

#[test]
fn configs_checkpoints_weights_and_metrics_that_are_not_files_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let run_dir = checkpoint().parent().unwrap();
    let cfg = d.path().join("fifo.toml");
    mkfifo(&cfg);
    let ckpt = d.path().join("fifo.safetensors");
    mkfifo(&ckpt);
    let zero_ckpt = d.path().join("zero.safetensors");
    symlink("/dev/zero", &zero_ckpt).unwrap();
    let weights = d.path().join("weights.pth");
    mkfifo(&weights);
    let ot = d.path().join("weights.ot");
    symlink("/dev/zero", &ot).unwrap();
    let runs = d.path().join("runs");
    let plot_dir = d.path().join("plotrun");
    std::fs::create_dir_all(&plot_dir).unwrap();
    mkfifo(&plot_dir.join("metrics.jsonl"));
    let resume_last = d.path().join("resume/last.safetensors");
    let train_set = |weights: &Path| {
        vec![
            "train".into(),
            run_dir.parent().unwrap().join("cfg.toml").into_os_string(),
            "--out".into(),
            runs.join("w").into_os_string(),
            "--set".into(),
            format!("model.pretrained={}", weights.display()).into(),
        ]
    };
    let cases: Vec<(Vec<std::ffi::OsString>, &Path, &str)> = vec![
        (vec!["train".into(), cfg.clone().into()], &cfg, "a FIFO"),
        (vec!["config".into(), cfg.clone().into()], &cfg, "a FIFO"),
        (vec!["eval".into(), ckpt.clone().into()], &ckpt, "a FIFO"),
        (
            vec![
                "predict".into(),
                zero_ckpt.clone().into(),
                cfg.clone().into(),
            ],
            &zero_ckpt,
            "a character device",
        ),
        (
            vec![
                "export".into(),
                ckpt.clone().into(),
                "--out".into(),
                d.path().join("m.pt").into(),
            ],
            &ckpt,
            "a FIFO",
        ),
        (train_set(&weights), &weights, "a FIFO"),
        (train_set(&ot), &ot, "a character device"),
        (
            vec!["plot".into(), plot_dir.clone().into()],
            &plot_dir,
            "a FIFO",
        ),
        (
            vec!["train".into(), "--resume".into(), {
                let r = d.path().join("resume");
                std::fs::create_dir_all(&r).unwrap();
                std::fs::copy(
                    run_dir.parent().unwrap().join("cfg.toml"),
                    r.join("config.toml"),
                )
                .unwrap();
                mkfifo(&r.join("last.safetensors"));
                r.into_os_string()
            }],
            &resume_last,
            "a FIFO",
        ),
    ];
    for (args, named, kind) in &cases {
        let b = run(args, &[], 60);
        assert_refused(&b, &[named.to_str().unwrap(), kind]);
        assert!(b.seconds < 30.0, "{args:?}: {} s", b.seconds);
        assert!(b.peak_rss_mib < RSS_MIB, "{args:?}: {} MiB", b.peak_rss_mib);
    }
}

/// `root/train/<a|b>/` with `n` good images each plus a FIFO and a `/dev/zero` link in
/// class a, and `root/val/<a|b>/` with one image each.
fn folder_with_specials(root: &Path, n: usize) {
    for (c, shade) in [("a", 40), ("b", 200)] {
        for i in 0..n {
            png(&root.join(format!("train/{c}/{i}.png")), 20, shade);
        }
        png(&root.join(format!("val/{c}/0.png")), 20, shade);
    }
    mkfifo(&root.join("train/a/fifo.png"));
    symlink("/dev/zero", root.join("train/a/zero.jpg")).unwrap();
}

#[test]
fn an_image_folder_skips_special_files_by_name_or_fails_on_them() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("data");
    folder_with_specials(&root, 4);
    let b = run(&train_args(d.path(), "image_folder", &root, &[]), &[], 120);
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    assert!(b.peak_rss_mib < RSS_MIB, "{} MiB", b.peak_rss_mib);
    for (name, kind) in [("fifo.png", "a FIFO"), ("zero.jpg", "a character device")] {
        assert!(
            b.stderr.lines().any(|l| l.contains("skipped")
                && l.contains(name)
                && l.contains("not a regular file")
                && l.contains(kind)),
            "{name}: {}",
            b.stderr
        );
    }

    let d2 = tempfile::tempdir().unwrap();
    let before = snapshot(&root);
    let b = run(
        &train_args(
            d2.path(),
            "image_folder",
            &root,
            &["data.on_error=\"fail\""],
        ),
        &[],
        120,
    );
    assert_refused(&b, &["not a regular file", "on_error"]);
    let line = b.error_lines()[0];
    assert!(
        line.contains("fifo.png") || line.contains("zero.jpg"),
        "{line}"
    );
    assert!(b.peak_rss_mib < RSS_MIB, "{} MiB", b.peak_rss_mib);
    assert_eq!(snapshot(&root), before);
}

#[test]
fn a_directory_link_loop_adds_no_samples() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("data");
    for (c, shade) in [("a", 40), ("b", 200)] {
        png(&root.join(format!("train/{c}/0.png")), 20, shade);
        png(&root.join(format!("train/{c}/deep/1.png")), 20, shade);
        png(&root.join(format!("val/{c}/0.png")), 20, shade);
    }
    // Two links up from each class (2^32 paths if each were followed to depth 32) and one
    // to the class itself.
    for c in ["a", "b"] {
        symlink("..", root.join(format!("train/{c}/deep/up1"))).unwrap();
        symlink("../..", root.join(format!("train/{c}/deep/up2"))).unwrap();
        symlink(".", root.join(format!("train/{c}/self"))).unwrap();
    }
    let b = run(&train_args(d.path(), "image_folder", &root, &[]), &[], 120);
    assert_eq!(b.code, Some(0), "{}", b.stderr);
    // `up2` reaches train/, whose other class adds its 2 images once more under this
    // class's label: 4 + 2 + 2.
    assert!(
        b.stderr.contains("(2 classes, 8 train / 2 val images)"),
        "{}",
        b.stderr
    );
}

// ---------------------------------------------------------------------------------------
// Dataset files that lie

/// An IDX file of unsigned bytes with `dims` and `data`.
fn idx(path: &Path, dims: &[u32], data: &[u8]) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn mnist(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    for prefix in ["train", "t10k"] {
        idx(
            &root.join(format!("{prefix}-images-idx3-ubyte")),
            &[4, 28, 28],
            &[7; 4 * 28 * 28],
        );
        idx(
            &root.join(format!("{prefix}-labels-idx1-ubyte")),
            &[4],
            &[0, 1, 2, 3],
        );
    }
}

#[test]
fn mnist_headers_that_lie_and_device_links_are_refused_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("mnist");
    mnist(&root);
    let args = train_args(d.path(), "mnist", &root, &[]);
    // Sanity: the honest set trains.
    let b = run(&args, &[], 120);
    assert_eq!(b.code, Some(0), "{}", b.stderr);

    let images = root.join("train-images-idx3-ubyte");
    // 65536^3 wraps to 0 in 64 bits: with no data, an unchecked product "matches" the file.
    let lying: Vec<(&[u32], usize)> = vec![
        (&[1 << 16, 1 << 16, 1 << 16], 0),
        (&[u32::MAX, u32::MAX, u32::MAX], 1),
        (&[4, 28, 28], 10),
    ];
    for (dims, n) in lying {
        idx(&images, dims, &vec![1; n]);
        let d2 = tempfile::tempdir().unwrap();
        let before = snapshot(&root);
        let b = run(&train_args(d2.path(), "mnist", &root, &[]), &[], 60);
        assert_refused(&b, &[images.to_str().unwrap(), "header says"]);
        assert_eq!(snapshot(&root), before);
    }
    std::fs::remove_file(&images).unwrap();
    symlink("/dev/zero", &images).unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let b = run(&train_args(d2.path(), "mnist", &root, &[]), &[], 60);
    assert_refused(&b, &[images.to_str().unwrap(), "not a regular file"]);
    assert!(b.peak_rss_mib < RSS_MIB, "{} MiB", b.peak_rss_mib);
}

#[test]
fn cifar_batches_that_are_not_files_are_refused_naming_them() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("cifar");
    std::fs::create_dir_all(&root).unwrap();
    let batch1 = root.join("data_batch_1.bin");
    symlink("/dev/urandom", &batch1).unwrap();
    let b = run(&train_args(d.path(), "cifar10", &root, &[]), &[], 60);
    assert_refused(&b, &[batch1.to_str().unwrap(), "a character device"]);
    assert!(b.peak_rss_mib < RSS_MIB, "{} MiB", b.peak_rss_mib);
    std::fs::remove_file(root.join("data_batch_1.bin")).unwrap();
    std::fs::write(root.join("data_batch_1.bin"), vec![0u8; 3073]).unwrap();
    let meta = root.join("batches.meta.txt");
    mkfifo(&meta);
    let b = run(&train_args(d.path(), "cifar10", &root, &[]), &[], 60);
    assert_refused(&b, &[meta.to_str().unwrap(), "a FIFO"]);
    std::fs::remove_file(&meta).unwrap();
    let batch2 = root.join("data_batch_2.bin");
    symlink("/dev/zero", &batch2).unwrap();
    let b = run(&train_args(d.path(), "cifar10", &root, &[]), &[], 60);
    assert_refused(&b, &[batch2.to_str().unwrap(), "not a regular file"]);
    assert!(b.peak_rss_mib < RSS_MIB, "{} MiB", b.peak_rss_mib);
}

// ---------------------------------------------------------------------------------------
// One stop signal is enough

/// `hondo train` with its loader stuck on a first batch of hundreds of 8000 x 8000 images
/// (decoded one at a time: each takes a good fraction of a second) never reaches the step
/// where it would stop: the watchdog ends it one grace period after SIGTERM.
#[test]
fn sigterm_ends_a_run_stuck_before_its_loop_within_the_grace_period() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("data");
    let big = d.path().join("big.png");
    image::RgbImage::new(8000, 8000).save(&big).unwrap();
    for c in ["a", "b"] {
        std::fs::create_dir_all(root.join(format!("train/{c}"))).unwrap();
        for i in 0..256 {
            symlink(&big, root.join(format!("train/{c}/{i:03}.png"))).unwrap();
        }
        png(&root.join(format!("val/{c}/0.png")), 20, 9);
    }
    let args = train_args(
        d.path(),
        "image_folder",
        &root,
        &["train.batch_size=512", "data.max_image_side=8000"],
    );
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("hondo"))
        .args(&args)
        .env("HONDO_STOP_GRACE_S", "2")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line is printed once the data is listed and the model built.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.lines().any(|l| l.starts_with("run ")) {
        let n = std::io::BufRead::read_line(&mut stderr, &mut seen).unwrap();
        assert!(n > 0, "hondo ended before training:\n{seen}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    // SAFETY: signalling our own child.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("still running 30 s after SIGTERM with a 2 s grace period");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let waited = sent.elapsed();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(143), "{rest}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    let errors: Vec<&str> = rest.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{rest}");
    assert!(
        errors[0].contains("SIGTERM") && errors[0].contains("did not reach a checkpoint"),
        "{rest}"
    );
    assert!(
        predicates::Predicate::eval(&super::common::no_panic(), rest.as_str()),
        "{rest}"
    );
}
