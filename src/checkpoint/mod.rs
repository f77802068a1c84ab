//! The checkpoint format: one `.safetensors` file per checkpoint.
//!
//! - Model parameters and buffers under torchvision's names (`conv1.weight`, ...).
//! - Optimizer state under `optimizer/<param>.<field>` (and the fp16 loss scaler under
//!   `optimizer/scaler.<field>`).
//! - The weights' moving average (`train.ema_decay`) under `ema/<name>`.
//! - Metadata `hondo.format` = `hondo-checkpoint`, `hondo.version` = format version, and
//!   `hondo.meta` = JSON [`Meta`]: epoch, step, architecture, classes, preprocessing,
//!   metrics and the effective config.
//!
//! One file per checkpoint keeps the write atomic (temporary file, fsync, rename).

pub(crate) mod atomic;
pub(crate) mod policy;

use crate::config::Arch;
use crate::tensor_io;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Value of the `hondo.format` metadata key that marks a hondo checkpoint.
pub const FORMAT: &str = "hondo-checkpoint";
/// 2: `ema/` tensors and `optimizer/scaler.*` entries (a version-1 reader would take
/// `ema/` tensors for model weights); version-1 files read unchanged.
pub const VERSION: u32 = 2;
/// Prefix of optimizer state in a checkpoint (`optimizer/<param>.<field>`, and
/// `optimizer/scaler.*`): not model weights.
pub(crate) const OPTIMIZER_PREFIX: &str = "optimizer/";
/// Prefix of the moving average of the weights in a checkpoint (`ema/<name>`).
pub(crate) const EMA_PREFIX: &str = "ema/";

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// The hondo version that wrote the checkpoint.
    pub hondo_version: String,
    /// The model: one of hondo's architectures (`resnet50`, ...) or a custom model's name.
    pub arch: String,
    /// A custom model's classifier-head prefix (`None` for hondo's own architectures,
    /// whose heads are known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// Number of classes the classifier head outputs, >= 1 (checked against the head's
    /// weight on read).
    pub num_classes: i64,
    /// Class names in label order; at most `num_classes` of them.
    pub classes: Vec<String>,
    /// Eval input side in pixels, in [`IMAGE_SIZE_RANGE`].
    pub image_size: u32,
    /// Eval centre-crop fraction (resize the shorter side to `image_size / crop_fraction`,
    /// then crop), in (0, 1].
    pub crop_fraction: f64,
    /// Per-channel normalisation mean (RGB, 0..1 scale), finite.
    pub mean: [f64; 3],
    /// Per-channel normalisation standard deviation (RGB, 0..1 scale), finite and > 0.
    pub std: [f64; 3],
    /// Epoch in progress (0-based): a checkpoint written at the end of epoch `e` says
    /// `epoch = e + 1, batch = 0`. At most 10 000 (`train.epochs`' limit).
    pub epoch: usize,
    /// Batches of `epoch` already done (per process), at most [`MAX_BATCHES`]; a resume
    /// also checks it against the epoch's batches.
    pub batch: usize,
    /// Optimizer steps done, at most [`MAX_STEPS`].
    pub step: usize,
    /// Metrics of the last finished epoch (`val_acc`, `val_loss`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// The last finished epoch's whole line of `metrics.jsonl` (its `epoch` equals
    /// [`Meta::epoch`]), so that a resume restores the line when the run was killed
    /// after writing this checkpoint but before the line ([`crate::metrics::restore`]).
    /// `None` before the first epoch ends, and in checkpoints of hondo 0.1 before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_epoch: Option<crate::metrics::EpochMetrics>,
    /// Best monitored value so far (finite) and its epoch (1-based, at most `epoch`).
    pub best: Option<(f64, usize)>,
    /// Consecutive epochs without improvement (early stopping), at most `epoch`.
    pub epochs_without_improvement: usize,
    /// Processes that trained it (data-parallel world size; 1 for one process): `batch`
    /// counts each process's batches, so a resume with another world size maps it to its
    /// own by the images done. Absent in older checkpoints: 1.
    #[serde(default = "one")]
    pub world_size: usize,
    /// The effective configuration, as TOML.
    pub config: String,
}

