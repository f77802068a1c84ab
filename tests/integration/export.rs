//! `hondo export`, `eval`, `predict` and `plot` end to end on checkpoints trained by the
//! binary; exported files are checked against hondo's own outputs in Rust (tch `CModule`,
//! `VarStore`) and in PyTorch (tests/python/check_export.py).

use super::common::{hondo, no_panic, repo, write};
use hondo::checkpoint;
use hondo::config::{Arch, DataConfig, ModelConfig};
use hondo::data::{shapes, Dataset};
use hondo::models::Model;
use predicates::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

const SMALL: &str = r#"
[model]
arch = "small_cnn"
width = 8
[data]
kind = "shapes"
image_size = 16
train_size = 256
val_size = 64
workers = 2
[optimizer]
lr = 0.1
[train]
epochs = 1
batch_size = 32
threads = 2
"#;

const RESNET: &str = r#"
[model]
arch = "resnet18"
[data]
kind = "shapes"
image_size = 32
train_size = 96
val_size = 32
workers = 2
[optimizer]
lr = 0.05
[train]
epochs = 1
batch_size = 32
threads = 2
"#;

/// Trains `config` for one epoch through the binary (once per test process) and returns the
/// run directory.
fn run_dir(name: &str, config: &str) -> PathBuf {
    let root = {
        static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
        ROOT.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("export-")
                .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
                .unwrap()
        })
        .path()
    };
    let cfg = write(root, &format!("{name}.toml"), config);
    let out = root.join(name);
    super::common::train_ok(&[
        cfg.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--device".as_ref(),
        "cpu".as_ref(),
        "--quiet".as_ref(),
    ]);
    out
}

fn small_run() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| run_dir("small", SMALL))
}

fn resnet_run() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| run_dir("resnet18", RESNET))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn export(ckpt: &Path, out: &Path, extra: &[&str]) {
    hondo()
        .args(["export", s(ckpt), "--out", s(out)])
        .args(extra)
        .assert()
        .success()
        .stderr(predicate::str::contains("wrote").and(no_panic()));
}

#[test]
fn resnet18_exports_match_hondo_in_rust_and_pytorch() {
    let ckpt = resnet_run().join(checkpoint::BEST);
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    export(&ckpt, &p("model.safetensors"), &[]);
    export(&ckpt, &p("model.pt"), &["--format", "torchscript"]);
    export(&ckpt, &p("model-raw.pt"), &["--raw"]);
    export(&ckpt, &p("model.ot"), &["--format", "ot"]);

    // hondo's own outputs on a batch size other than the traced one.
    let r = checkpoint::restore(&ckpt, Device::Cpu).unwrap();
    tch::manual_seed(3);
    let x_unit = Tensor::rand([3, 3, 32, 32], (Kind::Float, Device::Cpu));
    let mean = Tensor::from_slice(&r.meta.mean.map(|v| v as f32)).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&r.meta.std.map(|v| v as f32)).view([1, 3, 1, 1]);
    let x_norm = (&x_unit - mean) / std;
    let logits = tch::no_grad(|| r.model.forward_t(&x_norm, false));

    // The safetensors export: the checkpoint's model tensors, no optimizer state.
    let (tensors, meta) =
        hondo::tensor_io::deserialize(&std::fs::read(p("model.safetensors")).unwrap()).unwrap();
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let mut want: Vec<String> = r.vs.variables().into_keys().collect();
    want.sort();
    assert_eq!(names, want);
    assert!(names.contains(&"layer1.0.bn1.num_batches_tracked"));
    assert_eq!(meta["arch"], "resnet18");
    assert_eq!(meta["image_size"], "32");

    // TorchScript through tch, both inputs.
    let ts = tch::CModule::load(p("model.pt")).unwrap();
    let d1 = max_diff(&ts.forward_ts(&[&x_unit]).unwrap(), &logits);
    assert!(d1 < 1e-5, "traced model differs by {d1}");
    let raw = tch::CModule::load(p("model-raw.pt")).unwrap();
    let d2 = max_diff(&raw.forward_ts(&[&x_norm]).unwrap(), &logits);
    assert!(d2 < 1e-5, "raw traced model differs by {d2}");
    let side: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("model.pt.json")).unwrap()).unwrap();
    assert_eq!(side["classes"], serde_json::json!(r.meta.classes));

    // .ot into a fresh VarStore.
    let mut vs = VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        ..Default::default()
    };
    let model = Model::new(&vs.root(), &cfg, r.meta.num_classes);
    vs.load(p("model.ot")).unwrap();
    let d3 = max_diff(&tch::no_grad(|| model.forward_t(&x_norm, false)), &logits);
    assert!(d3 == 0.0, ".ot model differs by {d3}");

    // PyTorch: torchvision strict load, torch.jit.load.
    let io = [
        ("x_unit".to_string(), x_unit),
        ("x_norm".to_string(), x_norm),
        ("logits".to_string(), logits),
    ];
    let bytes = hondo::tensor_io::serialize(&io, Default::default()).unwrap();
    std::fs::write(p("io.safetensors"), bytes).unwrap();
    let out = Command::new("python3")
        .arg(repo().join("tests/python/check_export.py"))
        .arg(d.path())
        .env("PYTHONPATH", repo().join(".pydeps"))
        .output()
        .expect("run python3 (PYTHONPATH=.pydeps) for tests/python/check_export.py");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("ok"), "{text}");
}

