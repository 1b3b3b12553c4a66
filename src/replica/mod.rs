//! The Rust API: [`Replica`], one member of a kvr cluster hosted in this process.

mod data;
mod membership;
mod open;
mod stats;
mod watch;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use flume::RecvTimeoutError;
use raft::RawNode;
use slog::Drain;

use crate::command::{Command, Op};
use crate::config::{Config, KEY_BYTES_MAX, VALUE_BYTES_MAX};
use crate::error::{Error, Result};
use crate::node::apply::{Applier, ApplySettings};
use crate::node::host::NodeHost;
use crate::node::raft_loop::{RaftLoop, Timing};
use crate::node::read_rounds::RoundWait;
use crate::node::waiters::{Attempt, Waiters};
use crate::node::{ApplyTask, RaftMsg, Role, Shared};
use crate::storage::log_store::LogStore;
use crate::storage::snapshot::Registry;
use crate::storage::state_machine::StateMachine;
use crate::storage::DirLock;
use crate::transport::listener::Listener;
use crate::transport::{Host, Transport, TransportConfig, TransportStats};

pub use data::{now_ms, BatchWrite, ScanRange, BATCH_OPS_MAX};
pub use membership::{members_json, MemberInfo, MemberRole};
pub use stats::PeerProgress;
pub use watch::{Event, EventKind, Watch};

/// Capacity of the raft thread's inbox.
const INBOX_LEN: usize = 8192;
/// Largest raft append message, in bytes (at least one entry is always sent).
const RAFT_MSG_BYTES_MAX: u64 = 1 << 20;
/// Most append messages in flight to one follower.
const RAFT_INFLIGHT_MAX: usize = 256;
/// Largest batch of committed entries handed over per Ready.
const COMMITTED_BYTES_PER_READY_MAX: u64 = 16 << 20;
/// Uncommitted bytes a leader accepts before dropping proposals.
const UNCOMMITTED_BYTES_MAX: u64 = 256 << 20;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Linearizable through Raft ReadIndex (default).
    #[default]
    Linearizable,
    /// Served by the leader from its lease without a round trip while the lease (renewed by
    /// quorum contact, shorter than the election timeout) holds; otherwise like
    /// `Linearizable`. Relies on bounded clock drift; followers always use ReadIndex.
    Lease,
    /// Straight from the local state machine: no Raft round trip, may be stale.
    Stale,
}

/// A point-in-time view of a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This replica's id.
    pub node_id: u64,
    /// Known leader, 0 when none.
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Role.
    pub role: Role,
    /// Highest index known committed.
    pub commit_index: u64,
    /// Highest index applied to the state machine.
    pub applied_index: u64,
    /// First index still in the local log.
    pub first_index: u64,
    /// Last index in the local log.
    pub last_index: u64,
    /// Applied index found on disk at open.
    pub applied_index_at_open: u64,
    /// Entries applied by this process since open.
    pub entries_applied: u64,
    /// Entries at or below the applied index that were seen again and skipped.
    pub entries_skipped: u64,
    /// Requests recognised as duplicates and not applied again.
    pub duplicates: u64,
    /// Applied index of the last durable snapshot point.
    pub snapshot_index: u64,
    /// Snapshot points taken since open.
    pub snapshots_taken: u64,
    /// Snapshots received and installed since open.
    pub snapshots_installed: u64,
    /// Snapshots sent to other replicas since open.
    pub snapshots_sent: u64,
    /// True once this replica knows it was removed from the cluster.
    pub removed: bool,
}

/// One replica of a kvr cluster, running inside this process. Thread-safe: share it by
/// reference or in an `Arc`; every method may be called from any thread.
pub struct Replica {
    cfg: Config,
    shared: Arc<Shared>,
    inbox: crate::node::inbox::InboxTx,
    session: Mutex<Session>,
    closed: AtomicBool,
    threads: Mutex<Threads>,
}

#[derive(Default)]
struct Session {
    next_seq: u64,
    outstanding: BTreeSet<u64>,
}

