//! `hondo train CONFIG [--set key=value]... [--device D] [--out DIR]`, or
//! `hondo train --resume RUN_DIR [--set ...]`.

use super::console::Console;
use anyhow::Context;
use hondo::config::{self, Override};
use hondo::observe::{MetricsLog, TrainingCurves};
use hondo::train::{signals::StopSignal, Outcome, Summary, Trainer};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file (TOML); with --resume, defaults to the run's own config.toml.
    #[arg(required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Override a key: `--set optimizer.lr=0.1` (the value is TOML; a bare word is a string).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
    /// Device: auto, cpu, cuda or cuda:N (overrides train.device).
    #[arg(long)]
    device: Option<String>,
    /// Run directory to create (default: a fresh directory under checkpoint.dir).
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Replace the contents of --out: only a hondo run directory (one with a config.toml)
    /// or an empty directory is cleared; anything else is refused.
    #[arg(long, requires = "out")]
    overwrite: bool,
    /// Start even when the estimated memory of a training step exceeds the machine's
    /// available memory.
    #[arg(long)]
    force: bool,
    /// Continue the run in this directory from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// Only warnings and the final summary.
    #[arg(long, short)]
    quiet: bool,
    /// Also print the summary as one JSON object on standard output (progress and messages
    /// stay on standard error); a failed run prints `{"outcome": "error", ...}`.
    #[arg(long)]
    json: bool,
    /// Data-parallel training in N local processes (1 to 1024), started by hondo itself as
    /// torchrun would; train.batch_size is per process.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=super::launch::MAX_NPROC as i64))]
    nproc: Option<u16>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    if let Some(n) = a.nproc.filter(|&n| n > 1) {
        return super::launch::run(n as usize, without_nproc(std::env::args_os().skip(1)));
    }
    let json = a.json;
    let result = run_inner(a);
    if let (true, Err(e)) = (json, &result) {
        // A run that could not start or failed: its summary says so.
        let error = hondo::error_chain(e.as_ref());
        println!(
            "{}",
            serde_json::json!({"outcome": "error", "exit_code": 1, "error": error})
        );
    }
    result
}

fn run_inner(a: Args) -> anyhow::Result<ExitCode> {
    let stop = StopSignal::install().context("installing signal handlers")?;
    let path = match (&a.config, &a.resume) {
        (Some(c), _) => c.clone(),
        (None, Some(dir)) => {
            let p = dir.join("config.toml");
            if !p.is_file() {
                anyhow::bail!(
                    "{} is not a hondo run directory: {} not found",
                    dir.display(),
                    p.display()
                );
            }
            p
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let mut overrides = a.set.clone();
    if let Some(d) = &a.device {
        overrides.push(
            format!("train.device={d}")
                .parse()
                .map_err(anyhow::Error::msg)?,
        );
    }
    let cfg = config::load(&path, &overrides)?;
    let console = Console::new(a.quiet, cfg.train.log_every);
    let mut trainer = Trainer::new(cfg)
        .stop_signal(stop)
        .observer(console)
        .observer(MetricsLog)
        .observer(TrainingCurves)
        .overwrite(a.overwrite)
        .force(a.force);
    if let Some(out) = a.out {
        trainer = trainer.out(out);
    }
    if let Some(dir) = a.resume {
        trainer = trainer.resume(dir);
    }
    let summary = trainer.run()?;
    if summary.rank > 0 {
        // Data-parallel: rank 0 reports the run.
        return Ok(exit_code(&summary));
    }
    if a.json {
        println!("{}", json_summary(&summary));
    }

    let best = summary
        .best
        .map(|(v, e)| {
            format!(
                "best {} {} (epoch {e})",
                summary.monitor,
                fmt_metric(&summary.monitor, v)
            )
        })
        .unwrap_or_else(|| "no finished epoch".into());
    let last = summary
        .last
        .as_ref()
        .map(|m| {
            format!(
                "; last val_acc {:.2}% val_loss {:.4}",
                m.val_acc * 100.0,
                m.val_loss
            )
        })
        .unwrap_or_default();
    let what = match summary.outcome {
        Outcome::Finished => "done",
        Outcome::EarlyStopped => "stopped early",
        Outcome::Interrupted(_) => "interrupted",
    };
    let resume = match summary.outcome {
        Outcome::Interrupted(_) => format!(
            "; resume with: hondo train --resume {}",
            summary.run_dir.display()
        ),
        _ => String::new(),
    };
    eprintln!(
        "{what}: {} epochs in {:.1}s; {best}{last}; run directory {}{resume}",
        summary.epochs_done,
        summary.seconds,
        summary.run_dir.display()
    );
    Ok(exit_code(&summary))
}

fn exit_code(summary: &Summary) -> ExitCode {
    match summary.outcome {
        Outcome::Interrupted(code) => ExitCode::from(code as u8),
        _ => ExitCode::SUCCESS,
    }
}

/// The command line for the ranks `--nproc` starts: the same, less `--nproc N`.
fn without_nproc(args: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match a.to_str() {
            Some("--nproc") => skip_value = true,
            Some(s) if s.starts_with("--nproc=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// The machine-readable summary of `--json`.
fn json_summary(s: &Summary) -> serde_json::Value {
    let (outcome, exit_code) = match s.outcome {
        Outcome::Finished => ("finished", 0),
        Outcome::EarlyStopped => ("early_stopped", 0),
        Outcome::Interrupted(code) => ("interrupted", code),
    };
    let file = |name: &str| {
        let p = s.run_dir.join(name);
        p.is_file().then(|| p.display().to_string())
    };
    serde_json::json!({
        "outcome": outcome,
        "exit_code": exit_code,
        "run_dir": s.run_dir.display().to_string(),
        "epochs_done": s.epochs_done,
        "seconds": s.seconds,
        "monitor": s.monitor,
        "best": s.best.map(|(value, epoch)| serde_json::json!({"value": value, "epoch": epoch})),
        "last": s.last,
        "checkpoints": {
            "last": file(hondo::checkpoint::LAST),
            "best": file(hondo::checkpoint::BEST),
        },
    })
}

fn fmt_metric(name: &str, v: f64) -> String {
    if name.ends_with("acc") {
        format!("{:.2}%", v * 100.0)
    } else {
        format!("{v:.4}")
    }
}
