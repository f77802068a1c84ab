//! Data-parallel training through the trainer (issue 15), two ranks on this machine:
//! launched by `hondo train --nproc 2` and by the torch wheel's real `torchrun --no-python`,
//! against PyTorch's own DDP (`tests/python/ddp_reference.py`), with SyncBatchNorm against
//! one process on the combined batch, across world sizes on resume, under signals, a killed
//! rank and torchrun's restarts, with rendezvous faults, and across two network namespaces.

use super::common::{assert_same_tensors, mnist_fixture, no_panic, repo, write};
use hondo::data::loader::{Loader, LoaderOptions, Shard};
use predicates::Predicate;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn hondo_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("hondo")
}

/// A command without any launcher's variables from the test's own environment.
fn clean(mut c: Command) -> Command {
    for k in [
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "TORCHELASTIC_USE_AGENT_STORE",
        "TORCHELASTIC_RESTART_COUNT",
        "RUST_BACKTRACE",
    ] {
        c.env_remove(k);
    }
    c
}

fn hondo_train(args: &[&str]) -> Command {
    let mut c = clean(Command::new(hondo_bin()));
    c.arg("train").args(args).stdin(Stdio::null());
    c
}

/// `torchrun --nproc-per-node 2 [extra] --no-python hondo train ARGS` from the wheel.
fn torchrun(extra: &[&str], args: &[&str]) -> Command {
    let mut c = clean(Command::new("python3"));
    // --standalone: a free port of its own (tests run side by side).
    c.args([
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ])
    .args(extra)
    .arg("--no-python")
    .arg(hondo_bin())
    .arg("train")
    .args(args)
    .env("PYTHONPATH", repo().join(".pydeps"))
    .stdin(Stdio::null());
    c
}

fn ok(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{err}",
        out.status
    );
    assert!(no_panic().eval(&err), "{what}: panic text\n{err}");
    err
}

fn model(run: &Path) -> Vec<(String, tch::Tensor)> {
    hondo::checkpoint::read(&run.join(hondo::checkpoint::LAST))
        .unwrap()
        .model
}

fn meta(run: &Path) -> hondo::checkpoint::Meta {
    hondo::checkpoint::read(&run.join(hondo::checkpoint::LAST))
        .unwrap()
        .meta
}

