//! The C ABI. Every `extern "C"` function of kvr is here and nothing else; `build.rs` turns
//! this file into `include/kvr.h` with cbindgen.
//!
//! Rules every function follows:
//! - the body runs inside one panic boundary: a panic becomes `KVR_PANIC` and poisons the handle;
//! - every pointer is checked; NULL gives `KVR_INVALID_ARG` (the `_free`/`close` calls accept NULL);
//! - out-params are written only on success; returned memory belongs to the caller and is freed
//!   with the matching `_free` call;
//! - a closed handle stays a valid pointer (a small shell is kept for the life of the process), so
//!   calls through it fail with `KVR_CLOSED` instead of touching freed memory.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

mod admin;
mod data;

pub use admin::*;
pub use data::*;

use std::collections::VecDeque;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{self, AssertUnwindSafe};
use std::ptr;
use std::slice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::Config;
use crate::error::{codes, Error};
use crate::replica::{ReadConsistency, Replica};

/// Success.
pub const KVR_OK: c_int = 0;
/// The key does not exist.
pub const KVR_NOT_FOUND: c_int = -1;
/// Bad argument: NULL pointer, empty or oversized key or value, unknown option, bad option value.
pub const KVR_INVALID_ARG: c_int = -2;
/// The request did not complete within `request_timeout_ms`. A write may still be applied later.
pub const KVR_TIMEOUT: c_int = -3;
/// No leader is known (election in progress or no quorum reachable).
pub const KVR_NO_LEADER: c_int = -4;
/// The handle is closed.
pub const KVR_CLOSED: c_int = -5;
/// Operating-system or LMDB I/O error.
pub const KVR_IO: c_int = -6;
/// Stored or received data failed validation.
pub const KVR_CORRUPT: c_int = -7;
/// A panic was caught inside kvr; the handle is poisoned (only `kvr_close` is useful).
pub const KVR_PANIC: c_int = -8;
/// The data directory is in use by another replica.
pub const KVR_BUSY: c_int = -9;
/// Compare-and-swap found a different value.
pub const KVR_CAS_FAILED: c_int = -10;
/// The requested history was compacted.
pub const KVR_COMPACTED: c_int = -11;
/// This replica was removed from the cluster.
pub const KVR_REMOVED: c_int = -12;
/// Refused by the cluster or a peer.
pub const KVR_REFUSED: c_int = -13;

/// Read consistency for `kvr_get_ex`: linearizable through Raft ReadIndex (the default).
pub const KVR_READ_LINEARIZABLE: c_int = 0;
/// Read consistency: a leader answers from its lease (no quorum round while the lease holds,
/// assumes bounded clock drift); followers and leaders without a lease use ReadIndex.
pub const KVR_READ_LEASE: c_int = 1;
/// Read consistency for `kvr_get_ex`: local state machine, no Raft round trip; may be stale.
pub const KVR_READ_STALE: c_int = 2;

/// Major version of this header and library.
pub const KVR_VERSION_MAJOR: u32 = 0;
/// Minor version.
pub const KVR_VERSION_MINOR: u32 = 2;
/// Patch version.
pub const KVR_VERSION_PATCH: u32 = 0;
/// `MAJOR * 1000000 + MINOR * 1000 + PATCH`; compare with `kvr_version()` at load time.
pub const KVR_VERSION_NUMBER: u32 = 2000;

/// Longest key accepted, in bytes.
pub const KVR_KEY_BYTES_MAX: usize = 511;
/// Longest key accepted by `kvr_put_ttl`, in bytes.
pub const KVR_TTL_KEY_BYTES_MAX: usize = 503;
/// Largest value accepted, in bytes.
pub const KVR_VALUE_BYTES_MAX: usize = 4194304;

/// Role values in `kvr_status_info.role`.
pub const KVR_ROLE_FOLLOWER: c_int = 0;
/// Candidate (election in progress).
pub const KVR_ROLE_CANDIDATE: c_int = 1;
/// Leader.
pub const KVR_ROLE_LEADER: c_int = 2;
/// Non-voting learner.
pub const KVR_ROLE_LEARNER: c_int = 3;

