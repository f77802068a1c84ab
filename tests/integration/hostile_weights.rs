//! Weight files and checkpoints that lie (issue 13, classes 3 and 4), end to end through the
//! binary: each is refused with one `error:` line naming the file and the field or tensor,
//! in bounded time and memory, with nothing on disk changed. And fine-tuning from hondo's
//! own EMA checkpoints, with the averaged or the raw weights.

use super::common::{assert_refused, hondo, run_bounded, snapshot, write};
use hondo::checkpoint::{self, Meta};
use hondo::config::ModelConfig;
use hondo::models::Model;
use hondo::weights;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use tch::nn::VarStore;
use tch::Device;

/// A tiny run with a moving average of the weights.
const EMA_RUN: &str = r#"
[model]
arch = "small_cnn"
width = 8
[data]
kind = "shapes"
image_size = 16
train_size = 128
val_size = 32
workers = 1
[optimizer]
lr = 0.1
[train]
epochs = 1
batch_size = 32
threads = 2
ema_decay = 0.9
"#;

const LIMIT: Duration = Duration::from_secs(60);
/// Peak resident memory a refused input may cost (libtorch alone takes a few hundred MiB).
const MAX_RSS_MIB: u64 = 1500;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn os(args: &[&str]) -> Vec<std::ffi::OsString> {
    args.iter().map(|a| OsStr::new(a).to_owned()).collect()
}

fn bounded(args: &[&str]) -> super::common::Bounded {
    let args = os(args);
    let refs: Vec<&OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let b = run_bounded(&refs, &[], LIMIT);
    assert!(b.seconds < 30.0, "{args:?} took {:.1} s", b.seconds);
    assert!(
        b.peak_rss_mib < MAX_RSS_MIB,
        "{args:?} peaked at {} MiB",
        b.peak_rss_mib
    );
    b
}

/// The EMA run's directory, trained once per test process.
fn ema_run() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let root = tempfile::Builder::new()
            .prefix("hostile-weights-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let cfg = write(root.path(), "ema.toml", EMA_RUN);
        let out = root.path().join("ema");
        hondo()
            .args([
                "train",
                s(&cfg),
                "--out",
                s(&out),
                "--device",
                "cpu",
                "--quiet",
            ])
            .assert()
            .success();
        (root, out)
    })
    .1
}

