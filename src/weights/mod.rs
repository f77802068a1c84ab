//! Foreign weights: read a name -> tensor map from a file and copy it into a model's
//! [`VarStore`], checking every name and shape first.
//!
//! Formats, chosen by extension:
//! - `.safetensors` (torchvision exports, timm's `model.safetensors` on the hub), with the
//!   header's `__metadata__`;
//! - `.pth`, `.pt`, `.bin`, `.tar`: `torch.save(state_dict)` files, zip or legacy, read by a
//!   whitelisting unpickler in Rust (`pickle.rs`): libtorch cannot read them (it rejects the
//!   `OrderedDict` `_metadata`), and a general unpickler would run code from the file;
//! - `.ot`: libtorch's archive format (`VarStore::save`).
//!
//! Checkpoints wrapped as `{"state_dict": ...}` or `{"model": ...}` are unwrapped and a
//! leading `module.` (DataParallel) is stripped from every name. Tensors under
//! `optimizer/` (the optimizer state in hondo's own checkpoints) are skipped, so a hondo
//! checkpoint loads as pretrained weights. Its moving average (`ema/<name>`, from
//! `train.ema_decay > 0`) is kept apart in [`TensorFile::ema`]; as timm does, a fine-tune
//! takes those averaged weights by default and the raw ones on request
//! (`model.pretrained_ema = false`).
//!
//! Every reader checks what a file claims against what it holds before allocating: the
//! unpickler bounds nesting and object counts, `.pth` storages and views are checked
//! against the bytes present, safetensors offsets against the file.
//!
//! [`load_into`] follows timm's `load_pretrained`: a classifier head whose shape differs
//! (another class count) is dropped and stays freshly initialised; any other missing,
//! unexpected or mis-shaped tensor fails a strict load and is reported by a lenient one.

pub mod hub;
mod pickle;
mod torch_file;

use crate::checkpoint::{EMA_PREFIX, OPTIMIZER_PREFIX};
use crate::file::{open_regular, read_regular, MAX_WEIGHTS_BYTES};
use crate::tensor_io;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::nn::VarStore;
use tch::{TchError, Tensor};
use thiserror::Error;

/// Errors reading a weights file or loading it into a model.
#[derive(Debug, Error)]
pub enum WeightsError {
    /// Weights named `torchvision:...` or `hf:...` are not in the cache, or fail its check.
    #[error(transparent)]
    Hub(#[from] hub::HubError),
    /// The file could not be opened or read.
    #[error("cannot read weights file {}: {source}", path.display())]
    Io {
        /// The weights file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The extension is none of `.safetensors`, `.pth`, `.pt`, `.bin`, `.tar`, `.ot`.
    #[error("{}: unknown weights format (expected .safetensors, .pth, .pt, .bin, .tar or .ot)", path.display())]
    UnknownFormat {
        /// The weights file.
        path: PathBuf,
    },
    /// The file's contents contradict its format or themselves (bad header, offsets, pickle).
    #[error("{}: malformed weights file: {reason}", path.display())]
    Malformed {
        /// The weights file.
        path: PathBuf,
        /// What is wrong, for the message.
        reason: String,
    },
    /// The pickle names a global outside the whitelist; nothing from the file was run.
    #[error(
        "{}: refusing to load: its pickle references the global `{global}`, which is not one of \
         the tensor-rebuilding globals a state dict needs (nothing from the file was run)",
        path.display()
    )]
    ForbiddenGlobal {
        /// The weights file.
        path: PathBuf,
        /// The refused global, as `module.name`.
        global: String,
    },
    /// libtorch failed to read a `.ot` archive.
    #[error("{}: libtorch cannot read it: {source}", path.display())]
    Torch {
        /// The weights file.
        path: PathBuf,
        /// libtorch's error.
        #[source]
        source: TchError,
    },
    /// Two tensors have the same name once `module.` is stripped.
    #[error("tensor {name} appears twice in the weights (after stripping `module.`)")]
    DuplicateTensor {
        /// The repeated name.
        name: String,
    },
    /// Strict load: a tensor's shape differs from the model variable of that name (the
    /// first such, in name order).
    #[error("shape mismatch for {name}: the model has {expected:?}, the weights have {found:?}")]
    ShapeMismatch {
        /// The variable's name.
        name: String,
        /// The model variable's shape.
        expected: Vec<i64>,
        /// The file tensor's shape.
        found: Vec<i64>,
    },
    /// Strict load: model variables with no tensor in the weights.
    #[error("{} model tensor(s) missing from the weights: {}", names.len(), short_list(names))]
    Missing {
        /// The missing variables' names, sorted.
        names: Vec<String>,
    },
    /// Strict load: tensors in the weights that name no model variable.
    #[error("{} tensor(s) in the weights match nothing in the model: {}", names.len(), short_list(names))]
    Unexpected {
        /// The unmatched tensors' names, sorted.
        names: Vec<String>,
    },
    /// Converting a tensor to its variable's dtype and device, or copying it in, failed.
    #[error("copying {name} into the model failed: {source}")]
    Copy {
        /// The variable's name.
        name: String,
        /// libtorch's error.
        #[source]
        source: TchError,
    },
}

