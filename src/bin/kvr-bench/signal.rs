//! SIGINT/SIGTERM turn into a flag that every loop polls, so the bench unwinds through its
//! guards and stops every process it started instead of dying with children left behind.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic; signal() with a valid function pointer.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// True once a stop was requested.
pub fn stopped() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// `Err("interrupted")` once a stop was requested.
pub fn check() -> Result<(), String> {
    if stopped() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}
