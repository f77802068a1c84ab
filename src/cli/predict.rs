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
    /// Classes to show per image (1 to 1000; at most the model's classes are shown).
    #[arg(short, long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    k: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Images per batch (1 to 65536; refused when it would not fit in memory).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    batch_size: u64,
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
    let predictions = predict::predict(
        &restored,
        &files,
        a.k as usize,
        a.batch_size as usize,
        max_side,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&predictions)?);
    } else {
        print!("{}", predict::table(&predictions));
    }
    Ok(ExitCode::SUCCESS)
}
