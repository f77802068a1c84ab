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

/// Uses exactly `dir`: it must not exist, or be empty, or `overwrite` must be set.
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
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create run directory {}: {e}", dir.display()))?;
    probe_writable(dir)?;
    Ok(dir.to_path_buf())
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
        std::fs::write(d.path().join("last.safetensors"), b"x").unwrap();
        assert!(create_exact(d.path(), false)
            .unwrap_err()
            .to_string()
            .contains("--resume"));
        assert!(create_exact(d.path(), true).is_ok());
    }
}
