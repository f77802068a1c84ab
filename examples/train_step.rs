//! Times training steps of a hondo ResNet on random data and reports peak memory: the
//! hondo half of `scripts/bench_resnet152_memory.sh` (the PyTorch half is
//! `scripts/bench/train_step.py`).
//!
//! `cargo run --release --example train_step -- [--arch resnet152] [--batch 8] [--size 224]
//! [--steps 3] [--warmup 1] [--threads 2] [--classes 1000] [--precision fp32|bf16]
//! [--channels-last] [--device cpu|cuda] [--reference-optimizer] [--lr 0.1*batch/256]
//! [--run-steps N]`
//!
//! `--run-steps N` times the steps of a run of N steps (default: warm-up + timed steps):
//! the trainer's [`hondo::allocator::HugePagePlan`] decides from it, after the second step,
//! whether the run is long enough for huge pages; the step after it turns them on maps
//! the buffers anew, so give a long run's case a warm-up of at least 3.
//!
//! Each step is hondo's own: `Optimizer::zero_grad`, a train-mode forward, cross-entropy,
//! backward and `Optimizer::step` (SGD, momentum 0.9, weight decay 1e-4 on every
//! parameter, as `torch.optim.SGD` with one group), with the trainer's autocast and
//! channels-last layout when asked. Prints one JSON line with the seconds
//! of each timed step and the peak resident set size (`VmHWM` of /proc/self/status).
//!
//! Launched as a rank (torchrun's `WORLD_SIZE`, `RANK`, ...: `scripts/bench/ddp.sh`), each
//! step is what hondo's trainer does in data-parallel training: rank 0's buffers broadcast,
//! the Reducer readied, forward, backward (gradients all-reduced in buckets during it), one
//! small all-reduce that agrees on skipping and stopping, the optimizer step. `--batch` is
//! per process; only rank 0 prints, adding the share of forward + backward time spent
//! waiting for the all-reduce (the Reducer's timers).

use hondo::config::{Arch, ModelConfig, OptimizerConfig, OptimizerKind, Precision};
use hondo::dist::{GroupOptions, ProcessGroup, Reducer, World};
use hondo::models::Model;
use hondo::ops as amp;
use hondo::train::{autotune, optimizer::Optimizer, param_groups, to_channels_last};
use std::time::{Duration, Instant};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

