//! The training configuration: one TOML file, one struct per section.
//!
//! Every section is `#[serde(deny_unknown_fields, default)]`: a typo fails with the key's
//! path, an omitted key takes the documented default below. [`load`] reads a file, applies
//! `--set key.path=value` overrides and validates the result.

mod load;
mod overrides;
mod validate;

pub use load::{load, load_str, ConfigError};
pub use overrides::Override;

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
    Resnet18,
    Resnet34,
    Resnet50,
    Resnet101,
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
    /// Number of output classes; 0 takes the dataset's class count.
    pub num_classes: usize,
    /// Base channel width of `small_cnn` (doubled at each stage).
    pub width: i64,
    /// Dropout before the classifier of `small_cnn` (0 disables it).
    pub dropout: f64,
    /// ResNet: initialise the last BatchNorm of each residual block to zero.
    pub zero_init_residual: bool,
    /// Pretrained weights to start from (`.safetensors`, `.pth`/`.pt`, `.ot`); empty for none.
    pub pretrained: String,
    /// When `pretrained` is a hondo checkpoint of a run with `train.ema_decay > 0`, start
    /// from its moving-average (EMA) weights (as timm does); `false` takes its raw weights.
    pub pretrained_ema: bool,
    /// Fail on any missing, unexpected or mis-shaped tensor in `pretrained` (except a
    /// classifier head with another class count, which is re-initialised).
    pub strict: bool,
    /// Parameter-name prefixes to freeze, e.g. `["conv1", "bn1", "layer1"]`. Frozen
    /// BatchNorm layers also keep their running statistics (they run in eval mode).
    pub freeze: Vec<String>,
    /// Epoch (1-based) at which `freeze` is lifted; 0 keeps the layers frozen.
    pub unfreeze_at_epoch: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: Arch::SmallCnn,
            num_classes: 0,
            width: 32,
            dropout: 0.0,
            zero_init_residual: false,
            pretrained: String::new(),
            pretrained_ema: true,
            strict: true,
            freeze: Vec::new(),
            unfreeze_at_epoch: 0,
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
    /// Side of the square training input in pixels.
    pub image_size: u32,
    /// `shapes`: number of shape classes (2 to 6: circle, square, triangle, cross, ring, bar).
    pub num_shapes: usize,
    /// `shapes`: number of training images.
    pub train_size: usize,
    /// `shapes`: number of validation images.
    pub val_size: usize,
    /// `image_folder` without a `val/` directory: fraction of each class held out (seeded).
    pub val_fraction: f64,
    /// Seed of the dataset itself (generation and splits); the training seed is `train.seed`.
    pub seed: u64,
    /// Loader worker threads; 0 picks one per core.
    pub workers: usize,
    /// Batches prepared ahead of the training step.
    pub prefetch: usize,
    /// Per-channel normalisation mean (RGB, 0..1 scale).
    pub mean: [f64; 3],
    /// Per-channel normalisation standard deviation (RGB, 0..1 scale).
    pub std: [f64; 3],
    /// Training augmentation.
    pub augment: AugmentConfig,
    /// Eval transform: resize the shorter side to `image_size / crop_fraction`, centre crop.
    pub crop_fraction: f64,
    /// `skip` or `fail` on an unreadable image.
    pub on_error: OnError,
    /// Largest accepted image side in pixels; larger headers are rejected unread.
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
    /// Area fraction range of the random crop.
    pub scale: [f64; 2],
    /// Aspect-ratio range of the random crop.
    pub ratio: [f64; 2],
    /// Probability of a horizontal flip.
    pub hflip: f64,
    /// Colour jitter strength for brightness, contrast and saturation (0 disables it).
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
    Sgd,
    Adam,
    Adamw,
}

/// `[optimizer]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// `sgd`, `adam` or `adamw`.
    pub name: OptimizerKind,
    /// Peak learning rate (the schedule scales it).
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// SGD Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay (L2 for SGD and Adam, decoupled for AdamW).
    pub weight_decay: f64,
    /// Adam betas.
    pub betas: [f64; 2],
    /// Adam epsilon.
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
    /// Multiplier of `optimizer.lr` for this group.
    pub lr_scale: f64,
    /// Weight decay of this group; negative takes `optimizer.weight_decay`.
    pub weight_decay: f64,
}

impl Default for ParamGroupConfig {
    fn default() -> Self {
        ParamGroupConfig {
            prefixes: Vec::new(),
            lr_scale: 1.0,
            weight_decay: -1.0,
        }
    }
}

/// Learning-rate schedule shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Step,
    Multistep,
    Cosine,
    OneCycle,
}

