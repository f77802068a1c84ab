//! The errors hondo's public functions return: one enum whose variants are what a caller
//! matches on. Each message names the file, key or tensor at fault.

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::weights::WeightsError;
use std::path::PathBuf;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong. Match on [`Error::root`] to see through added context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be read, or is invalid (every problem is listed).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A data file or folder cannot be read or is not what it should be.
    #[error("{}: {reason}", path.display())]
    Data {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A weights file cannot be read, or does not fit the model (tensor and shapes named).
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A checkpoint cannot be read, or is of another model than the one asked for.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The loss became NaN or infinite (`train.on_nonfinite = "stop"`).
    #[error(
        "loss is {loss} at step {step} (epoch {epoch}, batch {batch}): stopping; the last good \
         checkpoint in {} is kept (lower optimizer.lr, or set train.on_nonfinite = \"skip\")",
        run_dir.display()
    )]
    Diverged {
        /// The non-finite loss.
        loss: f64,
        /// The optimizer step (1-based) whose loss it was.
        step: usize,
        /// The epoch (1-based).
        epoch: usize,
        /// The batch in the epoch (1-based).
        batch: usize,
        /// The run directory whose checkpoints are kept.
        run_dir: PathBuf,
    },
    /// A stop signal (Ctrl-C, SIGTERM) arrived where no resumable state could be written.
    #[error("interrupted by {}", if *exit_code == 130 { "SIGINT" } else { "SIGTERM" })]
    Interrupted {
        /// The exit status the signal asks for (130 or 143).
        exit_code: i32,
    },
    /// The device asked for is not there (no CUDA driver, no such GPU).
    #[error("{0}")]
    Device(String),
    /// An observer failed; the run stopped.
    #[error("{what} observer: {source}")]
    Observer {
        /// The callback that failed.
        what: &'static str,
        /// Its error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A typed error with context: `message` is the whole chain, `source` the typed cause.
    #[error("{message}")]
    Context {
        /// The full message, outermost context first.
        message: String,
        /// The typed error underneath.
        #[source]
        source: Box<Error>,
    },
    /// Anything else (an I/O failure writing a run, a libtorch error), with its context.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The innermost typed error, through any [`Error::Context`].
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            e => e,
        }
    }

    /// The exit status a command-line tool should use: the signal's for
    /// [`Error::Interrupted`], 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self.root() {
            Error::Interrupted { exit_code } => *exit_code,
            _ => 1,
        }
    }
}

/// The whole message of an error and its causes, joined with `": "` as anyhow's `{:#}`
/// does, but leaving out a cause whose message an earlier one already contains (hondo's
/// errors name their cause themselves, and [`Error::Context`] holds the whole chain), so
/// nothing is said twice. What the `hondo` binary prints after `error:`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(e);
    while let Some(cause) = next {
        let s = without_cpp_backtrace(&cause.to_string());
        if !text.contains(&s) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&s);
        }
        next = cause.source();
    }
    text
}

/// A libtorch message without the C++ stack trace it may carry (`Exception raised from
/// ...` and its `frame #N` lines), which says nothing to a user.
pub(crate) fn without_cpp_backtrace(message: &str) -> String {
    let cut = ["\nException raised from ", "\nframe #0"]
        .iter()
        .filter_map(|m| message.find(m))
        .min();
    match cut {
        Some(i) => message[..i].trim_end().to_string(),
        None => message.to_string(),
    }
}

/// Runs internal code (which chains context with anyhow) and converts its error at the
/// public boundary, keeping the typed cause.
pub(crate) fn boundary<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T> {
    f().map_err(Error::from)
}

/// The message of a panic payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

// Internal code chains context with anyhow; public functions convert at the boundary.
#[doc(hidden)]
impl From<anyhow::Error> for Error {
    /// Keeps the typed cause (and the whole message) of an internal error chain.
    fn from(e: anyhow::Error) -> Error {
        let message = error_chain(e.as_ref());
        let typed = match e.downcast::<Error>() {
            Ok(t) => Some(t),
            Err(e) => match e.downcast::<CheckpointError>() {
                Ok(t) => Some(Error::Checkpoint(t)),
                Err(e) => match e.downcast::<WeightsError>() {
                    Ok(t) => Some(Error::Weights(t)),
                    Err(e) => e.downcast::<ConfigError>().ok().map(Error::Config),
                },
            },
        };
        match typed {
            Some(t) if t.to_string() == message => t,
            Some(t) => Error::Context {
                message,
                source: Box::new(t),
            },
            None => Error::Other(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_stack_traces_are_cut_from_messages() {
        let raw = "zeros: Dimension size must be non-negative.\nException raised from \
                   check_size_nonnegative at /pytorch/aten/src/ATen/EmptyTensor.h:52 (most \
                   recent call first):\nframe #0: c10::Error::Error() + 0x5c";
        let e = tch::TchError::Torch(raw.into());
        let text = error_chain(&e);
        assert!(
            text.ends_with("Dimension size must be non-negative."),
            "{text}"
        );
        assert!(!text.contains("frame #"), "{text}");
        assert_eq!(without_cpp_backtrace("plain"), "plain");
    }
    use anyhow::Context;

    #[test]
    fn typed_causes_survive_context() {
        let inner: anyhow::Result<()> = Err(Error::Device("no GPU".into()).into());
        let e: Error = inner.context("train.device").unwrap_err().into();
        assert_eq!(e.to_string(), "train.device: no GPU");
        assert!(matches!(e.root(), Error::Device(m) if m == "no GPU"));
        let bare: Error = anyhow::Error::from(Error::Interrupted { exit_code: 143 }).into();
        assert!(matches!(bare, Error::Interrupted { exit_code: 143 }));
        assert_eq!(bare.exit_code(), 143);
        let other: Error = anyhow::anyhow!("disk full").context("writing x").into();
        assert!(matches!(&other, Error::Other(m) if m == "writing x: disk full"));
    }

    #[test]
    fn a_cause_that_its_error_already_names_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let typed = crate::weights::WeightsError::Io {
            path: "w.pth".into(),
            source: io,
        };
        let e = anyhow::Error::from(typed).context("model.pretrained = \"w.pth\"");
        assert_eq!(
            error_chain(e.as_ref()),
            "model.pretrained = \"w.pth\": cannot read weights file w.pth: no such file"
        );
        let h: Error = e.into();
        assert_eq!(h.to_string(), error_chain(&h));
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(plain.as_ref()), "outer: inner");
    }
}
