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
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