fn one() -> usize {
    1
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Checkpoint {
    /// The metadata, validated.
    pub meta: Meta,
    /// Model parameters and buffers, by torchvision-style name (`conv1.weight`, ...).
    pub model: Vec<(String, Tensor)>,
    /// Optimizer and loss-scaler state, `optimizer/` prefix stripped.
    pub optimizer: Vec<(String, Tensor)>,
    /// The moving average of the model's tensors, same names as `model` (empty without EMA).
    pub ema: Vec<(String, Tensor)>,
}

/// Errors reading, validating or restoring a checkpoint; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be opened or read.
    #[error("cannot read checkpoint {0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Not safetensors, or without valid hondo metadata (format marker, version, `hondo.meta`
    /// JSON); the string says why.
    #[error("{0} is not a hondo checkpoint: {1}")]
    NotACheckpoint(PathBuf, String),
    /// The file's format version is above [`VERSION`].
    #[error("{0}: checkpoint format version {1} is newer than this hondo reads ({VERSION})")]
    TooNew(PathBuf, u32),
    /// The tensors could not be converted to or from safetensors.
    #[error("{0}: {1}")]
    Tensors(PathBuf, tensor_io::TensorIoError),
    /// The checkpoint holds another model than the one asked for.
    #[error("{}: the checkpoint is a {found} but the model is {expected}", path.display())]
    OtherModel {
        /// The checkpoint.
        path: PathBuf,
        /// The architecture it records.
        found: String,
        /// The architecture asked for.
        expected: String,
    },
    /// The metadata contradicts itself, its tensors or a sane range.
    #[error("{}: checkpoint metadata `{field}` {problem}", path.display())]
    BadMeta {
        /// The checkpoint.
        path: PathBuf,
        /// The offending [`Meta`] field (`num_classes`, `image_size`, ...).
        field: &'static str,
        /// What is wrong with it, for the message.
        problem: String,
    },
}

/// The most batches of an epoch a checkpoint may say are done (per process; an epoch of
/// 2^32 batches is far beyond any dataset hondo reads).
pub const MAX_BATCHES: u64 = 1 << 32;
/// The most optimizer steps a checkpoint may say are done.
pub const MAX_STEPS: u64 = 1 << 40;

/// Range of `image_size` a checkpoint may declare (the eval input side, in pixels).
pub const IMAGE_SIZE_RANGE: std::ops::RangeInclusive<u32> = 8..=4096;

/// Checks the metadata on its own: every field in its documented range.
fn validate_meta(path: &Path, m: &Meta) -> Result<(), CheckpointError> {
    let bad = |field: &'static str, problem: String| {
        Err(CheckpointError::BadMeta {
            path: path.into(),
            field,
            problem,
        })
    };
    if m.arch.trim().is_empty() {
        return bad("arch", "is empty".into());
    }
    if m.num_classes < 1 {
        return bad(
            "num_classes",
            format!("must be >= 1, got {}", m.num_classes),
        );
    }
    if m.classes.len() as u64 > m.num_classes as u64 {
        return bad(
            "classes",
            format!(
                "names {} classes but num_classes is {}",
                m.classes.len(),
                m.num_classes
            ),
        );
    }
    if !IMAGE_SIZE_RANGE.contains(&m.image_size) {
        return bad(
            "image_size",
            format!(
                "must be in {}..={}, got {}",
                IMAGE_SIZE_RANGE.start(),
                IMAGE_SIZE_RANGE.end(),
                m.image_size
            ),
        );
    }
    if !(m.crop_fraction > 0.0 && m.crop_fraction <= 1.0) {
        return bad(
            "crop_fraction",
            format!("must be in (0, 1], got {}", m.crop_fraction),
        );
    }
    if !m.mean.iter().all(|v| v.is_finite()) {
        return bad("mean", format!("must be finite, got {:?}", m.mean));
    }
    if !m.std.iter().all(|v| v.is_finite() && *v > 0.0) {
        return bad("std", format!("must be finite and > 0, got {:?}", m.std));
    }
    if m.epoch > crate::config::MAX_EPOCHS {
        return bad(
            "epoch",
            format!(
                "must be at most {} (train.epochs' limit), got {}",
                crate::config::MAX_EPOCHS,
                m.epoch
            ),
        );
    }
    if m.batch as u64 > MAX_BATCHES {
        return bad(
            "batch",
            format!("must be at most {MAX_BATCHES}, got {}", m.batch),
        );
    }
    if m.step as u64 > MAX_STEPS {
        return bad(
            "step",
            format!("must be at most {MAX_STEPS}, got {}", m.step),
        );
    }
    if let Some((value, epoch)) = m.best {
        if !value.is_finite() || !(1..=m.epoch).contains(&epoch) {
            return bad(
                "best",
                format!(
                    "must be a finite value and an epoch in 1..={}, got ({value}, {epoch})",
                    m.epoch
                ),
            );
        }
    }
    if m.epochs_without_improvement > m.epoch {
        return bad(
            "epochs_without_improvement",
            format!(
                "must be at most the epochs done ({}), got {}",
                m.epoch, m.epochs_without_improvement
            ),
        );
    }
    if let Some(l) = &m.last_epoch {
        if l.epoch != m.epoch || l.step > m.step {
            return bad(
                "last_epoch",
                format!(
                    "is epoch {} at step {}, but the checkpoint is at epoch {} step {}",
                    l.epoch, l.step, m.epoch, m.step
                ),
            );
        }
    }
    if !(1..=crate::dist::MAX_WORLD).contains(&m.world_size) {
        return bad(
            "world_size",
            format!(
                "must be in 1..={}, got {}",
                crate::dist::MAX_WORLD,
                m.world_size
            ),
        );
    }
    Ok(())
}

