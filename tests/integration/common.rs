//! Helpers shared by the integration tests.

use predicates::prelude::*;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The built `hondo` binary.
pub fn hondo() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("hondo").unwrap()
}

/// A tiny shapes run: small images, few samples, two quick epochs.
pub const TINY: &str = r#"
[model]
arch = "small_cnn"
width = 16
[data]
kind = "shapes"
image_size = 16
train_size = 512
val_size = 256
workers = 2
[optimizer]
lr = 0.1
[schedule]
warmup_epochs = 0.5
[train]
epochs = 2
batch_size = 32
threads = 2
"#;

/// Writes `text` as `name` in `dir` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/python/{script}` (with `PYTHONPATH=.pydeps`) into a fresh directory and
/// returns it, cached in cargo's per-target temporary directory as `{prefix}-{hash of the
/// script}` so each script version runs once. `extra_args(final_dir)` gives the arguments
/// after the output directory.
pub fn python_fixtures(
    script: &str,
    prefix: &str,
    extra_args: impl Fn(&Path) -> Vec<OsString>,
) -> PathBuf {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let repo = repo();
    let script_path = repo.join("tests/python").join(script);
    let source = std::fs::read(&script_path).unwrap_or_else(|e| panic!("read {script}: {e}"));
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    let tmp_root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = tmp_root.join(format!("{prefix}-{:016x}", h.finish()));
    if dir.join("done").exists() {
        return dir;
    }
    let tmp = tempfile::Builder::new()
        .prefix(&format!("{prefix}-"))
        .tempdir_in(tmp_root)
        .expect("create a temporary directory");
    let status = Command::new("python3")
        .arg(&script_path)
        .arg(tmp.path())
        .args(extra_args(&dir))
        .env("PYTHONPATH", repo.join(".pydeps"))
        .status()
        .unwrap_or_else(|e| {
            panic!("run python3 (PYTHONPATH=.pydeps) for tests/python/{script}: {e}")
        });
    assert!(status.success(), "{script} failed: {status}");
    std::fs::write(tmp.path().join("done"), b"").unwrap();
    let tmp = tmp.keep();
    // Another test process may have finished first: keep its copy.
    if std::fs::rename(&tmp, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        assert!(
            dir.join("done").exists(),
            "could not move fixtures to {}",
            dir.display()
        );
    }
    dir
}

/// Runs `tests/python/{script} ARG` (with `PYTHONPATH=.pydeps`), asserts that it succeeded
/// and returns the JSON object it printed.
pub fn python_json(script: &str, arg: &Path) -> serde_json::Value {
    python_json_args(script, &[arg])
}

/// [`python_json`] with several arguments.
pub fn python_json_args(script: &str, args: &[&Path]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(repo().join("tests/python").join(script))
        .args(args)
        .env("PYTHONPATH", repo().join(".pydeps"))
        .output()
        .unwrap_or_else(|e| {
            panic!("run python3 (PYTHONPATH=.pydeps) for tests/python/{script}: {e}")
        });
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{script} printed no JSON object: {e}"))
}

/// No panic message, backtrace or abort text (checked under `RUST_BACKTRACE=1`).
pub fn no_panic() -> impl Predicate<str> {
    predicate::str::contains("panicked")
        .not()
        .and(predicate::str::contains("RUST_BACKTRACE").not())
        .and(predicate::str::contains("stack backtrace").not())
        .and(predicate::str::contains("terminate called").not())
        .and(predicate::str::contains("Aborted").not())
}

/// How a bounded run of `hondo` ended.
#[derive(Debug)]
pub struct Bounded {
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Wall time.
    pub seconds: f64,
    /// Peak resident memory of the process (from `wait4`'s rusage), in MiB.
    pub peak_rss_mib: u64,
}

impl Bounded {
    /// The `error:` lines of stderr.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect()
    }
}

// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
/// Runs `hondo ARGS` with `RUST_BACKTRACE=1`, no standard input and `envs`, and kills it
/// (failing the test as a hang) after `limit`. Peak memory is measured for the child alone.
pub fn run_bounded(args: &[&std::ffi::OsStr], envs: &[(&str, &str)], limit: Duration) -> Bounded {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("hondo"));
    cmd.args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn hondo");
    let pid = child.id() as libc::pid_t;
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let mut status: libc::c_int = 0;
    // SAFETY: zeroed rusage is a valid out-parameter for wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut hung = false;
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's Child is never waited on).
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if started.elapsed() > limit && !hung {
            hung = true;
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = started.elapsed().as_secs_f64();
    let stdout = out.join().unwrap();
    let stderr = err.join().unwrap();
    assert!(
        !hung,
        "hondo {args:?} did not finish within {limit:?} (killed)\nstderr:\n{stderr}"
    );
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else {
        (None, Some(libc::WTERMSIG(status)))
    };
    Bounded {
        code,
        signal,
        stdout,
        stderr,
        seconds,
        peak_rss_mib: usage.ru_maxrss as u64 / 1024,
    }
}

/// Asserts that a bounded run refused its input as hondo should: a non-zero exit (not a
/// signal), exactly one `error:` line, containing every one of `names` (the file, key or
/// tensor at fault), and no panic, backtrace or abort text.
pub fn assert_refused(b: &Bounded, names: &[&str]) {
    assert!(
        b.signal.is_none(),
        "ended by signal {:?}\nstderr:\n{}",
        b.signal,
        b.stderr
    );
    assert_ne!(b.code, Some(0), "exit status 0\nstderr:\n{}", b.stderr);
    let errors = b.error_lines();
    assert_eq!(
        errors.len(),
        1,
        "want one error: line\nstderr:\n{}",
        b.stderr
    );
    for n in names {
        assert!(
            errors[0].contains(n),
            "the error line does not name {n:?}: {}",
            errors[0]
        );
    }
    assert!(
        no_panic().eval(&b.stderr) && no_panic().eval(&b.stdout),
        "panic or abort text\nstderr:\n{}",
        b.stderr
    );
}

/// Every regular file under `dir` with its bytes: compare before and after a failed
/// command to show that nothing already on disk changed.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.insert(e.path(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Asserts two named tensor lists are the same to the bit: same length, the same names in
/// the same order, the same dtypes and equal values (`what` names them in failures).
pub fn assert_same_tensors(what: &str, a: &[(String, tch::Tensor)], b: &[(String, tch::Tensor)]) {
    assert_eq!(
        a.len(),
        b.len(),
        "{what}: {} tensors against {}",
        a.len(),
        b.len()
    );
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        assert_eq!(na, nb, "{what}: tensor names differ");
        assert!(
            ta.kind() == tb.kind() && ta.size() == tb.size() && ta.equal(tb),
            "{what}: {na} differs"
        );
    }
}

/// `hondo train ARGS` (a config and `--out DIR`, or `--resume DIR`, with any `--set`s) as a
/// process of its own (libtorch's RNG is process-wide, and other tests in this binary train
/// concurrently): stdout discarded, stderr piped.
pub fn train_cmd<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("hondo"));
    cmd.arg("train")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs [`train_cmd`] to the end, asserts that it succeeded, and returns its stderr.
pub fn train_ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let out = train_cmd(args).output().expect("run hondo train");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "hondo train {:?} failed:\n{err}",
        args.iter()
            .map(|a| a.as_ref().to_owned())
            .collect::<Vec<_>>()
    );
    err
}

/// MNIST's four IDX files with `n` train and `n` test digits of 28x28.
pub fn mnist_fixture(dir: &Path, n: usize) {
    for prefix in ["train", "t10k"] {
        let mut images = vec![0, 0, 8, 3];
        for d in [n as u32, 28, 28] {
            images.extend_from_slice(&d.to_be_bytes());
        }
        images.extend((0..n * 784).map(|i| (i % 251) as u8));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        let mut labels = vec![0, 0, 8, 1];
        labels.extend_from_slice(&(n as u32).to_be_bytes());
        labels.extend((0..n).map(|i| (i % 10) as u8));
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}
