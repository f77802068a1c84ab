//! `hondo eval CHECKPOINT [--data DIR] [--json] [--png FILE]`.

use hondo::checkpoint;
use hondo::device::DeviceSpec;
use hondo::evaluate::{self, EvalOptions};
use std::io::Write;
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
    /// Images per batch (1 to 65536; refused when it would not fit in memory).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    batch_size: u64,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Loader threads (0: one per core; at most 256).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=256))]
    workers: u64,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    hondo::train::signals::StopSignal::install_exit_at_once()?;
    let device = DeviceSpec::parse(&a.device)
        .and_then(|d| d.resolve())
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let png = a.png.clone().unwrap_or_else(|| {
        a.checkpoint
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join("confusion-matrix.png")
    });
    // Before the evaluation: a PNG that cannot be written is known now.
    hondo::plot::check_png_output(&png, &[&a.checkpoint])?;
    let restored = checkpoint::restore(&a.checkpoint, device)?;
    hondo::predict::check_finite(&restored.vs)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.checkpoint.display()))?;
    let report = evaluate::run(
        &restored,
        &EvalOptions {
            data: a.data,
            batch_size: a.batch_size as usize,
            workers: a.workers as usize,
        },
    )?;
    let text = if a.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.to_string()
    };
    // A closed pipe or a full disk behind `>` is an error, not a panic in `print!`.
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .map_err(|e| anyhow::anyhow!("cannot write the report to standard output: {e}"))?;
    if a.json && report.confusion.is_empty() {
        eprintln!(
            "note: {} classes (over {}): no dense `confusion` matrix; `mistakes` lists every \
             off-diagonal count",
            report.classes.len(),
            evaluate::DENSE_CONFUSION_MAX
        );
    }
    hondo::plot::confusion_matrix(&report, &png)?;
    eprintln!("confusion matrix: {}", png.display());
    if report.shown_classes().len() < report.classes.len() {
        eprintln!(
            "note: the picture shows the {} classes with the most mistakes, of {}",
            evaluate::SHOWN_CLASSES,
            report.classes.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