/// Checks the metadata against the model's tensors: the classifier head has `num_classes`
/// outputs.
fn validate_against_tensors(
    path: &Path,
    m: &Meta,
    model: &[(String, Tensor)],
) -> Result<(), CheckpointError> {
    let head = match crate::config::Arch::from_name(&m.arch) {
        Some(arch) => crate::models::arch_info(arch).classifier.to_string(),
        None => match &m.head {
            Some(h) => h.clone(),
            // A custom model of an older hondo: its head is not recorded.
            None => return Ok(()),
        },
    };
    let weight = format!("{head}.weight");
    let Some((_, w)) = model.iter().find(|(n, _)| *n == weight) else {
        return Err(CheckpointError::BadMeta {
            path: path.into(),
            field: "num_classes",
            problem: format!("cannot be checked: the checkpoint has no tensor `{weight}`"),
        });
    };
    let rows = w.size().first().copied();
    if w.dim() != 2 || rows != Some(m.num_classes) {
        return Err(CheckpointError::BadMeta {
            path: path.into(),
            field: "num_classes",
            problem: format!(
                "is {} but the classifier `{weight}` has shape {:?}",
                m.num_classes,
                w.size()
            ),
        });
    }
    Ok(())
}

/// Serialises a checkpoint without EMA weights.
pub fn to_bytes(
    meta: &Meta,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
) -> Result<Vec<u8>, tensor_io::TensorIoError> {
    to_bytes_with_ema(meta, model, optimizer, &[])
}

/// Serialises a checkpoint; `ema` goes under `ema/<name>`.
pub fn to_bytes_with_ema(
    meta: &Meta,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    ema: &[(String, Tensor)],
) -> Result<Vec<u8>, tensor_io::TensorIoError> {
    let mut tensors: Vec<(String, Tensor)> = model
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    tensors.extend(
        optimizer
            .iter()
            .map(|(n, t)| (format!("{OPTIMIZER_PREFIX}{n}"), t.shallow_clone())),
    );
    tensors.extend(
        ema.iter()
            .map(|(n, t)| (format!("{EMA_PREFIX}{n}"), t.shallow_clone())),
    );
    let metadata = HashMap::from([
        ("hondo.format".to_string(), FORMAT.to_string()),
        ("hondo.version".to_string(), VERSION.to_string()),
        (
            "hondo.meta".to_string(),
            serde_json::to_string(meta).expect("meta serialises"),
        ),
    ]);
    tensor_io::serialize(&tensors, metadata)
}

/// Reads a whole checkpoint, checking its metadata against sane ranges and its tensors.
pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = crate::file::read_regular(path, crate::file::MAX_WEIGHTS_BYTES)
        .map_err(|e| CheckpointError::Io(path.into(), crate::file::io_error(e)))?;
    from_bytes(path, &bytes)
}

/// [`read`] from bytes already in memory; `path` names the checkpoint in errors.
pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let (tensors, metadata) = tensor_io::deserialize(bytes)
        .map_err(|e| CheckpointError::NotACheckpoint(path.into(), e.to_string()))?;
    let meta = parse_meta(path, &metadata)?;
    let (mut model, mut optimizer, mut ema) = (Vec::new(), Vec::new(), Vec::new());
    for (n, t) in tensors {
        if let Some(rest) = n.strip_prefix(OPTIMIZER_PREFIX) {
            optimizer.push((rest.to_string(), t));
        } else if let Some(rest) = n.strip_prefix(EMA_PREFIX) {
            ema.push((rest.to_string(), t));
        } else {
            model.push((n, t));
        }
    }
    validate_against_tensors(path, &meta, &model)?;
    Ok(Checkpoint {
        meta,
        model,
        optimizer,
        ema,
    })
}

