//! `hondo plot RUN_DIR`: training curves as a PNG in the run directory.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run directory (with `metrics.jsonl`).
    run_dir: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let curves = hondo::plot::curves(&a.run_dir)?;
    for note in &curves.notes {
        eprintln!("warning: {note}");
    }
    println!("{}", curves.path.display());
    Ok(ExitCode::SUCCESS)
}
