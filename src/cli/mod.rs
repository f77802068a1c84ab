//! Command-line interface: one file per subcommand, each turning its arguments into one
//! library call.

mod config;
mod info;
mod train;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "hondo",
    version,
    about = "Train image classifiers from a TOML config, on libtorch"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model from a config file, or resume a run.
    Train(train::Args),
    /// Print the effective config (defaults and overrides applied).
    Config(config::Args),
    /// Versions of hondo, tch and libtorch; CUDA and cuDNN availability; threads.
    Info(info::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Config(a) => config::run(a),
        Command::Info(a) => info::run(a),
    }
}
