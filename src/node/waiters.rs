//! Callers blocked on a proposal, keyed by the request's sequence number.

use std::collections::{HashMap, VecDeque};
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

/// An answer taken from the map and not sent yet.
type Answer = (Sender<Outcome>, Outcome);

/// How many callers the completing thread wakes itself, and each woken caller after it.
const FAN_OUT: usize = 4;

/// The waiters of one replica's session.
///
/// A batch of answers wakes its callers as a tree: the completing thread (raft or apply)
/// sends [`FAN_OUT`] of them and queues the rest, and each caller, once woken, sends up to
/// [`FAN_OUT`] more ([`Waiters::relay`]). Each wake-up costs the waker an interrupt on this
/// kind of machine; spread over the callers, they no longer hold up the raft thread's next
/// append. Whatever the callers leave queued, the raft thread sends before it sleeps.
#[derive(Default)]
pub struct Waiters {
    map: Mutex<HashMap<u64, Waiter>>,
    /// Answers queued for the woken callers to send, oldest first.
    relay: Mutex<VecDeque<Answer>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiter>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn relay_lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Answer>> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner())
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
    /// releasing it (a woken caller takes the lock at once, to unregister its request, so one
    /// woken while the lock is held would block on it and need a second wake-up). Wakes
    /// [`FAN_OUT`] of them and leaves the others to the callers woken (see [`Waiters`]).
    pub fn complete_all(&self, done: impl IntoIterator<Item = (u64, Outcome)>) {
        let mut woken: Vec<Answer> = {
            let mut map = self.lock();
            done.into_iter()
                .filter_map(|(seq, outcome)| map.remove(&seq).map(|w| (w.tx, outcome)))
                .collect()
        };
        if woken.len() > FAN_OUT {
            let rest = woken.split_off(FAN_OUT);
            self.relay_lock().extend(rest);
        }
        for (tx, outcome) in woken {
            let _ = tx.try_send(outcome);
        }
    }

    /// Sends up to [`FAN_OUT`] queued answers, the oldest first: a caller's part of the tree of wake-ups, done
    /// once its own answer (or its deadline) woke it.
    pub fn relay(&self) {
        let answers: [Option<Answer>; FAN_OUT] = {
            let mut queue = self.relay_lock();
            std::array::from_fn(|_| queue.pop_front())
        };
        for (tx, outcome) in answers.into_iter().flatten() {
            let _ = tx.try_send(outcome);
        }
    }

    /// Sends every queued answer.
    pub fn relay_all(&self) {
        let answers = std::mem::take(&mut *self.relay_lock());
        for (tx, outcome) in answers {
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
        self.relay_all();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(w: &Waiters, n: u64) -> Vec<flume::Receiver<Outcome>> {
        (0..n)
            .map(|seq| {
                let (tx, rx) = flume::bounded(8);
                w.register(seq, tx);
                rx
            })
            .collect()
    }

    fn answered(rxs: &[flume::Receiver<Outcome>]) -> usize {
        rxs.iter().filter(|rx| !rx.is_empty()).count()
    }

    /// A batch wakes its callers as a tree: the completing thread sends a few answers, each
    /// relay a few more, and `relay_all` (the raft thread before it sleeps) sends the rest.
    #[test]
    fn a_batch_is_answered_as_a_tree() {
        let w = Waiters::default();
        let rxs = waiting(&w, 20);
        w.complete_all((0..20).map(|seq| (seq, Ok(()))));
        assert_eq!(answered(&rxs), FAN_OUT, "the completing thread wakes a few");
        assert!(w.is_empty(), "every request is taken from the map at once");
        w.relay();
        assert_eq!(
            answered(&rxs),
            2 * FAN_OUT,
            "a woken caller passes on a few"
        );
        assert!(
            rxs[..2 * FAN_OUT].iter().all(|rx| !rx.is_empty()),
            "the oldest queued answers go first"
        );
        w.relay_all();
        assert_eq!(answered(&rxs), 20);
        for rx in &rxs {
            assert!(matches!(rx.try_recv(), Ok(Ok(()))));
            assert!(rx.is_empty(), "answered once");
        }
        w.relay();
        w.relay_all();
        assert_eq!(answered(&rxs), 0, "nothing is sent twice");
    }

    /// Answers still queued when the replica fails go out as they were, before the failure
    /// reaches the callers still waiting.
    #[test]
    fn failing_sends_the_queued_answers_first() {
        let w = Waiters::default();
        let rxs = waiting(&w, 10);
        w.complete_all((0..6).map(|seq| (seq, Ok(()))));
        w.fail_all(&Error::Closed);
        for (seq, rx) in rxs.iter().enumerate() {
            let got = rx.try_recv().expect("every caller is answered");
            if seq < 6 {
                assert!(got.is_ok(), "request {seq} completed before the failure");
            } else {
                assert!(matches!(got, Err(Error::Closed)), "request {seq}");
            }
        }
    }
}
