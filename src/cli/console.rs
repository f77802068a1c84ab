//! The terminal's view of a training run: an [`Observer`] that draws a live bar (loss,
//! accuracy, LR, images/s, ETA) on a terminal, or plain log lines every `log_every` steps
//! otherwise, and prints the epoch lines, messages and warnings. Colours only on a colour
//! terminal, never under `NO_COLOR` (or `CLICOLOR=0`).

use hondo::observe::{EpochEnd, EpochStart, Observer, ObserverResult, RunInfo, StepReport};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Console {
    bar: Option<ProgressBar>,
    quiet: bool,
    log_every: usize,
}

impl Console {
    /// A bar when stderr is a terminal and not `quiet`.
    pub fn new(quiet: bool, log_every: usize) -> Console {
        let tty = std::io::stderr().is_terminal() && !quiet;
        Console {
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
                    "epoch {prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} eta {eta}",
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
        let prefix = console::style("warning:").yellow().bold().for_stderr();
        match &self.bar {
            Some(bar) if !bar.is_finished() && !bar.is_hidden() => {
                bar.suspend(|| eprintln!("{prefix} {line}"))
            }
            _ => eprintln!("{prefix} {line}"),
        }
    }
}

impl Observer for Console {
    fn run_started(&mut self, r: &RunInfo<'_>) -> ObserverResult {
        let resumed = match r.resumed_at {
            Some((e, b)) => format!(", resumed at epoch {} batch {b}", e + 1),
            None => String::new(),
        };
        let dp = match r.data_parallel {
            Some(d) => format!(
                ", data-parallel over {} processes ({}), global batch {}",
                d.world_size, d.backend, d.global_batch
            ),
            None => String::new(),
        };
        self.println(&format!(
            "run {}: {} on {} ({} classes, {} train / {} val images), {} epochs of {} steps, device {}, {}{}{dp}{resumed}",
            r.run_dir.display(),
            r.model,
            r.data,
            r.classes.len(),
            r.train_images,
            r.val_images,
            r.epochs,
            r.steps_per_epoch,
            r.device,
            r.precision,
            match (r.channels_last, r.layout_reason.starts_with("auto")) {
                (true, false) => ", channels-last".to_string(),
                (false, false) => String::new(),
                (true, true) => format!(", channels-last ({})", r.layout_reason),
                (false, true) => format!(", NCHW ({})", r.layout_reason),
            },
        ));
        Ok(())
    }

    fn epoch_started(&mut self, s: &EpochStart) -> ObserverResult {
        self.start_epoch(s.epoch, s.epochs, s.batches, s.done);
        Ok(())
    }

    fn step(&mut self, s: &StepReport) -> ObserverResult {
        self.update(s);
        Ok(())
    }

    fn epoch_ended(&mut self, end: &EpochEnd<'_>) -> ObserverResult {
        self.finish_epoch();
        let m = end.metrics;
        self.println(&format!(
            "epoch {}/{}: train loss {:.4} acc {:.2}% | val loss {:.4} acc {:.2}%{} | lr {:.3e} | {:.0} img/s | {:.1}s{}{}",
            m.epoch,
            end.epochs,
            m.train_loss,
            m.train_acc * 100.0,
            m.val_loss,
            m.val_acc * 100.0,
            match m.val_acc_ema {
                Some(a) => format!(" (ema {:.2}%)", a * 100.0),
                None => String::new(),
            },
            m.lr,
            m.images_per_sec,
            m.seconds,
            if m.skipped > 0 { format!(" | {} files skipped", m.skipped) } else { String::new() },
            if end.is_best { " *" } else { "" },
        ));
        Ok(())
    }

    fn message(&mut self, text: &str) -> ObserverResult {
        self.println(text);
        Ok(())
    }

    fn warning(&mut self, text: &str) -> ObserverResult {
        self.warn(text);
        Ok(())
    }

    fn run_ended(&mut self, _run_dir: &std::path::Path) -> ObserverResult {
        self.finish_epoch();
        Ok(())
    }
}