#[derive(Default)]
struct Threads {
    raft: Option<JoinHandle<()>>,
    apply: Option<JoinHandle<()>>,
    listener: Option<Listener>,
    lock: Option<DirLock>,
}

impl Replica {
    /// Opens (creating or recovering) the replica described by `cfg` and starts its threads.
    /// Returns once the replica is running; it may not know a leader yet.
    pub fn open(cfg: Config) -> Result<Replica> {
        cfg.validate()?;
        let open::OnDisk {
            lock,
            mut log,
            sm,
            identity,
            applied,
        } = open::open_dir(&cfg)?;
        let stats = Arc::new(TransportStats::default());
        let members = sm.members()?;
        let (apply_tx, apply_rx) = flume::unbounded();
        let shared = Arc::new(new_shared(
            &cfg,
            &log,
            sm,
            applied,
            stats.clone(),
            apply_tx.downgrade(),
        )?);
        let registry = Arc::new(Registry::default());
        log.set_snapshot_source(snapshot_source(shared.clone(), registry.clone()));
        let raw = RawNode::new(&raft_config(&cfg, applied), log, &raft_logger())?;
        let (inbox_tx, inbox_rx) = crate::node::inbox::inbox(INBOX_LEN)
            .map_err(|e| Error::Io(format!("cannot create the raft thread's inbox: {e}")))?;

        let mut threads = Threads {
            lock: Some(lock),
            ..Threads::default()
        };
        let transport = if cfg.single_node() {
            None
        } else {
            let host: Arc<dyn Host> = Arc::new(NodeHost::new(
                shared.clone(),
                inbox_tx.clone(),
                registry,
                &cfg,
            )?);
            let (listener, transport) =
                start_transport(&cfg, identity.incarnation, host, stats, &members)?;
            threads.listener = Some(listener);
            Some(transport)
        };

        let applier = Applier::new(shared.clone(), apply_rx, applied, apply_settings(&cfg));
        threads.apply = Some(spawn(
            format!("kvr-apply-{}", cfg.node_id),
            shared.clone(),
            move || applier.run(),
        )?);
        let timing = Timing {
            tick: Duration::from_millis(cfg.tick_ms),
            election_timeout: Duration::from_millis(cfg.election_timeout_ms()),
            compaction_margin: cfg.compaction_margin,
            compaction_hold_max: cfg.snapshot_entries.max(cfg.compaction_margin),
        };
        let raft_loop = RaftLoop::new(shared.clone(), raw, inbox_rx, apply_tx, transport, timing);
        threads.raft = Some(spawn(
            format!("kvr-raft-{}", cfg.node_id),
            shared.clone(),
            move || raft_loop.run(),
        )?);
        log::info!(
            "node {}: open at {} (applied {applied})",
            cfg.node_id,
            cfg.dir.display()
        );
        Ok(Replica {
            cfg,
            shared,
            inbox: inbox_tx,
            session: Mutex::new(Session {
                next_seq: 1,
                outstanding: BTreeSet::new(),
            }),
            closed: AtomicBool::new(false),
            threads: Mutex::new(threads),
        })
    }

    /// The configuration this replica was opened with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `(applied_index, keys, digest)` of this replica's user data, read locally in one read
    /// txn. Replicas at the same applied index must have the same digest.
    pub fn digest(&self) -> Result<(u64, u64, u64)> {
        self.check_open()?;
        self.settle()?;
        self.shared.state_machine()?.digest()
    }

    /// Waits until every write already answered on this replica is in its state machine
    /// (writes are answered just before the commit that holds them; see `apply.rs`).
    pub(crate) fn settle(&self) -> Result<()> {
        self.shared
            .wait_replied_visible(Instant::now() + self.timeout())
    }

