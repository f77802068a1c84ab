//! TensorBoard scalars: an `events.out.tfevents.*` file in the run directory, as
//! `torch.utils.tensorboard.SummaryWriter` writes it.
//!
//! The file is a sequence of TFRecords (`u64` length, its masked CRC-32C, the bytes, their
//! masked CRC-32C), each an `Event` protobuf (`tensorflow/core/util/event.proto`): first
//! `file_version = "brain.Event:2"`, then `Summary` events of `simple_value` scalars with
//! the wall time and the optimizer step. Only the fields hondo writes are declared here,
//! with their upstream field numbers.
//!
//! Tags: `train/loss`, `train/acc`, `val/loss`, `val/acc` (and `val/loss_ema`,
//! `val/acc_ema`) at each epoch's end; `train/lr` and `train/images_per_sec` every
//! `checkpoint.tensorboard_every_steps` steps. A resumed run appends to the run's file: it
//! first writes a `SessionLog` START at the first step it will run, which tells TensorBoard
//! to drop what the interrupted attempt logged past its checkpoint (as TensorFlow's
//! supervisor does on restart), so every step appears once. Resumed from an epoch's end,
//! the START is at that epoch's last step, and the epoch's scalars are logged again from
//! the checkpoint: the attempt may have been killed between its checkpoint and its log.
//!
//! A write that fails (a full disk) is reported once as a warning and ends the writing,
//! not the run.

use super::{EpochEnd, Observer, ObserverResult, RunInfo, StepReport};
use crate::metrics::EpochMetrics;
use prost::Message;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// `tensorflow.Event`.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    what: Option<What>,
}

/// `Event.what`.
#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

/// `tensorflow.Summary.Value` with its `simple_value` member.
#[derive(Clone, PartialEq, prost::Message)]
struct Value {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// `tensorflow.SessionLog`; status 1 is `START`.
#[derive(Clone, PartialEq, prost::Message)]
struct SessionLog {
    #[prost(int32, tag = "1")]
    status: i32,
}

const SESSION_START: i32 = 1;

/// The prefix TensorBoard looks for in a run directory.
pub const EVENTS_PREFIX: &str = "events.out.tfevents.";

/// TFRecord's CRC: CRC-32C, rotated right by 15 bits, plus a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord holding `data`.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The run directory's event file, if it has one (the first by name).
fn existing(run_dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(EVENTS_PREFIX))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    found.sort();
    found.into_iter().next()
}

/// Writes TensorBoard scalars for a run (see the module docs); added by the trainer when
/// `checkpoint.tensorboard = true`.
#[derive(Debug)]
pub struct TensorBoard {
    every: usize,
    file: Option<(PathBuf, File)>,
}

impl TensorBoard {
    /// Scalars of the learning rate and throughput every `every_steps` steps (at least 1).
    pub fn new(every_steps: usize) -> TensorBoard {
        TensorBoard {
            every: every_steps.max(1),
            file: None,
        }
    }

    fn write(&mut self, step: usize, what: What) {
        let Some((path, file)) = &mut self.file else {
            return;
        };
        let event = Event {
            wall_time: now(),
            step: step as i64,
            what: Some(what),
        };
        if let Err(e) = file.write_all(&record(&event.encode_to_vec())) {
            crate::observe::defer_warning(format!(
                "{}: cannot write TensorBoard events ({e}); no more are written",
                path.display()
            ));
            self.file = None;
        }
    }

    /// An epoch's losses and accuracies, at its last step.
    fn epoch_scalars(&mut self, step: usize, m: &EpochMetrics) {
        let mut values = vec![
            ("train/loss", m.train_loss),
            ("train/acc", m.train_acc),
            ("val/loss", m.val_loss),
            ("val/acc", m.val_acc),
        ];
        if let (Some(loss), Some(acc)) = (m.val_loss_ema, m.val_acc_ema) {
            values.extend([("val/loss_ema", loss), ("val/acc_ema", acc)]);
        }
        self.scalars(step, &values);
    }

