//! The training configuration: one TOML file, one struct per section.
//!
//! Every section is `#[serde(deny_unknown_fields, default)]`: a typo fails with the key's
//! path, an omitted key takes the documented default below. [`load`] reads a file, applies
//! `--set key.path=value` overrides and validates the result.

mod auto;
mod load;
mod overrides;
mod validate;
pub(crate) use validate::MAX_EPOCHS;

pub use auto::Auto;
pub(crate) use load::check;
pub use load::{load, load_embedded, load_str, ConfigError};
pub use overrides::Override;

pub use crate::device::DeviceSpec;
use serde::{Deserialize, Serialize};

/// The whole configuration of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Architecture, pretrained weights and fine-tuning controls.
    pub model: ModelConfig,
    /// Dataset, splits, loader and transforms.
    pub data: DataConfig,
    /// Optimizer and its parameter groups.
    pub optimizer: OptimizerConfig,
    /// Learning-rate schedule, applied per step.
    pub schedule: ScheduleConfig,
    /// Epochs, batch size, device, precision and loss settings.
    pub train: TrainConfig,
    /// Where runs go and which checkpoints are kept.
    pub checkpoint: CheckpointConfig,
}

/// Model architectures hondo builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// A small conv-BN-ReLU network for small images (see `models::cnn`).
    SmallCnn,
    /// ResNet-18 (torchvision's layout and parameter names; basic blocks).
    Resnet18,
    /// ResNet-34 (torchvision's layout and parameter names; basic blocks).
    Resnet34,
    /// ResNet-50 (torchvision's layout and parameter names; bottleneck blocks).
    Resnet50,
    /// ResNet-101 (torchvision's layout and parameter names; bottleneck blocks).
    Resnet101,
    /// ResNet-152 (torchvision's layout and parameter names; bottleneck blocks).
    Resnet152,
}

impl Arch {
    /// The name used in configs and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Arch::SmallCnn => "small_cnn",
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
            Arch::Resnet101 => "resnet101",
            Arch::Resnet152 => "resnet152",
        }
    }

    /// Parses a name as written in configs and checkpoints.
    pub fn from_name(name: &str) -> Option<Arch> {
        [
            Arch::SmallCnn,
            Arch::Resnet18,
            Arch::Resnet34,
            Arch::Resnet50,
            Arch::Resnet101,
            Arch::Resnet152,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// `[model]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Architecture: `small_cnn`, `resnet18`, `resnet34`, `resnet50`, `resnet101`, `resnet152`.
    pub arch: Arch,
    /// Number of output classes, 2 to 100000; unset takes the dataset's class count (an
    /// explicit 0, as older configs wrote, also means unset).
    #[serde(
        deserialize_with = "sentinel::zero_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub num_classes: Option<usize>,
    /// Base channel width of `small_cnn` (doubled at each stage), 1 to 1024.
    pub width: i64,
    /// Dropout before the classifier of `small_cnn`, in [0, 1) (0 disables it).
    pub dropout: f64,
    /// ResNet: initialise the last BatchNorm of each residual block to zero.
    pub zero_init_residual: bool,
    /// Pretrained weights to start from: a file (`.safetensors`, `.pth`/`.pt`, `.ot`), or a
    /// name found in the caches PyTorch users have (`torchvision:resnet50.IMAGENET1K_V2`,
    /// `hf:timm/resnet50.a1_in1k`; see [`crate::weights::hub`]); unset for none (an empty
    /// string, as older configs wrote, also means none).
    #[serde(
        deserialize_with = "sentinel::empty_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub pretrained: Option<String>,
    /// When `pretrained` is a hondo checkpoint of a run with `train.ema_decay > 0`, start
    /// from its moving-average (EMA) weights (as timm does); `false` takes its raw weights.
    pub pretrained_ema: bool,
    /// For `torchvision:` weights, check that the file's SHA-256 starts with the hex in its
    /// name, as torchvision does when it downloads.
    pub check_hash: bool,
    /// Fail on any missing, unexpected or mis-shaped tensor in `pretrained` (except a
    /// classifier head with another class count, which is re-initialised).
    pub strict: bool,
    /// Parameter-name prefixes to freeze, e.g. `["conv1", "bn1", "layer1"]`. Frozen
    /// BatchNorm layers also keep their running statistics (they run in eval mode).
    pub freeze: Vec<String>,
    /// Epoch (1-based, at most `train.epochs`) at which `freeze` is lifted; unset keeps
    /// the layers frozen (an explicit 0, as older configs wrote, also means unset).
    #[serde(
        deserialize_with = "sentinel::zero_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub unfreeze_at_epoch: Option<usize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: Arch::SmallCnn,
            num_classes: None,
            width: 32,
            dropout: 0.0,
            zero_init_residual: false,
            pretrained: None,
            pretrained_ema: true,
            check_hash: true,
            strict: true,
            freeze: Vec::new(),
            unfreeze_at_epoch: None,
        }
    }
}

