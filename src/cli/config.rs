//! `hondo config CONFIG [--set key=value]...`

use hondo::config::{self, Override};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file (TOML).
    config: PathBuf,
    /// Override a key: `--set optimizer.lr=0.1` (the value is TOML; a bare word is a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = config::load(&a.config, &a.set)?;
    print!("{}", cfg.to_toml());
    Ok(ExitCode::SUCCESS)
}