/// Most error messages kept alive per handle; `kvr_errmsg` pointers stay valid this many errors.
const ERRMSG_KEPT: usize = 8;

/// One replica (opaque). Thread-safe: any function may be called from any thread.
pub struct kvr {
    replica: RwLock<Option<Arc<Replica>>>,
    errors: ErrorText,
    poisoned: AtomicBool,
}

/// Options for `kvr_open` (opaque). Not thread-safe: fill it from one thread.
pub struct kvr_options {
    cfg: Mutex<Config>,
    errors: ErrorText,
}

/// A byte buffer returned by kvr. Owned by the caller; release with `kvr_buf_free`.
#[repr(C)]
pub struct kvr_buf {
    /// Start of the bytes (never NULL after a successful call, even when `len` is 0).
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
}

/// A snapshot of a replica's state, filled by `kvr_status`.
#[repr(C)]
pub struct kvr_status_info {
    /// This replica's id.
    pub node_id: u64,
    /// Known leader id, 0 when none.
    pub leader_id: u64,
    /// Current Raft term.
    pub term: u64,
    /// Highest log index known committed.
    pub commit_index: u64,
    /// Highest log index applied to the state machine.
    pub applied_index: u64,
    /// Last index in the local log.
    pub last_index: u64,
    /// Applied index found on disk when the replica was opened.
    pub applied_index_at_open: u64,
    /// Entries applied by this process since `kvr_open`.
    pub entries_applied: u64,
    /// One of the `KVR_ROLE_*` values.
    pub role: c_int,
}

struct ErrorText {
    msgs: Mutex<VecDeque<CString>>,
}

impl ErrorText {
    fn new() -> ErrorText {
        ErrorText {
            msgs: Mutex::new(VecDeque::with_capacity(ERRMSG_KEPT)),
        }
    }

    fn set(&self, msg: &str) {
        let c = CString::new(msg.replace('\0', " ")).expect("NULs removed");
        let mut q = self.msgs.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == ERRMSG_KEPT {
            q.pop_front();
        }
        q.push_back(c);
    }

    fn last(&self) -> *const c_char {
        let q = self.msgs.lock().unwrap_or_else(|p| p.into_inner());
        match q.back() {
            // The CString's heap buffer does not move while it sits in the queue.
            Some(c) => c.as_ptr(),
            None => c"".as_ptr(),
        }
    }
}

/// Handles closed so far. Their shells stay allocated so that a stale pointer keeps answering
/// `KVR_CLOSED`; keeping them listed here also tells leak checkers they are still reachable.
static RETIRED: Mutex<Vec<usize>> = Mutex::new(Vec::new());

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Runs `f` with the handle's replica, inside the panic boundary, recording any error text.
fn with_replica(db: *mut kvr, f: impl FnOnce(&Replica) -> Result<(), Error>) -> c_int {
    // SAFETY: a non-NULL `db` was returned by kvr_open and is never freed (see RETIRED).
    let Some(h) = (unsafe { db.as_ref() }) else {
        return KVR_INVALID_ARG;
    };
    if h.poisoned.load(Ordering::Acquire) {
        h.errors
            .set("handle poisoned by an earlier internal panic; close it");
        return KVR_PANIC;
    }
    let replica = h.replica.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(replica) = replica else {
        h.errors.set("replica is closed");
        return KVR_CLOSED;
    };
    match panic::catch_unwind(AssertUnwindSafe(|| f(&replica))) {
        Ok(Ok(())) => KVR_OK,
        Ok(Err(e)) => {
            h.errors.set(&e.to_string());
            e.code()
        }
        Err(p) => {
            h.poisoned.store(true, Ordering::Release);
            h.errors
                .set(&format!("internal panic: {}", panic_text(p.as_ref())));
            KVR_PANIC
        }
    }
}