struct Args {
    arch: Arch,
    batch: i64,
    size: i64,
    steps: usize,
    warmup: usize,
    threads: i32,
    classes: i64,
    precision: Precision,
    channels_last: bool,
    auto_layout: bool,
    device: Device,
    fused: bool,
    lr: Option<f64>,
    run_steps: Option<usize>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        arch: Arch::Resnet152,
        batch: 8,
        size: 224,
        steps: 3,
        warmup: 1,
        threads: 2,
        classes: 1000,
        precision: Precision::Fp32,
        channels_last: false,
        auto_layout: false,
        device: Device::Cpu,
        fused: true,
        lr: None,
        run_steps: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--channels-last" {
            a.channels_last = true;
            continue;
        }
        if flag == "--auto-layout" {
            a.auto_layout = true;
            continue;
        }
        if flag == "--reference-optimizer" {
            a.fused = false;
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            value
                .parse::<i64>()
                .map_err(|e| format!("{flag} {value}: {e}"))
        };
        match flag.as_str() {
            "--arch" => a.arch = Arch::from_name(&value).ok_or(format!("unknown arch {value}"))?,
            "--batch" => a.batch = num()?,
            "--size" => a.size = num()?,
            "--steps" => a.steps = num()? as usize,
            "--warmup" => a.warmup = num()? as usize,
            "--run-steps" => a.run_steps = Some(num()? as usize),
            "--threads" => a.threads = num()? as i32,
            "--classes" => a.classes = num()?,
            "--lr" => a.lr = Some(value.parse().map_err(|e| format!("{flag} {value}: {e}"))?),
            "--device" => {
                a.device = hondo::device::DeviceSpec::parse(&value)
                    .and_then(|d| d.resolve())
                    .map_err(|e| e.to_string())?
            }
            "--precision" => {
                a.precision = match value.as_str() {
                    "fp32" => Precision::Fp32,
                    "bf16" => Precision::Bf16,
                    "fp16" => Precision::Fp16,
                    _ => return Err(format!("unknown precision {value}")),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

/// A `/proc/self/status` field in KiB: `VmHWM` (peak resident set size) or `VmRSS`.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The data-parallel side of a step, as the trainer's (`src/train/ddp.rs`) through the
/// public `hondo::dist` API.
struct Ddp {
    group: ProcessGroup,
    reducer: Reducer,
    buffers: Vec<Tensor>,
    compute_ns: i64,
    wait_ns: i64,
}

impl Ddp {
    fn join(vs: &VarStore) -> Option<Ddp> {
        let w = World::from_env().expect("launch environment")?;
        let group = ProcessGroup::new(&GroupOptions {
            host: w.master_addr.clone(),
            port: w.master_port,
            rank: w.rank,
            world: w.size,
            is_server: w.rank == 0 && !w.agent_store,
            timeout: Duration::from_secs(600),
            prefix: "default_pg/bench".into(),
            interface: w.interface.clone(),
        })
        .expect("rendezvous");
        let mut all: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let trainable = vs.trainable_variables();
        let refs: Vec<&Tensor> = all.iter().map(|(_, t)| t).collect();
        group.broadcast(&refs, 0).expect("broadcast");
        let params: Vec<&Tensor> = trainable.iter().collect();
        let reducer = Reducer::new(&group, &params, 25.0).expect("reducer");
        let buffers = all
            .into_iter()
            .filter(|(_, t)| !trainable.iter().any(|v| v.is_set_to(t)))
            .map(|(_, t)| t)
            .collect();
        Some(Ddp {
            group,
            reducer,
            buffers,
            compute_ns: 0,
            wait_ns: 0,
        })
    }

    fn before_forward(&self) {
        let refs: Vec<&Tensor> = self.buffers.iter().collect();
        self.group.broadcast(&refs, 0).expect("broadcast buffers");
        self.reducer.rebuild_buckets().expect("rebuild");
        self.reducer.prepare().expect("prepare");
    }

    /// The trainer's agreement on skipping (a non-finite loss anywhere) and stopping.
    fn after_backward(&mut self, loss: &Tensor) -> Tensor {
        let [fwd, bwd, comm, overlap] = self.reducer.backward_stats().expect("timers");
        self.compute_ns += fwd.max(0) + bwd.max(0);
        self.wait_ns += (comm - overlap).max(0);
        let bad = loss
            .isfinite()
            .logical_not()
            .to_kind(Kind::Double)
            .reshape([1]);
        let flags = Tensor::cat(&[bad, Tensor::zeros([1], (Kind::Double, Device::Cpu))], 0);
        self.group.all_reduce_max(&flags).expect("all_reduce");
        flags.get(0).to_kind(Kind::Float)
    }
}

fn main() {
    hondo::allocator::install();
    let mut a = parse().unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2)
    });
    tch::set_num_threads(a.threads);
    tch::manual_seed(0);
    if a.device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let model_cfg = ModelConfig {
        arch: a.arch,
        ..Default::default()
    };
    if a.auto_layout {
        // What the trainer does with `train.channels_last = "auto"` (the default).
        let mut cfg = hondo::config::Config {
            model: model_cfg.clone(),
            ..Default::default()
        };
        cfg.train.batch_size = a.batch as usize;
        cfg.train.precision = a.precision;
        cfg.data.image_size = a.size as u32;
        let spec = hondo::models::ModelSpec::builtin(&cfg.model);
        let layout = autotune::choose_layout(&cfg, &spec, a.classes, a.device, true);
        eprintln!(
            "layout: channels_last = {} ({})",
            layout.channels_last, layout.reason
        );
        a.channels_last = layout.channels_last;
        tch::manual_seed(0);
    }
    let vs = VarStore::new(a.device);
    let model = Model::new(&vs.root(), &model_cfg, a.classes);
    if a.channels_last {
        to_channels_last(&vs);
    }
    let opt_cfg = OptimizerConfig {
        name: OptimizerKind::Sgd,
        // torchvision's recipe (0.1 at batch 256) scaled to the batch: 0.1 itself makes small
        // batches of random data diverge (subnormal gradients, losses that say nothing), and
        // converging runs let the two tools' losses be compared.
        lr: a.lr.unwrap_or(0.1 * a.batch as f64 / 256.0),
        momentum: 0.9,
        nesterov: false,
        weight_decay: 1e-4,
        no_decay_bias_and_norm: false,
        fused: a.fused,
        ..Default::default()
    };
    let mut opt = Optimizer::new(&opt_cfg, param_groups::build(&vs, &opt_cfg));
    let mut x = Tensor::randn([a.batch, 3, a.size, a.size], (Kind::Float, a.device));
    if a.channels_last {
        // NHWC memory, NCHW shape: what the trainer hands the model with channels_last.
        x = x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    }
    let y = Tensor::randint(a.classes, [a.batch], (Kind::Int64, a.device));
    let mut ddp = Ddp::join(&vs);

    // Libraries, model, optimizer and data, before the first step.
    let start_rss = status_kib("VmRSS:");
    let mut seconds = Vec::new();
    let mut first_step = None;
    let mut loss = 0.0;
    let mut huge_pages = hondo::allocator::HugePagePlan::default();
    for i in 0..a.warmup + a.steps {
        let t0 = Instant::now();
        opt.zero_grad().expect("zero_grad");
        if let Some(d) = &ddp {
            d.before_forward();
        }
        let l = {
            let _autocast = amp::autocast(a.precision, a.device).expect("autocast");
            model.forward_t(&x, true).cross_entropy_for_logits(&y)
        };
        l.backward();
        let skip = ddp.as_mut().map(|d| d.after_backward(&l));
        opt.step(opt_cfg.lr, skip.as_ref()).expect("optimizer step");
        loss = l.double_value(&[]);
        if a.device == Device::Cpu {
            let total = a.run_steps.unwrap_or(a.warmup + a.steps);
            huge_pages.after_step(i + 1, total);
        }
        let took = t0.elapsed().as_secs_f64();
        first_step.get_or_insert(took);
        if i >= a.warmup {
            seconds.push(took);
        }
    }
    let (world, wait_share) = match &ddp {
        Some(d) if d.group.rank() > 0 => return,
        Some(d) => (
            d.group.world(),
            d.wait_ns as f64 / (d.compute_ns + d.wait_ns).max(1) as f64,
        ),
        None => (1, 0.0),
    };
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let huge = hondo::allocator::huge_pages();
    println!(
        "{{\"impl\": \"hondo\", \"arch\": \"{}\", \"batch\": {}, \"size\": {}, \"threads\": {}, \"precision\": \"{:?}\", \"channels_last\": {}, \"lr\": {}, \
         \"step_seconds\": {:?}, \"median_step_seconds\": {:.3}, \"first_step_seconds\": {:.3}, \"start_rss_mib\": {:.1}, \"peak_rss_mib\": {:.1}, \"loss\": {:.4}, \"world\": {world}, \"comm_wait_share\": {wait_share:.4}, \"huge_pages\": {huge}}}",
        a.arch.name(),
        a.batch,
        a.size,
        a.threads,
        a.precision,
        a.channels_last,
        opt_cfg.lr,
        seconds.iter().map(|s| (s * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        median,
        first_step.unwrap_or(f64::NAN),
        start_rss as f64 / 1024.0,
        status_kib("VmHWM:") as f64 / 1024.0,
        loss
    );
}