/// Reads only the metadata (the safetensors header), not the tensors.
pub fn read_meta(path: &Path) -> Result<Meta, CheckpointError> {
    let io = |e| CheckpointError::Io(path.into(), e);
    let (mut f, _) = crate::file::open_regular(path, crate::file::MAX_WEIGHTS_BYTES)
        .map_err(|e| io(crate::file::io_error(e)))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| CheckpointError::NotACheckpoint(path.into(), "file too short".into()))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(CheckpointError::NotACheckpoint(
            path.into(),
            "header too large".into(),
        ));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|_| CheckpointError::NotACheckpoint(path.into(), "truncated header".into()))?;
    #[derive(Deserialize)]
    struct Header {
        #[serde(rename = "__metadata__", default)]
        metadata: HashMap<String, String>,
    }
    let h: Header = serde_json::from_slice(&header)
        .map_err(|e| CheckpointError::NotACheckpoint(path.into(), e.to_string()))?;
    parse_meta(path, &h.metadata)
}

fn parse_meta(path: &Path, metadata: &HashMap<String, String>) -> Result<Meta, CheckpointError> {
    let not = |why: &str| CheckpointError::NotACheckpoint(path.into(), why.into());
    if metadata.get("hondo.format").map(String::as_str) != Some(FORMAT) {
        return Err(not(
            "no hondo checkpoint metadata (an exported or foreign weights file?)",
        ));
    }
    let version: u32 = metadata
        .get("hondo.version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| not("no format version"))?;
    if version > VERSION {
        return Err(CheckpointError::TooNew(path.into(), version));
    }
    let meta = metadata
        .get("hondo.meta")
        .ok_or_else(|| not("no hondo.meta"))?;
    let meta: Meta =
        serde_json::from_str(meta).map_err(|e| not(&format!("bad hondo.meta: {e}")))?;
    validate_meta(path, &meta)?;
    Ok(meta)
}

/// File name of the latest checkpoint inside a run directory.
pub const LAST: &str = "last.safetensors";
/// File name of the best checkpoint (by the monitored metric) inside a run directory.
pub const BEST: &str = "best.safetensors";

/// `epoch-0007.safetensors`: zero-padded so names sort by epoch.
pub fn epoch_file(epoch: usize) -> String {
    format!("epoch-{epoch:04}.safetensors")
}

/// The `epoch-NNNN` checkpoints in `dir` with their monitored metric, read from disk (so
/// top-k survives a resume).
pub fn list_kept(dir: &Path, monitor: &str) -> Vec<(usize, f64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut kept: Vec<(usize, f64)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let epoch: usize = name
                .strip_prefix("epoch-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()?;
            let meta = read_meta(&e.path()).ok()?;
            Some((epoch, *meta.metrics.get(monitor)?))
        })
        .collect();
    kept.sort_by_key(|(e, _)| *e);
    kept
}

/// A model rebuilt from a checkpoint: its variables hold the checkpoint's tensors exactly.
pub struct Restored {
    /// The variables.
    pub vs: tch::nn::VarStore,
    /// The network over them (in eval mode use `forward_t(x, false)`).
    pub model: Box<dyn tch::nn::ModuleT>,
    /// The checkpoint's metadata.
    pub meta: Meta,
    /// The run's effective configuration, as the checkpoint embeds it.
    pub config: crate::config::Config,
}

impl std::fmt::Debug for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restored")
            .field("arch", &self.meta.arch)
            .field("num_classes", &self.meta.num_classes)
            .finish_non_exhaustive()
    }
}

/// Rebuilds the hondo model a checkpoint was written from, on `device`.
pub fn restore(path: &Path, device: tch::Device) -> crate::Result<Restored> {
    restore_impl(path, device, None).map_err(crate::Error::from)
}

/// Rebuilds a checkpoint of a custom model (see [`crate::models::ModelSpec::custom`]) on
/// `device`; the checkpoint must record `spec`'s name.
pub fn restore_with(
    path: &Path,
    device: tch::Device,
    spec: &crate::models::ModelSpec,
) -> crate::Result<Restored> {
    restore_impl(path, device, Some(spec)).map_err(crate::Error::from)
}