    /// A snapshot of this replica's Raft and apply state (counting every write answered so far).
    pub fn status(&self) -> Status {
        // Best effort: a failed or closed replica still reports where it stopped.
        let _ = self.settle();
        let s = &self.shared;
        Status {
            node_id: s.node_id,
            leader_id: s.leader_id.load(Ordering::Relaxed),
            term: s.term.load(Ordering::Relaxed),
            role: s.role(),
            commit_index: s.commit_index.load(Ordering::Relaxed),
            applied_index: s.applied_index.load(Ordering::Acquire),
            first_index: s.first_index.load(Ordering::Relaxed),
            last_index: s.last_index.load(Ordering::Relaxed),
            applied_index_at_open: s.applied_at_open,
            entries_applied: s.entries_applied.load(Ordering::Relaxed),
            entries_skipped: s.entries_skipped.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            snapshot_index: s.snapshot_index.load(Ordering::Relaxed),
            snapshots_taken: s.snapshots_taken.load(Ordering::Relaxed),
            snapshots_installed: s.snapshots_installed.load(Ordering::Relaxed),
            snapshots_sent: s.transport.snapshots_sent.load(Ordering::Relaxed),
            removed: s.removed.load(Ordering::Relaxed),
        }
    }

    /// Stops every thread, closes connections and LMDB environments. Idempotent; calls made
    /// afterwards fail with [`Error::Closed`]. Calls blocked in other threads return promptly.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.notify_applied();
        self.shared.read_rounds.wake_all();
        let _ = self.inbox.try_send(RaftMsg::Shutdown);
        let mut t = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = t.listener.as_mut() {
            l.shutdown();
        }
        if let Some(h) = t.raft.take() {
            let _ = h.join();
        }
        if let Some(h) = t.apply.take() {
            let _ = h.join();
        }
        t.listener = None;
        self.shared.waiters.fail_all(&Error::Closed);
        self.shared.release_state_machine();
        t.lock = None;
        log::info!("node {}: closed", self.cfg.node_id);
        match &*self.shared.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) || self.shared.stopping.load(Ordering::Acquire) {
            return Err(self.shared.stopped_error());
        }
        if self.shared.removed.load(Ordering::Acquire) {
            return Err(Error::Removed);
        }
        Ok(())
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.request_timeout_ms)
    }

    /// How long to wait for one attempt before proposing again (the proposal may have been
    /// lost with a leader change; the dedup table makes the retry safe).
    fn retry_interval(&self) -> Duration {
        Duration::from_millis((self.cfg.election_timeout_ms() * 2).max(200))
    }

    /// Allocates the next sequence of this session; returns it with the session's watermark.
    fn next_seq(&self) -> (u64, u64) {
        let mut s = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let seq = s.next_seq;
        s.next_seq += 1;
        s.outstanding.insert(seq);
        (seq, *s.outstanding.first().expect("just inserted"))
    }

    fn settle_seq(&self, seq: u64) {
        self.shared.waiters.unregister(seq);
        self.session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .outstanding
            .remove(&seq);
    }

    fn propose(&self, op: Op<'_>) -> Result<()> {
        self.check_open()?;
        let deadline = Instant::now() + self.timeout();
        let (seq, watermark) = self.next_seq();
        let data = Command {
            client_id: self.shared.client_id,
            seq,
            watermark,
            op,
        }
        .encode();
        let result = self.request_until(seq, deadline, || RaftMsg::Propose {
            seq,
            data: data.clone(),
        });
        self.settle_seq(seq);
        result
    }

    /// Sends `make()` to the raft thread and waits for request `seq` to apply, sending it again
    /// whenever an attempt may have been lost, until `deadline`.
    ///
    /// An attempt still queued for the raft thread, or appended to this replica's own log while
    /// it stays leader in that term, cannot have been lost however long it takes (a 4 MiB value
    /// on a slow disk), so it is not sent again: that would only add load where the log is
    /// already behind. An attempt forwarded to another leader, or one whose leader changed, is
    /// sent again after the retry interval, which doubles up to 8 times its base so that a slow
    /// cluster is not flooded.
    fn request_until(&self, seq: u64, deadline: Instant, make: impl Fn() -> RaftMsg) -> Result<()> {
        // Callers wait on flume channels: a flume receiver parks at once, where a crossbeam
        // one spins and yields first, which with tens of blocked callers on a few cores took
        // more CPU than the replica's own threads.
        let (tx, rx) = flume::bounded(8);
        self.shared.waiters.register(seq, tx);
        let mut last_err = Error::Timeout;
        let base = self.retry_interval();
        let mut interval = base;
        loop {
            self.check_open()?;
            if Instant::now() >= deadline {
                return Err(self.explain(last_err));
            }
            self.shared.waiters.set_attempt(&[seq], Attempt::Queued);
            self.send_to_raft(make(), deadline)?;
            let mut attempt_end = deadline.min(Instant::now() + interval);
            loop {
                let received = rx.recv_deadline(attempt_end);
                self.shared.waiters.relay();
                match received {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e @ (Error::NoLeader | Error::Busy(_)))) => {
                        last_err = e;
                        self.pause(deadline);
                        interval = base;
                    }
                    Ok(Err(e)) => return Err(e),
                    Err(RecvTimeoutError::Timeout) => {
                        last_err = Error::Timeout;
                        if attempt_end < deadline && self.cannot_be_lost(seq) {
                            attempt_end = deadline.min(Instant::now() + base);
                            continue;
                        }
                        interval = (interval * 2).min(base * 8);
                    }
                    Err(RecvTimeoutError::Disconnected) => return Err(self.shared.stopped_error()),
                }
                break;
            }
        }
    }

    /// True while the latest attempt of request `seq` waits in the raft thread's queue, or sits
    /// in this replica's log, appended while it led in the term it still leads.
    fn cannot_be_lost(&self, seq: u64) -> bool {
        match self.shared.waiters.attempt(seq) {
            Attempt::Queued => true,
            Attempt::Appended(term) => {
                self.shared.role() == Role::Leader
                    && self.shared.term.load(Ordering::Acquire) == term
            }
            Attempt::Forwarded => false,
        }
    }

    fn send_to_raft(&self, msg: RaftMsg, deadline: Instant) -> Result<()> {
        if self.inbox.send_deadline(msg, deadline).is_err() {
            return Err(if Instant::now() >= deadline {
                self.explain(Error::Timeout)
            } else {
                self.shared.stopped_error()
            });
        }
        Ok(())
    }

    /// A request that could not complete: if a peer refused this replica, that is the reason.
    fn explain(&self, e: Error) -> Error {
        match (&e, self.shared.refusal()) {
            (Error::Timeout | Error::NoLeader, Some(refusal)) => refusal,
            _ => e,
        }
    }

    /// Waits until reading the local state machine is linearizable.
    fn read_barrier(&self) -> Result<()> {
        self.read_round(Instant::now() + self.timeout())
    }

    /// Waits until reading the local state machine gives `consistency`.
    fn wait_readable(&self, consistency: ReadConsistency) -> Result<()> {
        match consistency {
            ReadConsistency::Linearizable => self.read_barrier(),
            ReadConsistency::Lease => self.lease_read(),
            ReadConsistency::Stale => self.settle(),
        }
    }

    /// Waits until reading locally is linearizable, as a leader's lease says (answered on this
    /// thread when the published lease holds) or, without one, as a ReadIndex request says.
    fn lease_read(&self) -> Result<()> {
        let now = Instant::now();
        let deadline = now + self.timeout();
        if self.lease_readable(now, deadline) {
            return Ok(());
        }
        let mut last_err = Error::Timeout;
        loop {
            self.check_open()?;
            if Instant::now() >= deadline {
                return Err(self.explain(last_err));
            }
            let (tx, rx) = flume::bounded(1);
            self.send_to_raft(RaftMsg::LeaseRead { reply: tx }, deadline)?;
            match rx.recv_deadline(deadline) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(Error::NoLeader)) => {
                    last_err = Error::NoLeader;
                    self.pause(deadline);
                }
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => last_err = Error::Timeout,
                // Raft lost the request (leader change): ask again.
                Err(RecvTimeoutError::Disconnected) => self.pause(deadline),
            }
        }
    }

    /// A linearizable read: waits for a ReadIndex round started after this call (one round
    /// serves every caller that joined it), then for the state machine to hold its index.
    fn read_round(&self, deadline: Instant) -> Result<()> {
        let rounds = &self.shared.read_rounds;
        let mut last_err = Error::Timeout;
        loop {
            self.check_open()?;
            if Instant::now() >= deadline {
                return Err(self.explain(last_err));
            }
            let (need, wake) = rounds.join();
            if wake {
                self.send_to_raft(RaftMsg::ReadWanted, deadline)?;
            }
            match rounds.wait(need, deadline, &self.shared.stopping) {
                RoundWait::Confirmed(index) => {
                    return match self.shared.wait_visible(index, deadline) {
                        Err(Error::Timeout) => Err(self.explain(Error::Timeout)),
                        r => r,
                    };
                }
                RoundWait::NoLeader => {
                    last_err = Error::NoLeader;
                    self.pause(deadline);
                }
                RoundWait::Timeout => last_err = Error::Timeout,
                // Lost with a leader change, or the replica stops: look again.
                RoundWait::Abandoned | RoundWait::Stopped => {}
            }
        }
    }

    /// True when this replica leads under a lease the raft thread published, once its state
    /// machine holds the commit index published with it (the apply thread is asked to commit
    /// what it holds when it does not yet): reading locally is then a lease read, without a
    /// word to the raft thread.
    fn lease_readable(&self, now: Instant, deadline: Instant) -> bool {
        let s = &self.shared;
        let Some(index) = s.lease.read_index(now) else {
            return false;
        };
        if s.wait_visible(index, deadline).is_err() {
            return false;
        }
        s.lease_reads_local.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn pause(&self, deadline: Instant) {
        let nap = Duration::from_millis(self.cfg.tick_ms.clamp(1, 100));
        let left = deadline.saturating_duration_since(Instant::now());
        thread::sleep(nap.min(left));
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Serves `raft::Storage::snapshot`: a snapshot of the current state machine, from one read
/// txn, registered for the transport to stream.
fn snapshot_source(
    shared: Arc<Shared>,
    registry: Arc<Registry>,
) -> crate::storage::log_store::SnapshotSource {
    Box::new(move |request_index, to| {
        let sm = shared.state_machine().map_err(store_err)?;
        match registry.create(&sm, to, request_index) {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            )),
            Err(e) => Err(store_err(e)),
        }
    })
}

