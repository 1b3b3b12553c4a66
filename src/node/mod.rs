//! The threads of a running replica and what they share.
//!
//! - [`raft_loop`]: the raft thread, owner of `raft::RawNode`.
//! - [`apply`]: the apply thread, sole writer of the state machine.
//! - [`waiters`]: callers blocked on a proposal, completed by the apply thread.
//! - [`lease`]: the leader's read lease, published for callers by the raft thread.
//! - [`read_rounds`]: linearizable reads confirmed in rounds, waited for by the callers.

pub mod apply;
pub mod execute;
pub mod host;
pub mod inbox;
pub mod lease;
pub mod raft_loop;
pub mod read_rounds;
pub mod waiters;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use flume::Sender;
use raft::eraftpb::{ConfChange, ConfState, Entry, Message};

use crate::error::{Error, Result};
use crate::storage::snapshot::Staged;
use crate::storage::state_machine::StateMachine;
use crate::transport::TransportStats;

/// Work for the raft thread. The inbox is bounded: callers and peer readers block when the
/// raft thread falls behind, which pushes back on clients and on the TCP senders.
pub enum RaftMsg {
    /// Propose an encoded command; its waiter is registered under `seq` beforehand.
    Propose {
        /// Sequence of the request in this replica's session.
        seq: u64,
        /// Encoded [`crate::command::Command`].
        data: Vec<u8>,
    },
    /// A caller joined the next read round (see [`read_rounds`]).
    ReadWanted,
    /// Lease read the caller could not answer from the published lease: a leader holding a
    /// valid lease answers it at once, any other replica through a ReadIndex request; reply
    /// once the state machine has applied the read index.
    LeaseRead {
        /// Completed with `Ok` when reading locally is linearizable.
        reply: Sender<Result<()>>,
    },
    /// A message from a peer.
    Step(Message),
    /// An inbound connection of Raft messages for the raft thread to read from now on.
    Adopt(crate::transport::inbound::RaftConn),
    /// A snapshot message from a peer, its state already staged on disk.
    Snapshot {
        /// The `MsgSnapshot`.
        msg: Message,
        /// The received state.
        staged: Staged,
    },
    /// How sending a snapshot to a peer ended.
    SnapshotStatus {
        /// The peer.
        to: u64,
        /// True when the peer has the whole snapshot.
        ok: bool,
    },
    /// Propose a membership change; its waiter is registered under `seq` beforehand.
    ConfChange {
        /// Sequence of the request in this replica's session.
        seq: u64,
        /// The change (its context carries the session, sequence and address).
        cc: ConfChange,
    },
    /// Ask the leader to hand leadership to `to`.
    TransferLeader {
        /// The node to lead next.
        to: u64,
    },
    /// A peer announced the address it listens on.
    PeerAddr {
        /// The peer.
        id: u64,
        /// Its address.
        addr: String,
    },
    /// A peer could not be reached.
    Unreachable(u64),
    /// Stop the thread.
    Shutdown,
}

/// Work for the apply thread, in commit order.
pub enum ApplyTask {
    /// Committed entries, with the membership that results from each conf-change entry.
    Entries {
        /// The entries, contiguous and in order.
        entries: Vec<Entry>,
        /// `(index, conf state after it)` for each conf-change entry among them.
        confs: Vec<(u64, ConfState)>,
    },
    /// Replace the state machine with a received snapshot; reply when done.
    Install {
        /// The staged state.
        staged: Staged,
        /// Told the result.
        reply: Sender<Result<()>>,
    },
    /// Complete `waiters` once everything up to `index` is applied.
    ReadIndex {
        /// The read index.
        index: u64,
        /// Callers waiting to read.
        waiters: Vec<Sender<Result<()>>>,
    },
    /// Commit what is applied now: a caller waits to read it (see [`Shared::flush_to`]).
    Flush,
    /// Stop the thread.
    Shutdown,
}

/// Raft role of a replica, as reported in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Following a leader (or waiting for one).
    Follower = 0,
    /// Pre-campaigning or campaigning.
    Candidate = 1,
    /// Leading.
    Leader = 2,
    /// Non-voting member.
    Learner = 3,
}

impl Role {
    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Candidate,
            2 => Role::Leader,
            3 => Role::Learner,
            _ => Role::Follower,
        }
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
        }
    }
}

