//! `hondo plot RUN_DIR`: training curves as a PNG in the run directory.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run directory (with `metrics.jsonl`).
    run_dir: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let path = hondo::plot::training_curves(&a.run_dir)?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