/// Runs `f` inside a panic boundary when there is no handle to poison.
fn guarded(f: impl FnOnce() -> c_int) -> c_int {
    panic::catch_unwind(AssertUnwindSafe(f)).unwrap_or(KVR_PANIC)
}

/// Borrows `len` bytes at `p`; NULL is allowed only when `len` is 0. A length above
/// `PTRDIFF_MAX` describes no buffer at all and is refused before anything is read.
unsafe fn bytes<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if p.is_null() {
        if len == 0 {
            return Ok(&[]);
        }
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    if len > isize::MAX as usize {
        return Err(Error::invalid(format!(
            "{what} length {len} is larger than any buffer"
        )));
    }
    // SAFETY: the caller promises `p` points to `len` readable bytes.
    Ok(unsafe { slice::from_raw_parts(p, len) })
}

unsafe fn key_arg<'a>(p: *const u8, len: usize) -> Result<&'a [u8], Error> {
    if p.is_null() {
        return Err(Error::invalid("key is NULL"));
    }
    if len > crate::config::KEY_BYTES_MAX {
        return Err(Error::invalid(format!(
            "key of {len} bytes exceeds {}",
            crate::config::KEY_BYTES_MAX
        )));
    }
    // SAFETY: forwarded caller promise.
    let k = unsafe { bytes(p, len, "key")? };
    crate::replica::check_key(k)?;
    Ok(k)
}

unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Error> {
    if p.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Error::invalid(format!("{what} is not valid UTF-8")))
}

/// Packed version of the library: `MAJOR * 1000000 + MINOR * 1000 + PATCH`.
/// Compare with `KVR_VERSION_NUMBER` to check that header and library match.
#[no_mangle]
pub extern "C" fn kvr_version() -> u32 {
    crate::VERSION_NUMBER
}

/// Static, NUL-terminated description of a result code (never NULL; unknown codes are
/// described as such). Thread-safe; the string must not be freed.
#[no_mangle]
pub extern "C" fn kvr_result_str(rc: c_int) -> *const c_char {
    let s: &'static CStr = match rc {
        codes::OK => c"ok",
        codes::NOT_FOUND => c"not found",
        codes::INVALID_ARG => c"invalid argument",
        codes::TIMEOUT => c"timed out",
        codes::NO_LEADER => c"no leader",
        codes::CLOSED => c"closed",
        codes::IO => c"I/O error",
        codes::CORRUPT => c"corrupt data",
        codes::PANIC => c"internal panic",
        codes::BUSY => c"busy",
        codes::CAS_FAILED => c"compare-and-swap failed",
        codes::COMPACTED => c"compacted",
        codes::REMOVED => c"removed from cluster",
        codes::REFUSED => c"refused",
        _ => c"unknown result code",
    };
    s.as_ptr()
}

/// Creates an options object with defaults. Returns NULL only if memory is exhausted.
/// Free it with `kvr_options_free` (after `kvr_open`, which copies what it needs).
#[no_mangle]
pub extern "C" fn kvr_options_new() -> *mut kvr_options {
    panic::catch_unwind(|| {
        Box::into_raw(Box::new(kvr_options {
            cfg: Mutex::new(Config::default()),
            errors: ErrorText::new(),
        }))
    })
    .unwrap_or(ptr::null_mut())
}