/// Binds the listener and creates the sending side with every known peer.
fn start_transport(
    cfg: &Config,
    incarnation: u64,
    host: Arc<dyn Host>,
    stats: Arc<TransportStats>,
    members: &[crate::storage::state_machine::Member],
) -> Result<(Listener, Transport)> {
    let listen = cfg
        .listen_addr()
        .expect("validated: a clustered replica has an address");
    let tcfg = Arc::new(TransportConfig {
        node_id: cfg.node_id,
        cluster_id: cfg.cluster_id,
        incarnation,
        advertise: listen.to_string(),
        frame_bytes_max: crate::config::FRAME_BYTES_MAX,
        secret: cfg.cluster_secret.as_ref().map(|s| s.as_bytes().to_vec()),
    });
    let listener = Listener::bind(listen, tcfg.clone(), host.clone(), stats.clone())?;
    let mut t = Transport::new(tcfg, host, stats);
    // Recorded members first; explicitly configured addresses win.
    for m in members {
        t.set_peer(m.id, &m.addr);
    }
    for (id, addr) in &cfg.peers {
        t.pin_peer(*id, addr);
    }
    Ok((listener, t))
}

/// The apply thread's settings from a replica's configuration.
fn apply_settings(cfg: &Config) -> ApplySettings {
    ApplySettings {
        dir: cfg.dir.clone(),
        map_size_mb: cfg.map_size_mb,
        snapshot_entries: cfg.snapshot_entries,
        watch_retain: cfg.watch_retain_entries,
        watch_retain_bytes: cfg.watch_retain_bytes,
    }
}

