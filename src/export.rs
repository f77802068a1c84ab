//! Export a checkpoint's model for use outside hondo.
//!
//! - [`Format::Safetensors`]: the model's tensors under torchvision's `state_dict` names
//!   (`num_batches_tracked` included, no optimizer state), with metadata (architecture,
//!   classes, input size, normalisation) as string key/values; a ResNet loads into
//!   `torchvision.models.resnetXX(num_classes=N)` with `strict=True`.
//! - [`Format::TorchScript`]: the model traced in eval mode. By default the traced
//!   function takes what a user has, `float32 [b, 3, h, w]` RGB in `[0, 1]` (torchvision's
//!   `ToTensor()` output), and normalises inside the graph with the checkpoint's mean and
//!   std; [`Input::Normalized`] traces the bare network (logits of normalised input).
//!   Resizing is not in the graph: feed `image_size` crops, as [`crate::predict`] does.
//! - [`Format::Ot`]: libtorch's tensor archive (`Tensor::save_multi`) with the same names,
//!   readable by `tch::nn::VarStore::load`.
//!
//! TorchScript and `.ot` files cannot hold string metadata: a `FILE.json` sidecar carries it.

use crate::checkpoint::{self, atomic, Meta};
use crate::tensor_io;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.safetensors`: the tensors under torchvision's names, with metadata inside.
    Safetensors,
    /// A TorchScript module traced in eval mode (`.pt`), loadable with `torch.jit.load`,
    /// plus a `FILE.json` metadata sidecar.
    TorchScript,
    /// libtorch's tensor archive (`.ot`), plus a `FILE.json` metadata sidecar.
    Ot,
}

impl Format {
    /// Parses `safetensors`, `torchscript` or `ot`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "safetensors" => Some(Format::Safetensors),
            "torchscript" => Some(Format::TorchScript),
            "ot" => Some(Format::Ot),
            _ => None,
        }
    }

    /// The format a file name implies: `.safetensors`, `.pt`/`.ts`/`.torchscript`, `.ot`.
    pub fn from_extension(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()? {
            "safetensors" => Some(Format::Safetensors),
            "pt" | "ts" | "torchscript" => Some(Format::TorchScript),
            "ot" => Some(Format::Ot),
            _ => None,
        }
    }
}

/// What a traced module takes as input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `float32 [b, 3, h, w]` RGB in `[0, 1]`; normalisation is part of the graph.
    Unit,
    /// Already normalised `float32 [b, 3, h, w]`: the bare network.
    Normalized,
}

impl Input {
    /// A one-line description of the input tensor, for messages and the sidecar.
    pub fn describe(self) -> &'static str {
        match self {
            Input::Unit => {
                "float32 [batch, 3, image_size, image_size] RGB in [0, 1]; normalised inside"
            }
            Input::Normalized => {
                "float32 [batch, 3, image_size, image_size] RGB, normalised ((x - mean) / std)"
            }
        }
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The file written (`out`).
    pub path: PathBuf,
    /// The metadata sidecar (TorchScript and `.ot`).
    pub sidecar: Option<PathBuf>,
    /// Tensors written: parameters and buffers (`num_batches_tracked` included).
    pub tensors: usize,
}

/// The metadata an export carries: string keys and values (JSON for lists).
pub fn metadata(meta: &Meta) -> HashMap<String, String> {
    let json = |v: serde_json::Value| v.to_string();
    HashMap::from([
        ("format".into(), "pt".into()),
        ("hondo.exported".into(), "model".into()),
        ("hondo_version".into(), env!("CARGO_PKG_VERSION").into()),
        ("arch".into(), meta.arch.clone()),
        ("num_classes".into(), meta.num_classes.to_string()),
        ("classes".into(), json(meta.classes.clone().into())),
        ("image_size".into(), meta.image_size.to_string()),
        ("crop_fraction".into(), meta.crop_fraction.to_string()),
        ("mean".into(), json(meta.mean.to_vec().into())),
        ("std".into(), json(meta.std.to_vec().into())),
    ])
}

/// Exports the checkpoint of a hondo model at `checkpoint` to `out` as `format` (`input`
/// matters only for TorchScript). Errors name the file at fault.
pub fn export(
    checkpoint: &Path,
    out: &Path,
    format: Format,
    input: Input,
) -> crate::Result<Exported> {
    export_impl(checkpoint, out, format, input, None).map_err(crate::Error::from)
}

/// [`export`] for any model: a custom model's checkpoint is rebuilt through `spec` for
/// TorchScript tracing (`None`: hondo's own architectures).
pub fn export_with(
    checkpoint: &Path,
    out: &Path,
    format: Format,
    input: Input,
    spec: Option<&crate::models::ModelSpec>,
) -> crate::Result<Exported> {
    export_impl(checkpoint, out, format, input, spec).map_err(crate::Error::from)
}

fn export_impl(
    checkpoint: &Path,
    out: &Path,
    format: Format,
    input: Input,
    spec: Option<&crate::models::ModelSpec>,
) -> anyhow::Result<Exported> {
    let write_err = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", out.display());
    match format {
        Format::Safetensors => {
            let ckpt = checkpoint::read(checkpoint)?;
            let bytes = tensor_io::serialize(&ckpt.model, metadata(&ckpt.meta))
                .map_err(|e| anyhow::anyhow!("{}: {e}", checkpoint.display()))?;
            atomic::write(out, &bytes).map_err(write_err)?;
            Ok(Exported {
                path: out.into(),
                sidecar: None,
                tensors: ckpt.model.len(),
            })
        }
        Format::Ot => {
            let ckpt = checkpoint::read(checkpoint)?;
            Tensor::save_multi(&ckpt.model, out)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            let sidecar = write_sidecar(out, &ckpt.meta, None)?;
            Ok(Exported {
                path: out.into(),
                sidecar: Some(sidecar),
                tensors: ckpt.model.len(),
            })
        }
        Format::TorchScript => {
            let restored = match spec {
                Some(spec) => checkpoint::restore_with(checkpoint, Device::Cpu, spec)?,
                None => checkpoint::restore(checkpoint, Device::Cpu)?,
            };
            let tensors = restored.vs.variables().len();
            let meta = restored.meta.clone();
            let module = trace(restored, input)?;
            module
                .save(out)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            let sidecar = write_sidecar(out, &meta, Some(input))?;
            Ok(Exported {
                path: out.into(),
                sidecar: Some(sidecar),
                tensors,
            })
        }
    }
}

/// Traces a restored model in eval mode. The VarStore is frozen first (tracing rejects
/// tensors that require grad) and stays frozen: it is consumed here, and a module saved
/// after unfreezing would not load (see TCH-NOTES, Export).
pub fn trace(mut restored: checkpoint::Restored, input: Input) -> anyhow::Result<tch::CModule> {
    restored.vs.freeze();
    let meta = &restored.meta;
    let size = meta.image_size as i64;
    let device = restored.vs.device();
    let constant = |v: [f64; 3]| {
        Tensor::from_slice(&v.map(|v| v as f32))
            .view([1, 3, 1, 1])
            .to_device(device)
    };
    let mean = constant(meta.mean);
    let inv_std = constant(meta.std.map(|v| 1.0 / v));
    let example = Tensor::rand([2, 3, size, size], (Kind::Float, device));
    let model = &restored.model;
    let module = tch::CModule::create_by_tracing("hondo", "forward", &[example], &mut |xs| {
        let x = match input {
            Input::Unit => (&xs[0] - &mean) * &inv_std,
            Input::Normalized => xs[0].shallow_clone(),
        };
        vec![model.forward_t(&x, false)]
    })?;
    Ok(module)
}

fn write_sidecar(out: &Path, meta: &Meta, input: Option<Input>) -> anyhow::Result<PathBuf> {
    let mut path = out.as_os_str().to_owned();
    path.push(".json");
    let path = PathBuf::from(path);
    let mut v = serde_json::json!({
        "hondo_version": env!("CARGO_PKG_VERSION"),
        "arch": meta.arch,
        "num_classes": meta.num_classes,
        "classes": meta.classes,
        "image_size": meta.image_size,
        "crop_fraction": meta.crop_fraction,
        "mean": meta.mean,
        "std": meta.std,
    });
    if let Some(i) = input {
        v["input"] = i.describe().into();
    }
    let text = serde_json::to_string_pretty(&v)? + "\n";
    atomic::write(&path, text.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_follow_extensions() {
        assert_eq!(Format::parse("ot"), Some(Format::Ot));
        assert_eq!(Format::parse("onnx"), None);
        assert_eq!(
            Format::from_extension(Path::new("m.pt")),
            Some(Format::TorchScript)
        );
        assert_eq!(
            Format::from_extension(Path::new("m.safetensors")),
            Some(Format::Safetensors)
        );
        assert_eq!(Format::from_extension(Path::new("m")), None);
    }
}
