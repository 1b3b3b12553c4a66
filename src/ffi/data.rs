//! The C ABI of the data model beyond put/get/delete: TTL, atomic batches, compare-and-swap,
//! append, scans with iterators, and the change feed.

use std::ffi::c_int;
use std::time::Duration;

use super::{
    alloc_buf, bytes, consistency_arg, guarded, key_arg, kvr, kvr_buf, with_replica, KVR_OK,
};
use super::{KVR_INVALID_ARG, KVR_NOT_FOUND, KVR_PANIC, KVR_TIMEOUT};
use crate::error::Error;
use crate::replica::{BatchWrite, EventKind, ScanRange, Watch};

/// `kvr_batch_op.op`: set a key.
pub const KVR_OP_PUT: c_int = 1;
/// `kvr_batch_op.op`: delete a key.
pub const KVR_OP_DELETE: c_int = 2;

/// `kvr_event.kind`: the key was set.
pub const KVR_EVENT_PUT: c_int = 1;
/// `kvr_event.kind`: the key was deleted.
pub const KVR_EVENT_DELETE: c_int = 2;
/// `kvr_event.kind`: the key expired.
pub const KVR_EVENT_EXPIRE: c_int = 3;

/// One write of an atomic batch. `val` is ignored for `KVR_OP_DELETE`.
#[repr(C)]
pub struct kvr_batch_op {
    /// `KVR_OP_PUT` or `KVR_OP_DELETE`.
    pub op: c_int,
    /// Key bytes.
    pub key: *const u8,
    /// Key length.
    pub key_len: usize,
    /// Value bytes (may be NULL when `val_len` is 0).
    pub val: *const u8,
    /// Value length.
    pub val_len: usize,
}

/// The result of a scan (opaque): pairs copied out at the time of the scan. Not thread-safe;
/// independent of the replica once created. Free it with `kvr_iter_free`.
pub struct kvr_iter {
    items: std::vec::IntoIter<(Vec<u8>, Vec<u8>)>,
    next: Option<Vec<u8>>,
}

/// A cursor on the change feed (opaque). Not thread-safe: use it from one thread at a time.
/// Free it with `kvr_watch_free`.
pub struct kvr_watcher {
    watch: Watch,
}

/// One change of the feed, filled by `kvr_watch_next`; release its buffers with
/// `kvr_event_free`.
#[repr(C)]
pub struct kvr_event {
    /// Raft index of the entry that made the change (resume after it with `index + 1`).
    pub index: u64,
    /// `KVR_EVENT_PUT`, `KVR_EVENT_DELETE` or `KVR_EVENT_EXPIRE`.
    pub kind: c_int,
    /// The key.
    pub key: kvr_buf,
    /// The new value (empty unless `kind` is `KVR_EVENT_PUT`).
    pub value: kvr_buf,
}

/// Sets `key` to `val` for `ttl_ms` milliseconds (> 0). Afterwards no read returns it, and the
/// leader removes it through the log, so every replica removes it at the same index. Same
/// blocking and codes as `kvr_put`; a key with a TTL is at most `KVR_TTL_KEY_BYTES_MAX` bytes.
#[no_mangle]
pub unsafe extern "C" fn kvr_put_ttl(
    db: *mut kvr,
    key: *const u8,
    key_len: usize,
    val: *const u8,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    with_replica(db, |r| {
        // SAFETY: forwarded caller promise about the buffers.
        let k = unsafe { key_arg(key, key_len)? };
        let v = unsafe { bytes(val, val_len, "value")? };
        r.put_with_ttl(k, v, Duration::from_millis(ttl_ms))
    })
}