/// Datasets hondo reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Procedurally generated shapes (circle, square, triangle, cross, ...); no download.
    Shapes,
    /// `root/train/<class>/*` and `root/val/<class>/*`, or one root split by `val_fraction`.
    ImageFolder,
    /// MNIST IDX files in `root`.
    Mnist,
    /// CIFAR-10 binary batches in `root`.
    Cifar10,
}

impl DataKind {
    /// The name used in configs: `shapes`, `image_folder`, `mnist`, `cifar10`.
    pub fn name(self) -> &'static str {
        match self {
            DataKind::Shapes => "shapes",
            DataKind::ImageFolder => "image_folder",
            DataKind::Mnist => "mnist",
            DataKind::Cifar10 => "cifar10",
        }
    }
}

/// What the loader does with an unreadable image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Skip it with a warning naming the file; the epoch summary counts skipped files.
    Skip,
    /// Stop the run with an error naming the file.
    Fail,
}

/// `[data]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Dataset kind: `shapes`, `image_folder`, `mnist`, `cifar10`.
    pub kind: DataKind,
    /// Dataset directory (not used by `shapes`).
    pub root: String,
    /// Side of the square training input in pixels, 8 to 4096.
    pub image_size: u32,
    /// `shapes`: number of shape classes (2 to 6: circle, square, triangle, cross, ring, bar).
    pub num_shapes: usize,
    /// `shapes`: number of training images, 1 to 10000000.
    pub train_size: usize,
    /// `shapes`: number of validation images, 1 to 10000000.
    pub val_size: usize,
    /// `image_folder` without a `val/` directory: fraction of each class held out (seeded),
    /// in [0, 1).
    pub val_fraction: f64,
    /// Seed of the dataset itself (generation and splits), 0 to 2^63-1 (a TOML integer);
    /// the training seed is `train.seed`.
    pub seed: u64,
    /// Loader worker threads, 0 to 256; 0 picks one per core.
    pub workers: usize,
    /// Batches prepared ahead of the training step, 1 to 64.
    pub prefetch: usize,
    /// Per-channel normalisation mean (RGB, 0..1 scale), each in [0, 1].
    pub mean: [f64; 3],
    /// Per-channel normalisation standard deviation (RGB, 0..1 scale), each in [0.001, 10].
    pub std: [f64; 3],
    /// Training augmentation.
    pub augment: AugmentConfig,
    /// Eval transform: resize the shorter side to `image_size / crop_fraction`, centre crop;
    /// in [0.25, 1].
    pub crop_fraction: f64,
    /// `skip` or `fail` on an unreadable image.
    pub on_error: OnError,
    /// Largest accepted image side in pixels, 1 to 65536; larger headers are rejected unread.
    pub max_image_side: u32,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            kind: DataKind::Shapes,
            root: String::new(),
            image_size: 32,
            num_shapes: 4,
            train_size: 6000,
            val_size: 1000,
            val_fraction: 0.0,
            seed: 0,
            workers: 0,
            prefetch: 4,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            augment: AugmentConfig::default(),
            crop_fraction: 0.875,
            on_error: OnError::Skip,
            max_image_side: 16384,
        }
    }
}

/// `[data.augment]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Random resized crop (torchvision's `RandomResizedCrop`); off: resize + centre crop.
    pub random_resized_crop: bool,
    /// Area fraction range of the random crop: `[min, max]`, 0 < min <= max <= 1.
    pub scale: [f64; 2],
    /// Aspect-ratio range of the random crop: `[min, max]`, 0.1 <= min <= max <= 10.
    pub ratio: [f64; 2],
    /// Probability of a horizontal flip, in [0, 1].
    pub hflip: f64,
    /// Colour jitter strength for brightness, contrast and saturation, in [0, 1] (0
    /// disables it).
    pub color_jitter: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            random_resized_crop: true,
            scale: [0.08, 1.0],
            ratio: [3.0 / 4.0, 4.0 / 3.0],
            hflip: 0.5,
            color_jitter: 0.0,
        }
    }
}