/// The largest difference between two named tensor lists, relative to the largest value.
fn max_rel_diff(a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) -> f64 {
    let mut worst: f64 = 0.0;
    for (na, ta) in a {
        let tb = &b
            .iter()
            .find(|(n, _)| n == na)
            .unwrap_or_else(|| panic!("{na}"))
            .1;
        let (ta, tb) = (ta.to_kind(tch::Kind::Double), tb.to_kind(tch::Kind::Double));
        let scale = ta.abs().max().double_value(&[]).max(1e-3);
        let d = (&ta - &tb).abs().max().double_value(&[]) / scale;
        worst = worst.max(d);
    }
    worst
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_ranks_by_nproc_and_by_torchrun_train_what_pytorch_ddp_trains() {
    let d = tempfile::tempdir().unwrap();
    let mnist = d.path().join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    mnist_fixture(&mnist, 64);
    let init = d.path().join("init.safetensors");
    let cfg = write(
        d.path(),
        "ddp.toml",
        &format!(
            r#"
[model]
arch = "small_cnn"
width = 4
dropout = 0.0
pretrained = {init:?}
[data]
kind = "mnist"
root = {mnist:?}
image_size = 28
crop_fraction = 1.0
workers = 1
[data.augment]
random_resized_crop = false
hflip = 0.0
color_jitter = 0.0
[optimizer]
lr = 0.05
momentum = 0.9
nesterov = false
weight_decay = 0.0
[schedule]
name = "constant"
warmup_epochs = 0.0
[train]
epochs = 2
batch_size = 8
threads = 1
channels_last = false
"#
        ),
    );
    // The batches each rank sees, as hondo's loader deals them, for the reference.
    let config = hondo::config::load(&cfg, &[]).unwrap();
    let splits = hondo::data::build(&config.data).unwrap();
    let epochs: Vec<Vec<Vec<Vec<usize>>>> = (0..config.train.epochs)
        .map(|epoch| {
            (0..2)
                .map(|rank| {
                    let l = Loader::new(
                        splits.train.clone(),
                        LoaderOptions {
                            batch_size: 8,
                            shuffle: true,
                            drop_last: false,
                            seed: config.train.seed,
                            workers: 1,
                            prefetch: 1,
                            fail_on_error: true,
                            pin_memory: false,
                            shard: Some(Shard {
                                rank,
                                world: 2,
                                pad: true,
                            }),
                            normalize: None,
                        },
                    )
                    .unwrap();
                    l.order(epoch).chunks(8).map(|c| c.to_vec()).collect()
                })
                .collect()
        })
        .collect();
    let plan = serde_json::json!({
        "mnist": mnist, "width": 4, "lr": 0.05, "momentum": 0.9,
        "mean": config.data.mean, "std": config.data.std, "epochs": epochs,
    });
    let refdir = d.path().join("reference");
    std::fs::create_dir_all(&refdir).unwrap();
    std::fs::write(refdir.join("plan.json"), plan.to_string()).unwrap();
    let mut reference = clean(Command::new("python3"));
    reference
        .args([
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
        ])
        .arg(repo().join("tests/python/ddp_reference.py"))
        .arg(&refdir)
        .env("PYTHONPATH", repo().join(".pydeps"));
    ok(reference, "PyTorch DDP reference under torchrun");
    std::fs::copy(refdir.join("init.safetensors"), &init).unwrap();

    let by_nproc = d.path().join("nproc");
    let err = ok(
        hondo_train(&[
            cfg.to_str().unwrap(),
            "--out",
            by_nproc.to_str().unwrap(),
            "--nproc",
            "2",
        ]),
        "hondo train --nproc 2",
    );
    assert!(
        err.contains("data-parallel over 2 processes (gloo), global batch 16"),
        "{err}"
    );
    let by_torchrun = d.path().join("torchrun");
    ok(
        torchrun(
            &[],
            &[
                cfg.to_str().unwrap(),
                "--out",
                by_torchrun.to_str().unwrap(),
            ],
        ),
        "torchrun --no-python hondo train",
    );
    // The same job however it was launched, to the bit.
    assert_same_tensors(
        "--nproc against torchrun",
        &model(&by_nproc),
        &model(&by_torchrun),
    );
    assert_eq!(meta(&by_nproc).world_size, 2);
    assert_eq!(meta(&by_nproc).step, 2 * 4);

    // PyTorch's DDP from the same weights over the same batches: the same model.
    let want = tch::Tensor::read_safetensors(refdir.join("final.safetensors")).unwrap();
    let got = model(&by_nproc);
    let moved = max_rel_diff(&got, &tch::Tensor::read_safetensors(&init).unwrap());
    let diff = max_rel_diff(&got, &want);
    assert!(moved > 1e-2, "training moved the weights by {moved}");
    assert!(
        diff < 1e-4,
        "hondo DDP and PyTorch DDP differ by {diff} (relative) after 8 steps"
    );
}

/// A shapes run for the SyncBatchNorm and fault tests; `size` images of `side` pixels.
fn shapes_config(dir: &Path, size: usize, side: u32, epochs: usize, extra: &str) -> PathBuf {
    write(
        dir,
        "shapes.toml",
        &format!(
            r#"
[model]
arch = "small_cnn"
width = 8
dropout = 0.0
[data]
kind = "shapes"
image_size = {side}
train_size = {size}
val_size = 96
workers = 1
[optimizer]
lr = 0.1
[train]
epochs = {epochs}
batch_size = 16
threads = 1
{extra}
"#
        ),
    )
}

#[test]
fn sync_batchnorm_over_two_ranks_matches_one_process_on_the_combined_batch() {
    let d = tempfile::tempdir().unwrap();
    let cfg = shapes_config(d.path(), 256, 16, 2, "");
    let cfg = cfg.to_str().unwrap();
    let two = d.path().join("two");
    let one = d.path().join("one");
    ok(
        hondo_train(&[
            cfg,
            "--out",
            two.to_str().unwrap(),
            "--nproc",
            "2",
            "--set",
            "train.sync_batchnorm=true",
        ]),
        "two ranks with SyncBatchNorm",
    );
    ok(
        hondo_train(&[
            cfg,
            "--out",
            one.to_str().unwrap(),
            "--set",
            "train.batch_size=32",
        ]),
        "one process, batch 32",
    );
    let diff = max_rel_diff(&model(&two), &model(&one));
    assert!(
        diff < 1e-3,
        "SyncBatchNorm on 2 x 16 against 1 x 32: {diff}"
    );
    // Validation over both ranks' shares counts every image once: the same metrics.
    for (a, b) in metrics(&two).iter().zip(metrics(&one)) {
        for key in ["val_acc", "val_loss", "train_loss"] {
            let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-3, "{key}: {x} against {y}");
        }
    }
    // Without it, each rank normalises its own half: a different model.
    let local = d.path().join("local");
    ok(
        hondo_train(&[cfg, "--out", local.to_str().unwrap(), "--nproc", "2"]),
        "two ranks, BatchNorm per process",
    );
    assert!(max_rel_diff(&model(&local), &model(&one)) > 10.0 * diff.max(1e-6));
}