/// Applies the `n` writes of `ops`, in order, all or none (one Raft entry, one LMDB txn).
/// Blocks like `kvr_put`. Codes: `KVR_OK`, `KVR_INVALID_ARG` (NULL `ops` with `n` > 0, unknown
/// op, bad key or value, more than 10000 writes or 16 MiB), `KVR_TIMEOUT`, `KVR_NO_LEADER`,
/// `KVR_CLOSED`, `KVR_IO`. Nothing is written when any write is invalid.
#[no_mangle]
pub unsafe extern "C" fn kvr_batch(db: *mut kvr, ops: *const kvr_batch_op, n: usize) -> c_int {
    with_replica(db, |r| {
        if ops.is_null() && n > 0 {
            return Err(Error::invalid("ops is NULL"));
        }
        if n > crate::replica::BATCH_OPS_MAX {
            return Err(Error::invalid(format!(
                "batch of {n} writes exceeds {}",
                crate::replica::BATCH_OPS_MAX
            )));
        }
        let ops = if n == 0 {
            &[][..]
        } else {
            // SAFETY: the caller promises `n` readable ops at `ops`.
            unsafe { std::slice::from_raw_parts(ops, n) }
        };
        let mut writes = Vec::with_capacity(ops.len());
        for (i, o) in ops.iter().enumerate() {
            // SAFETY: forwarded caller promise about each op's buffers.
            let k = unsafe { key_arg(o.key, o.key_len) }
                .map_err(|e| Error::invalid(format!("op {i}: {e}")))?;
            writes.push(match o.op {
                KVR_OP_PUT => BatchWrite::Put(k, unsafe { bytes(o.val, o.val_len, "value")? }),
                KVR_OP_DELETE => BatchWrite::Delete(k),
                other => return Err(Error::invalid(format!("op {i}: unknown op {other}"))),
            });
        }
        r.batch(&writes)
    })
}

/// Sets `key` to `new_value` only if it currently holds `expected` — or, when `expect_absent`
/// is non-zero, only if it is absent (then `expected` is ignored). With `expect_absent` 0, a
/// NULL `expected` with `expected_len` 0 expects the empty value (present, zero bytes).
/// Linearizable; blocks like `kvr_put`. Codes: `KVR_OK`, `KVR_CAS_FAILED` (the key held
/// something else; nothing written), and the codes of `kvr_put`.
#[no_mangle]
pub unsafe extern "C" fn kvr_cas(
    db: *mut kvr,
    key: *const u8,
    key_len: usize,
    expected: *const u8,
    expected_len: usize,
    expect_absent: c_int,
    new_value: *const u8,
    new_len: usize,
) -> c_int {
    with_replica(db, |r| {
        // SAFETY: forwarded caller promise about the buffers.
        let k = unsafe { key_arg(key, key_len)? };
        let expected = if expect_absent != 0 {
            None
        } else {
            Some(unsafe { bytes(expected, expected_len, "expected")? })
        };
        let new = unsafe { bytes(new_value, new_len, "new value")? };
        r.cas(k, expected, Some(new))
    })
}

/// Appends `val` to the value of `key` (an absent key counts as empty). Linearizable; blocks
/// like `kvr_put`. `KVR_INVALID_ARG` if the result would exceed `KVR_VALUE_BYTES_MAX`.
#[no_mangle]
pub unsafe extern "C" fn kvr_append(
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
        r.append(k, v)
    })
}

/// Reads up to `limit` (1..=10000) pairs with keys in `[start, end)` in key order (`end_len`
/// 0: no upper bound; `start_len` 0: from the first key), with the given `KVR_READ_*`
/// consistency. On success writes a new iterator to `*out`. When the limit cut the scan
/// short, `kvr_iter_continuation` gives the key to resume from.
#[no_mangle]
pub unsafe extern "C" fn kvr_scan(
    db: *mut kvr,
    start: *const u8,
    start_len: usize,
    end: *const u8,
    end_len: usize,
    limit: usize,
    consistency: c_int,
    out: *mut *mut kvr_iter,
) -> c_int {
    with_replica(db, |r| {
        // SAFETY: forwarded caller promise about the buffers.
        let start = unsafe { bytes(start, start_len, "start")? };
        let end = unsafe { bytes(end, end_len, "end")? };
        let page = r.scan(
            ScanRange::Range { start, end },
            limit,
            consistency_arg(consistency)?,
        )?;
        write_iter(out, page)
    })
}