/// Optimizers hondo implements (state saved in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// `sgd` (the default): SGD with `momentum`/`nesterov` and L2 weight decay.
    Sgd,
    /// `adam`: Adam with `betas`/`eps` and L2 weight decay added to the gradient.
    Adam,
    /// `adamw`: Adam with decoupled weight decay.
    Adamw,
}

/// `[optimizer]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `sgd`, `adam` or `adamw`.
    pub name: OptimizerKind,
    /// Peak learning rate (the schedule scales it), in (0, 1e6]: finite, and loose enough
    /// for any schedule (a diverging rate is caught by `train.on_nonfinite`).
    pub lr: f64,
    /// SGD momentum, in [0, 1).
    pub momentum: f64,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW), in [0, 1].
    pub weight_decay: f64,
    /// Adam betas, each in [0, 1).
    pub betas: [f64; 2],
    /// Adam epsilon, in (0, 1].
    pub eps: f64,
    /// No weight decay on biases and normalisation weights (1-d parameters).
    pub no_decay_bias_and_norm: bool,
    /// Parameter groups, matched in order by name prefix; unmatched parameters use the
    /// base settings.
    pub groups: Vec<ParamGroupConfig>,
    /// Update with libtorch's fused kernels (one call per group); `false` runs the
    /// per-tensor reference implementation (same rules, slower).
    pub fused: bool,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            name: OptimizerKind::Sgd,
            lr: 0.05,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            betas: [0.9, 0.999],
            eps: 1e-8,
            no_decay_bias_and_norm: true,
            groups: Vec::new(),
            fused: true,
        }
    }
}

/// `[[optimizer.groups]]`: settings for parameters whose names start with a prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParamGroupConfig {
    /// Parameter-name prefixes of this group, e.g. `["fc"]`.
    pub prefixes: Vec<String>,
    /// Multiplier of `optimizer.lr` for this group, in [0, 1000].
    pub lr_scale: f64,
    /// Weight decay of this group, in [0, 1]; unset takes `optimizer.weight_decay` (a
    /// negative value, as older configs wrote, also means unset).
    #[serde(
        deserialize_with = "sentinel::negative_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub weight_decay: Option<f64>,
}

impl Default for ParamGroupConfig {
    fn default() -> Self {
        ParamGroupConfig {
            prefixes: Vec::new(),
            lr_scale: 1.0,
            weight_decay: None,
        }
    }
}

/// Learning-rate schedule shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// `constant`: the peak rate throughout (after warm-up).
    Constant,
    /// `step`: multiply by `gamma` every `step_epochs` epochs.
    Step,
    /// `multistep`: multiply by `gamma` at each epoch in `milestones`.
    Multistep,
    /// `cosine` (the default): cosine decay from the peak to `min_lr_factor` times it,
    /// after warm-up.
    Cosine,
    /// `one_cycle`: as torch's `OneCycleLR` (cosine), from peak/25 up to the peak over
    /// `pct_start` of the run, then down to `min_lr_factor`; ignores `warmup_epochs`.
    OneCycle,
}

/// `[schedule]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// `constant`, `step`, `multistep`, `cosine` or `one_cycle`.
    pub name: ScheduleKind,
    /// Linear warm-up length in epochs (fractions allowed), in [0, 10000].
    pub warmup_epochs: f64,
    /// Learning-rate factor at the start of warm-up, in (0, 1].
    pub warmup_factor: f64,
    /// `step`: epochs between decays, 1 to 10000.
    pub step_epochs: usize,
    /// `multistep`: epochs at which the rate decays, increasing, each 1 to 10000.
    pub milestones: Vec<usize>,
    /// `step`/`multistep`: decay factor, in (0, 1].
    pub gamma: f64,
    /// `cosine`/`one_cycle`: final learning rate as a fraction of the peak, in [0, 1].
    pub min_lr_factor: f64,
    /// `one_cycle`: fraction of the run spent increasing the rate, in (0, 1).
    pub pct_start: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            name: ScheduleKind::Cosine,
            warmup_epochs: 1.0,
            warmup_factor: 0.1,
            step_epochs: 30,
            milestones: Vec::new(),
            gamma: 0.1,
            min_lr_factor: 0.0,
            pct_start: 0.25,
        }
    }
}