fn restore_impl(
    path: &Path,
    device: tch::Device,
    spec: Option<&crate::models::ModelSpec>,
) -> anyhow::Result<Restored> {
    let ckpt = read(path)?;
    let config = crate::config::load_embedded(
        &ckpt.meta.config,
        &format!("{} (embedded config)", path.display()),
    )?;
    if Arch::from_name(&ckpt.meta.arch).is_some() && config.model.arch.name() != ckpt.meta.arch {
        return Err(CheckpointError::BadMeta {
            path: path.into(),
            field: "arch",
            problem: format!(
                "is {} but the embedded config says model.arch = {}",
                ckpt.meta.arch,
                config.model.arch.name()
            ),
        }
        .into());
    }
    let spec = match spec {
        Some(s) => s.clone(),
        None => {
            if Arch::from_name(&ckpt.meta.arch).is_none() {
                anyhow::bail!(
                    "{}: the checkpoint is of a custom model `{}`, which this program cannot build \
                     (library users: checkpoint::restore_with)",
                    path.display(),
                    ckpt.meta.arch
                );
            }
            crate::models::ModelSpec::builtin(&config.model)
        }
    };
    if spec.name() != ckpt.meta.arch {
        return Err(CheckpointError::OtherModel {
            path: path.into(),
            found: ckpt.meta.arch.clone(),
            expected: spec.name().to_string(),
        }
        .into());
    }
    let vs = tch::nn::VarStore::new(device);
    let model = spec.build(&vs.root(), ckpt.meta.num_classes);
    copy_exact(&vs, &ckpt.model).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Restored {
        vs,
        model,
        meta: ckpt.meta,
        config,
    })
}

