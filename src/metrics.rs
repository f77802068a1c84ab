//! Per-epoch metrics: accumulated during an epoch, appended as one JSON line to
//! `metrics.jsonl` in the run directory.

use serde::{Deserialize, Serialize};
use std::io::{Seek, Write};
use std::path::Path;

/// The file in a run directory that holds one line of [`EpochMetrics`] per epoch.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: usize,
    /// Optimizer steps done at the end of the epoch.
    pub step: usize,
    /// Mean training loss per image over the epoch. JSON has no NaN: a NaN here or in the
    /// three fields below (an epoch whose steps were all skipped) is written as `null` and
    /// read back as NaN.
    #[serde(deserialize_with = "null_as_nan")]
    pub train_loss: f64,
    /// Fraction of the epoch's training images (0 to 1) whose top prediction was the
    /// true label (the unmixed one under mixup or CutMix).
    #[serde(deserialize_with = "null_as_nan")]
    pub train_acc: f64,
    /// Mean validation loss per image.
    #[serde(deserialize_with = "null_as_nan")]
    pub val_loss: f64,
    /// Top-1 validation accuracy, a fraction from 0 to 1.
    #[serde(deserialize_with = "null_as_nan")]
    pub val_acc: f64,
    /// Learning rate at the end of the epoch (base group).
    pub lr: f64,
    /// Training images per second (loading included).
    pub images_per_sec: f64,
    /// Wall-clock seconds of the epoch: training and validation (of the EMA too).
    pub seconds: f64,
    /// Unreadable files skipped this epoch (train and validation).
    pub skipped: usize,
    /// Validation loss of the weights' moving average; `None` (and left out of the line)
    /// unless `train.ema_decay` > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_loss_ema: Option<f64>,
    /// Top-1 validation accuracy of the weights' moving average; `None` without EMA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_acc_ema: Option<f64>,
}

impl EpochMetrics {
    /// The value of a monitored metric by name (`val_acc`, `val_loss`, `train_acc`,
    /// `train_loss`, `val_acc_ema`, `val_loss_ema`); `None` for another name, or for an
    /// EMA metric of a run without EMA.
    pub fn get(&self, name: &str) -> Option<f64> {
        match name {
            "val_acc" => Some(self.val_acc),
            "val_loss" => Some(self.val_loss),
            "train_acc" => Some(self.train_acc),
            "train_loss" => Some(self.train_loss),
            "val_acc_ema" => self.val_acc_ema,
            "val_loss_ema" => self.val_loss_ema,
            _ => None,
        }
    }
}

fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Running sums of loss and correct predictions over an epoch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Running {
    /// Sum of the per-image losses (each batch's mean loss times its size).
    pub loss_sum: f64,
    /// Images whose prediction was right.
    pub correct: i64,
    /// Images counted.
    pub seen: i64,
}

impl Running {
    /// Counts a batch of `n` images with mean loss `loss_mean` and `correct` right
    /// predictions.
    pub fn add(&mut self, loss_mean: f64, correct: i64, n: i64) {
        self.loss_sum += loss_mean * n as f64;
        self.correct += correct;
        self.seen += n;
    }

    /// Mean loss per image so far; NaN before any image.
    pub fn loss(&self) -> f64 {
        if self.seen == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.seen as f64
        }
    }

    /// Fraction of images predicted right so far (0 to 1); NaN before any image.
    pub fn acc(&self) -> f64 {
        if self.seen == 0 {
            f64::NAN
        } else {
            self.correct as f64 / self.seen as f64
        }
    }
}

/// Appends one line to `path`, in one `write` (a process killed while appending leaves at
/// worst a torn last line, which [`restore`] drops).
pub fn append(path: &Path, m: &EpochMetrics) -> std::io::Result<()> {
    let mut line = serde_json::to_string(m).expect("metrics serialise");
    line.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

/// Largest `metrics.jsonl` read (256 MiB: millions of epochs).
const MAX_METRICS_BYTES: u64 = 256 << 20;

/// Reads every line of a `metrics.jsonl`; later lines for an epoch replace earlier ones
/// (a resumed run re-logs the epoch it was interrupted in). Errors are
/// [`Error::Data`](crate::Error::Data) naming the file (and the line).
pub fn read(path: &Path) -> crate::Result<Vec<EpochMetrics>> {
    let fail = |reason: String| crate::Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = crate::file::read_regular(path, MAX_METRICS_BYTES)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    parse(path, bytes)
}

/// The lines of a `metrics.jsonl` read from `path`, as [`read`] returns them.
fn parse(path: &Path, bytes: Vec<u8>) -> crate::Result<Vec<EpochMetrics>> {
    let fail = |reason: String| crate::Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let text = String::from_utf8(bytes).map_err(|e| fail(format!("not UTF-8 text: {e}")))?;
    let mut out: Vec<EpochMetrics> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let m: EpochMetrics =
            serde_json::from_str(line).map_err(|e| fail(format!("line {}: {e}", i + 1)))?;
        out.retain(|o| o.epoch != m.epoch);
        out.push(m);
    }
    out.sort_by_key(|m| m.epoch);
    Ok(out)
}