fn new_shared(
    cfg: &Config,
    log: &LogStore,
    sm: StateMachine,
    applied: u64,
    stats: Arc<TransportStats>,
    apply_wake: flume::WeakSender<ApplyTask>,
) -> Result<Shared> {
    let removed = sm.is_removed(cfg.node_id)?;
    Ok(Shared {
        node_id: cfg.node_id,
        client_id: random_u64()?,
        leader_id: AtomicU64::new(0),
        term: AtomicU64::new(0),
        role: AtomicU8::new(Role::Follower as u8),
        commit_index: AtomicU64::new(log.hard_state().commit),
        last_index: AtomicU64::new(log.last_index_now()),
        first_index: AtomicU64::new(log.truncated_index() + 1),
        applied_index: AtomicU64::new(applied),
        // Writes answered before a crash may not be in the state machine yet: the first local
        // reads wait until raft has replayed the log up to the commit index it recorded.
        replied_index: AtomicU64::new(log.hard_state().commit),
        flush_to: AtomicU64::new(0),
        handed_index: AtomicU64::new(applied),
        watchers_waiting: AtomicUsize::new(0),
        apply_wake,
        log_writes: AtomicU64::new(0),
        log_write_us: AtomicU64::new(0),
        apply_commit_us: AtomicU64::new(0),
        applied_at_open: applied,
        entries_applied: AtomicU64::new(0),
        entries_skipped: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        waiters: Waiters::default(),
        sm: RwLock::new(Some(Arc::new(sm))),
        failed: Mutex::new(None),
        stopping: AtomicBool::new(false),
        transport: stats,
        snapshot_index: AtomicU64::new(applied),
        snapshots_taken: AtomicU64::new(0),
        snapshots_installed: AtomicU64::new(0),
        removed: AtomicBool::new(removed),
        refusal: Mutex::new(None),
        apply_batches: AtomicU64::new(0),
        apply_batch_max: AtomicU64::new(0),
        proposals: AtomicU64::new(0),
        proposal_rate: AtomicU64::new(0),
        log_bytes: AtomicU64::new(log.disk_bytes()),
        progress: Mutex::new(Vec::new()),
        lease: Default::default(),
        read_rounds: Default::default(),
        lease_reads_local: AtomicU64::new(0),
        votes_held: AtomicU64::new(0),
        applied_signal: Condvar::new(),
        applied_lock: Mutex::new(()),
    })
}