/// Waits until `path` exists (or `child` ends, or `limit` passes).
fn wait_for(path: &Path, child: &mut Child, limit: Duration) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before {}",
            path.display()
        );
        assert!(t0.elapsed() < limit, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn finish(child: Child, limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(limit);
        // SAFETY: signalling a child we started; harmless if it is gone.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    drop(watchdog);
    (out, t0.elapsed())
}

/// `hondo train CONFIG --out RUN --nproc 2` started, once its first `last` checkpoint is
/// written (the config sets `checkpoint.every_steps`).
fn started_nproc(cfg: &Path, run: &Path) -> Child {
    let mut child = hondo_train(&[
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--nproc",
        "2",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(
        &run.join(hondo::checkpoint::LAST),
        &mut child,
        Duration::from_secs(120),
    );
    child
}

/// The hondo processes below `pid` (children, recursively) with `RANK=rank`.
fn rank_process(pid: u32, rank: usize) -> Option<u32> {
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let env = std::fs::read(format!("/proc/{c}/environ")).unwrap_or_default();
            let exe = std::fs::read_link(format!("/proc/{c}/exe")).unwrap_or_default();
            let want = format!("RANK={rank}");
            if exe.ends_with("hondo") && env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
                return Some(c);
            }
            stack.push(c);
        }
    }
    None
}

#[test]
fn a_signal_stops_every_rank_at_one_step_and_the_run_resumes_with_another_world_size() {
    let d = tempfile::tempdir().unwrap();
    let cfg = shapes_config(d.path(), 6144, 32, 1, "[checkpoint]\nevery_steps = 4");
    let run = d.path().join("run");
    let child = started_nproc(&cfg, &run);
    // SAFETY: a signal to our child, as Ctrl-C would send.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let (out, _) = finish(child, Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted at epoch 1 batch"), "{err}");
    assert!(
        !err.contains("[rank 1] error"),
        "rank 1 stopped cleanly too: {err}"
    );
    let m = meta(&run);
    assert_eq!(m.world_size, 2);
    assert!(m.batch > 0 && m.batch < 192, "mid-epoch: batch {}", m.batch);
    let images_done = m.batch * 16 * 2;

    // 2 -> 1: the same images done, this world's batches.
    let err = ok(
        hondo_train(&["--resume", run.to_str().unwrap()]),
        "resume with one process",
    );
    assert!(
        err.contains(&format!(
            "resuming a run of 2 process(es) with 1: epoch 1, batch {} becomes batch {}",
            m.batch,
            images_done / 16
        )),
        "{err}"
    );
    let m1 = meta(&run);
    assert_eq!((m1.world_size, m1.epoch, m1.batch, m1.step), (1, 1, 0, 384));
    // 1 -> 2: one more epoch on two ranks.
    let err = ok(
        hondo_train(&[
            "--resume",
            run.to_str().unwrap(),
            "--nproc",
            "2",
            "--set",
            "train.epochs=2",
        ]),
        "resume with two processes",
    );
    assert!(err.contains("data-parallel over 2 processes"), "{err}");
    let m2 = meta(&run);
    assert_eq!((m2.world_size, m2.epoch, m2.step), (2, 2, 192 * 2));
    let lines = metrics(&run);
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1]["train_acc"].as_f64().unwrap() > 0.4,
        "{:?}",
        lines[1]
    );
}

