//! `hondo train CONFIG --nproc N`: data-parallel training on this machine without a
//! launcher. hondo starts N copies of itself as ranks 0..N-1 with torchrun's variables
//! (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR=127.0.0.1`, a
//! free `MASTER_PORT`; `OMP_NUM_THREADS` = cores / N unless set), shows rank 0's output,
//! prefixes the other ranks' lines with `[rank R]`, and exits non-zero if any rank fails.
//!
//! The workers run in their own process group: a Ctrl-C or SIGTERM reaches hondo, which
//! passes each one on to every worker once (the first stops them all at the same step,
//! a second ends them at once, as for one process); a worker whose launcher dies gets a
//! SIGTERM. When a rank fails, the others stop on their own when their next collective
//! finds the peer gone; any still running after [`GRACE`] are killed.

use anyhow::{bail, Context};
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the other ranks get to stop on their own after one failed.
const GRACE: Duration = Duration::from_secs(30);

/// The largest `--nproc`.
pub const MAX_NPROC: u16 = 1024;

/// Runs `hondo` with `args` (the command line without `--nproc`) as `n` local ranks.
pub fn run(n: usize, args: Vec<OsString>) -> anyhow::Result<ExitCode> {
    if std::env::var_os("WORLD_SIZE").is_some() || std::env::var_os("RANK").is_some() {
        bail!(
            "--nproc starts its own processes, but this one was already launched as a rank \
             (WORLD_SIZE/RANK are set): use either a launcher or --nproc"
        );
    }
    let exe = std::env::current_exe().context("finding hondo's own executable")?;
    let port = free_port()?;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = (cores / n).max(1).to_string();
    let signals = Signals::install()?;
    let mut children: Vec<(usize, Child)> = Vec::with_capacity(n);
    for rank in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env_remove("TORCHELASTIC_USE_AGENT_STORE")
            .env_remove("TORCHELASTIC_RESTART_COUNT")
            .stdin(Stdio::null())
            .process_group(0);
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            cmd.env("OMP_NUM_THREADS", &threads);
        }
        if rank > 0 {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                kill_all(&mut children);
                return Err(e).with_context(|| format!("starting rank {rank} ({})", exe.display()));
            }
        };
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    eprintln!("[rank {rank}] {line}");
                }
            });
        }
        children.push((rank, child));
    }
    let statuses = wait_all(&mut children, &signals)?;
    // Rank 0's status first (it reports the run), else the first rank that failed.
    let failed: Vec<&(usize, std::process::ExitStatus)> =
        statuses.iter().filter(|(_, s)| !s.success()).collect();
    for (rank, s) in &failed {
        if *rank > 0 {
            eprintln!("hondo: rank {rank} of {n} {}", describe(s));
        }
    }
    let code = statuses
        .iter()
        .find(|(r, s)| *r == 0 && !s.success())
        .or(failed.first().copied())
        .map_or(0, |(_, s)| exit_code(s));
    Ok(ExitCode::from(code))
}

/// A port nobody listens on now (the OS's pick), for rank 0's store.
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free local port")?;
    Ok(l.local_addr()?.port())
}

/// Waits for every rank, passing signals on; after the first failure, the others get
/// [`GRACE`] to end before they are killed.
fn wait_all(
    children: &mut Vec<(usize, Child)>,
    signals: &Signals,
) -> anyhow::Result<Vec<(usize, std::process::ExitStatus)>> {
    let mut done = Vec::new();
    let mut first_failure: Option<Instant> = None;
    while !children.is_empty() {
        for sig in signals.take() {
            for (_, c) in children.iter() {
                // SAFETY: a signal to a child we started and have not reaped.
                unsafe { libc::kill(c.id() as i32, sig) };
            }
        }
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait()? {
                Some(status) => {
                    let (rank, _) = children.remove(i);
                    if !status.success() && first_failure.is_none() {
                        first_failure = Some(Instant::now());
                    }
                    done.push((rank, status));
                }
                None => i += 1,
            }
        }
        if first_failure.is_some_and(|t| t.elapsed() > GRACE) {
            for (rank, _) in children.iter() {
                eprintln!(
                    "hondo: rank {rank} still running {}s after another rank failed: killing it",
                    GRACE.as_secs()
                );
            }
            kill_all(children);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done.sort_by_key(|(r, _)| *r);
    Ok(done)
}

fn kill_all(children: &mut Vec<(usize, Child)>) {
    for (_, c) in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

fn describe(s: &std::process::ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended abnormally".into(),
    }
}

/// A worker's status as this process's: its exit code, or 128 + the signal that killed it.
fn exit_code(s: &std::process::ExitStatus) -> u8 {
    match (s.code(), s.signal()) {
        (Some(c), _) => c.clamp(1, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(1, 255) as u8,
        _ => 1,
    }
}

/// SIGINT and SIGTERM received by the launcher, to pass on to the workers.
struct Signals {
    int: Arc<AtomicBool>,
    term: Arc<AtomicBool>,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        let s = Signals {
            int: Arc::default(),
            term: Arc::default(),
        };
        signal_hook::flag::register(libc::SIGINT, s.int.clone())?;
        signal_hook::flag::register(libc::SIGTERM, s.term.clone())?;
        Ok(s)
    }

    /// The signals received since the last call.
    fn take(&self) -> Vec<i32> {
        let mut v = Vec::new();
        if self.int.swap(false, Ordering::SeqCst) {
            v.push(libc::SIGINT);
        }
        if self.term.swap(false, Ordering::SeqCst) {
            v.push(libc::SIGTERM);
        }
        v
    }
}
