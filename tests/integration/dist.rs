//! hondo's c10d binding with two processes on 127.0.0.1: this test binary runs itself again
//! as the two workers (the ignored `dist_worker` test, driven by environment variables).

use hondo::dist::{GroupOptions, ProcessGroup, Reducer};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn options(rank: usize, port: u16, timeout_s: u64) -> GroupOptions {
    GroupOptions {
        host: "127.0.0.1".into(),
        port,
        rank,
        world: 2,
        is_server: rank == 0,
        timeout: Duration::from_secs(timeout_s),
        prefix: "test".into(),
        interface: None,
    }
}

/// The model and batch of `rank`: a linear layer from seed `seed`, five samples.
fn model(vs: &nn::VarStore, seed: i64) -> nn::Linear {
    tch::manual_seed(seed);
    nn::linear(vs.root() / "fc", 4, 3, Default::default())
}

fn batch(rank: i64) -> (Tensor, Tensor) {
    tch::manual_seed(100 + rank);
    let x = Tensor::randn([5, 4], (Kind::Float, Device::Cpu));
    let y = Tensor::randint(3, [5], (Kind::Int64, Device::Cpu));
    (x, y)
}

const STEPS: usize = 3;
const LR: f64 = 0.1;

fn sgd_step(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for v in vs.trainable_variables() {
            let g = v.grad();
            let _ = v.shallow_clone().g_sub_(&(g * LR));
        }
    });
    for mut v in vs.trainable_variables() {
        v.zero_grad();
    }
}

fn flat(vs: &nn::VarStore) -> Vec<f32> {
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.iter()
        .flat_map(|(_, t)| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap())
        .collect()
}

#[test]
#[ignore = "a worker process of the dist tests, started by them with its rank in the environment"]
fn dist_worker() {
    let rank: usize = std::env::var("HONDO_TEST_DIST_RANK")
        .unwrap()
        .parse()
        .unwrap();
    let port: u16 = std::env::var("HONDO_TEST_DIST_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let mode = std::env::var("HONDO_TEST_DIST_MODE").unwrap_or_default();
    if mode == "drift" {
        return drifting_trainer(rank);
    }
    let group = ProcessGroup::new(&options(rank, port, 20)).unwrap();
    if mode == "die" {
        group.barrier().unwrap();
        if rank == 1 {
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let e = group.all_reduce_sum(&Tensor::ones([4], (Kind::Float, Device::Cpu)));
        println!(
            "RESULT {}",
            serde_json::json!({"error": e.err().map(|e| e.to_string()), "seconds": t0.elapsed().as_secs_f64()})
        );
        return;
    }
    // Different initial weights on each rank: the broadcast makes them rank 0's.
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = model(&vs, rank as i64);
    // The same order on every rank: `variables()` is a HashMap, whose order differs
    // between processes.
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let vars: Vec<Tensor> = named.into_iter().map(|(_, t)| t).collect();
    group
        .broadcast(&vars.iter().collect::<Vec<_>>(), 0)
        .unwrap();
    let params: Vec<Tensor> = vs.trainable_variables();
    let reducer = Reducer::new(&group, &params.iter().collect::<Vec<_>>(), 25.0).unwrap();
    let (x, y) = batch(rank as i64);
    for step in 0..STEPS {
        reducer.prepare().unwrap();
        let loss = fc.forward(&x).cross_entropy_for_logits(&y);
        loss.backward();
        if step == 0 {
            let _ = reducer.rebuild_buckets().unwrap();
        }
        sgd_step(&vs);
    }
    let sum = Tensor::from_slice(&[rank as f32 + 1.0]);
    group.all_reduce_sum(&sum).unwrap();
    let max = Tensor::from_slice(&[rank as f32 * 10.0]);
    group.all_reduce_max(&max).unwrap();
    println!(
        "RESULT {}",
        serde_json::json!({
            "weights": flat(&vs),
            "sum": sum.double_value(&[0]),
            "max": max.double_value(&[0]),
        })
    );
}

/// A model whose rank 1 nudges its own bias at every training forward pass: the ranks'
/// weights drift apart, which the trainer's epoch-end check must catch.
#[derive(Debug)]
struct Drifting {
    fc: nn::Linear,
    nudge: bool,
}

impl nn::ModuleT for Drifting {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        if train && self.nudge {
            tch::no_grad(|| {
                let _ = self
                    .fc
                    .bs
                    .as_ref()
                    .unwrap()
                    .shallow_clone()
                    .g_add_scalar_(1e-3);
            });
        }
        xs.flatten(1, -1).apply(&self.fc)
    }
}

/// The trainer as rank `rank` (the launcher's variables are in the environment) on the
/// drifting model: prints its error.
fn drifting_trainer(rank: usize) {
    let mut config = hondo::config::Config::default();
    config.data.image_size = 16;
    config.data.train_size = 128;
    config.data.val_size = 32;
    config.data.workers = 1;
    config.train.epochs = 1;
    config.train.batch_size = 16;
    config.train.threads = 1;
    let spec = hondo::models::ModelSpec::custom("drifting", move |p, n| Drifting {
        fc: nn::linear(p / "fc", 3 * 16 * 16, n, Default::default()),
        nudge: rank == 1,
    });
    let out = std::env::var("HONDO_TEST_DIST_OUT").unwrap();
    let r = hondo::train::Trainer::new(config)
        .model(spec)
        .out(out)
        .run();
    println!(
        "RESULT {}",
        serde_json::json!({"error": r.err().map(|e| hondo::error_chain(&e))})
    );
}

#[test]
fn ranks_whose_weights_drift_apart_stop_with_an_error_at_the_epoch_end() {
    let d = tempfile::tempdir().unwrap();
    let r = run_workers_with("drift", &[("HONDO_TEST_DIST_OUT", d.path().join("run"))]);
    for (rank, v) in r.iter().enumerate() {
        let e = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("rank {rank}: {v}"));
        assert!(
            e.contains("after epoch 1: the ranks' weights are no longer identical"),
            "rank {rank}: {e}"
        );
    }
}

