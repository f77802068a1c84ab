//! Crash-safe file writes, for every file hondo writes (checkpoints, exports, PNGs, run
//! configs): write a temporary file beside the target, flush it to disk, rename it over the
//! target, then flush the directory. A kill, a full disk or a file-size limit at any instant
//! leaves either the old file or the new one, never a torn one, and no temporary behind.
//!
//! [`stage`] and [`Staged::commit`] split the two halves, so that several files that belong
//! together (an export and its metadata sidecar) are all written before any is replaced.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    stage(path, bytes)?.commit()
}

/// A complete temporary file waiting to replace its target; dropped without
/// [`commit`](Staged::commit), it is removed and the target is left as it was.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    path: PathBuf,
    committed: bool,
}

/// Writes `bytes` to a temporary file beside `path` and flushes it to disk; `path` itself is
/// not touched until [`Staged::commit`].
pub fn stage(path: &Path, bytes: &[u8]) -> std::io::Result<Staged> {
    let staged = Staged {
        tmp: temp_path(path),
        path: path.to_path_buf(),
        committed: false,
    };
    let mut f = File::create(&staged.tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    // `staged` removes the temporary if any step above failed.
    Ok(staged)
}

impl Staged {
    /// Renames the temporary over the target and makes the rename durable.
    pub fn commit(mut self) -> std::io::Result<()> {
        fs::rename(&self.tmp, &self.path)?;
        self.committed = true;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable; not every filesystem supports this.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// `dir/.name.tmp`: hidden, and never matched by the checkpoint listing.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        write(&p, b"one").unwrap();
        write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn failure_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("x.bin");
        assert!(write(&p, b"x").is_err());
    }

    #[test]
    fn an_uncommitted_stage_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        write(&p, b"old").unwrap();
        let staged = stage(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"old");
        drop(staged);
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        stage(&p, b"new").unwrap().commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