/// Mends a resumed run's `metrics.jsonl` before the run appends to it, and says what it
/// did (`None`: nothing to mend).
///
/// - A torn last line (the process was killed while appending it) is cut off; a last
///   line that is whole but lacks its newline gets one.
/// - `last_epoch`, the last finished epoch as the run's checkpoint recorded it, is
///   appended when the file has no line for that epoch: the checkpoint is written before
///   the epoch's line, so a process killed between the two lost it. A missing file is
///   created.
pub fn restore(path: &Path, last_epoch: Option<&EpochMetrics>) -> crate::Result<Option<String>> {
    let fail = |reason: String| crate::Error::Data {
        path: path.to_path_buf(),
        reason,
    };
    let mut bytes = match crate::file::read_regular(path, MAX_METRICS_BYTES) {
        Ok(b) => b,
        Err(_) if !path.exists() => Vec::new(),
        Err(e) => return Err(fail(format!("cannot read: {e}"))),
    };
    let mut done = Vec::new();
    if bytes.last().is_some_and(|&b| b != b'\n') {
        let start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let whole = serde_json::from_slice::<EpochMetrics>(&bytes[start..]).is_ok();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| fail(format!("cannot open for writing: {e}")))?;
        if whole {
            f.seek(std::io::SeekFrom::End(0))
                .and_then(|_| f.write_all(b"\n"))
                .map_err(|e| fail(format!("cannot write: {e}")))?;
            bytes.push(b'\n');
        } else {
            f.set_len(start as u64)
                .map_err(|e| fail(format!("cannot truncate: {e}")))?;
            bytes.truncate(start);
            done.push("cut off a torn last line".to_string());
        }
    }
    let lines = parse(path, bytes)?;
    if let Some(m) = last_epoch.filter(|m| !lines.iter().any(|l| l.epoch == m.epoch)) {
        append(path, m).map_err(|e| fail(format!("cannot append: {e}")))?;
        done.push(format!(
            "restored epoch {}'s line from the checkpoint (the run was stopped between \
             writing the checkpoint and the line)",
            m.epoch
        ));
    }
    Ok((!done.is_empty()).then(|| done.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_means_weight_by_batch_size() {
        let mut r = Running::default();
        r.add(1.0, 2, 2);
        r.add(4.0, 0, 1);
        assert!((r.loss() - 2.0).abs() < 1e-12);
        assert!((r.acc() - 2.0 / 3.0).abs() < 1e-12);
    }

    /// A line for `epoch`, 10 steps per epoch.
    fn line(epoch: usize) -> EpochMetrics {
        EpochMetrics {
            epoch,
            step: 10 * epoch,
            train_loss: 1.0,
            train_acc: 0.5,
            val_loss: 0.9,
            val_acc: 0.6,
            lr: 0.1,
            images_per_sec: 100.0,
            seconds: 1.0,
            skipped: 0,
            val_loss_ema: None,
            val_acc_ema: None,
        }
    }

    #[test]
    fn lines_round_trip_and_later_epochs_win() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        let m = line(1);
        append(&p, &m).unwrap();
        append(
            &p,
            &EpochMetrics {
                val_acc: 0.7,
                ..m.clone()
            },
        )
        .unwrap();
        let all = read(&p).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].val_acc, 0.7);
        append(
            &p,
            &EpochMetrics {
                epoch: 2,
                train_loss: f64::NAN,
                ..m.clone()
            },
        )
        .unwrap();
        assert!(read(&p).unwrap()[1].train_loss.is_nan());
    }

    #[test]
    fn restore_mends_a_torn_or_unterminated_tail_and_adds_only_a_missing_epoch() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        let m = line;
        let epochs = || {
            read(&p)
                .unwrap()
                .iter()
                .map(|m| m.epoch)
                .collect::<Vec<_>>()
        };
        // No file: created with the checkpoint's epoch.
        assert!(restore(&p, Some(&m(1)))
            .unwrap()
            .unwrap()
            .contains("epoch 1"));
        assert_eq!(epochs(), [1]);
        // The epoch is there: nothing to do, nothing written.
        let before = std::fs::read(&p).unwrap();
        assert_eq!(restore(&p, Some(&m(1))).unwrap(), None);
        assert_eq!(restore(&p, None).unwrap(), None);
        assert_eq!(std::fs::read(&p).unwrap(), before);
        // A torn line is cut off; the missing epoch is added after the whole lines.
        let line = serde_json::to_string(&m(2)).unwrap();
        std::fs::write(&p, [&before[..], &line.as_bytes()[..9]].concat()).unwrap();
        let said = restore(&p, Some(&m(2))).unwrap().unwrap();
        assert!(said.contains("torn") && said.contains("epoch 2"), "{said}");
        assert_eq!(epochs(), [1, 2]);
        // A whole last line without its newline is kept, and terminated.
        std::fs::write(&p, [&before[..], line.as_bytes()].concat()).unwrap();
        assert_eq!(restore(&p, Some(&m(2))).unwrap(), None);
        append(&p, &m(3)).unwrap();
        assert_eq!(epochs(), [1, 2, 3]);
        // A file that is not metrics is an error naming it, and is left as it was.
        std::fs::write(&p, "not json\n").unwrap();
        let e = restore(&p, Some(&m(1))).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl") && e.contains("line 1"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"not json\n");
    }
}