/// How a file was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// safetensors (`.safetensors`).
    Safetensors,
    /// `torch.save`, zip format (PyTorch >= 1.6).
    TorchZip,
    /// `torch.save`, legacy format.
    TorchLegacy,
    /// libtorch's archive format (`.ot`).
    Libtorch,
}

/// Tensors read from a weights file.
#[derive(Debug)]
pub struct TensorFile {
    /// Names (wrapper and `module.` stripped) and CPU tensors, in file order.
    pub tensors: Vec<(String, Tensor)>,
    /// The moving average of the weights in a hondo checkpoint (`ema/<name>`, prefix
    /// stripped); empty for other files.
    pub ema: Vec<(String, Tensor)>,
    /// The safetensors `__metadata__`; empty for other formats.
    pub metadata: HashMap<String, String>,
    /// The format the file was read as.
    pub format: Format,
}

/// Reads every tensor of a weights file, choosing the format by extension.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<TensorFile, WeightsError> {
    let path = path.as_ref();
    let io = |reason: String| WeightsError::Io {
        path: path.to_owned(),
        source: crate::file::io_error(reason),
    };
    match extension(path).as_deref() {
        Some("safetensors") => {
            let bytes = read_regular(path, MAX_WEIGHTS_BYTES).map_err(io)?;
            read_bytes(path, &bytes)
        }
        Some("pth" | "pt" | "bin" | "tar") => {
            let (file, _) = open_regular(path, MAX_WEIGHTS_BYTES).map_err(io)?;
            read_torch(path, std::io::BufReader::new(file))
        }
        Some("ot") => {
            // libtorch reads the file itself: check it is a regular file of bounded size
            // whose zip records hold every byte they claim, before it allocates anything.
            let (file, len) = open_regular(path, MAX_WEIGHTS_BYTES).map_err(io)?;
            check_ot_archive(file, len).map_err(|reason| WeightsError::Malformed {
                path: path.to_owned(),
                reason,
            })?;
            let tensors = Tensor::load_multi(path).map_err(|source| WeightsError::Torch {
                path: path.to_owned(),
                source,
            })?;
            // libtorch rebuilds each tensor from the archive's offset and strides as given.
            if let Some((name, t)) = tensors
                .iter()
                .find(|(_, t)| !crate::shim::view_fits_storage(t))
            {
                return Err(WeightsError::Malformed {
                    path: path.to_owned(),
                    reason: format!(
                        "tensor `{name}` (shape {:?}, strides {:?}) reaches outside its \
                         storage",
                        t.size(),
                        t.stride()
                    ),
                });
            }
            Ok(finish(tensors, HashMap::new(), Format::Libtorch))
        }
        _ => Err(WeightsError::UnknownFormat {
            path: path.to_owned(),
        }),
    }
}

/// Largest uncompressed size of a compressed `.ot` record (libtorch deflates only its small
/// `code/` and debug records) and of all of them together.
const MAX_OT_INFLATED: u64 = 64 << 20;