/// Rewrites the EMA run's `last` checkpoint with its metadata changed by `edit`.
fn crafted(dir: &Path, name: &str, edit: impl FnOnce(&mut Meta)) -> PathBuf {
    let c = checkpoint::read(&ema_run().join(checkpoint::LAST)).unwrap();
    let mut meta = c.meta.clone();
    edit(&mut meta);
    let path = dir.join(name);
    let bytes = checkpoint::to_bytes_with_ema(&meta, &c.model, &c.optimizer, &c.ema).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn checkpoints_whose_metadata_lies_are_refused_by_predict_eval_and_export() {
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("x.png");
    image::RgbImage::new(16, 16).save(&img).unwrap();
    type Edit = fn(&mut Meta);
    let cases: &[(&str, Edit)] = &[
        ("num_classes", |m| m.num_classes = -3),
        ("num_classes", |m| m.num_classes = 100_000),
        ("classes", |m| {
            m.classes = (0..10).map(|i| format!("c{i}")).collect()
        }),
        ("image_size", |m| m.image_size = 0),
        ("image_size", |m| m.image_size = 100_000),
        ("crop_fraction", |m| m.crop_fraction = 0.0),
        ("std", |m| m.std = [0.0; 3]),
        ("world_size", |m| m.world_size = 0),
        ("epoch", |m| m.epoch = usize::MAX),
        ("batch", |m| m.batch = usize::MAX),
        ("step", |m| m.step = usize::MAX),
        ("best", |m| m.best = Some((0.5, usize::MAX))),
        // Any other name is a custom model's (whose safetensors export works); none is none.
        ("arch", |m| m.arch = " ".into()),
    ];
    for (i, (field, edit)) in cases.iter().enumerate() {
        let ckpt = crafted(d.path(), &format!("lie-{i}.safetensors"), edit);
        let before = snapshot(d.path());
        let field = format!("`{field}`");
        let out = d.path().join(format!("export-{i}.safetensors"));
        for args in [
            vec!["predict", s(&ckpt), s(&img), "--device", "cpu"],
            vec!["eval", s(&ckpt), "--device", "cpu"],
            vec!["export", s(&ckpt), "--out", s(&out)],
            vec![
                "export",
                s(&ckpt),
                "--out",
                s(&out),
                "--format",
                "torchscript",
            ],
        ] {
            let b = bounded(&args);
            assert_refused(&b, &[s(&ckpt), &field]);
            assert_eq!(snapshot(d.path()), before, "{args:?} changed files");
        }
    }
}

#[test]
fn an_ot_archive_whose_tensor_reaches_past_its_storage_is_refused_not_a_crash() {
    let d = tempfile::tempdir().unwrap();
    let good = d.path().join("good.ot");
    let bad = d.path().join("bad.ot");
    let last = ema_run().join(checkpoint::LAST);
    bounded(&["export", s(&last), "--out", s(&good)]);
    let made = super::common::python_json_args("make_lying_ot.py", &[&good, &bad]);
    assert_eq!(made["tensor_pickles"], 1, "{made}");
    // The archive's records are intact: only the offset lies.
    let e = weights::read_tensors(&bad).unwrap_err().to_string();
    assert!(
        e.contains("bad.ot") && e.contains("reaches outside its storage"),
        "{e}"
    );
    weights::read_tensors(&good).unwrap();
    let cfg = write(d.path(), "ft.toml", EMA_RUN);
    let pretrained = format!("model.pretrained={:?}", s(&bad));
    let b = bounded(&[
        "train",
        s(&cfg),
        "--out",
        s(&d.path().join("ft")),
        "--device",
        "cpu",
        "--set",
        &pretrained,
    ]);
    assert_refused(&b, &["bad.ot", "reaches outside its storage"]);
}

/// `SHORT_BINUNICODE`.
fn text(out: &mut Vec<u8>, t: &str) {
    out.push(0x8c);
    out.push(t.len() as u8);
    out.extend_from_slice(t.as_bytes());
}

/// LONG1 with 8 bytes.
fn int(out: &mut Vec<u8>, v: i64) {
    out.extend_from_slice(&[0x8a, 8]);
    out.extend_from_slice(&v.to_le_bytes());
}

/// `{name: _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', numel), 0, size, stride)}`.
fn tensor_pickle(name: &str, numel: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut p = b"\x80\x02}(".to_vec();
    text(&mut p, name);
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    text(&mut p, "storage");
    p.extend_from_slice(b"ctorch\nFloatStorage\n");
    text(&mut p, "0");
    text(&mut p, "cpu");
    int(&mut p, numel);
    p.extend_from_slice(b"tQ");
    int(&mut p, 0);
    p.push(b'(');
    size.iter().for_each(|&n| int(&mut p, n));
    p.extend_from_slice(b"t(");
    stride.iter().for_each(|&n| int(&mut p, n));
    p.extend_from_slice(b"t\x89NtRu.");
    p
}

/// A `torch.save` zip with `data.pkl` and one storage `0` of `floats` zeros.
fn torch_zip(path: &Path, pkl: &[u8], floats: usize) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("archive/data.pkl", opts).unwrap();
    w.write_all(pkl).unwrap();
    w.start_file("archive/data/0", opts).unwrap();
    w.write_all(&vec![0u8; floats * 4]).unwrap();
    w.finish().unwrap();
}

#[test]
fn pth_files_that_lie_are_refused_before_anything_is_allocated_or_written() {
    let d = tempfile::tempdir().unwrap();
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 200_000));
    deep.extend(std::iter::repeat_n(b'a', 199_999));
    deep.push(b'.');
    let mut marks = b"\x80\x02".to_vec();
    marks.extend(std::iter::repeat_n(b'(', 200_000));
    let cases: Vec<(&str, Vec<u8>, usize, &str)> = vec![
        ("deep.pth", deep, 0, "nest more than"),
        ("marks.pth", marks, 0, "nested MARKs"),
        (
            "huge-storage.pth",
            tensor_pickle("features.0.weight", 1 << 36, &[1 << 36], &[1]),
            4,
            "features.0.weight",
        ),
        (
            "expand.pth",
            tensor_pickle("features.0.weight", 4, &[1 << 20, 1 << 20], &[0, 0]),
            4,
            "features.0.weight",
        ),
    ];
    for (name, pkl, floats, needle) in cases {
        let file = d.path().join(name);
        torch_zip(&file, &pkl, floats);
        let text = EMA_RUN.replace(
            "[model]\n",
            &format!("[model]\npretrained = {:?}\n", s(&file)),
        );
        let cfg = write(d.path(), "finetune.toml", &text);
        let out = d.path().join("out");
        let before = snapshot(d.path());
        let b = bounded(&["train", s(&cfg), "--out", s(&out), "--device", "cpu"]);
        assert_refused(&b, &[name, needle]);
        assert_eq!(snapshot(d.path()), before, "{name}: files changed");
        assert!(!out.exists(), "{name}: a run directory was made");
    }
}

