//! Run directories: a new run never lands in an existing run's directory by accident.

use std::path::{Path, PathBuf};

/// A fresh directory `base/name`, or `base/name-2`, `base/name-3`... when taken; created.
pub fn create_fresh(base: &Path, name: &str) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(base)
        .map_err(|e| anyhow::anyhow!("cannot create output directory {}: {e}", base.display()))?;
    for n in 1.. {
        let dir = if n == 1 {
            base.join(name)
        } else {
            base.join(format!("{name}-{n}"))
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => anyhow::bail!("cannot create run directory {}: {e}", dir.display()),
        }
    }
    unreachable!()
}

/// Uses exactly `dir`: it must not exist, or be empty, or `overwrite` must be set; with
/// `overwrite`, a non-empty `dir` is cleared by [`clear_run_dir`] first.
pub fn create_exact(dir: &Path, overwrite: bool) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !overwrite {
            anyhow::bail!(
                "{} already exists and is not empty: continue it with `hondo train --resume {}`, \
                 pick another --out, or pass --overwrite to replace it",
                dir.display(),
                dir.display()
            );
        }
        if !empty {
            clear_run_dir(dir)?;
        }
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create run directory {}: {e}", dir.display()))?;
    probe_writable(dir)?;
    Ok(dir.to_path_buf())
}

/// Whether `dir` is a hondo run directory: it holds a regular `config.toml` (not a link).
pub(crate) fn is_run_dir(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join("config.toml")).is_ok_and(|m| m.is_file())
}

/// Removes everything inside `dir`, which must be a hondo run directory (a real directory,
/// not a symbolic link, holding a regular `config.toml`); anything else is refused with
/// nothing removed. Entries are removed without following symbolic links: a link is
/// removed itself, never what it points to, and subdirectories are removed by
/// `remove_dir_all`, which does not follow links either.
pub fn clear_run_dir(dir: &Path) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() {
        anyhow::bail!(
            "--overwrite: {} is a symbolic link; give the run directory itself",
            dir.display()
        );
    }
    if !meta.is_dir() {
        anyhow::bail!("--overwrite: {} is not a directory", dir.display());
    }
    if !is_run_dir(dir) {
        anyhow::bail!(
            "--overwrite: {} is not a hondo run directory (no config.toml) and is not empty: \
             refusing to delete its contents; pick another --out",
            dir.display()
        );
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| anyhow::anyhow!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        // `file_type` of a directory entry does not follow links.
        let kind = entry
            .file_type()
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let removed = if kind.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed
            .map_err(|e| anyhow::anyhow!("--overwrite: cannot remove {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Fails early, naming the directory, when files cannot be written there.
pub fn probe_writable(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(".hondo-write-test");
    std::fs::write(&probe, b"")
        .map_err(|e| anyhow::anyhow!("run directory {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_names_never_collide() {
        let d = tempfile::tempdir().unwrap();
        let a = create_fresh(d.path(), "run").unwrap();
        let b = create_fresh(d.path(), "run").unwrap();
        assert_eq!(a.file_name().unwrap(), "run");
        assert_eq!(b.file_name().unwrap(), "run-2");
    }

    #[test]
    fn exact_refuses_a_used_directory() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("config.toml"), b"").unwrap();
        std::fs::write(d.path().join("last.safetensors"), b"x").unwrap();
        assert!(create_exact(d.path(), false)
            .unwrap_err()
            .to_string()
            .contains("--resume"));
        assert!(create_exact(d.path(), true).is_ok());
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn overwrite_clears_a_run_directory_without_following_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep.txt"), b"keep").unwrap();
        let run = d.path().join("run");
        std::fs::create_dir_all(run.join("sub")).unwrap();
        std::fs::write(run.join("config.toml"), b"").unwrap();
        std::fs::write(run.join("metrics.jsonl"), b"{}").unwrap();
        std::fs::write(run.join("epoch-0001.safetensors"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, run.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, run.join("sub").join("link")).unwrap();
        std::os::unix::fs::symlink(outside.join("keep.txt"), run.join("file-link")).unwrap();
        clear_run_dir(&run).unwrap();
        assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
        assert_eq!(std::fs::read(outside.join("keep.txt")).unwrap(), b"keep");
    }

    #[test]
    fn overwrite_refuses_what_is_not_a_run_directory() {
        let d = tempfile::tempdir().unwrap();
        let other = d.path().join("photos");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("cat.jpg"), b"x").unwrap();
        let e = create_exact(&other, true).unwrap_err().to_string();
        assert!(e.contains("not a hondo run directory"), "{e}");
        assert!(other.join("cat.jpg").exists());
        // A link to a run directory is refused, the run left alone.
        let run = d.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::write(run.join("config.toml"), b"").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&run, &link).unwrap();
        let e = create_exact(&link, true).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(run.join("config.toml").exists());
        // config.toml as a link (to a file elsewhere) does not make a run directory.
        let fake = d.path().join("fake");
        std::fs::create_dir(&fake).unwrap();
        std::os::unix::fs::symlink(run.join("config.toml"), fake.join("config.toml")).unwrap();
        assert!(create_exact(&fake, true).is_err());
        // An empty directory is fine.
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(create_exact(&empty, true).is_ok());
    }
}
