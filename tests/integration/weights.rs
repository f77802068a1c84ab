//! Foreign weights written by PyTorch (tests/python/make_weights.py), read by
//! `hondo::weights` and loaded into hondo's resnet18.
//!
//! The expected values come from `reference.bin`/`reference.json`, raw bytes the script
//! dumps beside the files, so no loader under test checks itself.

use super::common::python_fixtures;
use hondo::config::{Arch, ModelConfig};
use hondo::models::Model;
use hondo::weights::{self, Format, WeightsError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The fixture directory, generated once per script version (see [`python_fixtures`]); the
/// script also gets a path inside it that its malicious pickle must not create.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        python_fixtures("make_weights.py", "weights-fixtures", |dir| {
            vec![dir.join("pwned").into()]
        })
    })
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// The reference tensors of one group (`resnet18`, `views`), in the script's order.
fn reference(group: &str) -> Vec<(String, Tensor)> {
    let blob = std::fs::read(fixture("reference.bin")).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("reference.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for (key, e) in index.as_object().unwrap() {
        let Some(name) = key.strip_prefix(&format!("{group}/")) else {
            continue;
        };
        let kind = match e["dtype"].as_str().unwrap() {
            "float32" => Kind::Float,
            "float64" => Kind::Double,
            "float16" => Kind::Half,
            "bfloat16" => Kind::BFloat16,
            "int64" => Kind::Int64,
            "int32" => Kind::Int,
            "uint8" => Kind::Uint8,
            "bool" => Kind::Bool,
            other => panic!("dtype {other}"),
        };
        let shape: Vec<i64> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_i64().unwrap())
            .collect();
        let off = e["offset"].as_u64().unwrap() as usize;
        let n = e["nbytes"].as_u64().unwrap() as usize;
        let t = Tensor::f_from_data_size(&blob[off..off + n], &shape, kind).unwrap();
        out.push((name.to_string(), t));
    }
    assert!(!out.is_empty(), "no reference tensors for {group}");
    out
}

/// The raw bytes of a tensor, for bit-exact comparisons.
fn bytes(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let mut v = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut v, t.numel()).unwrap();
    v
}

/// Asserts two tensors have the same dtype, shape and bits.
fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.kind(), want.kind(), "{name}: dtype");
    assert_eq!(got.size(), want.size(), "{name}: shape");
    assert!(bytes(got) == bytes(want), "{name}: values differ");
}

/// Floating reference tensors converted to `kind` (as the script's `.half()` etc.).
fn converted(reference: &[(String, Tensor)], kind: Kind) -> Vec<(String, Tensor)> {
    reference
        .iter()
        .map(|(n, t)| {
            let t = if t.is_floating_point() {
                t.to_kind(kind)
            } else {
                t.shallow_clone()
            };
            (n.clone(), t)
        })
        .collect()
}

fn resnet18(num_classes: i64) -> (VarStore, Model) {
    let vs = VarStore::new(Device::Cpu);
    let cfg = ModelConfig {
        arch: Arch::Resnet18,
        ..Default::default()
    };
    let model = Model::new(&vs.root(), &cfg, num_classes);
    (vs, model)
}