/// Numeric precision of the forward and backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// `fp32` (the default): no autocast.
    Fp32,
    /// `bf16`: autocast to bfloat16, on CPU or CUDA.
    Bf16,
    /// `fp16`: autocast to float16 with dynamic loss scaling (steps with non-finite
    /// gradients are skipped).
    Fp16,
}

impl Precision {
    /// The name used in configs: `fp32`, `bf16`, `fp16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Number of epochs, 1 to 10000.
    pub epochs: usize,
    /// Images per optimizer step (per micro-batch when `accumulate` > 1), 1 to 65536.
    pub batch_size: usize,
    /// Seed of weight init, shuffling and augmentation, 0 to 2^63-1 (a TOML integer).
    pub seed: u64,
    /// Device: `auto`, `cpu`, `cuda` or `cuda:N`, parsed when the config is read.
    #[serde(with = "device_spec")]
    pub device: DeviceSpec,
    /// libtorch intra-op threads, 0 to 1024; 0 keeps libtorch's default (one per core).
    pub threads: usize,
    /// Label smoothing of the cross-entropy loss, in [0, 1).
    pub label_smoothing: f64,
    /// `fp32`, `bf16` or `fp16`: autocast of the forward pass (bf16 on CPU or CUDA; fp16
    /// with dynamic loss scaling, which skips steps with non-finite gradients).
    pub precision: Precision,
    /// Channels-last (NHWC) memory format for weights and inputs: `true`, `false` or
    /// `"auto"` (the default). `auto` takes channels-last on CUDA, and on the CPU the faster
    /// of the two layouts for this CPU model, model, batch and image size: timed over a few
    /// steps on random data the first time, then remembered in the user cache
    /// ([`crate::train::autotune`]). The run's first line says which layout and why; the
    /// run directory's config keeps `"auto"`.
    pub channels_last: Auto<bool>,
    /// Clip gradients to this global L2 norm, in [0, 1e6] (0 disables clipping).
    pub grad_clip: f64,
    /// Micro-batches accumulated per optimizer step, 1 to 1024.
    pub accumulate: usize,
    /// Plain log line every N steps when not on a terminal, 0 to 1000000 (0: only per
    /// epoch).
    pub log_every: usize,
    /// On a NaN or infinite loss: `stop` the run (the last good checkpoint is kept) or
    /// `skip` the step.
    pub on_nonfinite: NonFinite,
    /// Stop when the monitored metric has not improved for this many epochs, 0 to 10000
    /// (0: never).
    pub early_stop_patience: usize,
    /// Exponential moving average of the weights with this decay per step, in [0, 1) (0:
    /// off, e.g. 0.999); evaluated each epoch as `val_acc_ema` and saved in checkpoints.
    pub ema_decay: f64,
    /// Mixup: mix pairs of images and their targets with a Beta(alpha, alpha) weight, in
    /// [0, 100] (0: off; 0.2 is common).
    pub mixup_alpha: f64,
    /// CutMix: paste a box of another image, targets mixed by area, Beta(alpha, alpha), in
    /// [0, 100] (0: off; 1.0 is common). With mixup as well, each batch picks one at random.
    pub cutmix_alpha: f64,
    /// Read losses and accuracies back from the device every N steps, 0 to 10000 (progress
    /// bar, NaN check; the step a NaN appeared at is still named exactly). 0: every step on
    /// CPU, where reading costs nothing, and every 20 steps on CUDA.
    pub sync_every: usize,
    /// Data-parallel training (several processes: torchrun, srun, `hondo train --nproc`):
    /// seconds the rendezvous and each collective may wait for the other ranks before the
    /// run stops with an error naming what it waited for, in [1, 86400].
    pub dist_timeout_s: f64,
    /// Data-parallel training: MiB of gradients per all-reduce bucket (DDP's
    /// `bucket_cap_mb`; the first bucket is 1 MiB), in (0, 1024].
    pub dist_bucket_mib: f64,
    /// Data-parallel training: BatchNorm statistics over the global batch (all ranks'
    /// images, as `torch.nn.SyncBatchNorm`) instead of each process's own.
    pub sync_batchnorm: bool,
}