/// Spawns a replica thread. A panic in it (a broken invariant) fails the replica closed
/// instead of leaving callers waiting on a thread that is gone.
fn spawn(
    name: String,
    shared: Arc<Shared>,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>> {
    let thread_name = name.clone();
    thread::Builder::new()
        .name(name)
        .spawn(move || {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                shared.fail(Error::Panic(format!("thread {thread_name}: {msg}")));
            }
        })
        .map_err(|e| Error::Io(format!("cannot spawn thread: {e}")))
}

fn store_err(e: Error) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}

/// Checks a key against the limits.
pub fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("key is empty"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(Error::invalid(format!(
            "key of {} bytes exceeds {KEY_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a value against the limits.
pub fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > VALUE_BYTES_MAX {
        return Err(Error::invalid(format!(
            "value of {} bytes exceeds {VALUE_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

fn raft_config(cfg: &Config, applied: u64) -> raft::Config {
    raft::Config {
        id: cfg.node_id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        max_size_per_msg: RAFT_MSG_BYTES_MAX,
        max_inflight_msgs: RAFT_INFLIGHT_MAX,
        check_quorum: true,
        pre_vote: true,
        max_committed_size_per_ready: COMMITTED_BYTES_PER_READY_MAX,
        max_uncommitted_size: UNCOMMITTED_BYTES_MAX,
        ..raft::Config::default()
    }
}

fn raft_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

/// A random 64-bit number from the operating system (never 0).
pub(crate) fn random_u64() -> Result<u64> {
    Ok(u64::from_le_bytes(random_bytes()?).max(1))
}

/// Random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| Error::Io(format!("cannot read /dev/urandom: {e}")))?;
    Ok(b)
}

#[cfg(test)]
mod tests;
