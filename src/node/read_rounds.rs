//! Linearizable reads in rounds, waited for on the caller's thread.
//!
//! A caller that wants a linearizable read notes the last round the raft thread started and
//! asks for another; the raft thread starts one ReadIndex request for every caller that asked
//! since its last one, and publishes the read index when a quorum confirms it. Each caller
//! waits for the first round started after it asked, then for its state machine to reach that
//! round's index, and reads. One round serves every caller that joined it, and the raft
//! thread handles no per-read message, channel or reply.
//!
//! Waking a sleeping thread is the dearest part of a read (an inter-processor interrupt, in a
//! virtual machine an exit), so the raft thread does not wake a round's callers one by one: it
//! wakes `FANOUT` of them (4), and each caller woken by a round wakes as many more before it
//! reads. The wake-ups spread over the callers' threads as a tree, and the raft thread goes
//! back to its work.
//!
//! Why it is linearizable: the raft thread raises `started` before it calls `read_index`, so a
//! round numbered above what a caller saw was issued after the caller looked, and its read
//! index covers every write acknowledged before (raft-rs takes the index from its commit index
//! when the request is made). A later round serves as well, since its index is higher still
//! and just as committed.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam::utils::CachePadded;

/// Longest a caller sleeps before it looks at the replica's state again.
const NAP_MAX: Duration = Duration::from_millis(100);
/// Callers sleep on one of this many words, chosen by the round they need, so that a round
/// that settles wakes its own callers and not those of the next one.
const SLOTS: u64 = 16;
/// Sleepers each woken caller wakes in turn.
const FANOUT: i32 = 4;

/// How waiting for a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundWait {
    /// Confirmed: reads must see the state machine at this index.
    Confirmed(u64),
    /// Given up by the raft thread (leader change, or no answer within the expiry): ask again.
    Abandoned,
    /// No leader was known when the round was due.
    NoLeader,
    /// The deadline passed.
    Timeout,
    /// The replica is stopping.
    Stopped,
}

/// Rounds as the raft thread starts and settles them.
pub struct ReadRounds {
    /// Longest a caller sleeps before it looks again ([`NAP_MAX`]).
    nap: Duration,
    /// Last round started.
    started: AtomicU64,
    /// Highest round confirmed.
    confirmed: AtomicU64,
    /// Highest read index confirmed (raised before `confirmed`).
    index: AtomicU64,
    /// Every round up to this one that is not confirmed was given up.
    abandoned: AtomicU64,
    /// Every round up to this one that is not confirmed was given up for lack of a leader.
    leaderless: AtomicU64,
    /// A caller asked for a round since the raft thread last started one.
    wanted: AtomicBool,
    /// Where callers sleep, by the round they need modulo [`SLOTS`].
    slots: [CachePadded<Slot>; SLOTS as usize],
}

impl Default for ReadRounds {
    fn default() -> Self {
        ReadRounds::with_nap(NAP_MAX)
    }
}

/// A word callers sleep on.
#[derive(Default)]
struct Slot {
    /// Bumped whenever one of the slot's rounds settles; sleepers wait for it to change.
    settled: AtomicU32,
    /// Callers asleep on `settled`.
    sleepers: AtomicU32,
    #[cfg(not(target_os = "linux"))]
    fallback: (std::sync::Mutex<()>, std::sync::Condvar),
}

impl ReadRounds {
    fn with_nap(nap: Duration) -> ReadRounds {
        ReadRounds {
            nap,
            started: AtomicU64::new(0),
            confirmed: AtomicU64::new(0),
            index: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            leaderless: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
            slots: Default::default(),
        }
    }

    /// Caller: the round its read needs, and whether it must wake the raft thread (no other
    /// caller asked since the raft thread last looked).
    pub fn join(&self) -> (u64, bool) {
        let need = self.started.load(Ordering::SeqCst) + 1;
        let wake = !self.wanted.swap(true, Ordering::SeqCst);
        (need, wake)
    }

