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

#[test]
fn completions_are_valid_scripts_that_know_the_subcommands() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef hondo"),
        ("fish", "complete -c hondo"),
    ] {
        let out = hondo().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(marker), "{shell}: {marker}");
        for sub in ["train", "export", "predict", "completions"] {
            assert!(text.contains(sub), "{shell}: {sub}");
        }
        let flag = if shell == "fish" {
            "-l resume"
        } else {
            "--resume"
        };
        assert!(text.contains(flag), "{shell}: train's flags");
    }
    // bash parses the script, and completing `hondo tr` offers `train`.
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("hondo.bash");
    let out = hondo().args(["completions", "bash"]).output().unwrap();
    std::fs::write(&script, out.stdout).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && COMP_WORDS=(hondo tr) COMP_CWORD=1 COMP_LINE='hondo tr' \
             COMP_POINT=8 && _hondo hondo tr hondo && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        ))
        .output()
        .unwrap();
    let offered = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && offered.lines().any(|l| l == "train"),
        "{offered}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    hondo()
        .args(["completions", "tcsh"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("tcsh").and(no_panic()));
}

#[test]
fn train_json_prints_one_summary_object_on_stdout() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let out = d.path().join("run");
    let o = hondo()
        .args([
            "train",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--set", "train.epochs=1", "--json", "--quiet"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["outcome"], "finished");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["epochs_done"], 1);
    assert_eq!(v["monitor"], "val_acc");
    assert_eq!(v["best"]["epoch"], 1);
    let best = v["best"]["value"].as_f64().unwrap();
    assert_eq!(v["last"]["val_acc"].as_f64().unwrap(), best);
    assert_eq!(v["run_dir"].as_str().unwrap(), out.to_str().unwrap());
    for k in ["last", "best"] {
        let p = v["checkpoints"][k].as_str().unwrap();
        assert!(std::path::Path::new(p).is_file(), "{k}: {p}");
    }
    // A refused run says so in JSON too, with the error and the exit status.
    let o = hondo()
        .args(["train", cfg.to_str().unwrap(), "--json"])
        .args(["--set", "train.epochs=0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is JSON");
    assert_eq!(v["outcome"], "error");
    assert!(v["error"].as_str().unwrap().contains("train.epochs"), "{v}");
}

/// Runs `hondo ARGS` on a pseudo-terminal (util-linux `script`), returning what it drew.
fn on_a_terminal(args: &[&str], envs: &[(&str, &str)]) -> Option<String> {
    let bin = assert_cmd::cargo::cargo_bin("hondo");
    let line = std::iter::once(bin.to_str().unwrap())
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn progress_output_is_coloured_on_a_terminal_unless_no_color() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let run = |name: &str, envs: &[(&str, &str)]| {
        let out = d.path().join(name);
        // A pretrained file with extra tensors gives a warning line as well.
        on_a_terminal(
            &[
                "train",
                cfg.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--set",
                "train.epochs=1",
            ],
            envs,
        )
    };
    let Some(coloured) = run("a", &[]) else {
        eprintln!("skipped: util-linux `script` is not installed");
        return;
    };
    // An SGR colour sequence: ESC [ ... 3x m (the bar is cyan on blue).
    let has_colour = |s: &str| s.contains("\u{1b}[36m") || s.contains("\u{1b}[38;5;6m");
    assert!(
        has_colour(&coloured),
        "no colour on a terminal: {coloured:?}"
    );
    assert!(coloured.contains("done: 1 epochs"), "{coloured}");
    let plain = run("b", &[("NO_COLOR", "1")]).unwrap();
    assert!(plain.contains("done: 1 epochs"), "{plain}");
    assert!(
        !has_colour(&plain) && !plain.contains("\u{1b}[3"),
        "NO_COLOR: {plain:?}"
    );
}

#[test]
fn a_launch_environment_that_contradicts_itself_is_refused_before_anything_is_written() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let out = d.path().join("run");
    let train = |envs: &[(&str, &str)]| {
        let mut c = hondo();
        c.args([
            "train",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--set", "train.epochs=1"])
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .env_remove("SLURM_NTASKS")
        .env_remove("SLURM_PROCID");
        for (k, v) in envs {
            c.env(k, v);
        }
        c.assert()
    };
    train(&[("WORLD_SIZE", "2")])
        .failure()
        .stderr(predicate::str::contains("RANK is not").and(no_panic()));
    train(&[("RANK", "0")])
        .failure()
        .stderr(predicate::str::contains("WORLD_SIZE is not").and(no_panic()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    fn torchrun<'a>(rank: &'a str, port: &'a str) -> Vec<(&'static str, &'a str)> {
        vec![
            ("RANK", rank),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", port),
        ]
    }
    train(&torchrun("2", &port))
        .failure()
        .stderr(predicate::str::contains("not below the world size").and(no_panic()));
    train(&torchrun("0", "0"))
        .failure()
        .stderr(predicate::str::contains("MASTER_PORT").and(no_panic()));
    // --nproc is 1 to 1024.
    for n in ["0", "1025"] {
        hondo()
            .args(["train", cfg.to_str().unwrap(), "--nproc", n])
            .assert()
            .failure()
            .stderr(predicate::str::contains("--nproc").and(no_panic()));
    }
    // --nproc inside a launched rank would start processes of processes.
    let mut nested = torchrun("0", &port);
    nested[1].1 = "1";
    let mut c = hondo();
    c.args(["train", cfg.to_str().unwrap(), "--nproc", "2"]);
    for (k, v) in &nested {
        c.env(k, v);
    }
    c.assert()
        .failure()
        .stderr(predicate::str::contains("use either a launcher or --nproc").and(no_panic()));
    assert!(!out.exists(), "nothing written");
    // A world of one is an ordinary run (its own store, no peers).
    let mut one = torchrun("0", &port);
    one[1].1 = "1";
    train(&one).success();
}

#[test]
fn an_error_says_each_cause_once() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write(d.path(), "tiny.toml", TINY);
    let missing = d.path().join("missing.pth");
    let out = hondo()
        .args(["train", cfg.to_str().unwrap(), "--out"])
        .arg(d.path().join("run"))
        .args([
            "--set",
            &format!("model.pretrained={:?}", missing.to_str().unwrap()),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(line.contains("missing.pth"), "{err}");
    assert_eq!(line.matches("No such file").count(), 1, "{line}");
}
