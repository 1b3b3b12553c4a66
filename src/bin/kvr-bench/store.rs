//! What the load generator drives: a kvr replica through the Rust API or the C ABI, or the raw
//! LMDB reference. One enum so that every system is measured by the same loop.

use std::ffi::{CStr, CString};
use std::ptr;

use kvr::ffi;
use kvr::{Config, ReadConsistency, Replica, Role};

use crate::lmdb_ref::GroupCommit;

/// Which API hosts replica 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Rust,
    C,
}

impl Api {
    pub fn name(self) -> &'static str {
        match self {
            Api::Rust => "rust",
            Api::C => "c_abi",
        }
    }
}

/// A store under load. Every method may be called from many threads at once.
pub enum Store {
    Rust(Box<Replica>),
    C(CHandle),
    Lmdb(GroupCommit),
}

impl Store {
    /// Opens replica `options["node_id"]` in this process through `api`.
    pub fn open_kvr(api: Api, options: &[(&str, String)]) -> Result<Store, String> {
        match api {
            Api::Rust => {
                let mut cfg = Config::default();
                for (k, v) in options {
                    cfg.set(k, v).map_err(|e| format!("option {k}: {e}"))?;
                }
                Replica::open(cfg)
                    .map(|r| Store::Rust(Box::new(r)))
                    .map_err(|e| format!("open: {e}"))
            }
            Api::C => CHandle::open(options).map(Store::C),
        }
    }

    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match self {
            Store::Rust(r) => r.put(key, value).map_err(|e| e.to_string()),
            Store::C(h) => h.put(key, value),
            Store::Lmdb(g) => g.put(key, value),
        }
    }

    /// Reads `key`; absent is not an error.
    pub fn get(&self, key: &[u8], consistency: ReadConsistency) -> Result<(), String> {
        match self {
            Store::Rust(r) => r
                .get_with(key, consistency)
                .map(drop)
                .map_err(|e| e.to_string()),
            Store::C(h) => h.get(key, consistency),
            Store::Lmdb(g) => g.get(key),
        }
    }

    /// `(known leader, this replica leads)`; `(0, false)` for the LMDB reference.
    pub fn leadership(&self) -> (u64, bool) {
        match self {
            Store::Rust(r) => {
                let s = r.status();
                (s.leader_id, s.role == Role::Leader)
            }
            Store::C(h) => h.leadership(),
            Store::Lmdb(_) => (0, false),
        }
    }

    /// The replica's `stats` JSON (Rust API only; the C ABI run measures the same core).
    pub fn stats_json(&self) -> Option<String> {
        match self {
            Store::Rust(r) => Some(r.stats_json()),
            Store::C(_) | Store::Lmdb(_) => None,
        }
    }

    /// Closes and reports the store's fatal error, if it had one.
    pub fn close(self) -> Result<(), String> {
        match self {
            Store::Rust(r) => r.close().map_err(|e| e.to_string()),
            Store::C(mut h) => h.close(),
            Store::Lmdb(g) => g.close(),
        }
    }
}

/// A replica opened with `kvr_open`, driven only through `extern "C"` functions.
pub struct CHandle(*mut ffi::kvr);

// SAFETY: kvr.h documents a `kvr` handle as thread-safe: any function, any thread.
unsafe impl Send for CHandle {}
// SAFETY: as above.
unsafe impl Sync for CHandle {}

fn c_text(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: kvr returns NUL-terminated strings that live at least until the next call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl CHandle {
    fn open(options: &[(&str, String)]) -> Result<CHandle, String> {
        let o = ffi::kvr_options_new();
        if o.is_null() {
            return Err("kvr_options_new returned NULL".into());
        }
        let result = Self::open_with(o, options);
        // SAFETY: `o` came from kvr_options_new and is freed once.
        unsafe { ffi::kvr_options_free(o) };
        result
    }

    fn open_with(o: *mut ffi::kvr_options, options: &[(&str, String)]) -> Result<CHandle, String> {
        // SAFETY: `o` is a live options object; the strings outlive each call.
        let errmsg = || c_text(unsafe { ffi::kvr_options_errmsg(o) });
        for (k, v) in options {
            let (ck, cv) = (cstring(k)?, cstring(v)?);
            // SAFETY: as above.
            if unsafe { ffi::kvr_options_set(o, ck.as_ptr(), cv.as_ptr()) } != ffi::KVR_OK {
                return Err(format!("kvr_options_set {k}: {}", errmsg()));
            }
        }
        let mut db: *mut ffi::kvr = ptr::null_mut();
        // SAFETY: `o` is live and `db` is writable.
        let rc = unsafe { ffi::kvr_open(o, &mut db) };
        if rc != ffi::KVR_OK {
            return Err(format!("kvr_open: {}: {}", result_str(rc), errmsg()));
        }
        Ok(CHandle(db))
    }

    fn check(&self, rc: libc::c_int) -> Result<(), String> {
        if rc == ffi::KVR_OK {
            return Ok(());
        }
        // SAFETY: the handle is live (closed handles still answer kvr_errmsg).
        let msg = c_text(unsafe { ffi::kvr_errmsg(self.0) });
        Err(format!("{}: {msg}", result_str(rc)))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        // SAFETY: the buffers are valid for their lengths during the call.
        let rc =
            unsafe { ffi::kvr_put(self.0, key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
        self.check(rc)
    }

    fn get(&self, key: &[u8], consistency: ReadConsistency) -> Result<(), String> {
        let consistency = match consistency {
            ReadConsistency::Linearizable => ffi::KVR_READ_LINEARIZABLE,
            ReadConsistency::Lease => ffi::KVR_READ_LEASE,
            ReadConsistency::Stale => ffi::KVR_READ_STALE,
        };
        let mut buf = ffi::kvr_buf {
            ptr: ptr::null_mut(),
            len: 0,
        };
        // SAFETY: the key is valid for its length; `buf` is writable.
        let rc = unsafe { ffi::kvr_get_ex(self.0, key.as_ptr(), key.len(), consistency, &mut buf) };
        match rc {
            ffi::KVR_OK => {
                // SAFETY: `buf` was filled by kvr and is freed once.
                unsafe { ffi::kvr_buf_free(&mut buf) };
                Ok(())
            }
            ffi::KVR_NOT_FOUND => Ok(()),
            rc => self.check(rc),
        }
    }

    fn leadership(&self) -> (u64, bool) {
        let mut s = ffi::kvr_status_info {
            node_id: 0,
            leader_id: 0,
            term: 0,
            commit_index: 0,
            applied_index: 0,
            last_index: 0,
            applied_index_at_open: 0,
            entries_applied: 0,
            role: ffi::KVR_ROLE_FOLLOWER,
        };
        // SAFETY: the handle is live and `s` is writable.
        if unsafe { ffi::kvr_status(self.0, &mut s) } != ffi::KVR_OK {
            return (0, false);
        }
        (s.leader_id, s.role == ffi::KVR_ROLE_LEADER)
    }

    fn close(&mut self) -> Result<(), String> {
        // SAFETY: closing twice is allowed; the handle shell is never freed by kvr.
        let rc = unsafe { ffi::kvr_close(self.0) };
        self.check(rc)
    }
}

impl Drop for CHandle {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains NUL"))
}

fn result_str(rc: libc::c_int) -> String {
    c_text(ffi::kvr_result_str(rc))
}