/// Writes `per_class` validation images of each shape class as PNGs in `dir/<class>/`.
fn image_folder(dir: &Path, per_class: usize) -> Vec<String> {
    let cfg = DataConfig {
        image_size: 16,
        val_size: 4 * per_class,
        ..Default::default()
    };
    let set = shapes::Shapes::new(&cfg, shapes::Split::Val);
    let mut rng = hondo::data::seed::rng(&[0]);
    for i in 0..set.len() {
        let sample = set.get(i, &mut rng).unwrap();
        let class = &set.classes()[sample.label as usize];
        std::fs::create_dir_all(dir.join(class)).unwrap();
        image::save_buffer(
            dir.join(class).join(format!("{i:03}.png")),
            &sample.image,
            16,
            16,
            image::ColorType::Rgb8,
        )
        .unwrap();
    }
    set.classes().to_vec()
}

#[test]
fn small_cnn_eval_predict_and_plot() {
    let run = small_run();
    let ckpt = run.join(checkpoint::LAST);
    let d = tempfile::tempdir().unwrap();

    // Eval on the checkpoint's own validation split.
    let png = d.path().join("cm.png");
    let out = hondo()
        .args([
            "eval",
            s(&ckpt),
            "--json",
            "--device",
            "cpu",
            "--png",
            s(&png),
        ])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(report["images"], 64);
    let total: u64 = report["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(total, 64);
    assert_eq!(report["per_class"].as_array().unwrap().len(), 4);
    assert!(image::open(&png).is_ok());

    // Eval on an image folder: a table.
    let folder = d.path().join("images");
    let classes = image_folder(&folder, 3);
    hondo()
        .args(["eval", s(&ckpt), "--data", s(&folder), "--device", "cpu"])
        .args(["--png", s(&d.path().join("cm2.png"))])
        .assert()
        .success()
        .stdout(
            predicate::str::contains("images 12")
                .and(predicate::str::contains("precision"))
                .and(predicate::str::contains("confusion matrix")),
        );

    // Predict on a folder and a file: top-k per image, probabilities descending.
    let one = folder.join(&classes[0]).join("000.png");
    let out = hondo()
        .args(["predict", s(&ckpt), s(&folder.join(&classes[1])), s(&one)])
        .args(["-k", "2", "--json", "--device", "cpu"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let preds: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let preds = preds.as_array().unwrap();
    assert_eq!(preds.len(), 4);
    for p in preds {
        let top = p["top"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        let (a, b) = (
            top[0]["probability"].as_f64().unwrap(),
            top[1]["probability"].as_f64().unwrap(),
        );
        assert!(a >= b && a + b <= 1.0 + 1e-6, "{p}");
        assert!(classes.contains(&top[0]["class"].as_str().unwrap().to_string()));
    }
    hondo()
        .args(["predict", s(&ckpt), s(&one), "--device", "cpu"])
        .assert()
        .success()
        .stdout(predicate::str::contains("000.png").and(predicate::str::contains("%")));

    // Plot on demand.
    hondo()
        .args(["plot", s(run)])
        .assert()
        .success()
        .stdout(predicate::str::contains("training-curves.png"));
    let img = image::open(run.join("training-curves.png")).unwrap();
    assert!(img.width() > 1000);
}

#[test]
fn bad_inputs_fail_with_one_clear_message() {
    let ckpt = small_run().join(checkpoint::LAST);
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("missing.safetensors");
    let garbage = write(d.path(), "garbage.safetensors", "this is not a checkpoint");
    let text_png = write(d.path(), "notes.png", "this is text");
    let fails = |args: &[&str], needle: &str| {
        hondo().args(args).assert().failure().stderr(
            predicate::str::starts_with("error: ")
                .and(predicate::str::contains(needle))
                .and(no_panic()),
        );
    };
    let out = d.path().join("m.safetensors");
    fails(
        &["export", s(&missing), "--out", s(&out)],
        "missing.safetensors",
    );
    fails(
        &["export", s(&garbage), "--out", s(&out)],
        "garbage.safetensors",
    );
    fails(
        &["export", s(&garbage), "--out", s(&d.path().join("m.pt"))],
        "garbage.safetensors",
    );
    fails(
        &["predict", s(&missing), s(&text_png)],
        "missing.safetensors",
    );
    fails(
        &["predict", s(&garbage), s(&text_png)],
        "not a hondo checkpoint",
    );
    fails(
        &["predict", s(&ckpt), s(&text_png), "--device", "cpu"],
        "notes.png",
    );
    fails(&["eval", s(&garbage)], "garbage.safetensors");

    let folder = d.path().join("images");
    image_folder(&folder, 1);
    std::fs::create_dir(folder.join("zebra")).unwrap();
    fails(
        &["eval", s(&ckpt), "--data", s(&folder), "--device", "cpu"],
        "zebra",
    );
}

const RESNET50: &str = r#"
[model]
arch = "resnet50"
[data]
kind = "shapes"
image_size = 32
train_size = 32
val_size = 16
workers = 2
[optimizer]
lr = 0.05
[train]
epochs = 1
batch_size = 16
threads = 2
"#;

/// hondo's logits for seeded inputs of batch 1 and 3, as the ONNX graph takes them (RGB in
/// [0, 1] normalised inside, or already normalised with `raw`), in `NAME.io.safetensors`.
fn onnx_io(ckpt: &Path, dir: &Path, name: &str, raw: bool) {
    let r = checkpoint::restore(ckpt, Device::Cpu).unwrap();
    let size = r.meta.image_size as i64;
    let mean = Tensor::from_slice(&r.meta.mean.map(|v| v as f32)).view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&r.meta.std.map(|v| v as f32)).view([1, 3, 1, 1]);
    let mut io = Vec::new();
    for b in [1i64, 3] {
        tch::manual_seed(10 + b);
        let x = Tensor::rand([b, 3, size, size], (Kind::Float, Device::Cpu));
        let x_norm = (&x - &mean) / &std;
        let logits = tch::no_grad(|| r.model.forward_t(&x_norm, false));
        io.push((format!("x{b}"), if raw { x_norm } else { x }));
        io.push((format!("logits{b}"), logits));
    }
    let bytes = hondo::tensor_io::serialize(&io, Default::default()).unwrap();
    std::fs::write(dir.join(format!("{name}.io.safetensors")), bytes).unwrap();
}

#[test]
fn onnx_exports_pass_the_checker_and_match_hondo_in_onnxruntime() {
    let resnet50 = {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| run_dir("resnet50", RESNET50))
    };
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("small_cnn", small_run().join(checkpoint::BEST), false),
        ("resnet18", resnet_run().join(checkpoint::BEST), false),
        ("resnet18_raw", resnet_run().join(checkpoint::BEST), true),
        ("resnet50", resnet50.join(checkpoint::BEST), false),
    ];
    for (name, ckpt, raw) in &cases {
        let out = d.path().join(format!("{name}.onnx"));
        let extra: &[&str] = if *raw { &["--raw"] } else { &[] };
        export(ckpt, &out, extra);
        onnx_io(ckpt, d.path(), name, *raw);
    }
    let v = super::common::python_json("check_onnx.py", d.path());
    let standard = [
        "Add",
        "BatchNormalization",
        "Conv",
        "Flatten",
        "Gemm",
        "GlobalAveragePool",
        "MaxPool",
        "Mul",
        "Relu",
        "Sub",
    ];
    for (name, ckpt, raw) in &cases {
        let r = &v[*name];
        let diffs = r["max_diff"].as_array().unwrap();
        for (b, diff) in [1, 3].iter().zip(diffs) {
            assert!(
                diff.as_f64().unwrap() < 1e-4,
                "{name} batch {b}: logits differ by {diff} of their scale"
            );
        }
        assert_eq!(r["opset"], 17, "{name}");
        for op in r["ops"].as_array().unwrap() {
            assert!(standard.contains(&op.as_str().unwrap()), "{name}: op {op}");
        }
        assert_eq!(
            r["ops"].as_array().unwrap().contains(&"Sub".into()),
            !raw,
            "{name}"
        );
        assert_eq!(
            r["initializer_types"],
            serde_json::json!([1]),
            "{name}: float32 only"
        );
        let meta = checkpoint::read(ckpt).unwrap().meta;
        let size = meta.image_size;
        assert_eq!(
            r["input"],
            serde_json::json!(["batch", 3, size, size]),
            "{name}"
        );
        assert_eq!(
            r["output"],
            serde_json::json!(["batch", meta.num_classes]),
            "{name}"
        );
        let props = &r["metadata"];
        assert_eq!(props["arch"], meta.arch.as_str(), "{name}");
        assert_eq!(
            props["classes"],
            serde_json::to_string(&meta.classes).unwrap()
        );
        assert_eq!(props["image_size"], size.to_string());
        for key in ["mean", "std", "crop_fraction", "input", "hondo_version"] {
            assert!(props.get(key).is_some(), "{name}: no metadata {key}");
        }
    }
}

#[test]
fn onnx_refuses_a_custom_model_before_writing_and_replaces_files_atomically() {
    let d = tempfile::tempdir().unwrap();
    let mut c = checkpoint::read(&small_run().join(checkpoint::BEST)).unwrap();
    c.meta.arch = "my_net".into();
    let custom = d.path().join("custom.safetensors");
    std::fs::write(
        &custom,
        checkpoint::to_bytes(&c.meta, &c.model, &[]).unwrap(),
    )
    .unwrap();
    let out = d.path().join("model.onnx");
    std::fs::write(&out, b"previous export").unwrap();
    hondo()
        .args(["export", s(&custom), "--out", s(&out)])
        .assert()
        .failure()
        .stderr(
            predicate::str::contains("custom.safetensors")
                .and(predicate::str::contains("`my_net` is a custom model"))
                .and(no_panic()),
        );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous export");
    // A good export replaces it whole, leaving no temporary file behind.
    export(&small_run().join(checkpoint::BEST), &out, &[]);
    assert_ne!(std::fs::read(&out).unwrap(), b"previous export");
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