/// Checks the file holds exactly the reference tensors.
fn assert_file_matches(file: &weights::TensorFile, want: &[(String, Tensor)]) {
    let mut got: Vec<&(String, Tensor)> = file.tensors.iter().collect();
    let mut want: Vec<&(String, Tensor)> = want.iter().collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let names = |v: &[&(String, Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    for ((name, g), (_, w)) in got.into_iter().zip(want) {
        assert_same(name, g, w);
        assert!(g.is_contiguous(), "{name} is not contiguous");
    }
}

/// Checks that every model variable holds the reference value (in the variable's dtype).
fn assert_model_matches(vs: &VarStore, want: &[(String, Tensor)], skip: &[&str]) {
    let vars = vs.variables();
    let mut checked = 0;
    for (name, w) in want {
        if skip.contains(&name.as_str()) {
            continue;
        }
        let var = &vars[name];
        assert_same(name, var, &w.to_kind(var.kind()));
        checked += 1;
    }
    assert_eq!(checked + skip.len(), vars.len());
}

fn strict_load_checks(file_name: &str, format: Format, kind: Kind) {
    let path = fixture(file_name);
    let want = converted(&reference("resnet18"), kind);
    let file = weights::read_tensors(&path).unwrap();
    assert_eq!(file.format, format);
    assert_file_matches(&file, &want);

    let (vs, _model) = resnet18(1000);
    let report = weights::load_pretrained(&vs, &path, "fc", true).unwrap();
    assert_eq!(report.loaded.len(), vs.variables().len());
    assert!(report.head_reinitialised.is_empty());
    assert_eq!(
        report.summary(),
        format!("loaded {} tensors", vs.variables().len())
    );
    assert_model_matches(&vs, &want, &[]);
    // The model keeps its own dtype.
    assert_eq!(vs.variables()["conv1.weight"].kind(), Kind::Float);
    assert_eq!(
        vs.variables()["bn1.num_batches_tracked"].int64_value(&[]),
        1234
    );
}

#[test]
fn zip_pth_loads_bit_exactly() {
    strict_load_checks("resnet18_zip.pth", Format::TorchZip, Kind::Float);
}

#[test]
fn legacy_pth_loads_bit_exactly() {
    strict_load_checks("resnet18_legacy.pth", Format::TorchLegacy, Kind::Float);
}

#[test]
fn safetensors_loads_bit_exactly_with_metadata() {
    strict_load_checks("resnet18.safetensors", Format::Safetensors, Kind::Float);
    let file = weights::read_tensors(fixture("resnet18.safetensors")).unwrap();
    assert_eq!(file.metadata.get("format").map(String::as_str), Some("pt"));
    assert_eq!(
        file.metadata.get("source").map(String::as_str),
        Some("make_weights.py")
    );
}

#[test]
fn half_and_bfloat16_files_load_into_an_f32_model() {
    strict_load_checks("resnet18_fp16.pth", Format::TorchZip, Kind::Half);
    strict_load_checks(
        "resnet18_bf16.safetensors",
        Format::Safetensors,
        Kind::BFloat16,
    );
    strict_load_checks(
        "resnet18_bf16_legacy.pth",
        Format::TorchLegacy,
        Kind::BFloat16,
    );
}

#[test]
fn wrapped_data_parallel_checkpoint_is_unwrapped() {
    // {"epoch", "arch", "best_acc1", "state_dict": {"module.conv1.weight": ...}}
    strict_load_checks("resnet18_wrapped.pth", Format::TorchZip, Kind::Half);
}

#[test]
fn parameters_without_batch_counters_load_strictly() {
    let path = fixture("resnet18_params.pth");
    let want: Vec<_> = reference("resnet18")
        .into_iter()
        .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
        .collect();
    assert_file_matches(&weights::read_tensors(&path).unwrap(), &want);
    let (vs, _model) = resnet18(1000);
    let report = weights::load_pretrained(&vs, &path, "fc", true).unwrap();
    assert_eq!(report.loaded.len(), want.len());
    assert!(report.missing.is_empty());
}

#[test]
fn views_and_dtypes_match_in_zip_and_legacy_files() {
    let want = reference("views");
    for (name, format) in [
        ("views.pth", Format::TorchZip),
        ("views_legacy.pth", Format::TorchLegacy),
    ] {
        let file = weights::read_tensors(fixture(name)).unwrap();
        assert_eq!(file.format, format, "{name}");
        assert_file_matches(&file, &want);
    }
}

#[test]
fn another_class_count_reinitialises_the_head() {
    let (vs, _model) = resnet18(10);
    let fc_before = vs.variables()["fc.weight"].copy();
    let report = weights::load_pretrained(&vs, fixture("resnet18_zip.pth"), "fc", true).unwrap();
    assert_eq!(report.head_reinitialised, ["fc.bias", "fc.weight"]);
    assert_eq!(report.loaded.len(), vs.variables().len() - 2);
    assert!(report.unexpected.is_empty() && report.missing.is_empty());
    assert!(
        report
            .summary()
            .contains("re-initialised head: fc.bias, fc.weight"),
        "{}",
        report.summary()
    );
    assert_same("fc.weight", &vs.variables()["fc.weight"], &fc_before);
    assert_model_matches(&vs, &reference("resnet18"), &["fc.weight", "fc.bias"]);
}

#[test]
fn strict_load_names_the_mis_shaped_tensor_and_copies_nothing() {
    let (vs, _model) = resnet18(1000);
    let before = vs.variables()["layer1.0.conv1.weight"].copy();
    let path = fixture("resnet18_damaged.pth");
    let err = weights::load_pretrained(&vs, &path, "fc", true).unwrap_err();
    match &err {
        WeightsError::ShapeMismatch {
            name,
            expected,
            found,
        } => {
            assert_eq!(name, "conv1.weight");
            assert_eq!(expected, &[64, 3, 7, 7]);
            assert_eq!(found, &[64, 3, 5, 5]);
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("conv1.weight")
            && msg.contains("[64, 3, 7, 7]")
            && msg.contains("[64, 3, 5, 5]"),
        "{msg}"
    );
    assert_same(
        "layer1.0.conv1.weight",
        &vs.variables()["layer1.0.conv1.weight"],
        &before,
    );
}

#[test]
fn lenient_load_lists_what_it_skipped() {
    let (vs, _model) = resnet18(1000);
    let report =
        weights::load_pretrained(&vs, fixture("resnet18_damaged.pth"), "fc", false).unwrap();
    assert_eq!(
        report.mismatched,
        [(
            "conv1.weight".to_string(),
            vec![64, 3, 7, 7],
            vec![64, 3, 5, 5]
        )]
    );
    assert_eq!(report.missing, ["layer1.0.bn1.bias"]);
    assert_eq!(report.unexpected, ["extra.weight"]);
    assert_eq!(report.loaded.len(), vs.variables().len() - 2);
    let s = report.summary();
    assert!(
        s.contains("1 missing: layer1.0.bn1.bias") && s.contains("1 unexpected: extra.weight"),
        "{s}"
    );
    let want = converted(&reference("resnet18"), Kind::Half);
    assert_model_matches(&vs, &want, &["conv1.weight", "layer1.0.bn1.bias"]);
}

#[test]
fn truncated_files_fail_with_the_file_name() {
    for name in [
        "truncated_zip.pth",
        "truncated_legacy.pth",
        "truncated.safetensors",
    ] {
        let path = fixture(name);
        let err = weights::read_tensors(&path).unwrap_err();
        assert!(
            matches!(err, WeightsError::Malformed { .. }),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn damaged_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    // The zip reader's own checks (CRC, directory) catch most damage: sample it sparsely.
    for (name, step) in [("views_legacy.pth", 1), ("views.pth", 11)] {
        let data = std::fs::read(fixture(name)).unwrap();
        let path = dir.path().join(name);
        // Every prefix fails cleanly.
        for len in (0..data.len()).step_by(step) {
            std::fs::write(&path, &data[..len]).unwrap();
            match weights::read_tensors(&path) {
                Err(WeightsError::Malformed { .. }) => {}
                other => panic!("{name} cut at {len}: {other:?}"),
            }
        }
        // A corrupted byte gives an error or some tensors, never a panic.
        for i in (0..data.len()).step_by(step) {
            let mut bad = data.clone();
            bad[i] ^= 0xff;
            std::fs::write(&path, &bad).unwrap();
            let _ = weights::read_tensors(&path);
        }
    }
}

#[test]
fn forbidden_globals_are_refused_and_never_run() {
    for name in [
        "evil_zip.pth",
        "evil_legacy.pth",
        "evil_nested.pth",
        "evil_proto0.pth",
    ] {
        let path = fixture(name);
        let err = weights::read_tensors(&path).unwrap_err();
        match &err {
            WeightsError::ForbiddenGlobal { path: p, global } => {
                assert_eq!(p, &path);
                assert_eq!(global, "posix.system", "{name}");
            }
            other => panic!("{name}: expected a forbidden global, got {other}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(name) && msg.contains("`posix.system`"),
            "{msg}"
        );
    }
    assert!(!fixture("pwned").exists(), "a pickle ran code");
}

#[test]
fn libtorch_archive_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18.ot");
    let (src, _m) = resnet18(1000);
    src.save(&path).unwrap();
    let (dst, _m) = resnet18(1000);
    let report = weights::load_pretrained(&dst, &path, "fc", true).unwrap();
    assert_eq!(report.loaded.len(), dst.variables().len());
    let want: HashMap<String, Tensor> = src.variables();
    for (name, var) in dst.variables() {
        assert_same(&name, &var, &want[&name]);
    }
}

// ---------------------------------------------------------------------------------------
// Weights by name from the torch hub and Hugging Face caches

fn hub_caches() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| python_fixtures("make_hub_caches.py", "hub-caches", |_| vec![]))
}

/// `hondo ARGS` with the fixture caches as TORCH_HOME and HF_HUB_CACHE.
fn hondo_with_caches(args: &[&str]) -> std::process::Output {
    let caches = hub_caches();
    std::process::Command::new(assert_cmd::cargo::cargo_bin("hondo"))
        .args(args)
        .env("TORCH_HOME", caches.join("torch"))
        .env("HF_HUB_CACHE", caches.join("hf"))
        .env_remove("HF_HOME")
        .output()
        .unwrap()
}

const HUB_TRAIN: &str = r#"
[model]
arch = "resnet18"
freeze = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]
[data]
kind = "shapes"
train_size = 8
val_size = 8
[train]
epochs = 1
batch_size = 8
threads = 2
"#;

/// Trains HUB_TRAIN from `pretrained` into `dir/run`; returns (success, stderr).
fn train_from(dir: &Path, pretrained: &str, extra: &[&str]) -> (bool, String) {
    let cfg = super::common::write(dir, "hub.toml", HUB_TRAIN);
    let run = dir.join("run");
    let set = format!("model.pretrained={pretrained:?}");
    let mut args = vec![
        "train",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--set",
        &set,
    ];
    for e in extra {
        args.extend(["--set", e]);
    }
    let out = hondo_with_caches(&args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every tensor of the trained run's `last` but the re-initialised head equals the cached
/// file's (the rest was frozen, BatchNorm statistics included).
fn assert_started_from_the_file(run: &Path) {
    let expected = weights::read_tensors(hub_caches().join("expected.safetensors")).unwrap();
    let ckpt = hondo::checkpoint::read(&run.join("last.safetensors")).unwrap();
    let trained: HashMap<&str, &Tensor> = ckpt.model.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut compared = 0;
    for (name, t) in &expected.tensors {
        if name.starts_with("fc.") {
            continue;
        }
        let got = trained[name.as_str()];
        assert!(got.equal(t), "{name} differs from the cached file");
        compared += 1;
    }
    assert_eq!(compared, expected.tensors.len() - 2);
}

#[test]
fn weights_by_name_come_from_the_caches_exactly() {
    // Listed by the names model.pretrained takes.
    let out = hondo_with_caches(&["weights", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed.contains("torchvision:resnet18.IMAGENET1K_V1"),
        "{listed}"
    );
    assert!(listed.contains("hf:timm/resnet18.a1_in1k"), "{listed}");

    // torchvision's name, but not torchvision's bytes: refused naming both hashes.
    let d = tempfile::tempdir().unwrap();
    let (ok, err) = train_from(d.path(), "torchvision:resnet18.IMAGENET1K_V1", &[]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("resnet18-f37072fd.pth") && err.contains("does not start with f37072fd"),
        "{err}"
    );
    assert!(!d.path().join("run").exists(), "nothing written");
    // With the check off (torch.hub's check_hash = False) it trains from those tensors,
    // with torchvision's preprocessing for the keys the config left alone.
    let (ok, err) = train_from(
        d.path(),
        "torchvision:resnet18.IMAGENET1K_V1",
        &["model.check_hash=false"],
    );
    assert!(ok, "{err}");
    assert!(err.contains("data.image_size = 224"), "{err}");
    assert_started_from_the_file(&d.path().join("run"));

    // The Hugging Face snapshot, with its config.json preprocessing.
    let d = tempfile::tempdir().unwrap();
    let (ok, err) = train_from(d.path(), "hf:timm/resnet18.a1_in1k", &[]);
    assert!(ok, "{err}");
    let run = d.path().join("run");
    assert_started_from_the_file(&run);
    let cfg = hondo::config::load(&run.join("config.toml"), &[]).unwrap();
    assert_eq!(cfg.data.image_size, 96);
    assert_eq!(cfg.data.crop_fraction, 0.9);
    assert_eq!(cfg.data.mean, [0.5, 0.4, 0.3]);
    assert_eq!(cfg.data.std, [0.25, 0.2, 0.15]);
    // A key the config sets wins over the snapshot's.
    let d = tempfile::tempdir().unwrap();
    let (ok, err) = train_from(
        d.path(),
        "hf:timm/resnet18.a1_in1k",
        &["data.image_size=64"],
    );
    assert!(ok, "{err}");
    let cfg = hondo::config::load(&d.path().join("run/config.toml"), &[]).unwrap();
    assert_eq!((cfg.data.image_size, cfg.data.std), (64, [0.25, 0.2, 0.15]));
}

#[test]
fn weights_by_name_that_are_absent_or_wrong_say_what_to_do() {
    use predicates::Predicate;
    let d = tempfile::tempdir().unwrap();
    let hub = hub_caches().join("torch/hub/checkpoints/resnet50-11ad3fa6.pth");
    let hub = hub.to_str().unwrap();
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "torchvision:resnet50.IMAGENET1K_V2",
            &["model.arch=resnet50"],
            &[
                "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                hub,
            ],
        ),
        (
            "hf:timm/resnet50.a1_in1k",
            &["model.arch=resnet50"],
            &["hf download timm/resnet50.a1_in1k"],
        ),
        (
            "torchvision:resnet18.IMAGENET1K_V2",
            &[],
            &["resnet50.IMAGENET1K_V2"],
        ),
        (
            "torchvision:resnet18",
            &["model.arch=resnet34", "model.check_hash=false"],
            &["resnet18 weights", "model.arch = resnet34"],
        ),
        ("hf:../../etc", &[], &["hf:ORG/NAME"]),
    ];
    for (name, extra, needles) in cases {
        let (ok, err) = train_from(d.path(), name, extra);
        assert!(!ok, "{name}: {err}");
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or("");
        for n in *needles {
            assert!(line.contains(n), "{name}: no {n:?} in {err}");
        }
        assert!(super::common::no_panic().eval(&err), "{err}");
    }
}

#[test]
fn a_snapshot_config_that_claims_out_of_range_preprocessing_is_refused_by_key() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("hf/models--timm--resnet18.bad");
    let commit = "f".repeat(40);
    let snapshot = repo.join("snapshots").join(&commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), &commit).unwrap();
    std::os::unix::fs::symlink(
        hub_caches().join("expected.safetensors"),
        snapshot.join("model.safetensors"),
    )
    .unwrap();
    let cfg = super::common::write(d.path(), "hub.toml", HUB_TRAIN);
    for (pretrained_cfg, key) in [
        (r#"{"input_size": [3, 100000, 100000]}"#, "data.image_size"),
        (r#"{"crop_pct": 0.0}"#, "data.crop_fraction"),
        (r#"{"std": [0.0, 0.2, 0.2]}"#, "data.std"),
    ] {
        let config =
            format!(r#"{{"architecture": "resnet18", "pretrained_cfg": {pretrained_cfg}}}"#);
        std::fs::write(snapshot.join("config.json"), config).unwrap();
        let run = d.path().join("run");
        let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("hondo"))
            .args([
                "train",
                cfg.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
            ])
            .args(["--set", "model.pretrained=\"hf:timm/resnet18.bad\""])
            .env("HF_HUB_CACHE", d.path().join("hf"))
            .env_remove("HF_HOME")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{pretrained_cfg}: {err}");
        assert!(
            err.contains("preprocessing of \"hf:timm/resnet18.bad\"") && err.contains(key),
            "{pretrained_cfg}: {err}"
        );
        assert!(!run.exists(), "nothing written");
    }
}