/// What a NaN or infinite loss does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    /// `stop` (the default): end the run with an error; the last good checkpoint is kept.
    /// BatchNorm statistics that are not finite at an epoch's end stop it the same way.
    Stop,
    /// `skip`: skip the step with a warning; its loss is left out of the epoch's metrics.
    Skip,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 8,
            batch_size: 64,
            seed: 0,
            device: DeviceSpec::Auto,
            threads: 0,
            label_smoothing: 0.0,
            precision: Precision::Fp32,
            channels_last: Auto::Auto,
            grad_clip: 0.0,
            accumulate: 1,
            log_every: 0,
            on_nonfinite: NonFinite::Stop,
            early_stop_patience: 0,
            ema_decay: 0.0,
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            sync_every: 0,
            dist_timeout_s: 600.0,
            dist_bucket_mib: 25.0,
            sync_batchnorm: false,
        }
    }
}

/// Metric direction for keeping the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMode {
    /// `max`: higher is better (accuracies).
    Max,
    /// `min`: lower is better (losses).
    Min,
}

/// The epoch metric that picks `best` and drives early stopping (the names of
/// `metrics.jsonl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Monitor {
    /// `val_acc` (the default): validation accuracy.
    ValAcc,
    /// `val_loss`: validation loss.
    ValLoss,
    /// `train_acc`: training accuracy over the epoch.
    TrainAcc,
    /// `train_loss`: training loss over the epoch.
    TrainLoss,
    /// Needs `train.ema_decay` > 0.
    ValAccEma,
    /// Needs `train.ema_decay` > 0.
    ValLossEma,
}

impl Monitor {
    const ALL: [Monitor; 6] = [
        Monitor::ValAcc,
        Monitor::ValLoss,
        Monitor::TrainAcc,
        Monitor::TrainLoss,
        Monitor::ValAccEma,
        Monitor::ValLossEma,
    ];

    /// The name used in configs and `metrics.jsonl`.
    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValAcc => "val_acc",
            Monitor::ValLoss => "val_loss",
            Monitor::TrainAcc => "train_acc",
            Monitor::TrainLoss => "train_loss",
            Monitor::ValAccEma => "val_acc_ema",
            Monitor::ValLossEma => "val_loss_ema",
        }
    }

    /// The direction in which this metric improves: accuracies up, losses down.
    pub fn mode(self) -> MonitorMode {
        match self {
            Monitor::ValAcc | Monitor::TrainAcc | Monitor::ValAccEma => MonitorMode::Max,
            Monitor::ValLoss | Monitor::TrainLoss | Monitor::ValLossEma => MonitorMode::Min,
        }
    }

    /// Whether the metric exists only with `train.ema_decay` > 0.
    pub fn needs_ema(self) -> bool {
        matches!(self, Monitor::ValAccEma | Monitor::ValLossEma)
    }
}

impl std::str::FromStr for Monitor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Monitor::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Monitor::ALL.iter().map(|m| m.name()).collect();
                format!("must be one of {}, got `{s}`", names.join(", "))
            })
    }
}

