//! `hondo completions bash|zsh|fish|elvish|powershell`: the shell completion script, from
//! the same clap definition as the parser (so it never falls behind a flag).

use clap::CommandFactory;
use clap_complete::Shell;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell to complete for.
    shell: Shell,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "hondo", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