    fn scalars(&mut self, step: usize, values: &[(&str, f64)]) {
        let value = values
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|&(tag, v)| Value {
                tag: tag.to_string(),
                simple_value: Some(v as f32),
            })
            .collect::<Vec<_>>();
        if !value.is_empty() {
            self.write(step, What::Summary(Summary { value }));
        }
    }
}

impl Observer for TensorBoard {
    fn run_started(&mut self, run: &RunInfo<'_>) -> ObserverResult {
        let resumed = run.resumed_at.is_some();
        let (path, fresh) = match existing(run.run_dir).filter(|_| resumed) {
            Some(p) => (p, false),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .unwrap_or_else(|_| "localhost".into());
                let name = format!(
                    "{EVENTS_PREFIX}{}.{host}.{}.0",
                    now() as u64,
                    std::process::id()
                );
                (run.run_dir.join(name), true)
            }
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        self.file = Some((path, file));
        if fresh {
            self.write(0, What::FileVersion("brain.Event:2".into()));
        } else {
            // Resumed from an epoch's end: its scalars are logged after its checkpoint, so
            // the attempt may have been killed before logging them. Restart at that step
            // itself and log them again from the checkpoint's record of the epoch.
            let redo = run
                .last_epoch
                .filter(|m| m.step == run.step && run.step > 0);
            let start = if redo.is_some() {
                run.step
            } else {
                run.step + 1
            };
            self.write(
                start,
                What::SessionLog(SessionLog {
                    status: SESSION_START,
                }),
            );
            if let Some(m) = redo {
                if run.step % self.every == 0 {
                    self.scalars(
                        run.step,
                        &[
                            ("train/lr", m.lr),
                            ("train/images_per_sec", m.images_per_sec),
                        ],
                    );
                }
                self.epoch_scalars(run.step, m);
            }
        }
        Ok(())
    }

    fn step(&mut self, s: &StepReport) -> ObserverResult {
        if s.step % self.every == 0 {
            self.scalars(
                s.step,
                &[
                    ("train/lr", s.lr),
                    ("train/images_per_sec", s.images_per_sec),
                ],
            );
        }
        Ok(())
    }

    fn epoch_ended(&mut self, end: &EpochEnd<'_>) -> ObserverResult {
        self.epoch_scalars(end.step, end.metrics);
        if let Some((_, f)) = &self.file {
            // Visible to a TensorBoard reading the run while it trains.
            let _ = f.sync_data();
        }
        Ok(())
    }

    fn run_ended(&mut self, _run_dir: &Path) -> ObserverResult {
        if let Some((path, f)) = self.file.take() {
            f.sync_all()
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_framing_follow_tfrecord() {
        // CRC-32C check value of "123456789" (RFC 3720), then TFRecord's mask.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283);
        // ((c >> 15) | (c << 17)) + 0xa282ead8, worked out by hand.
        assert_eq!(masked_crc(b"123456789"), 0xc78a_b0e5);
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(u64::from_le_bytes(r[..8].try_into().unwrap()), 3);
        assert_eq!(&r[12..15], b"abc");
    }

    #[test]
    fn events_encode_with_upstream_field_numbers() {
        let e = Event {
            wall_time: 1.0,
            step: 7,
            what: Some(What::Summary(Summary {
                value: vec![Value {
                    tag: "a".into(),
                    simple_value: Some(0.5),
                }],
            })),
        };
        let bytes = e.encode_to_vec();
        // wall_time (1, fixed64), step (2, varint), summary (5, length-delimited).
        assert_eq!(bytes[0], 0x09);
        assert_eq!(&bytes[9..11], &[0x10, 7]);
        assert_eq!(bytes[11], 0x2a);
        assert_eq!(Event::decode(&bytes[..]).unwrap(), e);
    }
}
