//! On-disk state of a replica, under the replica directory.
//!
//! - `wal/` ([`log_store::LogStore`] on [`wal::Wal`]): the Raft log, hard state and truncation
//!   point, in append-only segment files. Written only by the raft thread, one fdatasync per
//!   append, before anything that depends on it leaves the node.
//! - `data-N/` ([`state_machine::StateMachine`]): user keys plus `applied_index`/`applied_term`,
//!   the applied membership and the dedup table, all changed in one write txn per apply batch.
//!   The file `DATA` names the current one; installing a snapshot writes a new `data-N+1/` and
//!   then switches `DATA` atomically (write, fsync, rename), so a crash mid-install leaves the
//!   old state intact.
//!
//! The log and the state machine are separate, so that the raft thread and the apply thread
//! never wait on each other's writes.

mod crc32c;
pub mod log_store;
pub mod snapshot;
pub mod state_machine;
pub mod wal;

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

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

/// Name of the file that names the current state-machine directory.
const DATA_POINTER: &str = "DATA";

/// The current state-machine directory of replica directory `dir`.
pub fn current_data_dir(dir: &Path) -> Result<PathBuf> {
    match fs::read_to_string(dir.join(DATA_POINTER)) {
        Ok(name) => {
            let name = name.trim();
            if name.is_empty() || name.contains('/') || !name.starts_with("data-") {
                return Err(Error::Corrupt(format!(
                    "{} names {name:?}",
                    dir.join(DATA_POINTER).display()
                )));
            }
            Ok(dir.join(name))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir.join("data-0")),
        Err(e) => Err(Error::Io(format!(
            "cannot read {}: {e}",
            dir.join(DATA_POINTER).display()
        ))),
    }
}

/// Makes the (closed, synced) environment at `staged` the current state-machine directory and
/// deletes the previous one. Returns the new directory.
pub fn install_data_dir(dir: &Path, staged: &Path) -> Result<PathBuf> {
    let old = current_data_dir(dir)?;
    let gen: u64 = old
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("data-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let name = format!("data-{}", gen + 1);
    let new = dir.join(&name);
    if new.exists() {
        fs::remove_dir_all(&new)?;
    }
    fs::rename(staged, &new)?;
    sync_dir(dir)?;
    let tmp = dir.join(format!("{DATA_POINTER}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(name.as_bytes())?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(DATA_POINTER))?;
    sync_dir(dir)?;
    if old != new {
        let _ = fs::remove_dir_all(&old);
    }
    Ok(new)
}

/// Removes leftovers of interrupted snapshot installs: staging directories and state-machine
/// directories other than the current one.
pub fn remove_stale_dirs(dir: &Path) -> Result<()> {
    let current = current_data_dir(dir)?;
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        let stale = (name.starts_with("data-") && path != current) || name.starts_with("snap-in-");
        if stale && path.is_dir() {
            log::info!("removing leftover {}", path.display());
            let _ = fs::remove_dir_all(&path);
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}