/// The model of the EMA run, freshly initialised.
fn fresh_model() -> VarStore {
    let vs = VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        width: 8,
        ..Default::default()
    };
    let _model = Model::new(&vs.root(), &cfg, 4);
    vs
}

#[test]
fn ema_checkpoints_fine_tune_with_the_averaged_or_the_raw_weights() {
    let best = ema_run().join(checkpoint::LAST);
    let c = checkpoint::read(&best).unwrap();
    assert!(!c.ema.is_empty(), "the run kept no EMA weights");

    // The library: EMA weights by default, raw weights on request, each exactly.
    for (use_ema, want) in [(true, &c.ema), (false, &c.model)] {
        let vs = fresh_model();
        let r = weights::load_pretrained_ema(&vs, &best, "classifier", true, use_ema).unwrap();
        assert_eq!(r.ema, Some(use_ema));
        let vars = vs.variables();
        assert_eq!(r.loaded.len(), vars.len());
        for (name, t) in want {
            assert!(vars[name].equal(t), "{name} differs (use_ema = {use_ema})");
        }
        // The two sets differ, so the test tells them apart.
        let other = if use_ema { &c.model } else { &c.ema };
        assert!(other
            .iter()
            .any(|(n, t)| n.ends_with("weight") && !vars[n].equal(t)));
    }

    // The binary: a strict fine-tune from the run's checkpoint trains, and says which
    // weights it took.
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "ft.toml", EMA_RUN);
    for (set, says) in [
        (None, "the checkpoint's EMA weights"),
        (
            Some("model.pretrained_ema=false"),
            "the checkpoint's raw weights",
        ),
    ] {
        let out = d.path().join(format!("ft-{}", set.is_some()));
        let pretrained = format!("model.pretrained={}", s(&best));
        let mut cmd = hondo();
        cmd.args(["train", s(&cfg), "--out", s(&out), "--device", "cpu"])
            .args(["--set", &pretrained]);
        if let Some(set) = set {
            cmd.args(["--set", set]);
        }
        let o = cmd.output().unwrap();
        let all =
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{all}");
        assert!(all.contains(says), "{set:?}: {all}");
        assert!(!all.contains("panicked"), "{all}");
    }
}

/// A copy of the EMA run whose `last` checkpoint is rewritten by `edit` (metadata, model
/// and optimizer tensors), for `train --resume`.
fn tampered_run(dir: &Path, edit: impl FnOnce(&mut checkpoint::Checkpoint)) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir(&run).unwrap();
    for f in ["config.toml", checkpoint::LAST] {
        std::fs::copy(ema_run().join(f), run.join(f)).unwrap();
    }
    let mut c = checkpoint::read(&run.join(checkpoint::LAST)).unwrap();
    edit(&mut c);
    let bytes = checkpoint::to_bytes_with_ema(&c.meta, &c.model, &c.optimizer, &c.ema).unwrap();
    std::fs::write(run.join(checkpoint::LAST), bytes).unwrap();
    run
}

#[test]
fn a_resume_refuses_optimizer_state_and_positions_that_lie_and_keeps_the_run() {
    type Edit = fn(&mut checkpoint::Checkpoint);
    let cases: &[(&str, Edit)] = &[
        ("a step count is one number", |c| {
            let (_, t) = c
                .optimizer
                .iter_mut()
                .find(|(n, _)| n.ends_with(".step"))
                .expect("SGD keeps a step count");
            *t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        }),
        ("a whole number", |c| {
            let (_, t) = c
                .optimizer
                .iter_mut()
                .find(|(n, _)| n.ends_with(".step"))
                .unwrap();
            *t = tch::Tensor::from(-5i64);
        }),
        // Within the checkpoint's own limit, but past the epoch's 4 batches.
        ("but an epoch has 4", |c| c.meta.batch = 1000),
    ];
    for (i, (why, edit)) in cases.iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        let run = tampered_run(d.path(), edit);
        let before = snapshot(&run);
        let b = bounded(&[
            "train",
            "--resume",
            s(&run),
            "--set",
            "train.epochs=2",
            "--device",
            "cpu",
        ]);
        assert_refused(&b, &["last.safetensors", why]);
        assert_eq!(snapshot(&run), before, "case {i} changed the run");
    }
}