/// Sets option `key` to `value` (both NUL-terminated UTF-8). Keys: `node_id`, `dir`, `listen`,
/// `peers` (`1=host:port,2=host:port,...` including this node), `cluster_id`,
/// `request_timeout_ms`, `tick_ms`, `election_ticks`, `heartbeat_ticks`, `map_size_mb`, `join`,
/// `snapshot_entries`, `compaction_margin`, `watch_retain_entries`, `watch_retain_bytes`,
/// `restore_from`,
/// `cluster_secret` (at least 16 bytes; every replica of the cluster must have the same one).
/// Returns `KVR_OK`, or `KVR_INVALID_ARG` for NULL arguments, unknown keys and bad values
/// (the reason is in `kvr_options_errmsg`).
#[no_mangle]
pub unsafe extern "C" fn kvr_options_set(
    o: *mut kvr_options,
    key: *const c_char,
    value: *const c_char,
) -> c_int {
    guarded(|| {
        // SAFETY: a non-NULL `o` comes from kvr_options_new.
        let Some(o) = (unsafe { o.as_ref() }) else {
            return KVR_INVALID_ARG;
        };
        // SAFETY: forwarded caller promise of NUL-terminated strings.
        let r = unsafe { str_arg(key, "key") }
            .and_then(|k| unsafe { str_arg(value, "value") }.map(|v| (k, v)))
            .and_then(|(k, v)| o.cfg.lock().unwrap_or_else(|p| p.into_inner()).set(k, v));
        match r {
            Ok(()) => KVR_OK,
            Err(e) => {
                o.errors.set(&e.to_string());
                e.code()
            }
        }
    })
}

/// Text of the last failure of `kvr_options_set` or `kvr_open` with these options ("" if none).
/// Valid until the options are freed; do not free it.
#[no_mangle]
pub unsafe extern "C" fn kvr_options_errmsg(o: *const kvr_options) -> *const c_char {
    // SAFETY: a non-NULL `o` comes from kvr_options_new.
    match unsafe { o.as_ref() } {
        Some(o) => o.errors.last(),
        None => c"options handle is NULL".as_ptr(),
    }
}

/// Frees an options object. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn kvr_options_free(o: *mut kvr_options) {
    if !o.is_null() {
        // SAFETY: `o` comes from kvr_options_new and is freed once, by contract.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(o) })));
    }
}

/// Opens a replica: creates or recovers its directory, starts its threads, binds its listen
/// address. On success writes a new handle to `*out` and returns `KVR_OK`; on failure `*out`
/// is left untouched and the reason is in `kvr_options_errmsg(o)`.
/// Codes: `KVR_INVALID_ARG` (NULL, bad options), `KVR_BUSY` (directory in use),
/// `KVR_IO`, `KVR_CORRUPT`. Blocks for the time it takes to open LMDB and bind.
#[no_mangle]
pub unsafe extern "C" fn kvr_open(o: *const kvr_options, out: *mut *mut kvr) -> c_int {
    guarded(|| {
        // SAFETY: a non-NULL `o` comes from kvr_options_new.
        let Some(o) = (unsafe { o.as_ref() }) else {
            return KVR_INVALID_ARG;
        };
        if out.is_null() {
            o.errors.set("out is NULL");
            return KVR_INVALID_ARG;
        }
        let cfg = o.cfg.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match Replica::open(cfg) {
            Ok(r) => {
                let h = Box::new(kvr {
                    replica: RwLock::new(Some(Arc::new(r))),
                    errors: ErrorText::new(),
                    poisoned: AtomicBool::new(false),
                });
                // SAFETY: `out` is non-NULL and points to writable storage, by contract.
                unsafe { *out = Box::into_raw(h) };
                KVR_OK
            }
            Err(e) => {
                o.errors.set(&e.to_string());
                e.code()
            }
        }
    })
}

/// Sets `key` to `val`. Blocks until the write is committed by a majority (on disk), or until
/// `request_timeout_ms`; every later read or watch on this replica sees it (a read waits for
/// the local apply when it must). Callable on any replica, from any thread.
/// `val` may be NULL when `val_len` is 0. Codes: `KVR_OK`, `KVR_INVALID_ARG` (NULL or empty key,
/// key over `KVR_KEY_BYTES_MAX`, value over `KVR_VALUE_BYTES_MAX`), `KVR_TIMEOUT`, `KVR_NO_LEADER`,
/// `KVR_CLOSED`, `KVR_IO`.
#[no_mangle]
pub unsafe extern "C" fn kvr_put(
    db: *mut kvr,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
) -> c_int {
    with_replica(db, |r| {
        // SAFETY: forwarded caller promise about the buffers.
        let k = unsafe { key_arg(key, key_len)? };
        let v = unsafe { bytes(val, val_len, "value")? };
        r.put(k, v)
    })
}

