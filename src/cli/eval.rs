//! `hondo eval CHECKPOINT [--data DIR] [--json] [--png FILE]`.

use hondo::checkpoint;
use hondo::device::DeviceSpec;
use hondo::evaluate::{self, EvalOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint to evaluate.
    checkpoint: PathBuf,
    /// Image folder with one sub-folder per class (`DIR/<class>/<image>`); default: the
    /// validation split of the checkpoint's own config.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Where to write the confusion-matrix PNG (default: `confusion-matrix.png` beside the
    /// checkpoint).
    #[arg(long, value_name = "FILE")]
    png: Option<PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Loader threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    hondo::train::signals::StopSignal::install_exit_at_once()?;
    let device = DeviceSpec::parse(&a.device)
        .and_then(|d| d.resolve())
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let restored = checkpoint::restore(&a.checkpoint, device)?;
    let report = evaluate::run(
        &restored,
        &EvalOptions {
            data: a.data,
            batch_size: a.batch_size,
            workers: a.workers,
        },
    )?;
    let png = a.png.unwrap_or_else(|| {
        a.checkpoint
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("confusion-matrix.png")
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    hondo::plot::confusion_matrix(&report, &png)?;
    eprintln!("confusion matrix: {}", png.display());
    Ok(ExitCode::SUCCESS)
}
