//! Callers blocked on a proposal, keyed by the request's sequence number.

use std::collections::HashMap;
use std::sync::Mutex;

use flume::Sender;

use crate::error::{Error, Result};

/// Outcome of an applied proposal as seen by its caller.
pub type Outcome = Result<()>;

/// Where the latest attempt of a request stands, as far as this replica can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Sent to the raft thread, which has not taken it yet: it cannot be lost there.
    Queued,
    /// Handed to Raft while another replica leads (forwarded): the message can be lost.
    Forwarded,
    /// Appended to this replica's own log while it led in this term. A leader loses an entry of
    /// its own log only to a later leader, so while the term stands the request is not lost.
    Appended(u64),
}

/// A caller blocked on request `seq`.
struct Waiter {
    tx: Sender<Outcome>,
    attempt: Attempt,
}

/// The waiters of one replica's session.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, Waiter>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers the waiter of request `seq`.
    pub fn register(&self, seq: u64, tx: Sender<Outcome>) {
        self.lock().insert(
            seq,
            Waiter {
                tx,
                attempt: Attempt::Queued,
            },
        );
    }

    /// Records where the attempts of requests `seqs` now stand.
    pub fn set_attempt(&self, seqs: &[u64], attempt: Attempt) {
        let mut map = self.lock();
        for seq in seqs {
            if let Some(w) = map.get_mut(seq) {
                w.attempt = attempt;
            }
        }
    }

    /// Where the latest attempt of request `seq` stands (`Forwarded` once it is unknown).
    pub fn attempt(&self, seq: u64) -> Attempt {
        self.lock()
            .get(&seq)
            .map_or(Attempt::Forwarded, |w| w.attempt)
    }

    /// Forgets request `seq` (its caller gave up).
    pub fn unregister(&self, seq: u64) {
        self.lock().remove(&seq);
    }

    /// Completes request `seq` if someone still waits for it.
    pub fn complete(&self, seq: u64, outcome: Outcome) {
        let waiter = self.lock().remove(&seq);
        if let Some(w) = waiter {
            let _ = w.tx.try_send(outcome);
        }
    }

    /// Completes many requests: takes their waiters under one lock, and wakes them after
    /// releasing it. A woken caller takes the lock at once, to unregister its request, so one
    /// woken while the lock is held would block on it and need a second wake-up.
    pub fn complete_all(&self, done: impl IntoIterator<Item = (u64, Outcome)>) {
        let woken: Vec<(Sender<Outcome>, Outcome)> = {
            let mut map = self.lock();
            done.into_iter()
                .filter_map(|(seq, outcome)| map.remove(&seq).map(|w| (w.tx, outcome)))
                .collect()
        };
        for (tx, outcome) in woken {
            let _ = tx.try_send(outcome);
        }
    }

    /// Tells request `seq` that this attempt was dropped, without unregistering it: the caller
    /// retries with the same sequence.
    pub fn notify(&self, seq: u64, outcome: Outcome) {
        let tx = self.lock().get(&seq).map(|w| w.tx.clone());
        if let Some(tx) = tx {
            let _ = tx.try_send(outcome);
        }
    }

    /// Fails every waiter with `e`.
    pub fn fail_all(&self, e: &Error) {
        let waiters: Vec<Waiter> = self.lock().drain().map(|(_, w)| w).collect();
        for w in waiters {
            let _ = w.tx.try_send(Err(e.clone()));
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