/// `[schedule]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// `constant`, `step`, `multistep`, `cosine` or `one_cycle`.
    pub name: ScheduleKind,
    /// Linear warm-up length in epochs (fractions allowed).
    pub warmup_epochs: f64,
    /// Learning-rate factor at the start of warm-up.
    pub warmup_factor: f64,
    /// `step`: epochs between decays.
    pub step_epochs: usize,
    /// `multistep`: epochs at which the rate decays.
    pub milestones: Vec<usize>,
    /// `step`/`multistep`: decay factor.
    pub gamma: f64,
    /// `cosine`/`one_cycle`: final learning rate as a fraction of the peak.
    pub min_lr_factor: f64,
    /// `one_cycle`: fraction of the run spent increasing the rate.
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
    Fp32,
    Bf16,
    Fp16,
}

/// `[train]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Number of epochs.
    pub epochs: usize,
    /// Images per optimizer step (per micro-batch when `accumulate` > 1).
    pub batch_size: usize,
    /// Seed of weight init, shuffling and augmentation.
    pub seed: u64,
    /// Device: `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// libtorch intra-op threads; 0 keeps libtorch's default (one per core).
    pub threads: usize,
    /// Label smoothing of the cross-entropy loss.
    pub label_smoothing: f64,
    /// `fp32`, `bf16` or `fp16`: autocast of the forward pass (bf16 on CPU or CUDA; fp16
    /// with dynamic loss scaling, which skips steps with non-finite gradients).
    pub precision: Precision,
    /// Channels-last (NHWC) memory format for weights and inputs: on by default, as it is
    /// 20-30% faster for convolutions on CPU and CUDA alike (BENCHMARKS.md).
    pub channels_last: bool,
    /// Clip gradients to this global L2 norm (0 disables clipping).
    pub grad_clip: f64,
    /// Micro-batches accumulated per optimizer step.
    pub accumulate: usize,
    /// Plain log line every N steps when not on a terminal (0: only per epoch).
    pub log_every: usize,
    /// On a NaN or infinite loss: `stop` the run (the last good checkpoint is kept) or
    /// `skip` the step.
    pub on_nonfinite: NonFinite,
    /// Stop when the monitored metric has not improved for this many epochs (0: never).
    pub early_stop_patience: usize,
    /// Exponential moving average of the weights with this decay per step (0: off, e.g.
    /// 0.999); evaluated each epoch as `val_acc_ema` and saved in checkpoints.
    pub ema_decay: f64,
    /// Mixup: mix pairs of images and their targets with a Beta(alpha, alpha) weight
    /// (0: off; 0.2 is common).
    pub mixup_alpha: f64,
    /// CutMix: paste a box of another image, targets mixed by area, Beta(alpha, alpha)
    /// (0: off; 1.0 is common). With mixup as well, each batch picks one at random.
    pub cutmix_alpha: f64,
    /// Read losses and accuracies back from the device every N steps (progress bar, NaN
    /// check; the step a NaN appeared at is still named exactly). 0: every step on CPU,
    /// where reading costs nothing, and every 20 steps on CUDA.
    pub sync_every: usize,
}

/// What a NaN or infinite loss does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    Stop,
    Skip,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 8,
            batch_size: 64,
            seed: 0,
            device: "auto".into(),
            threads: 0,
            label_smoothing: 0.0,
            precision: Precision::Fp32,
            channels_last: true,
            grad_clip: 0.0,
            accumulate: 1,
            log_every: 0,
            on_nonfinite: NonFinite::Stop,
            early_stop_patience: 0,
            ema_decay: 0.0,
            mixup_alpha: 0.0,
            cutmix_alpha: 0.0,
            sync_every: 0,
        }
    }
}

/// Metric direction for keeping the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMode {
    Max,
    Min,
}

/// `[checkpoint]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Directory under which run directories are created.
    pub dir: String,
    /// Run directory name; empty picks `<arch>-<data>-<n>`, never an existing one.
    pub name: String,
    /// Metric that picks `best`: `val_acc` or `val_loss` (or `val_acc_ema`, `val_loss_ema`
    /// with `train.ema_decay`).
    pub monitor: String,
    /// `max` or `min` of `monitor`.
    pub mode: MonitorMode,
    /// Also keep the k best epochs as `epoch-NNNN.safetensors` (0: only `last` and `best`).
    pub keep_top_k: usize,
    /// Also write `last` every N optimizer steps (0: only at epoch ends).
    pub every_steps: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            dir: "runs".into(),
            name: String::new(),
            monitor: "val_acc".into(),
            mode: MonitorMode::Max,
            keep_top_k: 0,
            every_steps: 0,
        }
    }
}

impl Config {
    /// The configuration as TOML, as written into each run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}
