//! `hondo predict CHECKPOINT IMAGE|DIR... [-k K] [--json]`.

use hondo::checkpoint;
use hondo::device::DeviceSpec;
use hondo::predict;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint to predict with.
    checkpoint: PathBuf,
    /// Image files, or folders whose image files are all read.
    #[arg(required = true, value_name = "IMAGE|DIR")]
    inputs: Vec<PathBuf>,
    /// Classes to show per image.
    #[arg(short, long, default_value_t = 5)]
    k: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Images per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    hondo::train::signals::StopSignal::install_exit_at_once()?;
    let device = DeviceSpec::parse(&a.device)
        .and_then(|d| d.resolve())
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    let restored = checkpoint::restore(&a.checkpoint, device)?;
    predict::check_finite(&restored.vs)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.checkpoint.display()))?;
    let files = predict::image_files(&a.inputs)?;
    let max_side = restored.config.data.max_image_side;
    let predictions = predict::predict(&restored, &files, a.k, a.batch_size, max_side)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&predictions)?);
    } else {
        print!("{}", predict::table(&predictions));
    }
    Ok(ExitCode::SUCCESS)
}
