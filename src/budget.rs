//! The memory a training step needs, estimated from the config before anything is built,
//! and the refusal when it exceeds what the machine has.
//!
//! The estimate is deliberately simple and errs high (a run it lets through should fit; a
//! run it refuses may have fitted, and `hondo train --force` runs it anyway):
//!
//! - **Parameters**: counted from the architecture (torchvision's counts for the ResNets,
//!   the layer shapes for `small_cnn`), times `1 + 1 (gradients) + optimizer slots (SGD
//!   with momentum 1, Adam/AdamW 2) + 1 (EMA copy, when on) + 1 (the serialised
//!   checkpoint)`, 4 bytes each.
//! - **Activations**: `batch_size x image_size^2 x floats per input pixel x 4 bytes`, the
//!   per-pixel factor covering what the forward pass keeps for the backward pass and the
//!   gradient buffers of the largest layers: measured-order figures per ResNet depth, and
//!   `10 x width + 6` for `small_cnn` (its stages halve the resolution as they double the
//!   channels). Autocast halves some of it; the estimate ignores that.
//! - **Loader**: the queued batches, `(prefetch + 1) x batch_size x 3 x image_size^2 x 4
//!   bytes` for each of the training and validation loaders, plus one eval-resize buffer
//!   per worker (`3 x (image_size / crop_fraction)^2 x 4`).
//! - A fixed 256 MiB for libtorch itself.
//!
//! On CUDA the parameters and activations live in device memory, which libtorch reports
//! itself; only the host part (loader, checkpoint buffers, runtime) is compared with the
//! host's memory.

use crate::config::{Arch, Config, DataKind, OptimizerKind};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;
const RUNTIME_BYTES: f64 = 256.0 * MIB;

/// The estimated bytes of one training step, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Weights, gradients, optimizer state, EMA and the checkpoint buffer.
    pub parameters: f64,
    /// Forward activations kept for backward, and their gradients.
    pub activations: f64,
    /// Queued batches and per-worker buffers of the loaders.
    pub loader: f64,
    /// libtorch's own allocations.
    pub runtime: f64,
    /// Whether parameters and activations are on a CUDA device (not host memory).
    pub on_cuda: bool,
}

impl Estimate {
    /// What the host's memory has to hold.
    pub fn host_bytes(&self) -> f64 {
        let device = self.parameters + self.activations;
        self.loader + self.runtime + if self.on_cuda { 0.0 } else { device }
    }
}

/// The parameter count of the model `cfg` builds, with `num_classes` outputs.
pub fn parameter_count(cfg: &Config, num_classes: usize) -> f64 {
    let n = num_classes as f64;
    // torchvision's totals with 1000 classes, and the width of the features before `fc`.
    let resnet =
        |total: f64, features: f64| total - (features * 1000.0 + 1000.0) + features * n + n;
    match cfg.model.arch {
        Arch::SmallCnn => {
            let w = cfg.model.width as f64;
            let mut c_in = 3.0;
            let mut total = 0.0;
            for s in 0..4 {
                let c_out = w * f64::from(1u32 << s);
                // 3x3 conv with bias, BatchNorm weight, bias and two running statistics.
                total += 9.0 * c_in * c_out + c_out + 4.0 * c_out;
                c_in = c_out;
            }
            total + c_in * n + n
        }
        Arch::Resnet18 => resnet(11_689_512.0, 512.0),
        Arch::Resnet34 => resnet(21_797_672.0, 512.0),
        Arch::Resnet50 => resnet(25_557_032.0, 2048.0),
        Arch::Resnet101 => resnet(44_549_160.0, 2048.0),
        Arch::Resnet152 => resnet(60_192_808.0, 2048.0),
    }
}

/// Floats kept per input pixel of one image by a training step (forward and backward).
fn floats_per_pixel(cfg: &Config) -> f64 {
    match cfg.model.arch {
        Arch::SmallCnn => 10.0 * cfg.model.width as f64 + 6.0,
        Arch::Resnet18 => 200.0,
        Arch::Resnet34 => 300.0,
        Arch::Resnet50 => 500.0,
        Arch::Resnet101 => 800.0,
        Arch::Resnet152 => 1100.0,
    }
}

