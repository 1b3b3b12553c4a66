//! The C ABI of cluster administration: membership, statistics, backup.

use std::ffi::{c_char, c_int};

use super::{alloc_buf, kvr, kvr_buf, str_arg, with_replica};
use crate::error::Error;

/// Adds node `id`, listening on `addr` (`host:port`, NUL-terminated), as a voter, or promotes
/// a learner. Callable on any replica; blocks until the change is committed and applied on
/// this replica. The new replica is opened with option `join=true` on an empty directory.
/// Codes: `KVR_OK`, `KVR_INVALID_ARG` (id 0, bad or NULL address, id removed before),
/// `KVR_TIMEOUT`, `KVR_NO_LEADER`, `KVR_CLOSED`, `KVR_REMOVED`.
#[no_mangle]
pub unsafe extern "C" fn kvr_add_node(db: *mut kvr, id: u64, addr: *const c_char) -> c_int {
    with_replica(db, |r| {
        // SAFETY: forwarded caller promise of a NUL-terminated string.
        let addr = unsafe { str_arg(addr, "addr")? };
        r.add_node(id, addr)
    })
}

/// Adds node `id`, listening on `addr`, as a learner (receives the log, does not vote).
/// Same blocking and codes as `kvr_add_node`.
#[no_mangle]
pub unsafe extern "C" fn kvr_add_learner(db: *mut kvr, id: u64, addr: *const c_char) -> c_int {
    with_replica(db, |r| {
        // SAFETY: forwarded caller promise of a NUL-terminated string.
        let addr = unsafe { str_arg(addr, "addr")? };
        r.add_learner(id, addr)
    })
}

/// Removes node `id` from the cluster (its id can never be reused). Removing the leader hands
/// leadership to another voter first. Blocks until applied on this replica.
/// Codes: `KVR_OK`, `KVR_INVALID_ARG` (not a member, or the only voter), `KVR_TIMEOUT`,
/// `KVR_NO_LEADER`, `KVR_CLOSED`, `KVR_REMOVED`.
#[no_mangle]
pub unsafe extern "C" fn kvr_remove_node(db: *mut kvr, id: u64) -> c_int {
    with_replica(db, |r| r.remove_node(id))
}

/// Asks the cluster to make node `id` the leader; blocks until this replica sees it lead.
/// Codes: `KVR_OK`, `KVR_TIMEOUT`, `KVR_CLOSED`, `KVR_REMOVED`.
#[no_mangle]
pub unsafe extern "C" fn kvr_transfer_leader(db: *mut kvr, id: u64) -> c_int {
    with_replica(db, |r| r.transfer_leader(id))
}

/// Lists the members, read linearizably, as JSON text (not NUL-terminated) in a new buffer:
/// `[{"id":1,"addr":"127.0.0.1:7001","role":"voter"},...]` sorted by id; `role` is `voter` or
/// `learner`. Free the buffer with `kvr_buf_free`.
/// Codes: `KVR_OK`, `KVR_INVALID_ARG`, `KVR_TIMEOUT`, `KVR_NO_LEADER`, `KVR_CLOSED`.
#[no_mangle]
pub unsafe extern "C" fn kvr_members(db: *mut kvr, out: *mut kvr_buf) -> c_int {
    with_replica(db, |r| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let text = crate::replica::members_json(&r.members()?);
        let buf = alloc_buf(text.as_bytes())?;
        // SAFETY: `out` is non-NULL and writable, by contract.
        unsafe { *out = buf };
        Ok(())
    })
}

/// Statistics as JSON text (not NUL-terminated) in a new buffer; free it with `kvr_buf_free`.
/// Fields: `node_id`, `role`, `leader_id`, `term`, `commit_index`, `applied_index`,
/// `first_index`, `last_index`, `log_entries`, `log_bytes`, `data_bytes`, `snapshot_index`,
/// `snapshots_taken`, `snapshots_installed`, `snapshots_sent`, `proposals_total`,
/// `proposals_per_s`, `apply_batches`, `apply_batch_avg`, `apply_batch_max`, `entries_applied`,
/// `duplicates`, `log_writes` (log appends, one fdatasync each), `log_write_us` and
/// `apply_commit_us` (microseconds spent in log appends and in committing apply batches since
/// open), `lease_reads_local` (lease reads answered from the leader's lease on the caller's
/// thread), `read_rounds` (ReadIndex rounds started for linearizable reads, each serving every
/// read that joined it), `votes_held` (campaigns of others ignored within an election timeout of this
/// replica's restart), `peers` (leader only: `id`, `match_index`, `next_index`, `lag`, `state`) and
/// `transport` (`sent`, `received`, `dropped`, `refused`, `snapshot_bytes_sent`,
/// `snapshots_received`). Never blocks on the network.
/// Codes: `KVR_OK`, `KVR_INVALID_ARG`, `KVR_CLOSED`.
#[no_mangle]
pub unsafe extern "C" fn kvr_stats(db: *mut kvr, out: *mut kvr_buf) -> c_int {
    with_replica(db, |r| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let buf = alloc_buf(r.stats_json().as_bytes())?;
        // SAFETY: `out` is non-NULL and writable, by contract.
        unsafe { *out = buf };
        Ok(())
    })
}

/// Writes a consistent copy of this replica's state machine, as of one LMDB read txn, to the
/// file `path` (NUL-terminated; it must not exist), while writes go on. Seed a new cluster from
/// it by opening its founding replicas on empty directories with option `restore_from=PATH`.
/// Codes: `KVR_OK`, `KVR_INVALID_ARG` (NULL path, file exists), `KVR_IO`, `KVR_CLOSED`.
#[no_mangle]
pub unsafe extern "C" fn kvr_backup(db: *mut kvr, path: *const c_char) -> c_int {
    with_replica(db, |r| {
        // SAFETY: forwarded caller promise of a NUL-terminated string.
        let path = unsafe { str_arg(path, "path")? };
        r.backup(std::path::Path::new(path))
    })
}