/// State shared by the caller threads, the raft thread and the apply thread.
pub struct Shared {
    /// This replica's node id.
    pub node_id: u64,
    /// Session id of this handle's requests (random per open).
    pub client_id: u64,
    /// Known leader, 0 when none.
    pub leader_id: AtomicU64,
    /// Current term.
    pub term: AtomicU64,
    /// [`Role`] as u8.
    pub role: AtomicU8,
    /// Commit index known to the raft thread.
    pub commit_index: AtomicU64,
    /// Last index in the log.
    pub last_index: AtomicU64,
    /// First index still in the log (everything before was compacted or snapshotted).
    pub first_index: AtomicU64,
    /// Applied index visible to readers (updated after each state machine commit).
    pub applied_index: AtomicU64,
    /// Highest index whose outcome was handed to a caller of this replica before the state
    /// machine commit holding it landed; local reads wait until `applied_index` reaches it.
    pub replied_index: AtomicU64,
    /// Watchers waiting for a change: while there are any, the apply thread holds applied
    /// entries for at most 10 ms instead of a second.
    pub watchers_waiting: AtomicUsize,
    /// Highest index a reader waits to see in the state machine (raised to `replied_index`):
    /// while its committed applied index is below it, the apply thread commits what it holds
    /// at once instead of batching it further.
    pub flush_to: AtomicU64,
    /// Last committed index the raft thread has handed, or is about to hand, to the apply
    /// thread (it answers callers before the hand-over, so a reader's request to commit can
    /// reach the apply thread before the entries it waits for).
    pub handed_index: AtomicU64,
    /// Wakes the apply thread (weak: it does not keep the apply thread's inbox open).
    pub apply_wake: flume::WeakSender<ApplyTask>,
    /// Log writes (each one write and one fdatasync) since open.
    pub log_writes: AtomicU64,
    /// Microseconds the raft thread spent in log writes since open.
    pub log_write_us: AtomicU64,
    /// Microseconds the apply thread spent committing apply batches since open.
    pub apply_commit_us: AtomicU64,
    /// Applied index found on disk when the replica was opened.
    pub applied_at_open: u64,
    /// Entries applied by this process since open.
    pub entries_applied: AtomicU64,
    /// Entries seen again at or below the applied index, and skipped.
    pub entries_skipped: AtomicU64,
    /// Requests recognised as duplicates by the dedup table.
    pub duplicates: AtomicU64,
    /// Proposals waiting for their entry to apply.
    pub waiters: waiters::Waiters,
    /// The state machine; replaced as a whole when a snapshot is installed, taken on close.
    pub sm: RwLock<Option<Arc<StateMachine>>>,
    /// First fatal error: once set, the replica has stopped and every call reports it.
    pub failed: Mutex<Option<Error>>,
    /// Set when the replica is shutting down.
    pub stopping: AtomicBool,
    /// Transport counters.
    pub transport: Arc<TransportStats>,
    /// Applied index last made durable as a snapshot point (state machine synced); the log
    /// may be compacted up to it, minus the margin.
    pub snapshot_index: AtomicU64,
    /// Snapshot points taken since open.
    pub snapshots_taken: AtomicU64,
    /// Snapshots installed since open.
    pub snapshots_installed: AtomicU64,
    /// Set when this replica learns it was removed from the cluster.
    pub removed: AtomicBool,
    /// Why a peer last refused this replica, if one did.
    pub refusal: Mutex<Option<String>>,
    /// Apply batches committed since open.
    pub apply_batches: AtomicU64,
    /// Largest apply batch, in entries.
    pub apply_batch_max: AtomicU64,
    /// Proposals handed to raft since open.
    pub proposals: AtomicU64,
    /// Proposals per second over the last second (f64 bits).
    pub proposal_rate: AtomicU64,
    /// Bytes of the log environment on disk.
    pub log_bytes: AtomicU64,
    /// Per-peer replication progress, published by the leader's raft thread.
    pub progress: Mutex<Vec<crate::replica::PeerProgress>>,
    /// The leader's read lease, as the raft thread last published it.
    pub lease: lease::LeaseCell,
    /// Linearizable read rounds, started by the raft thread and waited for by callers.
    pub read_rounds: read_rounds::ReadRounds,
    /// Lease reads a caller answered from the published lease, without the raft thread.
    pub lease_reads_local: AtomicU64,
    /// Campaigns of other replicas ignored because this one restarted less than an election
    /// timeout before.
    pub votes_held: AtomicU64,
    /// Signalled whenever the applied index moves (watchers wait on it).
    pub applied_signal: Condvar,
    /// Lock paired with `applied_signal`.
    pub applied_lock: Mutex<()>,
}

