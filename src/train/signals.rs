//! Ctrl-C and SIGTERM: the first one asks the trainer to stop after the current step and
//! write a resumable checkpoint; a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct StopSignal {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

impl StopSignal {
    /// Installs the handlers (once per process is enough; repeated calls add more).
    pub fn install() -> std::io::Result<StopSignal> {
        use signal_hook::consts::{SIGINT, SIGTERM};
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
