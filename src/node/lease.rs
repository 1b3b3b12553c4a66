//! The leader's read lease as the raft thread last published it, so that a caller on the
//! leader answers a lease read with two atomic loads and a clock read instead of a round trip
//! through the raft thread.
//!
//! The raft thread publishes the lease together with its commit index before it sends any
//! message or hands any entry to the apply thread that a newer commit index lets go, and takes
//! the lease back, for the rest of the term, before it sends anything that lets another
//! replica campaign at once (a leadership transfer's TimeoutNow, which the transferee may act
//! on even after raft gave the transfer up). So a caller that finds the lease valid and the state machine at the
//! published index reads a state that holds every write acknowledged before it looked, on this
//! replica or any other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Callers record that they still use the lease at most this often (nanoseconds), so that
/// many readers do not all write the same cache line on every read.
const USE_MARK_NS: u64 = 1_000_000;

/// The published lease. Times are nanoseconds after `epoch`; 0 means none.
pub struct LeaseCell {
    epoch: Instant,
    until_ns: AtomicU64,
    index: AtomicU64,
    used_ns: AtomicU64,
}

impl Default for LeaseCell {
    fn default() -> Self {
        LeaseCell {
            epoch: Instant::now(),
            until_ns: AtomicU64::new(0),
            index: AtomicU64::new(0),
            used_ns: AtomicU64::new(0),
        }
    }
}

impl LeaseCell {
    fn ns(&self, t: Instant) -> u64 {
        // At least 1, so that a lease or a use is never mistaken for none.
        (t.saturating_duration_since(self.epoch).as_nanos() as u64).max(1)
    }

    /// Raft thread: the lease holds until `until`, and reads must see `commit`.
    pub fn publish(&self, until: Instant, commit: u64) {
        self.index.store(commit, Ordering::SeqCst);
        self.until_ns.store(self.ns(until), Ordering::SeqCst);
    }

    /// Raft thread: no lease (not leader, lease expired, or a transfer under way).
    pub fn revoke(&self) {
        self.until_ns.store(0, Ordering::SeqCst);
    }

    /// Caller: the index the state machine must hold for a lease read now, if the lease holds.
    pub fn read_index(&self, now: Instant) -> Option<u64> {
        let until = self.until_ns.load(Ordering::SeqCst);
        let now_ns = self.ns(now);
        if now_ns >= until {
            return None;
        }
        let index = self.index.load(Ordering::SeqCst);
        let used = self.used_ns.load(Ordering::Relaxed);
        if used == 0 || now_ns.saturating_sub(used) >= USE_MARK_NS {
            self.used_ns.store(now_ns, Ordering::Relaxed);
        }
        Some(index)
    }

    /// When a caller last read from the lease (to within a millisecond), if ever.
    pub fn last_used(&self) -> Option<Instant> {
        match self.used_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(self.epoch + std::time::Duration::from_nanos(ns)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_until_its_deadline_and_not_after_a_revoke() {
        let cell = LeaseCell::default();
        let now = Instant::now();
        assert_eq!(
            cell.read_index(now),
            None,
            "no lease before the first publish"
        );
        assert_eq!(cell.last_used(), None);

        cell.publish(now + Duration::from_millis(50), 42);
        assert_eq!(cell.read_index(now), Some(42));
        assert!(cell
            .last_used()
            .is_some_and(|t| t <= now + Duration::from_millis(1)));
        assert_eq!(cell.read_index(now + Duration::from_millis(49)), Some(42));
        assert_eq!(cell.read_index(now + Duration::from_millis(50)), None);

        cell.publish(now + Duration::from_millis(80), 43);
        assert_eq!(cell.read_index(now + Duration::from_millis(60)), Some(43));
        cell.revoke();
        assert_eq!(cell.read_index(now), None);
    }
}
