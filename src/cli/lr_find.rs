//! `hondo lr-find CONFIG [--set ...] [--start LR] [--end LR] [--steps N] [--png FILE]
//! [--json]`: the learning-rate range test; nothing but the PNG is written.

use hondo::config::{self, Override};
use hondo::train::{lr_find, LrFindOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file (TOML): its model, data and optimizer are tested.
    config: PathBuf,
    /// Override a key: `--set optimizer.name=adamw`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
    /// First learning rate.
    #[arg(long, default_value_t = 1e-7)]
    start: f64,
    /// Last learning rate.
    #[arg(long, default_value_t = 10.0)]
    end: f64,
    /// Steps from --start to --end (10 to 10000; fewer when the loss diverges).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// Stop once the smoothed loss exceeds this multiple of its best.
    #[arg(long, default_value_t = 4.0)]
    diverge: f64,
    /// Where to draw loss against learning rate.
    #[arg(long, value_name = "FILE", default_value = "lr-find.png")]
    png: PathBuf,
    /// Print the result (every step's rate and loss, the suggestion) as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    hondo::train::signals::StopSignal::install_exit_at_once()?;
    hondo::plot::check_png_output(&a.png, &[&a.config])?;
    let cfg = config::load(&a.config, &a.set)?;
    let opts = LrFindOptions {
        start: a.start,
        end: a.end,
        steps: a.steps,
        diverge: a.diverge,
    };
    let r = lr_find(cfg, None, &opts)?;
    hondo::plot::lr_find(&r, &a.png)?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    eprintln!(
        "suggested learning rate {:.3e} (steepest descent of the loss; {} steps, {}); plot {}",
        r.suggestion,
        r.lrs.len(),
        if r.diverged {
            "stopped when the loss diverged"
        } else {
            "reached --end"
        },
        a.png.display()
    );
    Ok(ExitCode::SUCCESS)
}
