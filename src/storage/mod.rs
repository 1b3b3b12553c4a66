//! On-disk state of a replica: two LMDB environments under the replica directory.
//!
//! - `log/` ([`log_store::LogStore`]): the Raft log, hard state and truncation point. Written
//!   only by the raft thread, fsynced before anything that depends on it leaves the node.
//! - `data/` ([`state_machine::StateMachine`]): user keys plus `applied_index`/`applied_term`,
//!   the applied membership and the dedup table, all changed in one write txn per apply batch.
//!
//! Two environments, so that the raft thread and the apply thread never wait on each other's
//! LMDB write lock.

pub mod log_store;
pub mod state_machine;

use std::fs::{self, File};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

/// An exclusive advisory lock on a replica directory, held for the life of the replica.
/// Two processes opening one directory would corrupt each other's view of the log.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if needed and locks `dir/LOCK`, failing fast if another process holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("LOCK");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::Io(format!("cannot open {}: {e}", path.display())))?;
        // SAFETY: flock on a valid, owned descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(Error::Busy(format!(
                "{} is in use by another replica (lock held on {})",
                dir.display(),
                path.display()
            )));
        }
        Ok(DirLock { _file: file })
    }
}

/// Opens (creating if needed) an LMDB environment at `path` with `max_dbs` named databases.
pub(crate) fn open_env(
    path: &Path,
    map_size_mb: u64,
    max_dbs: u32,
    flags: heed::EnvFlags,
) -> Result<heed::Env<heed::WithoutTls>> {
    fs::create_dir_all(path)
        .map_err(|e| Error::Io(format!("cannot create {}: {e}", path.display())))?;
    let mut opts = heed::EnvOpenOptions::new().read_txn_without_tls();
    opts.map_size((map_size_mb as usize) << 20)
        .max_dbs(max_dbs)
        .max_readers(512);
    // SAFETY: the directory is locked by DirLock, so no other process maps these files, and
    // within this process each environment is opened once (heed refuses a second open).
    // NO_META_SYNC (when requested) keeps integrity: only the last txn may roll back on power loss.
    unsafe {
        opts.flags(flags);
        opts.open(path).map_err(Error::from)
    }
}