/// Copies tensors into a VarStore's variables exactly: same names, same shapes, and every
/// variable covered.
pub fn copy_exact(vs: &tch::nn::VarStore, tensors: &[(String, Tensor)]) -> crate::Result<()> {
    crate::error::boundary(|| {
        let mut vars = vs.variables();
        for (name, t) in tensors {
            let Some(var) = vars.remove(name) else {
                anyhow::bail!("the checkpoint has tensor `{name}`, which this model does not");
            };
            if var.size() != t.size() {
                anyhow::bail!(
                    "tensor `{name}`: the checkpoint has shape {:?}, the model {:?}",
                    t.size(),
                    var.size()
                );
            }
            tch::no_grad(|| var.shallow_clone().f_copy_(t))
                .map_err(|e| anyhow::anyhow!("copying tensor `{name}`: {e}"))?;
        }
        if let Some(name) = vars.keys().next() {
            anyhow::bail!("the checkpoint lacks tensor `{name}`");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn meta() -> Meta {
        Meta {
            hondo_version: "0".into(),
            arch: "small_cnn".into(),
            head: None,
            num_classes: 2,
            classes: vec!["a".into(), "b".into()],
            image_size: 32,
            crop_fraction: 0.875,
            mean: [0.5; 3],
            std: [0.5; 3],
            epoch: 3,
            batch: 0,
            step: 30,
            metrics: BTreeMap::from([("val_acc".into(), 0.75)]),
            last_epoch: Some(crate::metrics::EpochMetrics {
                epoch: 3,
                step: 30,
                train_loss: 0.5,
                train_acc: 0.8,
                val_loss: 0.6,
                val_acc: 0.75,
                lr: 0.01,
                images_per_sec: 120.0,
                seconds: 2.5,
                skipped: 0,
                val_loss_ema: None,
                val_acc_ema: None,
            }),
            best: Some((0.75, 3)),
            epochs_without_improvement: 0,
            world_size: 1,
            config: String::new(),
        }
    }

    #[test]
    fn round_trip_and_header_only_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(epoch_file(3));
        let model = vec![("classifier.weight".to_string(), head(&[1.0, 2.0]))];
        let opt = vec![("classifier.weight.step".to_string(), Tensor::from(4i64))];
        let ema = vec![("classifier.weight".to_string(), head(&[0.5, 1.0]))];
        atomic::write(&p, &to_bytes_with_ema(&meta(), &model, &opt, &ema).unwrap()).unwrap();
        let c = read(&p).unwrap();
        assert_eq!(c.meta, meta());
        assert_eq!(c.model[0].0, "classifier.weight");
        assert!(c.model[0].1.equal(&model[0].1));
        assert_eq!(c.optimizer[0].0, "classifier.weight.step");
        assert_eq!(c.model.len(), 1);
        assert_eq!(c.ema[0].0, "classifier.weight");
        assert!(c.ema[0].1.equal(&ema[0].1));
        assert_eq!(read_meta(&p).unwrap(), meta());
        assert_eq!(list_kept(dir.path(), "val_acc"), vec![(3, 0.75)]);
    }

    /// A `[2, 1]` classifier weight for [`meta`]'s two classes.
    fn head(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).view([2, 1])
    }

    /// Writes a checkpoint with [`meta`] changed by `edit` and a two-class head.
    fn crafted(dir: &Path, edit: impl FnOnce(&mut Meta)) -> PathBuf {
        let mut m = meta();
        edit(&mut m);
        let p = dir.join("crafted.safetensors");
        let model = vec![("classifier.weight".to_string(), head(&[1.0, 2.0]))];
        atomic::write(&p, &to_bytes(&m, &model, &[]).unwrap()).unwrap();
        p
    }

    #[test]
    fn lying_metadata_is_refused_naming_field_and_path() {
        let dir = tempfile::tempdir().unwrap();
        type Edit = fn(&mut Meta);
        let cases: &[(&str, Edit)] = &[
            ("num_classes", |m| m.num_classes = -3),
            ("num_classes", |m| m.num_classes = 0),
            ("num_classes", |m| m.num_classes = 5),
            ("classes", |m| m.classes = vec!["x".into(); 3]),
            ("image_size", |m| m.image_size = 0),
            ("image_size", |m| m.image_size = 100_000),
            ("crop_fraction", |m| m.crop_fraction = 0.0),
            ("crop_fraction", |m| m.crop_fraction = 1.5),
            ("std", |m| m.std[2] = 0.0),
            ("std", |m| m.std[0] = -1.0),
            ("epoch", |m| m.epoch = usize::MAX),
            ("batch", |m| m.batch = usize::MAX),
            ("step", |m| m.step = usize::MAX),
            ("best", |m| m.best = Some((0.5, usize::MAX))),
            ("best", |m| m.best = Some((0.5, 0))),
            ("epochs_without_improvement", |m| {
                m.epochs_without_improvement = usize::MAX
            }),
            ("last_epoch", |m| m.last_epoch.as_mut().unwrap().epoch = 2),
            ("last_epoch", |m| m.last_epoch.as_mut().unwrap().step = 31),
            ("world_size", |m| m.world_size = 0),
            ("world_size", |m| m.world_size = usize::MAX),
            // Any name can be a custom model's; an empty one is no name.
            ("arch", |m| m.arch = " ".into()),
        ];
        for (field, edit) in cases {
            let p = crafted(dir.path(), edit);
            let e = read(&p).unwrap_err();
            assert!(
                matches!(&e, CheckpointError::BadMeta { field: f, .. } if f == field),
                "{field}: {e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("crafted.safetensors") && msg.contains(&format!("`{field}`")),
                "{msg}"
            );
            // Fields checkable without the tensors are refused by the header-only read too.
            if !(*field == "num_classes" && msg.contains("classifier")) {
                assert!(read_meta(&p).is_err(), "{field}: read_meta accepted it");
            }
        }
        // JSON cannot hold a non-finite number (serde_json writes `null`), but a reader
        // must not rely on that.
        let mut m = meta();
        m.mean[1] = f64::NAN;
        let e = validate_meta(Path::new("m.safetensors"), &m).unwrap_err();
        assert!(e.to_string().contains("`mean` must be finite"), "{e}");
        let mut m = meta();
        m.best = Some((f64::INFINITY, 3));
        let e = validate_meta(Path::new("m.safetensors"), &m).unwrap_err();
        assert!(
            e.to_string().contains("`best` must be a finite value"),
            "{e}"
        );
        // The unchanged metadata reads.
        read(&crafted(dir.path(), |_| {})).unwrap();
        // A head that is not a matrix is refused too.
        let p = dir.path().join("flat.safetensors");
        let model = vec![(
            "classifier.weight".to_string(),
            Tensor::from_slice(&[1f32, 2.]),
        )];
        atomic::write(&p, &to_bytes(&meta(), &model, &[]).unwrap()).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("`num_classes`") && e.contains("[2]"), "{e}");
    }

    #[test]
    fn foreign_and_broken_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, tensor_io::serialize(&[], HashMap::new()).unwrap()).unwrap();
        assert!(read(&p)
            .unwrap_err()
            .to_string()
            .contains("not a hondo checkpoint"));
        std::fs::write(&p, b"\x05").unwrap();
        let e = read_meta(&p).unwrap_err().to_string();
        assert!(e.contains("x.safetensors"), "{e}");
    }
}