/// libtorch's tensor archive (`.ot`, what `Tensor::save_multi` writes) is a zip whose
/// records libtorch reads whole into memory, allocating what each record's header claims.
/// Stored records (the tensor data) must hold every byte they claim, and together fit in
/// the file; compressed ones (code, debug information) may inflate to at most 64 MiB in
/// all.
fn check_ot_archive(file: std::fs::File, len: u64) -> Result<(), String> {
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| format!("not a libtorch tensor archive (zip): {e}"))?;
    let (mut stored, mut inflated) = (0u64, 0u64);
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| format!("unreadable zip record {i}: {e}"))?;
        if entry.compression() == zip::CompressionMethod::Stored {
            if entry.size() != entry.compressed_size() {
                return Err(format!(
                    "record `{}` claims {} bytes but holds {}",
                    entry.name(),
                    entry.size(),
                    entry.compressed_size()
                ));
            }
            stored = stored.saturating_add(entry.size());
        } else {
            inflated = inflated.saturating_add(entry.size());
            if inflated > MAX_OT_INFLATED {
                return Err(format!(
                    "compressed record `{}` would inflate past {} MiB ({} bytes claimed); \
                     libtorch compresses only small records",
                    entry.name(),
                    MAX_OT_INFLATED >> 20,
                    entry.size()
                ));
            }
        }
    }
    if stored > len {
        return Err(format!(
            "records claim {stored} bytes in a file of {len} bytes"
        ));
    }
    Ok(())
}

/// [`read_tensors`] over bytes already in memory, for `.safetensors` and `torch.save`
/// files (`.ot` needs a path: libtorch reads it); `path` chooses the format and names the
/// file in errors.
pub fn read_bytes(path: &Path, bytes: &[u8]) -> Result<TensorFile, WeightsError> {
    match extension(path).as_deref() {
        Some("safetensors") => {
            let (tensors, metadata) =
                tensor_io::deserialize(bytes).map_err(|e| WeightsError::Malformed {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            Ok(finish(tensors, metadata, Format::Safetensors))
        }
        Some("pth" | "pt" | "bin" | "tar") => read_torch(path, std::io::Cursor::new(bytes)),
        _ => Err(WeightsError::UnknownFormat {
            path: path.to_owned(),
        }),
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
}

fn read_torch(
    path: &Path,
    r: impl std::io::Read + std::io::Seek,
) -> Result<TensorFile, WeightsError> {
    let (format, tensors) = torch_file::read(r).map_err(|e| match e {
        torch_file::ReadError::Malformed(reason) => WeightsError::Malformed {
            path: path.to_owned(),
            reason,
        },
        torch_file::ReadError::Forbidden(global) => WeightsError::ForbiddenGlobal {
            path: path.to_owned(),
            global,
        },
    })?;
    let format = match format {
        torch_file::TorchFormat::Zip => Format::TorchZip,
        torch_file::TorchFormat::Legacy => Format::TorchLegacy,
    };
    Ok(finish(tensors, HashMap::new(), format))
}

/// Drops optimizer state, sets EMA weights apart, strips `module.`.
fn finish(
    tensors: Vec<(String, Tensor)>,
    metadata: HashMap<String, String>,
    format: Format,
) -> TensorFile {
    let mut model = Vec::new();
    let mut ema = Vec::new();
    for (name, t) in tensors {
        if name.starts_with(OPTIMIZER_PREFIX) {
            continue;
        }
        match name.strip_prefix(EMA_PREFIX) {
            Some(rest) => ema.push((strip_module(rest.to_owned()), t)),
            None => model.push((strip_module(name), t)),
        }
    }
    TensorFile {
        tensors: model,
        ema,
        metadata,
        format,
    }
}

/// `module.conv1.weight` (saved from `nn.DataParallel`) -> `conv1.weight`.
fn strip_module(name: String) -> String {
    match name.strip_prefix("module.") {
        Some(rest) => rest.to_owned(),
        None => name,
    }
}

/// What [`load_into`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Model variables copied from the weights, sorted.
    pub loaded: Vec<String>,
    /// Classifier variables left freshly initialised because the head's shape differs.
    pub head_reinitialised: Vec<String>,
    /// Model variables absent from the weights (lenient load only).
    pub missing: Vec<String>,
    /// Weights matching no model variable (lenient load only).
    pub unexpected: Vec<String>,
    /// Variables whose shape differs: name, the model's shape, the file's shape (lenient
    /// load only).
    pub mismatched: Vec<(String, Vec<i64>, Vec<i64>)>,
    /// Which weights of a file with a moving average were taken: `Some(true)` the EMA
    /// weights, `Some(false)` the raw ones; `None` when the file has no EMA weights.
    pub ema: Option<bool>,
}

impl LoadReport {
    /// One line for the CLI, e.g. `loaded 120 tensors; re-initialised head: fc.bias, fc.weight`.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("loaded {} tensors", self.loaded.len())];
        if !self.head_reinitialised.is_empty() {
            parts.push(format!(
                "re-initialised head: {}",
                short_list(&self.head_reinitialised)
            ));
        }
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} missing: {}",
                self.missing.len(),
                short_list(&self.missing)
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "{} unexpected: {}",
                self.unexpected.len(),
                short_list(&self.unexpected)
            ));
        }
        if !self.mismatched.is_empty() {
            let names: Vec<String> = self
                .mismatched
                .iter()
                .map(|(n, m, f)| format!("{n} (model {m:?}, file {f:?})"))
                .collect();
            parts.push(format!(
                "{} mis-shaped: {}",
                names.len(),
                short_list(&names)
            ));
        }
        match self.ema {
            Some(true) => parts.push(
                "the checkpoint's EMA weights (model.pretrained_ema = false takes the raw ones)"
                    .into(),
            ),
            Some(false) => parts.push(
                "the checkpoint's raw weights, not its EMA weights (model.pretrained_ema = false)"
                    .into(),
            ),
            None => {}
        }
        parts.join("; ")
    }
}