/// Starts both workers, waits (bounded) and returns each one's RESULT object.
fn run_workers(mode: &str) -> Vec<serde_json::Value> {
    run_workers_with(mode, &[])
}

/// [`run_workers`] with more environment; the workers also get torchrun's variables.
fn run_workers_with(mode: &str, env: &[(&str, std::path::PathBuf)]) -> Vec<serde_json::Value> {
    let port = free_port();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", "dist::dist_worker", "--ignored", "--nocapture"])
                .args(["--test-threads", "1"])
                .env("HONDO_TEST_DIST_RANK", rank.to_string())
                .env("HONDO_TEST_DIST_PORT", port.to_string())
                .env("HONDO_TEST_DIST_MODE", mode)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .envs(env.iter().map(|(k, v)| (*k, v)))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let t0 = Instant::now();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    assert!(
        t0.elapsed() < Duration::from_secs(60),
        "workers took {:?}",
        t0.elapsed()
    );
    outputs
        .iter()
        .enumerate()
        .filter_map(|(rank, o)| {
            let text = String::from_utf8_lossy(&o.stdout);
            // The harness prints the test's name on the same line before its output.
            let line = text
                .lines()
                .find_map(|l| l.find("RESULT ").map(|i| &l[i + "RESULT ".len()..]));
            if line.is_none() && !(mode == "die" && rank == 1) {
                panic!(
                    "rank {rank} gave no result:\n{text}\n{}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            line.map(|l| serde_json::from_str(l).unwrap())
        })
        .collect()
}

#[test]
fn two_ranks_start_equal_average_gradients_like_one_process_and_reduce() {
    let r = run_workers("train");
    assert_eq!(r.len(), 2);
    assert_eq!(
        r[0]["weights"], r[1]["weights"],
        "the ranks' weights are bit-identical"
    );
    assert_eq!(r[0]["sum"], 3.0);
    assert_eq!(r[1]["max"], 10.0);
    // One process from rank 0's initial weights on both batches: the mean of the two
    // ranks' mean losses is the mean loss over their union (equal batch sizes).
    let vs = nn::VarStore::new(Device::Cpu);
    let fc = model(&vs, 0);
    let (x0, y0) = batch(0);
    let (x1, y1) = batch(1);
    let x = Tensor::cat(&[x0, x1], 0);
    let y = Tensor::cat(&[y0, y1], 0);
    for _ in 0..STEPS {
        fc.forward(&x).cross_entropy_for_logits(&y).backward();
        sgd_step(&vs);
    }
    let want = flat(&vs);
    let got: Vec<f64> = r[0]["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    let diff = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - f64::from(*b)).abs())
        .fold(0.0, f64::max);
    assert!(
        diff < 1e-6,
        "DDP differs from one process on the combined batch by {diff}"
    );
}

#[test]
fn a_lost_peer_is_an_error_naming_it_quickly_not_a_hang() {
    let r = run_workers("die");
    let survivor = &r[0];
    let e = survivor["error"]
        .as_str()
        .expect("rank 0's all_reduce fails");
    assert!(e.contains("all_reduce"), "{e}");
    assert!(survivor["seconds"].as_f64().unwrap() < 20.0, "{survivor}");
}

#[test]
fn out_of_range_options_are_refused_or_bounded_not_overflowed() {
    // A timeout past c10d's int64 milliseconds is bounded, not wrapped into the past: the
    // lone rank still waits (here: is refused when its port is taken) instead of failing
    // at once on a negative timeout.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut o = options(0, taken.local_addr().unwrap().port(), 1);
    o.timeout = Duration::MAX;
    let e = ProcessGroup::new(&o).unwrap_err().to_string();
    assert!(e.contains("rendezvous at 127.0.0.1"), "{e}");
    // A group of one to build reducers on.
    let mut solo = options(0, free_port(), 5);
    solo.world = 1;
    let group = ProcessGroup::new(&solo).unwrap();
    let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    for bad in [0.0, -1.0, f64::NAN, 1e9] {
        let e = Reducer::new(&group, &[&p], bad)
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("bucket size"), "{bad}: {e}");
    }
    assert!(Reducer::new(&group, &[&p], 25.0).is_ok());
}

#[test]
fn a_rank_that_never_arrives_is_a_rendezvous_timeout_saying_how_many_joined() {
    let t0 = Instant::now();
    let e = ProcessGroup::new(&options(0, free_port(), 2)).unwrap_err();
    let waited = t0.elapsed();
    let msg = e.to_string();
    assert!(msg.contains("rendezvous at 127.0.0.1"), "{msg}");
    assert!(msg.contains("1/2"), "{msg}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
}
