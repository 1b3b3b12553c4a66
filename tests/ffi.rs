//! The C ABI under bad input: every case answers with a named code and a message, never a
//! crash. Calls go through the exported `extern "C"` functions exactly as C would make them.

use std::ffi::{CStr, CString};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use ::kvr::ffi::*;

fn s(text: &str) -> CString {
    CString::new(text).unwrap()
}

fn text(p: *const std::ffi::c_char) -> String {
    assert!(!p.is_null());
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

struct Opts(*mut kvr_options);

impl Opts {
    fn new() -> Opts {
        let o = kvr_options_new();
        assert!(!o.is_null());
        Opts(o)
    }
    fn set(&self, k: &str, v: &str) -> i32 {
        unsafe { kvr_options_set(self.0, s(k).as_ptr(), s(v).as_ptr()) }
    }
    fn err(&self) -> String {
        text(unsafe { kvr_options_errmsg(self.0) })
    }
}

impl Drop for Opts {
    fn drop(&mut self) {
        unsafe { kvr_options_free(self.0) };
    }
}

fn open_single(dir: &std::path::Path) -> *mut kvr {
    let o = Opts::new();
    assert_eq!(o.set("dir", dir.to_str().unwrap()), KVR_OK);
    let mut db: *mut kvr = ptr::null_mut();
    assert_eq!(unsafe { kvr_open(o.0, &mut db) }, KVR_OK, "{}", o.err());
    assert!(!db.is_null());
    db
}

fn put(db: *mut kvr, k: &[u8], v: &[u8]) -> i32 {
    unsafe { kvr_put(db, k.as_ptr(), k.len(), v.as_ptr(), v.len()) }
}

fn errmsg(db: *mut kvr) -> String {
    text(unsafe { kvr_errmsg(db) })
}

#[test]
fn version_is_consistent() {
    assert_eq!(kvr_version(), KVR_VERSION_NUMBER);
    assert_eq!(
        KVR_VERSION_NUMBER,
        KVR_VERSION_MAJOR * 1_000_000 + KVR_VERSION_MINOR * 1_000 + KVR_VERSION_PATCH
    );
    let pkg = format!("{KVR_VERSION_MAJOR}.{KVR_VERSION_MINOR}.{KVR_VERSION_PATCH}");
    assert_eq!(
        pkg,
        env!("CARGO_PKG_VERSION"),
        "header version follows Cargo.toml"
    );
    assert_eq!(::kvr::VERSION_NUMBER, KVR_VERSION_NUMBER);
}

#[test]
fn result_strings_are_static_and_distinct() {
    let codes = [
        KVR_OK,
        KVR_NOT_FOUND,
        KVR_INVALID_ARG,
        KVR_TIMEOUT,
        KVR_NO_LEADER,
        KVR_CLOSED,
        KVR_IO,
        KVR_CORRUPT,
        KVR_PANIC,
        KVR_BUSY,
        KVR_CAS_FAILED,
        KVR_COMPACTED,
        KVR_REMOVED,
        KVR_REFUSED,
    ];
    let mut seen = std::collections::HashSet::new();
    for c in codes {
        let t = text(kvr_result_str(c));
        assert!(!t.is_empty() && t != "unknown result code", "code {c}");
        assert!(seen.insert(t), "code {c} shares its text");
    }
    assert_eq!(text(kvr_result_str(12345)), "unknown result code");
    assert_eq!(text(kvr_result_str(i32::MIN)), "unknown result code");
}

#[test]
fn options_reject_bad_input() {
    let o = Opts::new();
    assert_eq!(o.set("no_such_option", "1"), KVR_INVALID_ARG);
    assert!(o.err().contains("no_such_option"), "{}", o.err());
    assert_eq!(o.set("node_id", "0"), KVR_INVALID_ARG);
    assert_eq!(o.set("node_id", "abc"), KVR_INVALID_ARG);
    assert_eq!(o.set("peers", "1=127.0.0.1:7001,garbage"), KVR_INVALID_ARG);
    assert!(o.err().contains("garbage"), "{}", o.err());
    assert_eq!(o.set("peers", "1=127.0.0.1:99999"), KVR_INVALID_ARG);
    assert_eq!(
        o.set("peers", "1=127.0.0.1:7001,1=127.0.0.1:7002"),
        KVR_INVALID_ARG
    );
    assert_eq!(o.set("listen", "nowhere"), KVR_INVALID_ARG);
    assert_eq!(o.set("request_timeout_ms", "0"), KVR_INVALID_ARG);
    unsafe {
        assert_eq!(
            kvr_options_set(ptr::null_mut(), s("dir").as_ptr(), s("x").as_ptr()),
            KVR_INVALID_ARG
        );
        assert_eq!(
            kvr_options_set(o.0, ptr::null(), s("x").as_ptr()),
            KVR_INVALID_ARG
        );
        assert_eq!(
            kvr_options_set(o.0, s("dir").as_ptr(), ptr::null()),
            KVR_INVALID_ARG
        );
        let bad_utf8 = [0xffu8, 0xfe, 0];
        assert_eq!(
            kvr_options_set(o.0, bad_utf8.as_ptr().cast(), s("x").as_ptr()),
            KVR_INVALID_ARG
        );
        kvr_options_free(ptr::null_mut());
        assert!(!kvr_options_errmsg(ptr::null()).is_null());
    }
    assert_eq!(o.set("node_id", "3"), KVR_OK);
}

#[test]
fn open_rejects_bad_input_and_leaves_out_untouched() {
    let mut db: *mut kvr = ptr::null_mut();
    unsafe {
        assert_eq!(kvr_open(ptr::null(), &mut db), KVR_INVALID_ARG);
        let o = Opts::new();
        assert_eq!(kvr_open(o.0, ptr::null_mut()), KVR_INVALID_ARG);
        // No dir.
        let sentinel = 0x1 as *mut kvr;
        db = sentinel;
        assert_eq!(kvr_open(o.0, &mut db), KVR_INVALID_ARG);
        assert_eq!(db, sentinel, "out-param written only on success");
        assert!(o.err().contains("dir"), "{}", o.err());
        // This node missing from peers.
        let d = tempfile::tempdir().unwrap();
        assert_eq!(o.set("dir", d.path().to_str().unwrap()), KVR_OK);
        assert_eq!(o.set("node_id", "4"), KVR_OK);
        assert_eq!(o.set("peers", "1=127.0.0.1:7001,2=127.0.0.1:7002"), KVR_OK);
        assert_eq!(kvr_open(o.0, &mut db), KVR_INVALID_ARG);
        assert!(o.err().contains("peers"), "{}", o.err());
    }
}

#[test]
fn data_calls_reject_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let db = open_single(d.path());
    unsafe {
        // NULL handle.
        assert_eq!(put(ptr::null_mut(), b"k", b"v"), KVR_INVALID_ARG);
        let mut buf = kvr_buf {
            ptr: ptr::null_mut(),
            len: 0,
        };
        assert_eq!(
            kvr_get(ptr::null_mut(), b"k".as_ptr(), 1, &mut buf),
            KVR_INVALID_ARG
        );
        assert_eq!(
            kvr_delete(ptr::null_mut(), b"k".as_ptr(), 1),
            KVR_INVALID_ARG
        );
        let mut st = std::mem::zeroed::<kvr_status_info>();
        assert_eq!(kvr_status(ptr::null_mut(), &mut st), KVR_INVALID_ARG);
        assert!(!kvr_errmsg(ptr::null()).is_null());
        // NULL key, empty key, oversized key.
        assert_eq!(
            kvr_put(db, ptr::null(), 1, b"v".as_ptr(), 1),
            KVR_INVALID_ARG
        );
        assert!(errmsg(db).contains("key is NULL"), "{}", errmsg(db));
        assert_eq!(
            kvr_put(db, ptr::null(), 0, b"v".as_ptr(), 1),
            KVR_INVALID_ARG
        );
        assert_eq!(put(db, b"", b"v"), KVR_INVALID_ARG);
        assert!(errmsg(db).contains("empty"), "{}", errmsg(db));
        assert_eq!(put(db, &[b'k'; 512], b"v"), KVR_INVALID_ARG);
        assert!(errmsg(db).contains("512"), "{}", errmsg(db));
        assert_eq!(kvr_get(db, ptr::null(), 3, &mut buf), KVR_INVALID_ARG);
        assert_eq!(kvr_get(db, b"".as_ptr(), 0, &mut buf), KVR_INVALID_ARG);
        assert_eq!(kvr_delete(db, ptr::null(), 0), KVR_INVALID_ARG);
        // NULL value with a length, oversized value.
        assert_eq!(
            kvr_put(db, b"k".as_ptr(), 1, ptr::null(), 5),
            KVR_INVALID_ARG
        );
        assert_eq!(
            put(db, b"k", &vec![0u8; KVR_VALUE_BYTES_MAX + 1]),
            KVR_INVALID_ARG
        );
        // NULL value with length 0 is an empty value.
        assert_eq!(kvr_put(db, b"empty".as_ptr(), 5, ptr::null(), 0), KVR_OK);
        assert_eq!(kvr_get(db, b"empty".as_ptr(), 5, &mut buf), KVR_OK);
        assert_eq!(buf.len, 0);
        assert!(!buf.ptr.is_null());
        kvr_buf_free(&mut buf);
        assert!(buf.ptr.is_null());
        kvr_buf_free(&mut buf);
        kvr_buf_free(ptr::null_mut());
        // NULL out-params, unknown consistency.
        assert_eq!(
            kvr_get(db, b"k".as_ptr(), 1, ptr::null_mut()),
            KVR_INVALID_ARG
        );
        assert_eq!(kvr_status(db, ptr::null_mut()), KVR_INVALID_ARG);
        assert_eq!(
            kvr_get_ex(db, b"k".as_ptr(), 1, 77, &mut buf),
            KVR_INVALID_ARG
        );
        // Missing key: NOT_FOUND and the out-param untouched.
        let mut untouched = kvr_buf {
            ptr: 0x10 as *mut u8,
            len: 99,
        };
        assert_eq!(
            kvr_get(db, b"missing".as_ptr(), 7, &mut untouched),
            KVR_NOT_FOUND
        );
        assert_eq!((untouched.ptr as usize, untouched.len), (0x10, 99));
        // Nothing above changed state but the one valid put.
        assert_eq!(put(db, b"k", b"v"), KVR_OK);
        assert_eq!(
            kvr_get_ex(db, b"k".as_ptr(), 1, KVR_READ_STALE, &mut buf),
            KVR_OK
        );
        assert_eq!(std::slice::from_raw_parts(buf.ptr, buf.len), b"v");
        kvr_buf_free(&mut buf);
        assert_eq!(kvr_status(db, &mut st), KVR_OK);
        assert_eq!((st.node_id, st.leader_id, st.role), (1, 1, KVR_ROLE_LEADER));
        assert_eq!(kvr_close(db), KVR_OK);
    }
}