/// The class count to assume before the data is read: the config's, the dataset's when
/// fixed, else a generous guess for an image folder.
fn assumed_classes(cfg: &Config) -> usize {
    cfg.model.num_classes.unwrap_or(match cfg.data.kind {
        DataKind::Shapes => cfg.data.num_shapes,
        DataKind::Mnist | DataKind::Cifar10 => 10,
        DataKind::ImageFolder => 1000,
    })
}

/// Estimates the memory of one training step of `cfg`; `on_cuda` when the model and the
/// step run on a CUDA device.
pub fn estimate(cfg: &Config, on_cuda: bool) -> Estimate {
    let params = parameter_count(cfg, assumed_classes(cfg));
    let optimizer_slots = match cfg.optimizer.name {
        OptimizerKind::Sgd if cfg.optimizer.momentum > 0.0 => 1.0,
        OptimizerKind::Sgd => 0.0,
        OptimizerKind::Adam | OptimizerKind::Adamw => 2.0,
    };
    let ema = if cfg.train.ema_decay > 0.0 { 1.0 } else { 0.0 };
    let copies = 1.0 + 1.0 + optimizer_slots + ema + 1.0;

    let batch = cfg.train.batch_size as f64;
    let pixels = f64::from(cfg.data.image_size).powi(2);
    let activations = batch * pixels * floats_per_pixel(cfg) * 4.0;

    let image_bytes = 3.0 * pixels * 4.0;
    let queued = (cfg.data.prefetch as f64 + 1.0) * batch * image_bytes;
    let workers = match cfg.data.workers {
        0 => crate::data::loader::default_workers(),
        n => n,
    } as f64;
    let resized = (f64::from(cfg.data.image_size) / cfg.data.crop_fraction).powi(2);
    let loader = 2.0 * queued + workers * 3.0 * resized * 4.0;

    Estimate {
        parameters: params * copies * 4.0,
        activations,
        loader,
        runtime: RUNTIME_BYTES,
        on_cuda,
    }
}

/// The machine's available memory in bytes (`MemAvailable` of `/proc/meminfo`), if known.
pub fn available_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<f64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Refuses `estimate` when it exceeds `available` bytes, naming both and the keys that
/// lower it; `force` lets it through.
pub fn check_against(estimate: &Estimate, available: f64, force: bool) -> anyhow::Result<()> {
    let need = estimate.host_bytes();
    if need <= available || force {
        return Ok(());
    }
    let gib = |b: f64| format!("{:.1} GiB", b / GIB);
    anyhow::bail!(
        "a training step needs about {} of memory ({} parameters and optimizer state, {} \
         activations, {} loader queues{}) but the machine has {} available (MemAvailable in \
         /proc/meminfo): lower train.batch_size, data.image_size, model.width, data.prefetch \
         or data.workers, or pass --force to start anyway",
        gib(need),
        gib(estimate.parameters),
        gib(estimate.activations),
        gib(estimate.loader),
        if estimate.on_cuda {
            "; parameters and activations are on the GPU and not counted"
        } else {
            ""
        },
        gib(available),
    )
}

/// [`estimate`] and [`check_against`] the machine's available memory; nothing is refused
/// where that is unknown.
pub fn check(cfg: &Config, on_cuda: bool, force: bool) -> anyhow::Result<()> {
    match available_bytes() {
        Some(available) => check_against(&estimate(cfg, on_cuda), available, force),
        None => Ok(()),
    }
}

