//! Bounded reads of regular files: the one way hondo reads a file it is given (a config,
//! weights, a checkpoint, an image, an IDX or CIFAR-10 batch, a class list, metrics).
//!
//! Only regular files are read (a link is followed to what it names): a FIFO, socket or
//! device (`/dev/zero`, `/dev/urandom`) is refused before it is opened, so it can neither
//! block the reader nor feed it without end. The file is opened non-blocking and checked
//! again on the open handle (it may have been replaced since), its size is compared with
//! the caller's limit before anything is allocated, and at most `limit + 1` bytes are read,
//! so a file that grows while it is read cannot exceed the limit either.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

/// Largest image file read (64 MiB; an uncompressed 4096 x 4096 RGB BMP is 48 MiB).
pub const MAX_IMAGE_BYTES: u64 = 64 << 20;

/// Largest dataset file read whole (an MNIST IDX file or a CIFAR-10 batch: 1 GiB; MNIST's
/// training images are 45 MiB, a CIFAR-10 batch 29 MiB).
pub const MAX_DATASET_BYTES: u64 = 1 << 30;

/// Largest weights file or checkpoint read (16 GiB; ResNet-152 with Adam state and EMA
/// weights is under 1 GiB).
pub const MAX_WEIGHTS_BYTES: u64 = 16 << 30;

/// Largest config file read (4 MiB).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Largest text file read (a class list such as CIFAR-10's `batches.meta.txt`: 1 MiB).
pub const MAX_TEXT_BYTES: u64 = 1 << 20;

/// A reason from this module as an I/O error, for error types that say "cannot read X"
/// themselves (the reason's own "cannot read: " is dropped).
pub fn io_error(reason: String) -> std::io::Error {
    match reason.strip_prefix("cannot read: ") {
        Some(rest) => std::io::Error::other(rest.to_string()),
        None => std::io::Error::other(reason),
    }
}

/// What `meta` describes, for "not a regular file (a FIFO)".
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a file"
}

/// Why `meta` is not a file that may be read, if it is not: not a regular file, or over
/// `limit` bytes.
pub fn check(meta: &Metadata, limit: u64) -> Result<(), String> {
    if !meta.is_file() {
        return Err(format!("not a regular file ({}): not read", kind(meta)));
    }
    if meta.len() > limit {
        return Err(format!(
            "{} bytes, over the {} MiB limit for this kind of file: not read",
            meta.len(),
            limit >> 20
        ));
    }
    Ok(())
}

/// Opens the regular file at `path` for reading, after checking it is one and holds at most
/// `limit` bytes; returns the file and its size. The error is the reason alone (the caller
/// names the file).
pub fn open_regular(path: &Path, limit: u64) -> Result<(File, u64), String> {
    // Before opening: opening a FIFO for reading blocks until a writer appears.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    check(&meta, limit)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never blocks in open, even if the path became a FIFO since the check; it changes
        // nothing for reads of a regular file.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    // The path may name something else now: check what was opened.
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    check(&meta, limit)?;
    Ok((file, meta.len()))
}

/// Reads at most `limit` bytes from `file` (which claimed `len`); more is an error.
pub fn read_bounded(file: File, len: u64, limit: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(len.min(limit) as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "grew past the {} MiB limit for this kind of file while it was read",
            limit >> 20
        ));
    }
    Ok(bytes)
}

/// The bytes of the regular file at `path`, at most `limit` of them (see the module doc).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let (file, len) = open_regular(path, limit)?;
    read_bounded(file, len, limit)
}

/// What an existing file at an output path is, for [`check_output`].
pub enum OutputKind {
    /// A PNG: only a PNG may be replaced by one.
    Png,
    /// An exported model: any file but those [`check_output`] always keeps.
    Export,
}

/// Why writing an output (a PNG, an export) to `out` would lose something, if it would:
/// `out` is one of the command's `inputs` (the same file), a hondo checkpoint, the
/// `config.toml` or `metrics.jsonl` of a run, or, for a PNG, an existing file that is not
/// a PNG. A symbolic link at `out` is replaced, not what it names, so it is never refused.
pub fn check_output(out: &Path, inputs: &[&Path], kind: OutputKind) -> Result<(), String> {
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(_) => return Ok(()), // nothing there (or nothing readable: the write will say)
    };
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        return Err("is a directory".into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        for input in inputs {
            if let Ok(m) = std::fs::metadata(input) {
                if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) {
                    return Err(format!(
                        "is this command's input ({}): write the output elsewhere",
                        input.display()
                    ));
                }
            }
        }
    }
    let head = read_head(out, 64 << 10);
    if head
        .windows(crate::checkpoint::FORMAT.len())
        .any(|w| w == crate::checkpoint::FORMAT.as_bytes())
    {
        return Err("is a hondo checkpoint, which an output never replaces".into());
    }
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let run = out.parent().filter(|d| crate::run_dir::is_run_dir(d));
    if let (Some(run), "config.toml" | "metrics.jsonl") = (run, name) {
        return Err(format!(
            "belongs to the run in {}, which an output never replaces",
            run.display()
        ));
    }
    if matches!(kind, OutputKind::Png) && !head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err("exists and is not a PNG: hondo replaces only a PNG there".into());
    }
    Ok(())
}

/// Up to `n` first bytes of a regular file (empty for anything else, or on error).
fn read_head(path: &Path, n: u64) -> Vec<u8> {
    match open_regular(path, u64::MAX) {
        Ok((f, _)) => {
            let mut head = Vec::new();
            let _ = f.take(n).read_to_end(&mut head);
            head
        }
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_up_to_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"12345").unwrap();
        assert_eq!(read_regular(&p, 5).unwrap(), b"12345");
        let err = read_regular(&p, 4).unwrap_err();
        assert!(err.contains("5 bytes") && err.contains("limit"), "{err}");
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert_eq!(read_regular(&link, 5).unwrap(), b"12345");
        assert!(read_regular(&d.path().join("missing"), 5)
            .unwrap_err()
            .contains("cannot read"));
    }

    #[test]
    fn fifos_devices_and_directories_are_refused_unopened() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_regular(&fifo, 1 << 20).unwrap_err();
        assert!(err.contains("a FIFO"), "{err}");
        for dev in ["/dev/zero", "/dev/urandom"] {
            let link = d.path().join(dev.trim_start_matches("/dev/"));
            std::os::unix::fs::symlink(dev, &link).unwrap();
            let err = read_regular(&link, 1 << 20).unwrap_err();
            assert!(err.contains("character device"), "{err}");
        }
        assert!(read_regular(d.path(), 1 << 20)
            .unwrap_err()
            .contains("a directory"));
    }

    #[test]
    fn a_file_longer_than_it_claimed_stops_at_the_limit() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![7u8; 100]).unwrap();
        let file = File::open(&p).unwrap();
        // As if it had been 10 bytes at the check and grown since.
        let err = read_bounded(file, 10, 50).unwrap_err();
        assert!(err.contains("grew past"), "{err}");
    }
}
