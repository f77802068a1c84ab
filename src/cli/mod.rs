//! Command-line interface: one file per subcommand, each turning its arguments into one
//! library call.

mod completions;
mod config;
mod console;
mod eval;
mod export;
mod info;
mod launch;
mod lr_find;
mod plot;
mod predict;
mod train;
mod weights;

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
    /// Export a checkpoint's model: safetensors (torchvision names), TorchScript or .ot.
    Export(export::Args),
    /// Loss, top-1/top-5, per-class precision and recall, confusion matrix.
    Eval(eval::Args),
    /// Top-k classes of image files.
    Predict(predict::Args),
    /// Training curves of a run as a PNG.
    Plot(plot::Args),
    /// Learning-rate range test: loss against an exponentially growing rate, a suggestion.
    LrFind(lr_find::Args),
    /// Pretrained weights in the torch hub and Hugging Face caches (`weights list`).
    Weights(weights::Args),
    /// Shell completions (bash, zsh, fish, elvish, powershell) on standard output.
    Completions(completions::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Train(a) => train::run(a),
        Command::Config(a) => config::run(a),
        Command::Info(a) => info::run(a),
        Command::Export(a) => export::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Completions(a) => completions::run(a),
        Command::Weights(a) => weights::run(a),
        Command::LrFind(a) => lr_find::run(a),
    }
}
