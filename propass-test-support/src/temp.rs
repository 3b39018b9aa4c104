//! Temporary directories.

use std::path::{Path, PathBuf};

/// A fresh directory under `$TMPDIR`, removed with its content when dropped
/// (unless [`TempDir::keep`] was called, to look at it after a failure).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `$TMPDIR/<prefix>-<random>`.
    pub fn new(prefix: &str) -> std::io::Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// Creates `<parent>/<prefix>-<random>` (a benchmark that measures
    /// fsync wants a real disk, where `$TMPDIR` may be memory).
    pub fn new_in(parent: &Path, prefix: &str) -> std::io::Result<Self> {
        let path = parent.join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path, keep: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