/// Reads `key` linearizably. On success writes a new buffer to `*out` (free it with
/// `kvr_buf_free`). Returns `KVR_NOT_FOUND` when the key is absent (then `*out` is untouched).
/// Blocks for one Raft read-index round trip at most `request_timeout_ms`.
#[no_mangle]
pub unsafe extern "C" fn kvr_get(
    db: *mut kvr,
    key: *const u8,
    key_len: usize,
    out: *mut kvr_buf,
) -> c_int {
    // SAFETY: forwarded caller promise.
    unsafe { kvr_get_ex(db, key, key_len, KVR_READ_LINEARIZABLE, out) }
}

/// Like `kvr_get` with an explicit consistency: `KVR_READ_LINEARIZABLE` (Raft ReadIndex),
/// `KVR_READ_LEASE` (a leader holding its lease answers without a quorum round; assumes
/// bounded clock drift; otherwise as linearizable) or `KVR_READ_STALE` (local read without
/// Raft: fast, may miss recent writes made elsewhere). `KVR_INVALID_ARG` for other values.
#[no_mangle]
pub unsafe extern "C" fn kvr_get_ex(
    db: *mut kvr,
    key: *const u8,
    key_len: usize,
    consistency: c_int,
    out: *mut kvr_buf,
) -> c_int {
    with_replica(db, |r| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let consistency = consistency_arg(consistency)?;
        // SAFETY: forwarded caller promise.
        let k = unsafe { key_arg(key, key_len)? };
        let v = r.get_with(k, consistency)?.ok_or(Error::NotFound)?;
        let buf = alloc_buf(&v)?;
        // SAFETY: `out` is non-NULL and writable, by contract.
        unsafe { *out = buf };
        Ok(())
    })
}

fn consistency_arg(c: c_int) -> Result<ReadConsistency, Error> {
    match c {
        KVR_READ_LINEARIZABLE => Ok(ReadConsistency::Linearizable),
        KVR_READ_LEASE => Ok(ReadConsistency::Lease),
        KVR_READ_STALE => Ok(ReadConsistency::Stale),
        other => Err(Error::invalid(format!("unknown read consistency {other}"))),
    }
}

fn alloc_buf(v: &[u8]) -> Result<kvr_buf, Error> {
    // SAFETY: malloc of at least one byte; checked for NULL below.
    let p = unsafe { libc::malloc(v.len().max(1)) } as *mut u8;
    if p.is_null() {
        return Err(Error::Io("out of memory".into()));
    }
    // SAFETY: `p` has room for `v.len()` bytes and does not overlap `v`.
    unsafe { ptr::copy_nonoverlapping(v.as_ptr(), p, v.len()) };
    Ok(kvr_buf {
        ptr: p,
        len: v.len(),
    })
}

/// Removes `key` (absent keys are not an error). Same blocking and codes as `kvr_put`.
#[no_mangle]
pub unsafe extern "C" fn kvr_delete(db: *mut kvr, key: *const u8, key_len: usize) -> c_int {
    with_replica(db, |r| {
        // SAFETY: forwarded caller promise.
        let k = unsafe { key_arg(key, key_len)? };
        r.delete(k)
    })
}

/// Frees the bytes of a buffer returned by kvr and resets it to `{NULL, 0}`. NULL, and a
/// buffer already reset, are no-ops.
#[no_mangle]
pub unsafe extern "C" fn kvr_buf_free(b: *mut kvr_buf) {
    // SAFETY: a non-NULL `b` points to a kvr_buf filled by kvr (or zeroed).
    if let Some(b) = unsafe { b.as_mut() } {
        if !b.ptr.is_null() {
            // SAFETY: `ptr` came from malloc in alloc_buf.
            unsafe { libc::free(b.ptr.cast()) };
        }
        b.ptr = ptr::null_mut();
        b.len = 0;
    }
}

