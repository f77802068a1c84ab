//! `hondo weights list [--json]`: the pretrained weights in the torch hub and Hugging Face
//! caches that `model.pretrained` can name.

use hondo::weights::hub;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Cached weights usable as `model.pretrained`, with their files.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let Command::List { json } = a.command;
    let cached = hub::list();
    if json {
        let v: Vec<_> = cached
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "path": c.path, "bytes": c.bytes}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if cached.is_empty() {
        println!(
            "no usable weights in {} or {}",
            hub::torch_hub_checkpoints().display(),
            hub::hf_hub_cache().display()
        );
    }
    let width = cached.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &cached {
        println!(
            "{:width$}  {:>8.1} MB  {}",
            c.name,
            c.bytes as f64 / 1e6,
            c.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