/// `a, b, c` or `a, b, c, ... (+7 more)`.
fn short_list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", ... (+{} more)", names.len() - SHOWN));
    }
    s
}

/// BatchNorm's batch counter: copied when both sides have it, never required.
fn is_batch_counter(name: &str) -> bool {
    name == "num_batches_tracked" || name.ends_with(".num_batches_tracked")
}

/// Copies `tensors` into the variables of `vs` with the same names.
///
/// Every shape is checked before anything is copied. Values are converted to each
/// variable's dtype and device (a bf16 file loads into an f32 model as f32). When a
/// variable under `classifier_prefix` (e.g. `fc`; empty for none) has another shape in the
/// file, the whole head is skipped and listed in `head_reinitialised`. Any other missing,
/// unexpected or mis-shaped tensor is an error when `strict`, and listed in the report
/// otherwise. `num_batches_tracked` is optional on both sides.
pub fn load_into(
    vs: &VarStore,
    tensors: &[(String, Tensor)],
    classifier_prefix: &str,
    strict: bool,
) -> Result<LoadReport, WeightsError> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut file: BTreeMap<&str, &Tensor> = BTreeMap::new();
    for (name, t) in tensors {
        if file.insert(name.as_str(), t).is_some() {
            return Err(WeightsError::DuplicateTensor { name: name.clone() });
        }
    }
    let head_prefix = format!("{classifier_prefix}.");
    let is_head = |n: &str| {
        !classifier_prefix.is_empty() && (n == classifier_prefix || n.starts_with(&head_prefix))
    };
    let head_differs = vars
        .iter()
        .any(|(n, v)| is_head(n) && file.get(n.as_str()).is_some_and(|t| t.size() != v.size()));

    let mut report = LoadReport::default();
    let mut copies: Vec<(&str, &Tensor, &Tensor)> = Vec::new();
    for (name, var) in &vars {
        if head_differs && is_head(name) {
            report.head_reinitialised.push(name.clone());
            continue;
        }
        match file.get(name.as_str()) {
            None if is_batch_counter(name) => {}
            None => report.missing.push(name.clone()),
            Some(t) if t.size() == var.size() => copies.push((name, var, t)),
            // An old counter of another shape is not worth failing over.
            Some(_) if is_batch_counter(name) => {}
            Some(t) => report.mismatched.push((name.clone(), var.size(), t.size())),
        }
    }
    report.unexpected = file
        .keys()
        .filter(|n| {
            !(vars.contains_key(**n) || is_batch_counter(n) || (head_differs && is_head(n)))
        })
        .map(|n| n.to_string())
        .collect();

    if strict {
        if let Some((name, expected, found)) = report.mismatched.first() {
            return Err(WeightsError::ShapeMismatch {
                name: name.clone(),
                expected: expected.clone(),
                found: found.clone(),
            });
        }
        if !report.missing.is_empty() {
            return Err(WeightsError::Missing {
                names: report.missing,
            });
        }
        if !report.unexpected.is_empty() {
            return Err(WeightsError::Unexpected {
                names: report.unexpected,
            });
        }
    }

    tch::no_grad(|| -> Result<(), WeightsError> {
        for (name, var, src) in &copies {
            let copy_err = |source| WeightsError::Copy {
                name: name.to_string(),
                source,
            };
            let src = src
                .f_to_kind(var.kind())
                .and_then(|s| s.f_to_device(var.device()))
                .map_err(copy_err)?;
            var.shallow_clone().f_copy_(&src).map_err(copy_err)?;
        }
        Ok(())
    })?;
    report.loaded = copies.iter().map(|(n, _, _)| n.to_string()).collect();
    Ok(report)
}