    /// Caller: waits until round `need` (or a later one) settles, `deadline` passes or
    /// `stopping` is set.
    pub fn wait(&self, need: u64, deadline: Instant, stopping: &AtomicBool) -> RoundWait {
        let slot = &self.slots[(need % SLOTS) as usize];
        loop {
            let settled = slot.settled.load(Ordering::SeqCst);
            if self.confirmed.load(Ordering::SeqCst) >= need {
                return RoundWait::Confirmed(self.index.load(Ordering::SeqCst));
            }
            if self.abandoned.load(Ordering::SeqCst) >= need {
                return if self.leaderless.load(Ordering::SeqCst) >= need {
                    RoundWait::NoLeader
                } else {
                    RoundWait::Abandoned
                };
            }
            if stopping.load(Ordering::SeqCst) {
                return RoundWait::Stopped;
            }
            let now = Instant::now();
            if now >= deadline {
                return RoundWait::Timeout;
            }
            slot.sleepers.fetch_add(1, Ordering::SeqCst);
            slot.sleep(settled, (deadline - now).min(self.nap));
            slot.sleepers.fetch_sub(1, Ordering::SeqCst);
            if slot.settled.load(Ordering::SeqCst) != settled {
                // Woken by a round: pass the wake-up on before looking at it.
                slot.wake(FANOUT);
            }
        }
    }

    /// Raft thread: true when a caller asked for a round that is not started yet.
    pub fn wanted(&self) -> bool {
        self.wanted.load(Ordering::SeqCst)
    }

    /// Raft thread: true when a caller asked for a round since the last call.
    pub fn take_wanted(&self) -> bool {
        self.wanted.load(Ordering::Relaxed) && self.wanted.swap(false, Ordering::SeqCst)
    }

