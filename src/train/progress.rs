//! Progress reporting: a live bar (loss, accuracy, LR, images/s, ETA) on a terminal, plain
//! log lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// What the bar shows after a step; `batch` is 1-based within the epoch.
#[derive(Debug, Clone, Copy)]
pub struct StepReport {
    pub epoch: usize,
    pub step: usize,
    pub batch: usize,
    pub loss: f64,
    pub acc: f64,
    pub lr: f64,
    pub images_per_sec: f64,
}

pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    log_every: usize,
}

impl Progress {
    /// A bar when stderr is a terminal and not `quiet`.
    pub fn new(quiet: bool, log_every: usize) -> Progress {
        let tty = std::io::stderr().is_terminal() && !quiet;
        Progress {
            bar: tty.then(ProgressBar::hidden),
            quiet,
            log_every,
        }
    }

    pub fn start_epoch(&mut self, epoch: usize, epochs: usize, batches: usize, done: usize) {
        if self.bar.is_some() {
            let bar = ProgressBar::new(batches as u64).with_position(done as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
            self.bar = Some(bar);
        }
    }

    /// After a batch: `batch` is 1-based within the epoch.
    pub fn update(&self, s: &StepReport) {
        let StepReport {
            epoch,
            step,
            batch,
            loss,
            acc,
            lr,
            images_per_sec,
        } = *s;
        let msg = format!(
            "loss {loss:.4} acc {:.2}% lr {lr:.3e} {images_per_sec:.0} img/s",
            acc * 100.0
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(batch as u64);
                bar.set_message(msg);
            }
            None if !self.quiet && self.log_every > 0 && step % self.log_every == 0 => {
                eprintln!("epoch {} step {step} batch {batch}: {msg}", epoch + 1)
            }
            None => {}
        }
    }

    pub fn finish_epoch(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// A line that does not break the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) if !bar.is_finished() && !bar.is_hidden() => {
                bar.suspend(|| eprintln!("{line}"))
            }
            _ if self.quiet => {}
            _ => eprintln!("{line}"),
        }
    }

    /// A warning, shown even when quiet.
    pub fn warn(&self, line: &str) {
        match &self.bar {
            Some(bar) if !bar.is_finished() && !bar.is_hidden() => {
                bar.suspend(|| eprintln!("warning: {line}"))
            }
            _ => eprintln!("warning: {line}"),
        }
    }
}