#[test]
fn closed_handle_answers_closed() {
    let d = tempfile::tempdir().unwrap();
    let db = open_single(d.path());
    unsafe {
        assert_eq!(put(db, b"k", b"v"), KVR_OK);
        assert_eq!(kvr_close(db), KVR_OK);
        assert_eq!(kvr_close(db), KVR_OK, "double close is harmless");
        assert_eq!(kvr_close(ptr::null_mut()), KVR_OK);
        assert_eq!(put(db, b"k", b"v"), KVR_CLOSED);
        assert!(errmsg(db).contains("closed"), "{}", errmsg(db));
        let mut buf = kvr_buf {
            ptr: ptr::null_mut(),
            len: 0,
        };
        assert_eq!(kvr_get(db, b"k".as_ptr(), 1, &mut buf), KVR_CLOSED);
        assert_eq!(kvr_delete(db, b"k".as_ptr(), 1), KVR_CLOSED);
        let mut st = std::mem::zeroed::<kvr_status_info>();
        assert_eq!(kvr_status(db, &mut st), KVR_CLOSED);
    }
    // The directory is free again.
    let db = open_single(d.path());
    let mut buf = kvr_buf {
        ptr: ptr::null_mut(),
        len: 0,
    };
    unsafe {
        assert_eq!(kvr_get(db, b"k".as_ptr(), 1, &mut buf), KVR_OK);
        kvr_buf_free(&mut buf);
        assert_eq!(kvr_close(db), KVR_OK);
    }
}