/// Refuses an inference pass (`hondo eval`, `hondo predict`) of `batch` images through the
/// model of a checkpoint's `cfg` (at its `image_size`, `num_classes` outputs) that would not
/// fit: one copy of the parameters, the training estimate's activations over four (no
/// gradients and nothing kept for a backward pass) and the loader queues.
pub(crate) fn check_inference(
    cfg: &Config,
    image_size: u32,
    num_classes: usize,
    batch: usize,
    on_cuda: bool,
) -> anyhow::Result<()> {
    let Some(available) = available_bytes() else {
        return Ok(());
    };
    let mut cfg = cfg.clone();
    cfg.train.batch_size = batch;
    cfg.data.image_size = image_size;
    cfg.model.num_classes = Some(num_classes);
    let mut e = estimate(&cfg, on_cuda);
    e.parameters = parameter_count(&cfg, num_classes) * 4.0;
    e.activations /= 4.0;
    let need = e.host_bytes();
    if need <= available {
        return Ok(());
    }
    anyhow::bail!(
        "--batch-size {batch} at image_size {image_size} needs about {:.1} GiB of memory but \
         the machine has {:.1} GiB available: lower --batch-size",
        need / GIB,
        available / GIB
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, load_str, Override};

    fn config(set: &[&str]) -> Config {
        let o: Vec<Override> = set.iter().map(|s| s.parse().unwrap()).collect();
        load_str("", "t.toml", &o).unwrap()
    }

    fn repo_config(name: &str) -> Config {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(name);
        load(&path, &[]).unwrap()
    }

    #[test]
    fn parameter_counts_match_the_models() {
        // small_cnn width 32, 4 classes: convs 3-32-64-128-256 with biases, BN, head.
        let c = config(&["model.width=32", "model.num_classes=4"]);
        let convs = 9.0 * (3.0 * 32.0 + 32.0 * 64.0 + 64.0 * 128.0 + 128.0 * 256.0);
        let per_channel = 5.0 * (32.0 + 64.0 + 128.0 + 256.0);
        assert_eq!(
            parameter_count(&c, 4),
            convs + per_channel + 256.0 * 4.0 + 4.0
        );
        let c = config(&["model.arch=resnet50"]);
        assert_eq!(parameter_count(&c, 1000), 25_557_032.0);
        assert_eq!(parameter_count(&c, 10), 25_557_032.0 - 2049.0 * 990.0);
    }

    #[test]
    fn the_shipped_configs_fit_a_modest_machine() {
        let small = 8.0 * GIB;
        for c in [
            Config::default(),
            repo_config("default.toml"),
            // The tests' tiny run.
            config(&[
                "model.width=16",
                "data.image_size=16",
                "train.batch_size=32",
            ]),
        ] {
            let e = estimate(&c, false);
            assert!(e.host_bytes() < 2.0 * GIB, "{e:?}");
            check_against(&e, small, false).unwrap();
        }
        // ResNet-152 at 224 with batch 32 is heavy on a CPU, but fits 16 GiB.
        let e = estimate(&repo_config("resnet152-finetune.toml"), false);
        assert!(e.host_bytes() > 2.0 * GIB, "{e:?}");
        check_against(&e, 16.0 * GIB, false).unwrap();
    }

    #[test]
    fn huge_sizes_are_refused_naming_the_keys_unless_forced() {
        for set in [
            &["data.image_size=4096"][..],
            &["model.width=1024", "data.image_size=512"],
            &["train.batch_size=65536", "data.image_size=256"],
            &[
                "data.prefetch=64",
                "data.workers=256",
                "data.image_size=2048",
            ],
        ] {
            let e = estimate(&config(set), false);
            assert!(e.host_bytes() > 64.0 * GIB, "{set:?}: {e:?}");
            let err = check_against(&e, 64.0 * GIB, false)
                .unwrap_err()
                .to_string();
            for part in [
                "train.batch_size",
                "data.image_size",
                "64.0 GiB available",
                "--force",
            ] {
                assert!(err.contains(part), "{part} not in {err}");
            }
            assert!(!err.contains('\n'), "one line: {err}");
            check_against(&e, 64.0 * GIB, true).unwrap();
        }
    }

    #[test]
    fn on_cuda_only_the_host_part_counts() {
        let c = config(&[
            "model.arch=resnet50",
            "data.image_size=224",
            "train.batch_size=256",
        ]);
        let cpu = estimate(&c, false);
        let cuda = estimate(&c, true);
        assert!(cpu.host_bytes() > 20.0 * GIB, "{cpu:?}");
        assert!(cuda.host_bytes() < 2.0 * GIB, "{cuda:?}");
    }

    #[test]
    fn mem_available_is_read_in_kib() {
        let text = "MemTotal:       24684084 kB\nMemFree:        20964864 kB\n\
                    MemAvailable:   23850024 kB\n";
        assert_eq!(parse_mem_available(text), Some(23_850_024.0 * 1024.0));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }
}