/// Fills `*out` with the replica's current state. Never blocks.
/// Codes: `KVR_OK`, `KVR_INVALID_ARG`, `KVR_CLOSED`.
#[no_mangle]
pub unsafe extern "C" fn kvr_status(db: *mut kvr, out: *mut kvr_status_info) -> c_int {
    with_replica(db, |r| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        let s = r.status();
        let st = kvr_status_info {
            node_id: s.node_id,
            leader_id: s.leader_id,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            last_index: s.last_index,
            applied_index_at_open: s.applied_index_at_open,
            entries_applied: s.entries_applied,
            role: s.role as c_int,
        };
        // SAFETY: `out` is non-NULL and writable, by contract.
        unsafe { *out = st };
        Ok(())
    })
}

/// Text of the last error on this handle (never NULL; "" when none yet). Valid until a later
/// call on this handle has failed several more times; copy it if you keep it. Do not free it.
#[no_mangle]
pub unsafe extern "C" fn kvr_errmsg(db: *const kvr) -> *const c_char {
    // SAFETY: a non-NULL `db` was returned by kvr_open and is never freed.
    match unsafe { db.as_ref() } {
        Some(h) => h.errors.last(),
        None => c"handle is NULL".as_ptr(),
    }
}

/// Closes the replica: stops its threads, closes its connections and LMDB environments, and
/// releases its directory. Calls blocked in other threads return (with `KVR_CLOSED`) first.
/// NULL is a no-op. Closing twice returns `KVR_OK`; every other call on a closed handle returns
/// `KVR_CLOSED`. Returns the replica's fatal error code if it had failed, else `KVR_OK`.
#[no_mangle]
pub unsafe extern "C" fn kvr_close(db: *mut kvr) -> c_int {
    // SAFETY: a non-NULL `db` was returned by kvr_open and is never freed.
    let Some(h) = (unsafe { db.as_ref() }) else {
        return KVR_OK;
    };
    guarded(|| {
        let taken = h.replica.write().unwrap_or_else(|p| p.into_inner()).take();
        let Some(replica) = taken else { return KVR_OK };
        let rc = match replica.close() {
            Ok(()) => KVR_OK,
            Err(e) => {
                h.errors.set(&e.to_string());
                e.code()
            }
        };
        // Calls still in flight hold clones; they return promptly now that the replica is closed.
        let mut replica = replica;
        for _ in 0..1000 {
            match Arc::try_unwrap(replica) {
                Ok(r) => {
                    drop(r);
                    break;
                }
                Err(r) => {
                    replica = r;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        RETIRED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(db as usize);
        rc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_kvr_panic_and_poisons_the_handle() {
        let d = tempfile::tempdir().unwrap();
        let o = kvr_options_new();
        let dir = CString::new(d.path().to_str().unwrap()).unwrap();
        let mut db: *mut kvr = ptr::null_mut();
        unsafe {
            assert_eq!(kvr_options_set(o, c"dir".as_ptr(), dir.as_ptr()), KVR_OK);
            assert_eq!(kvr_open(o, &mut db), KVR_OK);
            kvr_options_free(o);
        }
        let rc = with_replica(db, |_| panic!("injected"));
        assert_eq!(rc, KVR_PANIC);
        let msg = unsafe { CStr::from_ptr(kvr_errmsg(db)) }
            .to_str()
            .unwrap()
            .to_string();
        assert!(msg.contains("injected"), "{msg}");
        let rc = unsafe { kvr_put(db, b"k".as_ptr(), 1, b"v".as_ptr(), 1) };
        assert_eq!(rc, KVR_PANIC, "poisoned handle refuses further calls");
        assert_eq!(unsafe { kvr_close(db) }, KVR_OK, "but can still be closed");
        assert_eq!(guarded(|| panic!("no handle")), KVR_PANIC);
    }
}
