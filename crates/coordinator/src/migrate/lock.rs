//! The data directory's lock (`DATA/coordinator.lock`): every `serve` holds it shared for
//! as long as it runs (replicas on PostgreSQL share one data directory, so shared), and a
//! migration takes it exclusively. So a migration never reads a store a coordinator is
//! writing, and a coordinator does not start on a data directory being migrated. The lock
//! is the kernel's (`flock`): it goes with the process, a crash leaves nothing to clean up.

use crate::error::{CoordError, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "coordinator.lock";

/// A held lock; released when dropped (or when the process ends).
pub struct DataLock {
    _lock: Flock<File>,
}

fn open(dir: &Path) -> Result<(PathBuf, File)> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| CoordError::Io {
            path: path.clone(),
            source,
        })?;
    Ok((path, file))
}

/// What `serve` holds while it runs. Fails at once while a migration holds the directory.
pub fn serving(dir: &Path) -> Result<DataLock> {
    let (path, file) = open(dir)?;
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(lock) => Ok(DataLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(CoordError::Invalid(format!(
            "{} is being migrated (`bosun coordinator migrate` holds {}): start the \
             coordinator once the migration has ended",
            dir.display(),
            path.display()
        ))),
        Err((_, e)) => Err(CoordError::Io {
            path,
            source: e.into(),
        }),
    }
}

/// What a migration holds. Fails at once while any coordinator serves from `dir`.
pub fn exclusive(dir: &Path) -> Result<DataLock> {
    let (path, file) = open(dir)?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(DataLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(CoordError::Invalid(format!(
            "a coordinator is running on {} (it holds {}): stop it — every process serving \
             from this data directory — before migrating",
            dir.display(),
            path.display()
        ))),
        Err((_, e)) => Err(CoordError::Io {
            path,
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_share_the_lock_and_a_migration_excludes_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = serving(dir.path()).expect("first server");
        let b = serving(dir.path()).expect("a second replica shares it");
        let e = exclusive(dir.path()).err().expect("refused while serving");
        assert!(e.to_string().contains("a coordinator is running"), "{e}");
        drop((a, b));
        let m = exclusive(dir.path()).expect("free once they stopped");
        let e = serving(dir.path())
            .err()
            .expect("no server during a migration");
        assert!(e.to_string().contains("is being migrated"), "{e}");
        drop(m);
        serving(dir.path()).expect("free again");
    }
}