    /// Raft thread: numbers a new round; call before its `read_index`.
    pub fn start(&self) -> u64 {
        self.started.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Raft thread: the last round started.
    pub fn last_started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// Raft thread: a quorum confirmed `round` with read index `index`.
    pub fn confirm(&self, round: u64, index: u64) {
        self.index.fetch_max(index, Ordering::SeqCst);
        let before = self.confirmed.fetch_max(round, Ordering::SeqCst);
        self.settle(before, round);
    }

    /// Raft thread: rounds up to `through` that are not confirmed will not be; `no_leader`
    /// when that is because no leader is known.
    pub fn abandon(&self, through: u64, no_leader: bool) {
        if no_leader {
            self.leaderless.fetch_max(through, Ordering::SeqCst);
        }
        let before = self.abandoned.fetch_max(through, Ordering::SeqCst);
        // Callers of confirmed rounds are woken already.
        self.settle(before.max(self.confirmed.load(Ordering::SeqCst)), through);
    }

    /// Wakes every sleeping caller, to look at the replica's state (it is stopping).
    pub fn wake_all(&self) {
        for slot in &self.slots {
            slot.settled.fetch_add(1, Ordering::SeqCst);
            slot.wake(i32::MAX);
        }
    }

    /// Rounds after `before` up to `through` settled: starts waking their callers.
    fn settle(&self, before: u64, through: u64) {
        let first = before.max(through.saturating_sub(SLOTS)) + 1;
        for round in first..=through {
            let slot = &self.slots[(round % SLOTS) as usize];
            slot.settled.fetch_add(1, Ordering::SeqCst);
            slot.wake(FANOUT);
        }
    }
}

impl Slot {
    /// Wakes up to `n` sleepers, if any. A caller counts itself asleep before the kernel
    /// compares `settled`, so one not counted yet sees the new value and does not sleep.
    fn wake(&self, n: i32) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            self.wake_sleepers(n);
        }
    }

    #[cfg(target_os = "linux")]
    fn sleep(&self, seen: u32, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the futex word is a live AtomicU32 and `ts` outlives the call; FUTEX_WAIT
        // only reads both. It returns at once if the word no longer holds `seen`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.settled.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                seen,
                &ts as *const libc::timespec,
            )
        };
        if r == -1 {
            let e = std::io::Error::last_os_error().raw_os_error();
            if !matches!(e, Some(libc::EAGAIN | libc::EINTR | libc::ETIMEDOUT)) {
                // No futex here (a sandbox that forbids it): poll instead of spinning.
                std::thread::sleep(timeout.min(Duration::from_micros(200)));
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn wake_sleepers(&self, n: i32) {
        // SAFETY: FUTEX_WAKE on a live AtomicU32; it touches no memory.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.settled.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                n,
            );
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn sleep(&self, seen: u32, timeout: Duration) {
        let (lock, cv) = &self.fallback;
        let g = lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.settled.load(Ordering::SeqCst) == seen {
            let _ = cv.wait_timeout(g, timeout);
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn wake_sleepers(&self, _n: i32) {
        let (lock, cv) = &self.fallback;
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(20)
    }

    /// Waits until `n` callers sleep on the slot of round `need`.
    fn wait_asleep(r: &ReadRounds, need: u64, n: u32) {
        let slot = &r.slots[(need % SLOTS) as usize];
        let by = Instant::now() + Duration::from_secs(30);
        while slot.sleepers.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < by, "the callers never went to sleep");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_caller_needs_a_round_started_after_it_joined() {
        let r = ReadRounds::default();
        let stop = AtomicBool::new(false);
        let first = r.start();
        let (need, wake) = r.join();
        assert_eq!(need, first + 1);
        assert!(wake);
        // The round that was already out does not serve it.
        r.confirm(first, 7);
        let quick = Instant::now() + Duration::from_millis(20);
        assert_eq!(r.wait(need, quick, &stop), RoundWait::Timeout);
        assert!(r.take_wanted());
        let next = r.start();
        r.confirm(next, 9);
        assert_eq!(r.wait(need, soon(), &stop), RoundWait::Confirmed(9));
    }

    #[test]
    fn only_the_first_caller_of_a_round_wakes_the_raft_thread() {
        let r = ReadRounds::default();
        assert!(r.join().1);
        assert!(!r.join().1);
        assert!(r.take_wanted());
        assert!(!r.take_wanted());
        assert!(r.join().1);
    }

    #[test]
    fn a_later_round_serves_an_earlier_need() {
        let r = ReadRounds::default();
        let stop = AtomicBool::new(false);
        let (need, _) = r.join();
        let a = r.start();
        let b = r.start();
        r.confirm(b, 12);
        assert_eq!(a, need);
        assert_eq!(r.wait(need, soon(), &stop), RoundWait::Confirmed(12));
        // The index never goes back when an older round confirms late.
        r.confirm(a, 10);
        assert_eq!(r.wait(need, soon(), &stop), RoundWait::Confirmed(12));
    }

    #[test]
    fn abandoned_rounds_say_why() {
        let r = ReadRounds::default();
        let stop = AtomicBool::new(false);
        let (need, _) = r.join();
        let a = r.start();
        r.abandon(a, true);
        assert_eq!(r.wait(need, soon(), &stop), RoundWait::NoLeader);
        let (need, _) = r.join();
        let b = r.start();
        r.abandon(b, false);
        assert_eq!(r.wait(need, soon(), &stop), RoundWait::Abandoned);
        stop.store(true, Ordering::SeqCst);
        let (need, _) = r.join();
        assert_eq!(r.wait(need, soon(), &stop), RoundWait::Stopped);
    }

    #[test]
    fn sleeping_callers_wake_each_other_when_their_round_confirms() {
        // Naps longer than the deadline: only the wake-ups can let them go in time.
        let r = Arc::new(ReadRounds::with_nap(Duration::from_secs(60)));
        let stop = Arc::new(AtomicBool::new(false));
        let sleepers = 4 * FANOUT as u32 * FANOUT as u32;
        let callers: Vec<_> = (0..sleepers)
            .map(|_| {
                let (r, stop) = (r.clone(), stop.clone());
                let (need, _) = r.join();
                std::thread::spawn(move || r.wait(need, soon(), &stop))
            })
            .collect();
        wait_asleep(&r, r.last_started() + 1, sleepers);
        let confirmed_at = Instant::now();
        let round = r.start();
        r.confirm(round, 42);
        for c in callers {
            assert_eq!(c.join().unwrap(), RoundWait::Confirmed(42));
        }
        // Without the wake-ups they would sleep out their deadline (20 s).
        assert!(confirmed_at.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn stopping_wakes_every_sleeper() {
        let r = Arc::new(ReadRounds::with_nap(Duration::from_secs(60)));
        let stop = Arc::new(AtomicBool::new(false));
        let (need, _) = r.join();
        let caller = {
            let (r, stop) = (r.clone(), stop.clone());
            std::thread::spawn(move || r.wait(need, soon(), &stop))
        };
        wait_asleep(&r, need, 1);
        stop.store(true, Ordering::SeqCst);
        r.wake_all();
        assert_eq!(caller.join().unwrap(), RoundWait::Stopped);
    }
}
