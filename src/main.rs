//! The `hondo` command: parse the command line, call the library, turn errors into one
//! message and an exit status.

mod cli;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    hondo::allocator::install();
    // Past a file-size limit (`ulimit -f`) a write then fails with EFBIG and is reported as
    // an error naming the file, instead of SIGXFSZ killing the process mid-write.
    // SAFETY: sets one signal's disposition to "ignore" at start-up.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // A panic is a bug: one line that says so (a loader thread's panic is also reported as
    // the run's error). RUST_BACKTRACE keeps Rust's own report, with the backtrace.
    if std::env::var_os("RUST_BACKTRACE").is_none() {
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            eprintln!(
                "hondo: internal error (a bug; please report it with RUST_BACKTRACE=1) in \
                 thread `{}`: {info}",
                thread.name().unwrap_or("unnamed")
            );
        }));
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            let prefix = console::style("error:").red().bold().for_stderr();
            eprintln!("{prefix} {}", hondo::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