#[test]
fn second_open_of_a_directory_is_busy() {
    let d = tempfile::tempdir().unwrap();
    let db = open_single(d.path());
    let o = Opts::new();
    assert_eq!(o.set("dir", d.path().to_str().unwrap()), KVR_OK);
    let mut db2: *mut kvr = ptr::null_mut();
    assert_eq!(unsafe { kvr_open(o.0, &mut db2) }, KVR_BUSY);
    assert!(db2.is_null());
    assert!(o.err().contains("in use"), "{}", o.err());
    assert_eq!(unsafe { kvr_close(db) }, KVR_OK);
}

#[test]
fn close_while_calls_are_in_flight() {
    let d = tempfile::tempdir().unwrap();
    let db = open_single(d.path()) as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut codes = std::collections::HashSet::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let k = format!("w{t}-{i}");
                    let rc = put(db as *mut kvr, k.as_bytes(), b"v");
                    codes.insert(rc);
                    if rc == KVR_CLOSED {
                        break;
                    }
                    i += 1;
                }
                codes
            })
        })
        .collect();
    thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(unsafe { kvr_close(db as *mut kvr) }, KVR_OK);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let codes = w.join().unwrap();
        for c in &codes {
            assert!([KVR_OK, KVR_CLOSED].contains(c), "unexpected code {c}");
        }
        assert!(codes.contains(&KVR_OK));
    }
}