impl TryFrom<String> for Monitor {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Monitor> for String {
    fn from(m: Monitor) -> String {
        m.name().to_string()
    }
}

impl std::fmt::Display for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `[checkpoint]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Directory under which run directories are created.
    pub dir: String,
    /// Run directory name; unset picks `<arch>-<data>-<n>`, never an existing one (an
    /// empty string, as older configs wrote, also means unset).
    #[serde(
        deserialize_with = "sentinel::empty_is_none",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// Metric that picks `best` and drives early stopping: `val_acc`, `val_loss`,
    /// `train_acc`, `train_loss` (or `val_acc_ema`, `val_loss_ema` with `train.ema_decay`).
    pub monitor: Monitor,
    /// `max` or `min` of `monitor`; unset infers it from the metric (accuracies `max`,
    /// losses `min`). An explicit value must agree with the metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<MonitorMode>,
    /// Also keep the k best epochs as `epoch-NNNN.safetensors`, 0 to 1000 (0: only `last`
    /// and `best`).
    pub keep_top_k: usize,
    /// Also write `last` every N optimizer steps, 0 to 10^9 (0: only at epoch ends).
    pub every_steps: usize,
    /// Write TensorBoard scalars (`events.out.tfevents.*` in the run directory): losses
    /// and accuracies per epoch, learning rate and throughput every
    /// `tensorboard_every_steps` steps. A resumed run appends to the same file.
    pub tensorboard: bool,
    /// Steps between TensorBoard's learning-rate and throughput scalars, 1 to 1000000.
    pub tensorboard_every_steps: usize,
}

impl CheckpointConfig {
    /// The direction of `monitor`: `mode` when set, else inferred from the metric.
    pub fn mode(&self) -> MonitorMode {
        self.mode.unwrap_or(self.monitor.mode())
    }
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: "runs".into(),
            name: None,
            monitor: Monitor::ValAcc,
            mode: None,
            keep_top_k: 0,
            every_steps: 0,
            tensorboard: false,
            tensorboard_every_steps: 10,
        }
    }
}

impl Config {
    /// The configuration as TOML, as written into each run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// `train.device` as its TOML string, parsed by [`DeviceSpec::parse`] when read.
mod device_spec {
    use super::DeviceSpec;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &DeviceSpec, s: S) -> Result<S::Ok, S::Error> {
        match d {
            DeviceSpec::Auto => s.serialize_str("auto"),
            DeviceSpec::Cpu => s.serialize_str("cpu"),
            DeviceSpec::Cuda(n) => s.serialize_str(&format!("cuda:{n}")),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DeviceSpec, D::Error> {
        let s = String::deserialize(d)?;
        DeviceSpec::parse(&s).map_err(D::Error::custom)
    }
}

/// Optional keys that older configs (and the checkpoints that embed them) wrote with a
/// sentinel for "unset": those sentinels still read as `None`.
mod sentinel {
    use serde::{Deserialize, Deserializer};

    pub fn empty_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Some(String::deserialize(d)?).filter(|s| !s.is_empty()))
    }

    pub fn zero_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        Ok(Some(usize::deserialize(d)?).filter(|n| *n != 0))
    }

    pub fn negative_is_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        // NaN and -inf stay, for validation to reject with the key.
        Ok(Some(f64::deserialize(d)?).filter(|v| !(v.is_finite() && *v < 0.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(o: &[&str]) -> Config {
        let o: Vec<Override> = o.iter().map(|s| s.parse().unwrap()).collect();
        load_str("", "t.toml", &o).unwrap()
    }

    #[test]
    fn to_toml_round_trips_through_load() {
        for c in [
            Config::default(),
            set(&[
                "model.pretrained=weights/r18.pth",
                "model.num_classes=10",
                "model.freeze=[\"conv1\"]",
                "model.unfreeze_at_epoch=2",
                "train.device=cuda:1",
                "checkpoint.name=mine",
                "checkpoint.monitor=val_loss",
                "checkpoint.mode=min",
                "optimizer.groups=[{prefixes=[\"fc\"], weight_decay=0.0}]",
            ]),
        ] {
            let again = load_str(&c.to_toml(), "again.toml", &[]).unwrap();
            assert_eq!(again, c);
        }
    }

    #[test]
    fn set_values_keep_their_spelling_and_unset_ones_are_left_out() {
        let c = set(&["train.device=cuda", "model.pretrained=w.pth"]);
        assert_eq!(c.train.device, DeviceSpec::Cuda(0));
        assert_eq!(c.model.pretrained.as_deref(), Some("w.pth"));
        let toml = c.to_toml();
        assert!(toml.contains("device = \"cuda:0\""), "{toml}");
        assert!(toml.contains("pretrained = \"w.pth\""), "{toml}");
        assert!(toml.contains("monitor = \"val_acc\""), "{toml}");
        for unset in [
            "num_classes",
            "unfreeze_at_epoch",
            "mode =",
            "\nname = \"\"",
        ] {
            assert!(!toml.contains(unset), "{unset} in {toml}");
        }
    }

    #[test]
    fn older_sentinels_still_read_as_unset() {
        let c = load_str(
            "[model]\npretrained = \"\"\nnum_classes = 0\nunfreeze_at_epoch = 0\n\
             [[optimizer.groups]]\nprefixes = [\"fc\"]\nweight_decay = -1.0\n\
             [checkpoint]\nname = \"\"\n",
            "old.toml",
            &[],
        )
        .unwrap();
        assert_eq!(c.model.pretrained, None);
        assert_eq!(c.model.num_classes, None);
        assert_eq!(c.model.unfreeze_at_epoch, None);
        assert_eq!(c.optimizer.groups[0].weight_decay, None);
        assert_eq!(c.checkpoint.name, None);
    }

    #[test]
    fn the_device_is_parsed_when_read_naming_the_key() {
        let e = load_str("[train]\ndevice = \"gpu\"\n", "d.toml", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.toml:2:"), "{e}");
        assert!(e.contains("train.device"), "{e}");
        assert!(e.contains("auto, cpu, cuda or cuda:N"), "{e}");
    }
}