#[test]
fn sigterm_to_one_rank_stops_every_rank_at_the_same_step_with_its_status() {
    let d = tempfile::tempdir().unwrap();
    let cfg = shapes_config(d.path(), 6144, 32, 1, "[checkpoint]\nevery_steps = 4");
    let run = d.path().join("run");
    let child = started_nproc(&cfg, &run);
    let rank1 = rank_process(child.id(), 1).expect("rank 1's process");
    // SAFETY: a signal to a process this test started.
    unsafe { libc::kill(rank1 as i32, libc::SIGTERM) };
    let (out, _) = finish(child, Duration::from_secs(120));
    let err = String::from_utf8_lossy(&out.stderr);
    // Rank 0 was not signalled, yet stops at the same step, writes `last` and exits 143.
    assert_eq!(out.status.code(), Some(143), "{err}");
    assert!(err.contains("interrupted at epoch 1 batch"), "{err}");
    assert!(err.contains("rank 1 of 2 exited with status 143"), "{err}");
    let m = meta(&run);
    assert!(m.world_size == 2 && m.batch > 0 && m.batch < 192, "{m:?}");
}

#[test]
fn a_killed_rank_makes_the_other_exit_with_a_clear_error_within_the_timeout() {
    let d = tempfile::tempdir().unwrap();
    let cfg = shapes_config(
        d.path(),
        6144,
        32,
        1,
        "dist_timeout_s = 20\n[checkpoint]\nevery_steps = 4",
    );
    let run = d.path().join("run");
    let child = started_nproc(&cfg, &run);
    let rank1 = rank_process(child.id(), 1).expect("rank 1's process");
    // SAFETY: killing a process this test started.
    unsafe { libc::kill(rank1 as i32, libc::SIGKILL) };
    let (out, took) = finish(child, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(took < Duration::from_secs(20), "took {took:?}: {err}");
    assert!(err.contains("rank 1 of 2 was killed by signal 9"), "{err}");
    let error = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        error.contains("peer"),
        "rank 0 names the lost peer: {error}"
    );
    assert!(no_panic().eval(&err), "{err}");
    // What rank 0 wrote is intact and resumable.
    assert_eq!(meta(&run).world_size, 2);
}

#[test]
fn torchrun_max_restarts_resumes_after_a_killed_worker_and_completes_the_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = shapes_config(
        d.path(),
        6144,
        32,
        1,
        "dist_timeout_s = 30\n[checkpoint]\nevery_steps = 4",
    );
    let run = d.path().join("run");
    let mut child = torchrun(
        &["--max-restarts", "1", "--monitor-interval", "0.2"],
        &[cfg.to_str().unwrap(), "--out", run.to_str().unwrap()],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_for(
        &run.join(hondo::checkpoint::LAST),
        &mut child,
        Duration::from_secs(120),
    );
    let worker = rank_process(child.id(), 1).expect("rank 1's process");
    // SAFETY: killing a process this test started.
    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
    let (out, _) = finish(child, Duration::from_secs(300));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("restart 1 of this job: resuming"), "{err}");
    let m = meta(&run);
    assert_eq!((m.epoch, m.batch, m.step), (1, 0, 192));
    assert_eq!(metrics(&run).len(), 1);
    assert!(run.join(hondo::checkpoint::BEST).exists());
}

