//! Callers blocked on a proposal, keyed by the request's sequence number.

use std::collections::HashMap;
use std::sync::Mutex;

use crossbeam::channel::Sender;

use crate::error::{Error, Result};

/// Outcome of an applied proposal as seen by its caller.
pub type Outcome = Result<()>;

/// The waiters of one replica's session.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, Sender<Outcome>>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sender<Outcome>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the waiter of request `seq`.
    pub fn register(&self, seq: u64, tx: Sender<Outcome>) {
        self.lock().insert(seq, tx);
    }

    /// Forgets request `seq` (its caller gave up).
    pub fn unregister(&self, seq: u64) {
        self.lock().remove(&seq);
    }

    /// Completes request `seq` if someone still waits for it.
    pub fn complete(&self, seq: u64, outcome: Outcome) {
        if let Some(tx) = self.lock().remove(&seq) {
            let _ = tx.try_send(outcome);
        }
    }

    /// Completes many requests under one lock.
    pub fn complete_all(&self, done: impl IntoIterator<Item = (u64, Outcome)>) {
        let mut map = self.lock();
        for (seq, outcome) in done {
            if let Some(tx) = map.remove(&seq) {
                let _ = tx.try_send(outcome);
            }
        }
    }

    /// Tells request `seq` that this attempt was dropped, without unregistering it: the caller
    /// retries with the same sequence.
    pub fn notify(&self, seq: u64, outcome: Outcome) {
        if let Some(tx) = self.lock().get(&seq) {
            let _ = tx.try_send(outcome);
        }
    }

    /// Fails every waiter with `e`.
    pub fn fail_all(&self, e: &Error) {
        for (_, tx) in self.lock().drain() {
            let _ = tx.try_send(Err(e.clone()));
        }
    }

    /// Number of requests waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nobody waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
