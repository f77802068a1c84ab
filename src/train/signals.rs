//! Ctrl-C and SIGTERM: the first one asks the trainer to stop after the current step and
//! write a resumable checkpoint; a second one exits at once.
//!
//! One signal is always enough: if the process has not ended within a grace period of the
//! first one (the loop that would stop is never reached: a blocking read, a long data scan,
//! a stuck loader or step), a watchdog ends it with the signal's status (130 or 143) and a
//! line saying so. The grace period is [`DEFAULT_GRACE_S`] seconds, or `HONDO_STOP_GRACE_S`
//! (whole seconds, 1 to 3600). Ending there loses nothing already written: every checkpoint
//! and output is written to a temporary file and renamed into place.

use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Seconds between the first stop request and the watchdog's exit, by default.
pub const DEFAULT_GRACE_S: u64 = 30;

/// The environment variable that sets the grace period.
pub const GRACE_ENV: &str = "HONDO_STOP_GRACE_S";

/// Handle to the installed stop handlers: whether a stop was asked for, and by which signal.
#[derive(Clone)]
pub struct StopSignal {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

impl StopSignal {
    /// Installs the handlers and the watchdog, with the grace period of
    /// `HONDO_STOP_GRACE_S` (an error if it is set to anything but 1 to 3600) or
    /// [`DEFAULT_GRACE_S`]. Once per process is enough; repeated calls add more.
    pub fn install() -> std::io::Result<StopSignal> {
        StopSignal::install_with_grace(grace_from_env()?)
    }

    /// Installs the handlers for a command with nothing to save (predict, eval): the first
    /// signal ends the process at once, with its status and a line saying so.
    pub fn install_exit_at_once() -> std::io::Result<StopSignal> {
        StopSignal::install_with_grace(Duration::ZERO)
    }

    /// Installs the handlers and a watchdog that exits `grace` after the first signal.
    pub fn install_with_grace(grace: Duration) -> std::io::Result<StopSignal> {
        use signal_hook::flag;
        let s = StopSignal {
            int: Arc::default(),
            term: Arc::default(),
        };
        for (sig, f, code) in [(SIGINT, &s.int, 130), (SIGTERM, &s.term, 143)] {
            // Second signal while the first is pending: exit immediately.
            flag::register_conditional_shutdown(sig, code, f.clone())?;
            flag::register(sig, f.clone())?;
        }
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        std::thread::Builder::new()
            .name("hondo-stop-watchdog".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    std::thread::sleep(grace);
                    let (name, code) = if sig == SIGINT {
                        ("SIGINT", 130)
                    } else {
                        ("SIGTERM", 143)
                    };
                    if grace.is_zero() {
                        eprintln!("error: stopped by {name}");
                    } else {
                        eprintln!(
                            "error: stopped by {name}: the run did not reach a checkpoint \
                             within {} s, exiting without one (files already written are \
                             intact; set {GRACE_ENV} to wait longer)",
                            grace.as_secs()
                        );
                    }
                    // `_exit`: no destructors, which might wait for the thread that is stuck.
                    signal_hook::low_level::exit(code);
                }
            })?;
        Ok(s)
    }

    /// A signal that never fires (library use, tests).
    pub fn none() -> StopSignal {
        StopSignal {
            int: Arc::default(),
            term: Arc::default(),
        }
    }

    /// The exit status the pending signal asks for: 130 (SIGINT) or 143 (SIGTERM).
    pub fn pending(&self) -> Option<i32> {
        if self.int.load(Ordering::Relaxed) {
            Some(130)
        } else if self.term.load(Ordering::Relaxed) {
            Some(143)
        } else {
            None
        }
    }
}

/// The grace period `HONDO_STOP_GRACE_S` sets, or the default.
fn grace_from_env() -> std::io::Result<Duration> {
    parse_grace(std::env::var_os(GRACE_ENV).as_deref())
}

fn parse_grace(value: Option<&std::ffi::OsStr>) -> std::io::Result<Duration> {
    let Some(v) = value else {
        return Ok(Duration::from_secs(DEFAULT_GRACE_S));
    };
    v.to_str()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|s| (1..=3600).contains(s))
        .map(Duration::from_secs)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{GRACE_ENV} = {v:?}: expected whole seconds from 1 to 3600"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn grace_is_bounded_whole_seconds() {
        assert_eq!(parse_grace(None).unwrap(), Duration::from_secs(30));
        assert_eq!(
            parse_grace(Some(OsStr::new("5"))).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            parse_grace(Some(OsStr::new("3600"))).unwrap(),
            Duration::from_secs(3600)
        );
        for bad in ["0", "3601", "-1", "1.5", "", "soon", "99999999999999999999"] {
            let err = parse_grace(Some(OsStr::new(bad))).unwrap_err().to_string();
            assert!(
                err.contains(GRACE_ENV) && err.contains("1 to 3600"),
                "{err}"
            );
        }
    }
}
