//! `hondo export CHECKPOINT --format safetensors|torchscript|ot|onnx --out FILE [--raw]`.

use hondo::export::{self, Format, Input};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    /// Model tensors under torchvision's names, with metadata.
    Safetensors,
    /// The model traced in eval mode (TorchScript), for `torch.jit.load` or `tch::CModule`.
    Torchscript,
    /// libtorch's tensor archive, for `tch::nn::VarStore::load`.
    Ot,
    /// An ONNX graph (opset 17) for onnxruntime and other ONNX runtimes.
    Onnx,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint to export (a `.safetensors` file written by `hondo train`).
    checkpoint: PathBuf,
    /// Output format (default: from the --out extension: .safetensors, .pt, .ot).
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
    /// TorchScript and ONNX: the bare network (input already normalised) instead of taking
    /// RGB in [0, 1] and normalising inside.
    #[arg(long)]
    raw: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let format = match a.format {
        Some(FormatArg::Safetensors) => Format::Safetensors,
        Some(FormatArg::Torchscript) => Format::TorchScript,
        Some(FormatArg::Ot) => Format::Ot,
        Some(FormatArg::Onnx) => Format::Onnx,
        None => Format::from_extension(&a.out).ok_or_else(|| {
            anyhow::anyhow!(
                "cannot tell the format from {}: pass --format safetensors, torchscript, ot or onnx",
                a.out.display()
            )
        })?,
    };
    if a.raw && !matches!(format, Format::TorchScript | Format::Onnx) {
        anyhow::bail!("--raw applies to --format torchscript and onnx only");
    }
    let input = if a.raw {
        Input::Normalized
    } else {
        Input::Unit
    };
    let done = export::export(&a.checkpoint, &a.out, format, input)?;
    eprintln!(
        "wrote {} ({} tensors{})",
        done.path.display(),
        done.tensors,
        done.sidecar
            .map(|s| format!("; metadata in {}", s.display()))
            .unwrap_or_default()
    );
    if matches!(format, Format::TorchScript | Format::Onnx) {
        eprintln!("input: {}", input.describe());
    }
    Ok(ExitCode::SUCCESS)
}