/// Reads a weights file ([`read_tensors`]) and loads it into `vs` ([`load_into`]); a
/// file with EMA weights loads those ([`load_pretrained_ema`] chooses).
pub fn load_pretrained(
    vs: &VarStore,
    path: impl AsRef<Path>,
    classifier_prefix: &str,
    strict: bool,
) -> Result<LoadReport, WeightsError> {
    load_pretrained_ema(vs, path, classifier_prefix, strict, true)
}

/// [`load_pretrained`], taking a file's EMA weights when `use_ema` and it has them, its
/// raw weights otherwise; the report says which.
pub fn load_pretrained_ema(
    vs: &VarStore,
    path: impl AsRef<Path>,
    classifier_prefix: &str,
    strict: bool,
    use_ema: bool,
) -> Result<LoadReport, WeightsError> {
    let file = read_tensors(path)?;
    let has_ema = !file.ema.is_empty();
    let tensors = if use_ema && has_ema {
        &file.ema
    } else {
        &file.tensors
    };
    let mut report = load_into(vs, tensors, classifier_prefix, strict)?;
    report.ema = has_ema.then_some(use_ema);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Init;
    use tch::{Device, Kind};

    /// A body (`a.weight` [2, 3], a BN counter) and a head `fc` with `classes` outputs.
    fn model(classes: i64) -> VarStore {
        let vs = VarStore::new(Device::Cpu);
        let p = vs.root();
        let _ = p.sub("a").var("weight", &[2, 3], Init::Const(0.0));
        let _ = p.sub("bn").add(
            "num_batches_tracked",
            Tensor::zeros([], (Kind::Int64, Device::Cpu)),
            false,
        );
        let _ = p.sub("fc").var("weight", &[classes, 3], Init::Const(0.0));
        let _ = p.sub("fc").var("bias", &[classes], Init::Const(0.0));
        vs
    }

    fn weights(classes: i64) -> Vec<(String, Tensor)> {
        vec![
            (
                "a.weight".into(),
                Tensor::arange(6, (Kind::Float, Device::Cpu)).view([2, 3]),
            ),
            (
                "fc.weight".into(),
                Tensor::ones([classes, 3], (Kind::Float, Device::Cpu)),
            ),
            (
                "fc.bias".into(),
                Tensor::ones([classes], (Kind::Float, Device::Cpu)),
            ),
        ]
    }

    fn var(vs: &VarStore, name: &str) -> Tensor {
        vs.variables()[name].shallow_clone()
    }

    #[test]
    fn loads_matching_weights_and_tolerates_missing_counter() {
        let vs = model(4);
        let r = load_into(&vs, &weights(4), "fc", true).unwrap();
        assert_eq!(r.loaded, ["a.weight", "fc.bias", "fc.weight"]);
        assert!(r.missing.is_empty() && r.unexpected.is_empty() && r.head_reinitialised.is_empty());
        assert!(var(&vs, "a.weight").equal(&weights(4)[0].1));
        assert!(var(&vs, "fc.bias").equal(&Tensor::ones([4], (Kind::Float, Device::Cpu))));
        assert!(
            var(&vs, "a.weight").requires_grad(),
            "copy must not detach the variable"
        );
        assert_eq!(r.summary(), "loaded 3 tensors");
    }

    #[test]
    fn counter_is_copied_when_present_and_ignored_when_foreign() {
        let vs = model(4);
        let mut w = weights(4);
        w.push(("bn.num_batches_tracked".into(), Tensor::from(17i64)));
        w.push(("other.num_batches_tracked".into(), Tensor::from(3i64)));
        let r = load_into(&vs, &w, "fc", true).unwrap();
        assert!(r.loaded.contains(&"bn.num_batches_tracked".to_string()));
        assert_eq!(var(&vs, "bn.num_batches_tracked").int64_value(&[]), 17);
    }

    #[test]
    fn other_head_shape_is_reinitialised() {
        let vs = model(10);
        let r = load_into(&vs, &weights(4), "fc", true).unwrap();
        assert_eq!(r.head_reinitialised, ["fc.bias", "fc.weight"]);
        assert_eq!(r.loaded, ["a.weight"]);
        assert!(r.unexpected.is_empty());
        assert_eq!(
            var(&vs, "fc.bias").abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        assert!(
            r.summary()
                .contains("re-initialised head: fc.bias, fc.weight"),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn strict_errors_name_tensor_and_shapes_and_copy_nothing() {
        let vs = model(4);
        let mut w = weights(4);
        w[0].1 = Tensor::ones([3, 2], (Kind::Float, Device::Cpu));
        let e = load_into(&vs, &w, "fc", true).unwrap_err();
        assert!(
            matches!(&e, WeightsError::ShapeMismatch { name, expected, found }
            if name == "a.weight" && expected == &[2, 3] && found == &[3, 2])
        );
        assert_eq!(
            e.to_string(),
            "shape mismatch for a.weight: the model has [2, 3], the weights have [3, 2]"
        );
        assert_eq!(
            var(&vs, "fc.bias").abs().sum(Kind::Float).double_value(&[]),
            0.0
        );

        let e = load_into(&vs, &weights(4)[1..], "fc", true).unwrap_err();
        assert!(
            matches!(&e, WeightsError::Missing { names } if names == &["a.weight"]),
            "{e}"
        );
        let mut w = weights(4);
        w.push(("extra".into(), Tensor::from(1.0)));
        let e = load_into(&vs, &w, "fc", true).unwrap_err();
        assert!(
            matches!(&e, WeightsError::Unexpected { names } if names == &["extra"]),
            "{e}"
        );
    }

    #[test]
    fn lenient_load_lists_what_it_skipped() {
        let vs = model(4);
        let mut w = weights(4);
        w[0].1 = Tensor::ones([6], (Kind::Float, Device::Cpu));
        w.push(("extra".into(), Tensor::from(1.0)));
        let _ = w.remove(2); // fc.bias
        let r = load_into(&vs, &w, "fc", false).unwrap();
        assert_eq!(r.loaded, ["fc.weight"]);
        assert_eq!(r.missing, ["fc.bias"]);
        assert_eq!(r.unexpected, ["extra"]);
        assert_eq!(
            r.mismatched,
            [("a.weight".to_string(), vec![2, 3], vec![6])]
        );
        assert_eq!(
            r.summary(),
            "loaded 1 tensors; 1 missing: fc.bias; 1 unexpected: extra; 1 mis-shaped: a.weight (model [2, 3], file [6])"
        );
    }

    #[test]
    fn converts_to_the_variable_dtype_and_rejects_duplicates() {
        let vs = model(4);
        let mut w = weights(4);
        w[0].1 = w[0].1.to_kind(Kind::BFloat16);
        load_into(&vs, &w, "fc", true).unwrap();
        assert_eq!(var(&vs, "a.weight").kind(), Kind::Float);
        assert!(var(&vs, "a.weight").equal(&weights(4)[0].1));
        let dup = (w[0].0.clone(), w[0].1.shallow_clone());
        w.push(dup);
        let e = load_into(&vs, &w, "fc", true).unwrap_err();
        assert!(
            matches!(&e, WeightsError::DuplicateTensor { name } if name == "a.weight"),
            "{e}"
        );
    }

    #[test]
    fn unknown_extension_and_missing_file() {
        let e = read_tensors("weights.h5").unwrap_err();
        assert!(matches!(e, WeightsError::UnknownFormat { .. }));
        let e = read_tensors("/nonexistent/w.pth").unwrap_err();
        assert!(matches!(e, WeightsError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/w.pth"), "{e}");
        let e = read_tensors("/nonexistent/w.ot").unwrap_err();
        assert!(matches!(e, WeightsError::Io { .. }));
    }

    #[test]
    fn ot_archives_load_and_lying_ones_are_refused_before_libtorch_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.ot");
        Tensor::save_multi(&weights(4), &good).unwrap();
        let file = read_tensors(&good).unwrap();
        assert_eq!(file.format, Format::Libtorch);
        assert_eq!(file.tensors.len(), 3);
        // A record libtorch would inflate to whatever its header claims.
        let deflated = dir.path().join("deflated.ot");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&deflated).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("archive/data/0", opts).unwrap();
        // 128 MiB of zeros deflate to a few hundred KiB.
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..128 {
            std::io::Write::write_all(&mut zip, &zeros).unwrap();
        }
        zip.finish().unwrap();
        let err = read_tensors(&deflated).unwrap_err().to_string();
        assert!(
            err.contains("deflated.ot") && err.contains("inflate past 64 MiB"),
            "{err}"
        );
        let junk = dir.path().join("junk.ot");
        std::fs::write(&junk, b"not a zip at all").unwrap();
        let err = read_tensors(&junk).unwrap_err().to_string();
        assert!(err.contains("junk.ot") && err.contains("zip"), "{err}");
    }

    #[test]
    fn hondo_checkpoints_load_without_their_optimizer_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.safetensors");
        let mut w = weights(4);
        w.push((
            "optimizer/a.weight.momentum_buffer".into(),
            Tensor::ones([2, 3], (Kind::Float, Device::Cpu)),
        ));
        w.push(("optimizer/a.weight.step".into(), Tensor::from(3i64)));
        let bytes = tensor_io::serialize(&w, HashMap::new()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let file = read_tensors(&path).unwrap();
        let names: Vec<&str> = file.tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a.weight", "fc.bias", "fc.weight"]);
        let vs = model(4);
        let r = load_pretrained(&vs, &path, "fc", true).unwrap();
        assert_eq!(r.loaded.len(), 3);
    }

    #[test]
    fn ema_weights_are_set_apart_and_taken_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ema.safetensors");
        let mut w = weights(4);
        let ema: Vec<(String, Tensor)> = weights(4)
            .into_iter()
            .map(|(n, t)| (format!("ema/{n}"), t * 0.5))
            .collect();
        w.extend(ema);
        std::fs::write(&path, tensor_io::serialize(&w, HashMap::new()).unwrap()).unwrap();
        let file = read_tensors(&path).unwrap();
        assert_eq!(file.tensors.len(), 3);
        assert_eq!(file.ema.len(), 3);
        assert_eq!(file.ema[0].0, "a.weight");
        let vs = model(4);
        let r = load_pretrained(&vs, &path, "fc", true).unwrap();
        assert_eq!(r.ema, Some(true));
        assert!(var(&vs, "a.weight").equal(&(&weights(4)[0].1 * 0.5)));
        assert!(r.summary().contains("EMA weights"), "{}", r.summary());
        let vs = model(4);
        let r = load_pretrained_ema(&vs, &path, "fc", true, false).unwrap();
        assert_eq!(r.ema, Some(false));
        assert!(var(&vs, "a.weight").equal(&weights(4)[0].1));
        assert!(r.summary().contains("raw weights"), "{}", r.summary());
        // Without EMA weights the report says nothing about them.
        let r = load_into(&model(4), &weights(4), "fc", true).unwrap();
        assert_eq!(r.ema, None);
    }

    #[test]
    fn strips_data_parallel_prefix() {
        assert_eq!(strip_module("module.fc.weight".into()), "fc.weight");
        assert_eq!(strip_module("fc.weight".into()), "fc.weight");
    }
}
