//! Malformed configs: each error names the file and line, or the key and what is allowed.

use hondo::config::{load, load_str, Override};

fn err(text: &str) -> String {
    load_str(text, "bad.toml", &[])
        .expect_err("should fail")
        .to_string()
}

fn err_set(text: &str, set: &[&str]) -> String {
    let o: Vec<Override> = set.iter().map(|s| s.parse().unwrap()).collect();
    load_str(text, "ok.toml", &o)
        .expect_err("should fail")
        .to_string()
}

fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "expected {p:?} in:\n{msg}");
    }
}

#[test]
fn missing_file_names_the_path() {
    let e = load(std::path::Path::new("/nonexistent/cfg.toml"), &[])
        .unwrap_err()
        .to_string();
    has(&e, &["/nonexistent/cfg.toml", "cannot read"]);
}

#[test]
fn invalid_toml_names_the_line() {
    has(
        &err("[model]\narch = \"small_cnn\"\n[data\n"),
        &["bad.toml:3:"],
    );
    has(&err("[train]\nepochs = = 3\n"), &["bad.toml:2:"]);
}

#[test]
fn duplicate_key_names_the_line() {
    has(&err("[train]\nepochs = 3\nepochs = 4\n"), &["bad.toml:3:"]);
}

#[test]
fn unknown_key_names_the_key_path_and_line() {
    let e = err("[model]\narch = \"small_cnn\"\narchh = \"x\"\n");
    has(&e, &["bad.toml:3:", "key `model.archh`", "unknown field"]);
    // Once: the path already ends at the unknown field.
    assert!(!e.contains("archh.archh"), "{e}");
    let top = err("modle = 1\n");
    has(&top, &["key `modle`"]);
    let set = err_set("", &["train.epochsx=1"]);
    has(&set, &["key `train.epochsx`"]);
    assert!(!set.contains("epochsx.epochsx"), "{set}");
    let group = err("[[optimizer.groups]]\nprefix = \"fc\"\nlr_scalee = 2.0\n");
    has(&group, &["optimizer.groups[0].lr_scalee"]);
    assert!(!group.contains("lr_scalee.lr_scalee"), "{group}");
}

#[test]
fn unknown_section_is_an_error() {
    has(
        &err("[modle]\narch = \"small_cnn\"\n"),
        &["bad.toml:1:", "modle"],
    );
}

#[test]
fn unknown_nested_key_names_its_path() {
    has(
        &err("[data.augment]\nhflipp = 0.5\n"),
        &["key `data.augment.hflipp`", "bad.toml:2:"],
    );
}

#[test]
fn wrong_type_names_key_and_line() {
    has(
        &err("[optimizer]\nlr = \"fast\"\n"),
        &["bad.toml:2:", "optimizer.lr"],
    );
    has(
        &err("[train]\n\nepochs = -3\n"),
        &["bad.toml:3:", "train.epochs"],
    );
    has(
        &err("[data]\nmean = [0.5]\n"),
        &["bad.toml:2:", "data.mean"],
    );
}

#[test]
fn unknown_model_lists_the_allowed_names() {
    has(
        &err("[model]\narch = \"resnet19\"\n"),
        &[
            "model.arch",
            "resnet19",
            "resnet18",
            "resnet152",
            "small_cnn",
        ],
    );
}

#[test]
fn out_of_range_values_name_the_key_and_the_range() {
    has(
        &err("[optimizer]\nlr = 0.0\n"),
        &["optimizer.lr", "must be in (0, 1000000], got 0"],
    );
    has(
        &err("[train]\nbatch_size = 0\n"),
        &["train.batch_size", "must be in [1, 65536], got 0"],
    );
    has(
        &err("[optimizer]\nmomentum = 1.5\n"),
        &["optimizer.momentum"],
    );
    has(
        &err("[data.augment]\nscale = [0.9, 0.1]\n"),
        &["data.augment.scale"],
    );
}

#[test]
fn several_problems_are_all_reported() {
    let e = err("[optimizer]\nlr = -1.0\n[train]\nbatch_size = 0\nlabel_smoothing = 2.0\n");
    has(
        &e,
        &[
            "bad.toml",
            "optimizer.lr",
            "train.batch_size",
            "train.label_smoothing",
        ],
    );
}

#[test]
fn bad_device_and_monitor_name_allowed_values() {
    has(
        &err("[train]\ndevice = \"gpu\"\n"),
        &["train.device", "auto, cpu, cuda or cuda:N"],
    );
    has(
        &err("[checkpoint]\nmonitor = \"acc\"\n"),
        &["checkpoint.monitor", "val_acc, val_loss"],
    );
}

#[test]
fn multistep_needs_milestones() {
    has(
        &err("[schedule]\nname = \"multistep\"\n"),
        &["schedule.milestones"],
    );
}

#[test]
fn overrides_are_validated_like_the_file() {
    has(
        &err_set("", &["optimizer.lrr=0.1"]),
        &["--set optimizer.lrr=0.1", "optimizer.lrr"],
    );
    has(
        &err_set("", &["train.epochs=abc"]),
        &["--set train.epochs=abc", "train.epochs"],
    );
    has(
        &err_set("", &["model.arch=resnet19"]),
        &["model.arch", "resnet18"],
    );
    has(
        &err_set("", &["optimizer.lr=0"]),
        &["optimizer.lr", "must be in (0, 1000000], got 0"],
    );
    has(
        &err_set("", &["train.epochs.x=1"]),
        &["--set train.epochs.x=1", "train.epochs"],
    );
    has(
        &err_set("[train]\nepochs = 2\n", &["train.epochs.x=1"]),
        &["train.epochs", "not a table"],
    );
}

#[test]
fn overrides_take_toml_values() {
    let o: Vec<Override> = [
        "optimizer.lr=0.2",
        "model.arch=resnet18",
        r#"model.freeze=["conv1","layer1"]"#,
        "train.epochs=3",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let c = load_str("[optimizer]\nlr = 0.1\n", "x.toml", &o).unwrap();
    assert_eq!(c.optimizer.lr, 0.2);
    assert_eq!(c.model.arch.name(), "resnet18");
    assert_eq!(c.model.freeze, ["conv1", "layer1"]);
    assert_eq!(c.train.epochs, 3);
}

#[test]
fn example_configs_are_valid() {
    let dir = super::common::repo().join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 1);
}