impl Shared {
    /// Current role.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Relaxed))
    }

    /// The state machine currently in use.
    pub fn state_machine(&self) -> Result<Arc<StateMachine>> {
        self.sm
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| self.stopped_error())
    }

    /// Takes the state machine out (on close) and waits briefly for in-flight readers to
    /// drop their references, so that its LMDB environment is closed when this returns.
    pub fn release_state_machine(&self) {
        let taken = self.sm.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(sm) = taken {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while Arc::strong_count(&sm) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }

    /// Records a fatal error (the first one wins), fails every waiter and marks the replica stopping.
    pub fn fail(&self, e: Error) {
        log::error!("node {}: fatal: {e}; replica stops", self.node_id);
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(e.clone());
        }
        drop(f);
        self.stopping.store(true, Ordering::SeqCst);
        self.read_rounds.wake_all();
        self.waiters.fail_all(&e);
    }

    /// Wakes every watcher waiting for the applied index to move.
    pub fn notify_applied(&self) {
        let _g = self.applied_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.applied_signal.notify_all();
    }

    /// Waits until the applied index moves past `seen`, or `timeout` passes.
    pub fn wait_applied(&self, seen: u64, timeout: std::time::Duration) {
        let g = self.applied_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.applied_index.load(Ordering::Acquire) > seen
            || self.stopping.load(Ordering::Acquire)
        {
            return;
        }
        let _ = self.applied_signal.wait_timeout(g, timeout);
    }

    /// Counts a waiting watcher until the guard drops (and wakes the apply thread, so that its
    /// shorter hold applies to what it holds already).
    pub fn watcher_waits(&self) -> WatcherWait<'_> {
        self.watchers_waiting.fetch_add(1, Ordering::AcqRel);
        self.wake_apply();
        WatcherWait(self)
    }

    /// Asks the apply thread to commit what it holds until its state machine reaches `index`.
    pub fn want_visible(&self, index: u64) {
        if self.flush_to.fetch_max(index, Ordering::AcqRel) < index {
            self.wake_apply();
        }
    }

    /// Makes the apply thread look at its commit conditions again.
    fn wake_apply(&self) {
        if let Some(tx) = self.apply_wake.upgrade() {
            let _ = tx.try_send(ApplyTask::Flush);
        }
    }

    /// Waits until every write already answered on this replica is visible in its state
    /// machine (asking the apply thread to commit what it holds), or `deadline` passes.
    pub fn wait_replied_visible(&self, deadline: std::time::Instant) -> Result<()> {
        self.wait_visible(self.replied_index.load(Ordering::Acquire), deadline)
    }

    /// Waits until readers see the state machine at `index` or later, asking the apply thread
    /// to commit what it holds at once.
    pub fn wait_visible(&self, index: u64, deadline: std::time::Instant) -> Result<()> {
        while self.applied_index.load(Ordering::Acquire) < index {
            self.want_visible(index);
            if self.stopping.load(Ordering::Acquire) {
                return Err(self.stopped_error());
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout);
            }
            let seen = self.applied_index.load(Ordering::Acquire);
            if seen >= index {
                break;
            }
            self.wait_applied(seen, deadline - now);
        }
        Ok(())
    }

    /// Remembers that a peer refused this replica (reported when requests cannot complete).
    pub fn set_refusal(&self, why: String) {
        *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// The refusal to report instead of a timeout, if any.
    pub fn refusal(&self) -> Option<Error> {
        self.refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map(Error::Refused)
    }

    /// The error to report when the replica is no longer serving.
    pub fn stopped_error(&self) -> Error {
        match &*self.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => e.clone(),
            None => Error::Closed,
        }
    }
}

/// A watcher waiting for changes (see [`Shared::watcher_waits`]).
pub struct WatcherWait<'a>(&'a Shared);

impl Drop for WatcherWait<'_> {
    fn drop(&mut self) {
        self.0.watchers_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}