/// Like `kvr_scan` over the keys starting with `prefix` (all keys when `prefix_len` is 0).
/// To resume after the limit, call `kvr_scan` with the continuation as `start` and, as `end`,
/// the prefix with its last byte below 0xff incremented (and the bytes after it dropped).
#[no_mangle]
pub unsafe extern "C" fn kvr_scan_prefix(
    db: *mut kvr,
    prefix: *const u8,
    prefix_len: usize,
    limit: usize,
    consistency: c_int,
    out: *mut *mut kvr_iter,
) -> c_int {
    with_replica(db, |r| {
        // SAFETY: forwarded caller promise about the buffer.
        let prefix = unsafe { bytes(prefix, prefix_len, "prefix")? };
        let page = r.scan(
            ScanRange::Prefix(prefix),
            limit,
            consistency_arg(consistency)?,
        )?;
        write_iter(out, page)
    })
}

fn write_iter(
    out: *mut *mut kvr_iter,
    page: crate::storage::state_machine::ScanPage,
) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::invalid("out is NULL"));
    }
    let it = Box::new(kvr_iter {
        items: page.items.into_iter(),
        next: page.next,
    });
    // SAFETY: `out` is non-NULL and writable, by contract.
    unsafe { *out = Box::into_raw(it) };
    Ok(())
}

/// Moves to the next pair: writes new buffers to `*key` and `*val` (free both with
/// `kvr_buf_free`) and returns `KVR_OK`, or returns `KVR_NOT_FOUND` when the iterator is done
/// (buffers untouched). `KVR_INVALID_ARG` for NULL arguments.
#[no_mangle]
pub unsafe extern "C" fn kvr_iter_next(
    it: *mut kvr_iter,
    key: *mut kvr_buf,
    val: *mut kvr_buf,
) -> c_int {
    guarded(|| {
        // SAFETY: a non-NULL `it` comes from kvr_scan and is not freed yet, by contract.
        let Some(it) = (unsafe { it.as_mut() }) else {
            return KVR_INVALID_ARG;
        };
        if key.is_null() || val.is_null() {
            return KVR_INVALID_ARG;
        }
        let Some((k, v)) = it.items.next() else {
            return KVR_NOT_FOUND;
        };
        match (alloc_buf(&k), alloc_buf(&v)) {
            (Ok(kb), Ok(vb)) => {
                // SAFETY: both out-params are non-NULL and writable, by contract.
                unsafe {
                    *key = kb;
                    *val = vb;
                }
                KVR_OK
            }
            (a, b) => {
                for mut buf in [a, b].into_iter().flatten() {
                    // SAFETY: the buffer was just allocated by alloc_buf.
                    unsafe { super::kvr_buf_free(&mut buf) };
                }
                KVR_PANIC
            }
        }
    })
}

/// When the scan stopped at its limit, writes the key to resume from to `*next_start` (a new
/// buffer; pass it as `start` of the next `kvr_scan`) and returns `KVR_OK`; returns
/// `KVR_NOT_FOUND` when the scan covered the whole range.
#[no_mangle]
pub unsafe extern "C" fn kvr_iter_continuation(
    it: *const kvr_iter,
    next_start: *mut kvr_buf,
) -> c_int {
    guarded(|| {
        // SAFETY: a non-NULL `it` comes from kvr_scan and is not freed yet, by contract.
        let Some(it) = (unsafe { it.as_ref() }) else {
            return KVR_INVALID_ARG;
        };
        if next_start.is_null() {
            return KVR_INVALID_ARG;
        }
        let Some(next) = &it.next else {
            return KVR_NOT_FOUND;
        };
        match alloc_buf(next) {
            Ok(b) => {
                // SAFETY: `next_start` is non-NULL and writable, by contract.
                unsafe { *next_start = b };
                KVR_OK
            }
            Err(_) => KVR_PANIC,
        }
    })
}