/// `hondo train` as rank `rank` of 2 with its store at 127.0.0.1:`port`.
fn rank_cmd(cfg: &Path, out: &Path, rank: usize, port: u16, set: &[&str]) -> Command {
    let mut c = hondo_train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    for s in set {
        c.args(["--set", s]);
    }
    c.env("RANK", rank.to_string())
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn failed_with(c: &mut Command, what: &str, limit: Duration) -> String {
    let (out, took) = finish(c.spawn().unwrap(), limit);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(took < limit, "{what}: took {took:?}");
    assert!(no_panic().eval(&err), "{what}: {err}");
    assert!(err.contains(what), "want {what:?} in:\n{err}");
    err
}

#[test]
fn rendezvous_faults_and_mismatched_configs_are_clear_errors_that_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let cfg = shapes_config(d.path(), 128, 16, 2, "dist_timeout_s = 3");
    let out = d.path().join("run");
    let limit = Duration::from_secs(30);
    // Rank 0 alone: the store waits for the other rank, then says how many came.
    failed_with(
        &mut rank_cmd(&cfg, &out, 0, free_port(), &[]),
        "1/2 clients joined",
        limit,
    );
    // Rank 1 with nobody at MASTER_ADDR:MASTER_PORT.
    failed_with(
        &mut rank_cmd(&cfg, &out, 1, free_port(), &[]),
        "rendezvous at 127.0.0.1",
        limit,
    );
    // Rank 0 on a port another process holds.
    let held = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = held.local_addr().unwrap().port();
    failed_with(
        &mut rank_cmd(&cfg, &out, 0, port, &[]),
        "rendezvous at 127.0.0.1",
        limit,
    );
    drop(held);
    // Two ranks given different configs both refuse.
    let port = free_port();
    let a = rank_cmd(&cfg, &out, 0, port, &[]).spawn().unwrap();
    let mut b = rank_cmd(&cfg, &out, 1, port, &["train.seed=7"]);
    let err_b = failed_with(&mut b, "were given different configs", limit);
    let (out_a, _) = finish(a, limit);
    let err_a = String::from_utf8_lossy(&out_a.stderr);
    assert!(
        err_a.contains("were given different configs"),
        "{err_a}\n{err_b}"
    );
    assert!(!out.exists(), "nothing written");
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct Hosts {
    names: [String; 2],
}

impl Hosts {
    fn new() -> Result<Hosts, String> {
        let tag = std::process::id() % 100_000;
        let names = [format!("hondo-a{tag}"), format!("hondo-b{tag}")];
        let hosts = Hosts { names };
        let [a, b] = &hosts.names;
        let (va, vb) = (format!("hva{tag}"), format!("hvb{tag}"));
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), a.clone()],
            vec!["netns".into(), "add".into(), b.clone()],
            [
                "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b,
            ]
            .map(String::from)
            .to_vec(),
            ["-n", a, "addr", "add", "10.77.0.1/24", "dev", &va]
                .map(String::from)
                .to_vec(),
            ["-n", b, "addr", "add", "10.77.0.2/24", "dev", &vb]
                .map(String::from)
                .to_vec(),
            ["-n", a, "link", "set", &va, "up"]
                .map(String::from)
                .to_vec(),
            ["-n", b, "link", "set", &vb, "up"]
                .map(String::from)
                .to_vec(),
            ["-n", a, "link", "set", "lo", "up"]
                .map(String::from)
                .to_vec(),
            ["-n", b, "link", "set", "lo", "up"]
                .map(String::from)
                .to_vec(),
        ];
        for s in steps {
            let out = Command::new("ip")
                .args(&s)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip {}: {}",
                    s.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(hosts)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn two_hosts_in_network_namespaces_train_together() {
    let hosts = match Hosts::new() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipped: cannot create network namespaces here ({e})");
            return;
        }
    };
    let tag = std::process::id() % 100_000;
    let d = tempfile::tempdir().unwrap();
    let cfg = shapes_config(d.path(), 256, 16, 2, "dist_timeout_s = 30");
    let run = d.path().join("run");
    let rank = |r: usize| {
        let mut c = clean(Command::new("ip"));
        c.args(["netns", "exec", &hosts.names[r]])
            .arg(hondo_bin())
            .args([
                "train",
                cfg.to_str().unwrap(),
                "--out",
                run.to_str().unwrap(),
            ])
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "10.77.0.1")
            .env("MASTER_PORT", "29500")
            .env(
                "GLOO_SOCKET_IFNAME",
                if r == 0 {
                    format!("hva{tag}")
                } else {
                    format!("hvb{tag}")
                },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    let (a, b) = (rank(0), rank(1));
    let (out_a, _) = finish(a, Duration::from_secs(120));
    let (out_b, _) = finish(b, Duration::from_secs(120));
    let err_a = String::from_utf8_lossy(&out_a.stderr);
    let err_b = String::from_utf8_lossy(&out_b.stderr);
    assert!(
        out_a.status.success() && out_b.status.success(),
        "{err_a}\n{err_b}"
    );
    assert!(err_a.contains("data-parallel over 2 processes"), "{err_a}");
    assert_eq!(meta(&run).world_size, 2);
    assert_eq!(metrics(&run).len(), 2);
}