/// Frees an iterator. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn kvr_iter_free(it: *mut kvr_iter) {
    if !it.is_null() {
        // SAFETY: `it` comes from kvr_scan and is freed once, by contract.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(unsafe { Box::from_raw(it) })
        }));
    }
}

/// Opens a cursor on the change feed of keys starting with `prefix` (all keys when
/// `prefix_len` is 0). `from_index` 0 starts with the next change; otherwise the changes of
/// entries at or after `from_index` come first. Codes: `KVR_OK`, `KVR_COMPACTED` (those changes
/// left the retained window, options `watch_retain_entries` and `watch_retain_bytes`),
/// `KVR_INVALID_ARG`, `KVR_CLOSED`.
#[no_mangle]
pub unsafe extern "C" fn kvr_watch(
    db: *mut kvr,
    prefix: *const u8,
    prefix_len: usize,
    from_index: u64,
    out: *mut *mut kvr_watcher,
) -> c_int {
    with_replica(db, |r| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        // SAFETY: forwarded caller promise about the buffer.
        let prefix = unsafe { bytes(prefix, prefix_len, "prefix")? };
        let w = Box::new(kvr_watcher {
            watch: r.watch(prefix, from_index)?,
        });
        // SAFETY: `out` is non-NULL and writable, by contract.
        unsafe { *out = Box::into_raw(w) };
        Ok(())
    })
}

/// Waits up to `timeout_ms` for the next change and fills `*ev` (free its buffers with
/// `kvr_event_free`). Codes: `KVR_OK`, `KVR_TIMEOUT` (no change yet; `*ev` untouched),
/// `KVR_COMPACTED` (the cursor fell behind the retained window), `KVR_CLOSED` (the replica
/// was closed), `KVR_INVALID_ARG`.
#[no_mangle]
pub unsafe extern "C" fn kvr_watch_next(
    w: *mut kvr_watcher,
    timeout_ms: u32,
    ev: *mut kvr_event,
) -> c_int {
    guarded(|| {
        // SAFETY: a non-NULL `w` comes from kvr_watch and is not freed yet, by contract.
        let Some(w) = (unsafe { w.as_mut() }) else {
            return KVR_INVALID_ARG;
        };
        if ev.is_null() {
            return KVR_INVALID_ARG;
        }
        let e = match w.watch.next(Duration::from_millis(u64::from(timeout_ms))) {
            Ok(Some(e)) => e,
            Ok(None) => return KVR_TIMEOUT,
            Err(e) => return e.code(),
        };
        let (Ok(key), Ok(value)) = (alloc_buf(&e.key), alloc_buf(&e.value)) else {
            return KVR_PANIC;
        };
        let kind = match e.kind {
            EventKind::Put => KVR_EVENT_PUT,
            EventKind::Delete => KVR_EVENT_DELETE,
            EventKind::Expire => KVR_EVENT_EXPIRE,
        };
        // SAFETY: `ev` is non-NULL and writable, by contract.
        unsafe {
            *ev = kvr_event {
                index: e.index,
                kind,
                key,
                value,
            }
        };
        KVR_OK
    })
}

/// Frees the buffers of an event filled by `kvr_watch_next`. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn kvr_event_free(ev: *mut kvr_event) {
    // SAFETY: a non-NULL `ev` was filled by kvr_watch_next (or zeroed).
    if let Some(ev) = unsafe { ev.as_mut() } {
        // SAFETY: the buffers were allocated by kvr (or are NULL).
        unsafe {
            super::kvr_buf_free(&mut ev.key);
            super::kvr_buf_free(&mut ev.value);
        }
    }
}

/// Frees a watch cursor. NULL is a no-op.
#[no_mangle]
pub unsafe extern "C" fn kvr_watch_free(w: *mut kvr_watcher) {
    if !w.is_null() {
        // SAFETY: `w` comes from kvr_watch and is freed once, by contract.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            drop(unsafe { Box::from_raw(w) })
        }));
    }
}
