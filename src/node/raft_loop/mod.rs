//! The raft thread: owns `raft::RawNode` and drives it.
//!
//! One iteration: wait for the inbox and the peers' connections (at most until the next tick;
//! [`super::inbox`]), step what the connections carry, drain the inbox (proposals, read
//! requests, peer messages), tick if due, then handle `Ready`:
//! 1. answer the callers whose committed entries need no state to decide (committed means
//!    durable on a majority), then send `messages()` (a leader replicates while it persists,
//!    raft thesis 10.2.1);
//! 2. persist entries and hard state in one write and one fdatasync of the log;
//! 3. send `persisted_messages()` (votes and acks must not precede what they acknowledge);
//! 4. `advance_append`, then hand committed entries to the apply thread, and let readers go
//!    (at once when the state machine holds their read index, else through the apply
//!    thread).
//!
//! Every proposal that arrived while the previous Ready was being persisted lands in the next
//! Ready: that is the group commit, one fsync for many writes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::TryRecvError;
use flume::Sender;
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Snapshot};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole, INVALID_ID};

use super::inbox::InboxRx;
use super::waiters::Attempt;
use super::{ApplyTask, RaftMsg, Role, Shared};
use crate::command::ConfContext;
use crate::error::{Error, Result};
use crate::storage::log_store::{LogStore, INIT_TERM};
use crate::storage::snapshot::Staged;
use crate::transport::inbound::{self, Reading};
use crate::transport::Transport;

mod periodic;

/// A caller waiting for a linearizable read to be possible.
type ReadWaiter = Sender<Result<()>>;

/// Marks the number of a ReadIndex request that is a read round (the rest is the round's
/// number); other numbers name a batch of waiters.
const ROUND_CTX: u64 = 1 << 63;
/// Most read rounds in flight: callers who arrive meanwhile join the next one, so that a burst
/// of reads costs a few quorum rounds, not one for every iteration of the raft thread.
const ROUNDS_IN_FLIGHT_MAX: usize = 2;
/// Ticks after which a read round still unanswered (its request or answer may be lost) no
/// longer holds the next one back; it still settles if its answer comes.
const ROUND_PATIENCE_TICKS: u32 = 2;

/// Most inbox messages handled before the next Ready.
const INBOX_BATCH_MAX: usize = 4096;
/// Bytes read from one peer connection before the next Ready (more waits for the next
/// iteration).
const PEER_READ_BUDGET: usize = 4 << 20;
/// Most commands packed into one entry.
const PACK_COMMANDS_MAX: usize = 512;
/// Most bytes packed into one entry (a bigger single command still gets its own entry).
const PACK_BYTES_MAX: usize = 256 << 10;

/// Pacing of the raft thread.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Raft tick interval.
    pub tick: Duration,
    /// Base election timeout; read requests unanswered this long are dropped (and retried).
    pub election_timeout: Duration,
    /// Entries kept in the log below the last snapshot point.
    pub compaction_margin: u64,
    /// Most entries a live follower still catching up may hold compaction back by.
    pub compaction_hold_max: u64,
}

/// The raft thread's state.
pub struct RaftLoop {
    shared: Arc<Shared>,
    raw: RawNode<LogStore>,
    inbox: InboxRx,
    /// Tokens of the peer connections found readable by the last wait.
    readable: Vec<u64>,
    /// Messages read from peer connections, stepped in order.
    received: Vec<raft::eraftpb::Message>,
    apply_tx: flume::Sender<ApplyTask>,
    transport: Option<Transport>,
    tick: Duration,
    read_expiry: Duration,
    pending_reads: Vec<ReadWaiter>,
    read_batches: HashMap<u64, (Instant, Vec<ReadWaiter>)>,
    /// Read rounds issued and not yet settled, oldest first, with when each was issued.
    rounds_in_flight: VecDeque<(u64, Instant)>,
    next_read_ctx: u64,
    applied_seen: u64,
    /// Last committed entry handed to the apply thread.
    handed: u64,
    staged: HashMap<(u64, u64), Staged>,
    compaction_margin: u64,
    compaction_hold_max: u64,
    /// When a message from each peer last arrived: a peer heard within two election timeouts
    /// counts as live for compaction (raft's own `recent_active` is cleared at every quorum
    /// check and so flickers off for healthy peers).
    heard: HashMap<u64, Instant>,
    /// Reads that may be answered from the leader's lease.
    pending_lease_reads: Vec<ReadWaiter>,
    /// Proposals that arrived in this iteration, proposed together.
    pending_proposals: Vec<(u64, Vec<u8>)>,
    /// Until when this leader may answer lease reads without a quorum round.
    lease_until: Option<Instant>,
    /// How long a confirmed quorum contact keeps the lease.
    lease_duration: Duration,
    /// When a lease read last arrived (the lease is renewed ahead of time while they do).
    lease_wanted: Option<Instant>,
    /// Until when this replica ignores campaigns of others (see [`RaftLoop::holds_vote`]).
    votes_held_until: Instant,
    /// A term in which this replica sent a leadership transfer's TimeoutNow: no lease in it,
    /// since the transferee may campaign whenever the message reaches it, even after raft gave
    /// the transfer up.
    lease_barred_term: u64,
    periodic: periodic::Periodic,
}

impl RaftLoop {
    /// Assembles the raft thread's state; `run` starts it.
    pub fn new(
        shared: Arc<Shared>,
        raw: RawNode<LogStore>,
        inbox: InboxRx,
        apply_tx: flume::Sender<ApplyTask>,
        transport: Option<Transport>,
        timing: Timing,
    ) -> RaftLoop {
        let applied_seen = raw.raft.raft_log.applied;
        // Leaders exist only in terms above the bootstrap term, and a follower persists the
        // term of a leader before it answers one: a replica still at the bootstrap term never
        // backed a leader's lease and has no reason to hold its vote.
        let votes_held_until = if raw.raft.term > INIT_TERM {
            Instant::now() + timing.election_timeout
        } else {
            Instant::now()
        };
        RaftLoop {
            shared,
            raw,
            inbox,
            readable: Vec::new(),
            received: Vec::new(),
            apply_tx,
            transport,
            tick: timing.tick,
            read_expiry: timing.election_timeout,
            pending_reads: Vec::new(),
            read_batches: HashMap::new(),
            rounds_in_flight: VecDeque::new(),
            next_read_ctx: 1,
            applied_seen,
            handed: applied_seen,
            staged: HashMap::new(),
            compaction_margin: timing.compaction_margin,
            compaction_hold_max: timing.compaction_hold_max,
            heard: HashMap::new(),
            pending_lease_reads: Vec::new(),
            pending_proposals: Vec::new(),
            lease_until: None,
            // Followers do not vote for another leader until an election timeout after they
            // last heard from this one, less a tick (the first tick after a heartbeat may come
            // at once); keep a fifth of that as margin for clock drift.
            lease_duration: timing.election_timeout.saturating_sub(timing.tick) * 4 / 5,
            lease_wanted: None,
            votes_held_until,
            lease_barred_term: 0,
            periodic: periodic::Periodic::default(),
        }
    }

    /// Runs until shutdown or a fatal error.
    pub fn run(mut self) {
        if self.raw.raft.prs().is_singleton()
            && self.raw.raft.promotable()
            && self.raw.raft.state != StateRole::Leader
        {
            // Alone in the cluster: no reason to wait out an election timeout.
            let _ = self.raw.campaign();
        }
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let wait = if self.round_due() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            if !wait.is_zero() {
                // Answers the woken callers have not passed on yet go out before the sleep.
                self.shared.waiters.relay_all();
            }
            self.inbox.wait(wait, &mut self.readable);
            // The peers' connections first, then the inbox: each connection stays in order
            // (its first message came through the inbox, before the connection itself), and
            // raft takes messages of different peers in any order.
            self.read_peers();
            if self.drain_inbox() {
                break;
            }
            if self.shared.stopping.load(Ordering::Relaxed) {
                break;
            }
            self.flush_proposals();
            self.flush_reads();
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.expire_reads(now);
                self.close_idle_peers(now);
                if let Err(e) = self.on_tick(now) {
                    self.shared.fail(e);
                    break;
                }
                next_tick += self.tick;
                if next_tick < now {
                    next_tick = now + self.tick;
                }
            }
            self.advance_applied();
            if self.raw.has_ready() {
                if let Err(e) = self.handle_ready() {
                    self.shared.fail(e);
                    break;
                }
            }
            self.publish();
        }
        self.stop();
    }

    /// Handles one inbox message; true means stop.
    fn handle(&mut self, m: RaftMsg) -> bool {
        match m {
            RaftMsg::Propose { seq, data } => {
                self.shared.proposals.fetch_add(1, Ordering::Relaxed);
                self.pending_proposals.push((seq, data));
            }
            // The round is started by `flush_reads`, for every caller that joined it.
            RaftMsg::ReadWanted => {}
            RaftMsg::LeaseRead { reply } => {
                self.lease_wanted = Some(Instant::now());
                self.pending_lease_reads.push(reply);
            }
            RaftMsg::Step(msg) => {
                let now = Instant::now();
                self.heard.insert(msg.from, now);
                if self.holds_vote(&msg, now) {
                    self.shared.votes_held.fetch_add(1, Ordering::Relaxed);
                    log::debug!(
                        "node {}: ignored a campaign of node {} (term {}): restarted less than an \
                         election timeout ago",
                        self.shared.node_id,
                        msg.from,
                        msg.term
                    );
                    return false;
                }
                if let Err(e) = self.raw.step(msg) {
                    log::debug!("node {}: step: {e}", self.shared.node_id);
                }
            }
            RaftMsg::Snapshot { msg, staged } => self.step_snapshot(msg, staged),
            RaftMsg::SnapshotStatus { to, ok } => {
                if ok {
                    self.heard.insert(to, Instant::now());
                }
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            RaftMsg::ConfChange { seq, cc } => self.propose_conf_change(seq, cc),
            RaftMsg::TransferLeader { to } => self.raw.transfer_leader(to),
            RaftMsg::PeerAddr { id, addr } => {
                if let Some(t) = &mut self.transport {
                    if !t.has_peer(id) {
                        log::info!(
                            "node {}: learned node {id} is at {addr}",
                            self.shared.node_id
                        );
                        t.set_peer(id, &addr);
                    }
                }
            }
            RaftMsg::Unreachable(id) => self.raw.report_unreachable(id),
            RaftMsg::Adopt(conn) => {
                let (from, addr) = (conn.from(), conn.peer_addr());
                if let Err(e) = self.inbox.adopt(conn) {
                    log::warn!(
                        "node {}: cannot wait on the connection from node {from} ({addr}): {e}",
                        self.shared.node_id
                    );
                }
            }
            RaftMsg::Shutdown => return true,
        }
        false
    }

    /// Steps a snapshot message whose state is staged; the staged state is kept until the
    /// Ready that restores it, or dropped at once if raft ignores the snapshot.
    fn step_snapshot(&mut self, msg: raft::eraftpb::Message, staged: Staged) {
        let key = (staged.index, staged.term);
        if let Err(e) = self.raw.step(msg) {
            log::debug!("node {}: step snapshot: {e}", self.shared.node_id);
            return;
        }
        let pending = self
            .raw
            .snap()
            .map(|s| (s.get_metadata().index, s.get_metadata().term));
        if pending == Some(key) {
            self.staged.insert(key, staged);
        } else {
            log::info!(
                "node {}: snapshot at {} not needed; dropped",
                self.shared.node_id,
                key.0
            );
        }
    }

    /// True for a campaign (pre-vote or vote) of another replica that arrives less than an
    /// election timeout after this replica restarted. Raft-rs ignores campaigns for an election
    /// timeout after a follower last heard from its leader, which is what a leader's read lease
    /// counts on; a replica that crashed and restarted has forgotten when that was, so it
    /// assumes it was just before. A leadership transfer (the old leader gave up its lease
    /// first) is not held back.
    fn holds_vote(&self, msg: &raft::eraftpb::Message, now: Instant) -> bool {
        now < self.votes_held_until && is_disruptive_campaign(msg, self.raw.raft.term)
    }

    fn propose_conf_change(&mut self, seq: u64, cc: ConfChange) {
        let r = &self.raw.raft;
        if r.pending_conf_index > r.raft_log.applied {
            // raft-rs would silently turn the change into an empty entry; let the caller retry,
            // once the state machine has committed what it holds up to there (as far as it
            // was handed over: the apply thread commits at once when asked for no more).
            self.shared.want_visible(
                r.pending_conf_index
                    .min(self.handed.max(r.raft_log.applied)),
            );
            let busy = Error::Busy("another membership change is in progress".into());
            self.shared.waiters.notify(seq, Err(busy));
            return;
        }
        match self.raw.propose_conf_change(Vec::new(), cc) {
            Ok(()) => self.shared.waiters.set_attempt(&[seq], self.attempt()),
            Err(e) => self.shared.waiters.notify(seq, Err(Error::from(e))),
        }
    }

    /// Where a request just handed to Raft stands: in this leader's log, or forwarded.
    fn attempt(&self) -> Attempt {
        if self.raw.raft.state == StateRole::Leader {
            Attempt::Appended(self.raw.raft.term)
        } else {
            Attempt::Forwarded
        }
    }

    /// Handles what waits in the inbox; true means stop.
    fn drain_inbox(&mut self) -> bool {
        for _ in 0..INBOX_BATCH_MAX {
            match self.inbox.try_recv() {
                Ok(m) => {
                    if self.handle(m) {
                        return true;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return true,
            }
        }
        false
    }

    /// Closes peer connections silent for too long (their peers reconnect when they have
    /// something to say; a live one talks every heartbeat).
    fn close_idle_peers(&mut self, now: Instant) {
        for token in self.inbox.idle(now, inbound::READ_IDLE_TIMEOUT) {
            if let Some(conn) = self.inbox.conn(token) {
                log::info!(
                    "node {}: closing the connection from node {} ({}), silent for {:?}",
                    self.shared.node_id,
                    conn.from(),
                    conn.peer_addr(),
                    inbound::READ_IDLE_TIMEOUT
                );
            }
            self.inbox.close(token);
        }
    }

    /// Reads the peer connections the last wait found readable, and steps what they carried.
    fn read_peers(&mut self) {
        let readable = std::mem::take(&mut self.readable);
        for &token in &readable {
            let Some(conn) = self.inbox.conn(token) else {
                continue;
            };
            let (from, addr) = (conn.from(), conn.peer_addr());
            let mut received = std::mem::take(&mut self.received);
            let reading = conn.read(&mut received, PEER_READ_BUDGET);
            for msg in received.drain(..) {
                self.handle(RaftMsg::Step(msg));
            }
            // Keep the allocation for the next read.
            self.received = received;
            match reading {
                Ok(Reading::Drained | Reading::More) => {}
                Ok(Reading::Closed) => {
                    log::debug!(
                        "node {}: connection from node {from} ({addr}) closed",
                        self.shared.node_id
                    );
                    self.inbox.close(token);
                }
                Err(e) => {
                    log::warn!(
                        "node {}: connection from node {from} ({addr}) dropped: {e}",
                        self.shared.node_id
                    );
                    self.inbox.close(token);
                }
            }
        }
        self.readable = readable;
    }

    /// Proposes the commands that arrived in this iteration, packed several to an entry: a
    /// burst of writes costs a few Raft entries, not one each.
    fn flush_proposals(&mut self) {
        let mut pending = std::mem::take(&mut self.pending_proposals);
        while !pending.is_empty() {
            let mut bytes = 0;
            let n = pending
                .iter()
                .take_while(|(_, d)| {
                    bytes += d.len() + 4;
                    bytes <= PACK_BYTES_MAX
                })
                .count()
                .clamp(1, PACK_COMMANDS_MAX);
            let chunk: Vec<(u64, Vec<u8>)> = pending.drain(..n).collect();
            let (seqs, mut datas): (Vec<u64>, Vec<Vec<u8>>) = chunk.into_iter().unzip();
            let data = if datas.len() == 1 {
                datas.pop().expect("one command")
            } else {
                crate::command::pack(&datas)
            };
            match self.raw.propose(Vec::new(), data) {
                Ok(()) => self.shared.waiters.set_attempt(&seqs, self.attempt()),
                Err(e) => {
                    let e = Error::from(e);
                    for seq in seqs {
                        self.shared.waiters.notify(seq, Err(e.clone()));
                    }
                }
            }
        }
    }

    /// Starts a read round if callers joined one, and answers the lease reads that arrived in
    /// this iteration from a valid lease, or else with one ReadIndex request.
    fn flush_reads(&mut self) {
        if !self.reads_may_start() {
            // Raft would drop the requests; they wait for the leader's first commit.
            return;
        }
        if self.rounds_pending() < ROUNDS_IN_FLIGHT_MAX && self.shared.read_rounds.take_wanted() {
            self.start_round();
        }
        if !self.pending_lease_reads.is_empty() {
            let lease_reads = std::mem::take(&mut self.pending_lease_reads);
            if self.lease_valid(Instant::now()) {
                let index = self.raw.raft.raft_log.committed;
                self.answer_reads(index, lease_reads);
            } else {
                self.pending_reads.extend(lease_reads);
            }
        }
        if self.pending_reads.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.pending_reads);
        if self.raw.raft.leader_id == INVALID_ID {
            for w in waiters {
                let _ = w.try_send(Err(Error::NoLeader));
            }
            return;
        }
        self.request_read_index(waiters);
    }

    /// True when callers wait for a read round that may start now (one settled since they
    /// asked for it).
    fn round_due(&self) -> bool {
        self.shared.read_rounds.wanted()
            && self.reads_may_start()
            && self.rounds_pending() < ROUNDS_IN_FLIGHT_MAX
    }

    /// Read rounds in flight that hold the next one back: those issued less than
    /// [`ROUND_PATIENCE_TICKS`] ago.
    fn rounds_pending(&self) -> usize {
        let patience = self.tick * ROUND_PATIENCE_TICKS;
        let now = Instant::now();
        self.rounds_in_flight
            .iter()
            .filter(|(_, at)| now.duration_since(*at) < patience)
            .count()
    }

    /// False while this replica leads without having committed an entry of its term: raft
    /// drops read requests then, so none is made.
    fn reads_may_start(&self) -> bool {
        self.raw.raft.state != StateRole::Leader || self.raw.raft.commit_to_current_term()
    }

    /// The context of read request `n`: this process's session id first, so that a request
    /// never shares its context with another replica's or an earlier process's (raft keys
    /// pending reads by context alone, and ignores a request whose context is pending).
    fn read_ctx(&self, n: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(16);
        ctx.extend_from_slice(&self.shared.client_id.to_le_bytes());
        ctx.extend_from_slice(&n.to_le_bytes());
        ctx
    }

    /// Starts a read round for the callers that joined it (see [`crate::node::read_rounds`]).
    fn start_round(&mut self) {
        let rounds = &self.shared.read_rounds;
        let round = rounds.start();
        if self.raw.raft.leader_id == INVALID_ID {
            rounds.abandon(round, true);
            return;
        }
        let ctx = self.read_ctx(ROUND_CTX | round);
        self.raw.read_index(ctx);
        self.rounds_in_flight.push_back((round, Instant::now()));
    }

    /// Gives up every read round in flight: their callers ask again.
    fn abandon_rounds(&mut self) {
        if let Some(&(last, _)) = self.rounds_in_flight.back() {
            self.shared.read_rounds.abandon(last, false);
        }
        self.rounds_in_flight.clear();
    }

    fn request_read_index(&mut self, waiters: Vec<ReadWaiter>) {
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.raw.read_index(self.read_ctx(ctx));
        self.read_batches.insert(ctx, (Instant::now(), waiters));
    }

    /// True when this leader may serve a read from its lease: a quorum confirmed its
    /// leadership recently enough, no leadership transfer is under way and none sent its
    /// TimeoutNow in this term (the transferee may campaign at once, and still may after raft
    /// gave the transfer up), and it has committed an entry of its own term.
    fn lease_valid(&self, now: Instant) -> bool {
        let r = &self.raw.raft;
        r.state == StateRole::Leader
            && r.lead_transferee.is_none()
            && self.lease_barred_term != r.term
            && self.lease_until.is_some_and(|until| now < until)
            && r.raft_log.term(r.raft_log.committed).ok() == Some(r.term)
    }

    /// Drops read batches raft silently lost (leader change); their callers retry.
    fn expire_reads(&mut self, now: Instant) {
        let expiry = self.read_expiry;
        self.read_batches
            .retain(|_, (at, _)| now.duration_since(*at) < expiry);
        let mut lost = None;
        while let Some(&(round, at)) = self.rounds_in_flight.front() {
            if now.duration_since(at) < expiry {
                break;
            }
            lost = Some(round);
            self.rounds_in_flight.pop_front();
        }
        if let Some(round) = lost {
            self.shared.read_rounds.abandon(round, false);
        }
    }

    fn advance_applied(&mut self) {
        let applied = self.shared.applied_index.load(Ordering::Acquire);
        if applied > self.applied_seen {
            self.raw.advance_apply_to(applied);
            self.applied_seen = applied;
        }
    }

    fn handle_ready(&mut self) -> Result<()> {
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            self.on_soft_state(ss.leader_id);
        }
        // Before any message with a newer commit index (or a transfer's TimeoutNow) goes out,
        // and before a caller learns of a commit (its next lease read must see it).
        self.publish_lease();
        let committed = rd.take_committed_entries();
        // Answer first: the messages below (a leader's commit broadcast among them) wake other
        // threads and processes, and each wake-up delays the callers' by as much.
        self.settle(&committed);
        if !rd.messages().is_empty() {
            self.send(rd.take_messages());
        }
        let installed = if rd.snapshot().is_empty() {
            None
        } else {
            let index = rd.snapshot().get_metadata().index;
            self.install_snapshot(rd.snapshot().clone())?;
            Some(index)
        };
        let read_states = rd.take_read_states();
        let started = Instant::now();
        if self.raw.mut_store().append(rd.entries(), rd.hs())? {
            let s = &self.shared;
            s.log_writes.fetch_add(1, Ordering::Relaxed);
            s.log_write_us
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        if !rd.persisted_messages().is_empty() {
            self.send(rd.take_persisted_messages());
        }
        let mut light = self.raw.advance_append(rd);
        if let Some(index) = installed {
            // The snapshot is applied: tell raft at once. While its applied index lags, an
            // election would read the entries in between, which the reset log no longer has.
            self.raw.advance_apply_to(index);
            self.applied_seen = self.applied_seen.max(index);
        }
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
            self.publish_lease();
        }
        let light_committed = light.take_committed_entries();
        self.settle(&light_committed);
        self.send(light.take_messages());
        self.dispatch_committed(committed)?;
        self.dispatch_committed(light_committed)?;
        self.dispatch_reads(read_states);
        Ok(())
    }

    /// Installs the staged state of `snap` (through the apply thread, which owns the state
    /// machine) and restarts the log after it.
    fn install_snapshot(&mut self, snap: Snapshot) -> Result<()> {
        let meta = snap.get_metadata();
        let key = (meta.index, meta.term);
        let staged = self.staged.remove(&key).ok_or_else(|| {
            Error::Corrupt(format!(
                "raft restores snapshot {key:?} that was never received"
            ))
        })?;
        self.staged.clear();
        let (tx, rx) = flume::bounded(1);
        self.apply_tx
            .send(ApplyTask::Install { staged, reply: tx })
            .map_err(|_| Error::Closed)?;
        rx.recv().map_err(|_| Error::Closed)??;
        let hs = self.raw.mut_store().hard_state().clone();
        let store = self.raw.mut_store();
        store.reset_to(meta.index, meta.term, hs)?;
        store.set_conf_state(meta.get_conf_state().clone());
        self.refresh_peers();
        Ok(())
    }

    /// Points the transport at every member recorded in the state machine.
    fn refresh_peers(&mut self) {
        let Some(t) = &mut self.transport else { return };
        match self.shared.state_machine().and_then(|sm| sm.members()) {
            Ok(members) => {
                for m in members {
                    t.set_peer(m.id, &m.addr);
                }
            }
            Err(e) => log::warn!("node {}: cannot read members: {e}", self.shared.node_id),
        }
    }

    fn on_soft_state(&mut self, leader: u64) {
        if self.raw.raft.state != StateRole::Leader {
            self.lease_until = None;
        }
        // Raft drops the read requests in flight when this replica's role changes, and the
        // leader a follower asked may no longer answer: their callers ask again at once.
        self.abandon_rounds();
        let old = self.shared.leader_id.swap(leader, Ordering::Relaxed);
        if old != leader {
            log::info!(
                "node {}: leader is now {} (term {})",
                self.shared.node_id,
                leader,
                self.raw.raft.term
            );
        }
    }

    fn role(&self) -> Role {
        match self.raw.raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower if self.is_learner() => Role::Learner,
            StateRole::Follower => Role::Follower,
        }
    }

    fn is_learner(&self) -> bool {
        self.raw
            .raft
            .prs()
            .conf()
            .learners()
            .contains(&self.shared.node_id)
    }

    fn send(&mut self, msgs: Vec<raft::eraftpb::Message>) {
        if msgs.is_empty() {
            return;
        }
        if msgs
            .iter()
            .any(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgTimeoutNow)
        {
            // Whatever raft's state says by now, the transferee may campaign once this lands.
            self.lease_barred_term = self.raw.raft.term;
            self.lease_until = None;
            self.shared.lease.revoke();
        }
        match &mut self.transport {
            Some(t) => t.send(msgs),
            None => log::debug!(
                "node {}: {} messages with no transport",
                self.shared.node_id,
                msgs.len()
            ),
        }
    }

    fn dispatch_committed(&mut self, entries: Vec<Entry>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut confs = Vec::new();
        for e in &entries {
            let cs = match e.get_entry_type() {
                EntryType::EntryNormal => continue,
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|err| Error::Corrupt(format!("conf change {}: {err}", e.index)))?;
                    self.on_conf_change(&cc)?;
                    self.raw.apply_conf_change(&cc)?
                }
                EntryType::EntryConfChangeV2 => {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .map_err(|err| Error::Corrupt(format!("conf change {}: {err}", e.index)))?;
                    self.raw.apply_conf_change(&cc)?
                }
            };
            self.raw.mut_store().set_conf_state(cs.clone());
            confs.push((e.index, cs));
        }
        self.handed = entries.last().map_or(self.handed, |e| e.index);
        self.apply_tx
            .send(ApplyTask::Entries { entries, confs })
            .map_err(|_| Error::Closed)?;
        Ok(())
    }

    /// Answers this replica's callers whose requests are among committed `entries` and whose
    /// outcome does not depend on the state. Committed means durable on a majority, so they
    /// are answered at once, not after the apply thread; their local reads wait until the
    /// state machine holds what was answered (`Shared::wait_replied_visible`).
    fn settle(&self, entries: &[Entry]) {
        let Some(last) = entries.last() else { return };
        // Before any caller hears of them: see `Shared::handed_index`.
        self.shared
            .handed_index
            .fetch_max(last.index, Ordering::AcqRel);
        if let Some((upto, seqs)) = self.settled(entries) {
            self.shared.replied_index.fetch_max(upto, Ordering::AcqRel);
            self.shared
                .waiters
                .complete_all(seqs.into_iter().map(|s| (s, Ok(()))));
        }
    }

    /// This replica's requests among committed `entries` that can be answered now, and the
    /// index of the last entry holding one.
    fn settled(&self, entries: &[Entry]) -> Option<(u64, Vec<u64>)> {
        let mut seqs = Vec::new();
        let mut upto = 0;
        for e in entries {
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                let before = seqs.len();
                crate::command::settled_on_commit(&e.data, self.shared.client_id, &mut seqs);
                if seqs.len() > before {
                    upto = e.index;
                }
            }
        }
        (!seqs.is_empty()).then_some((upto, seqs))
    }

    /// Updates the transport and this node's standing for a committed conf change.
    fn on_conf_change(&mut self, cc: &ConfChange) -> Result<()> {
        let ctx = ConfContext::decode(&cc.context)?;
        let id = cc.node_id;
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Some(t) = &mut self.transport {
                    if !ctx.addr.is_empty() {
                        t.set_peer(id, &ctx.addr);
                    }
                }
            }
            ConfChangeType::RemoveNode => {
                if id == self.shared.node_id {
                    log::warn!("node {id}: removed from the cluster");
                    self.shared.removed.store(true, Ordering::SeqCst);
                } else if let Some(t) = &mut self.transport {
                    t.remove_peer(id);
                }
            }
        }
        Ok(())
    }

    fn dispatch_reads(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Ok(ctx) = <[u8; 16]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            let (session, n) = ctx.split_at(8);
            if session != self.shared.client_id.to_le_bytes() {
                continue;
            }
            let ctx = u64::from_le_bytes(n.try_into().expect("8 bytes"));
            if ctx & ROUND_CTX != 0 {
                self.settle_round(ctx & !ROUND_CTX, rs.index);
                continue;
            }
            let Some((issued, waiters)) = self.read_batches.remove(&ctx) else {
                continue;
            };
            if self.raw.raft.state == StateRole::Leader {
                self.extend_lease(issued);
            }
            self.answer_reads(rs.index, waiters);
        }
    }

    /// A quorum confirmed read round `round` at `index`: its callers (and those of every
    /// earlier round) may read once their state machine holds `index`.
    fn settle_round(&mut self, round: u64, index: u64) {
        let mut issued = None;
        while let Some(&(r, at)) = self.rounds_in_flight.front() {
            if r > round {
                break;
            }
            if r == round {
                issued = Some(at);
            }
            self.rounds_in_flight.pop_front();
        }
        if let (Some(issued), StateRole::Leader) = (issued, self.raw.raft.state) {
            self.extend_lease(issued);
        }
        self.shared.read_rounds.confirm(round, index);
    }

    /// A quorum answered a request issued at `issued`: none of them votes for another leader
    /// before an election timeout from then.
    fn extend_lease(&mut self, issued: Instant) {
        let until = issued + self.lease_duration;
        self.lease_until = Some(self.lease_until.map_or(until, |u| u.max(until)));
    }

    /// Lets `waiters` read once the state machine holds `index`: at once when it does already
    /// (a wake-up of the apply thread saved), else through the apply thread.
    fn answer_reads(&self, index: u64, waiters: Vec<ReadWaiter>) {
        if waiters.is_empty() {
            return;
        }
        if self.shared.applied_index.load(Ordering::Acquire) >= index {
            for w in waiters {
                let _ = w.try_send(Ok(()));
            }
        } else {
            let _ = self.apply_tx.send(ApplyTask::ReadIndex { index, waiters });
        }
    }

    /// Publishes the lease for callers on this replica: valid now, with the commit index their
    /// reads must see; or none.
    fn publish_lease(&self) {
        match self.lease_until {
            Some(until) if self.lease_valid(Instant::now()) => {
                self.shared
                    .lease
                    .publish(until, self.raw.raft.raft_log.committed);
            }
            _ => self.shared.lease.revoke(),
        }
    }

    fn publish(&self) {
        self.publish_lease();
        let s = &self.shared;
        s.term.store(self.raw.raft.term, Ordering::Relaxed);
        s.commit_index
            .store(self.raw.raft.raft_log.committed, Ordering::Relaxed);
        s.last_index
            .store(self.raw.raft.raft_log.last_index(), Ordering::Relaxed);
        s.leader_id
            .store(self.raw.raft.leader_id, Ordering::Relaxed);
        s.first_index
            .store(self.raw.store().truncated_index() + 1, Ordering::Relaxed);
        s.role.store(self.role() as u8, Ordering::Relaxed);
    }

    fn stop(&mut self) {
        for w in self.pending_reads.drain(..) {
            let _ = w.try_send(Err(Error::Closed));
        }
        self.read_batches.clear();
        self.shared
            .read_rounds
            .abandon(self.shared.read_rounds.last_started(), false);
        self.shared.read_rounds.wake_all();
        if let Some(mut t) = self.transport.take() {
            t.shutdown();
        }
        let _ = self.apply_tx.send(ApplyTask::Shutdown);
    }
}

/// A pre-vote or vote that would make this replica, at `term`, vote for another leader, when
/// not asked for by a leadership transfer: what raft-rs ignores while a follower's leader
/// lease lasts.
fn is_disruptive_campaign(msg: &raft::eraftpb::Message, term: u64) -> bool {
    use raft::eraftpb::MessageType::{MsgRequestPreVote, MsgRequestVote};
    matches!(msg.get_msg_type(), MsgRequestVote | MsgRequestPreVote)
        && msg.term > term
        && msg.context != raft::CAMPAIGN_TRANSFER
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{Message, MessageType};

    fn msg(t: MessageType, term: u64, context: &[u8]) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.term = term;
        m.context = context.to_vec().into();
        m
    }

    #[test]
    fn campaigns_for_a_higher_term_are_disruptive_unless_a_transfer_asked_for_them() {
        use MessageType::*;
        assert!(is_disruptive_campaign(&msg(MsgRequestPreVote, 6, b""), 5));
        assert!(is_disruptive_campaign(&msg(MsgRequestVote, 6, b""), 5));
        assert!(!is_disruptive_campaign(
            &msg(MsgRequestVote, 6, raft::CAMPAIGN_TRANSFER),
            5
        ));
        // Not a higher term: raft-rs answers from its own state (one vote per term).
        assert!(!is_disruptive_campaign(&msg(MsgRequestVote, 5, b""), 5));
        assert!(!is_disruptive_campaign(&msg(MsgRequestPreVote, 4, b""), 5));
        // Not a campaign.
        for t in [
            MsgAppend,
            MsgHeartbeat,
            MsgRequestVoteResponse,
            MsgTimeoutNow,
        ] {
            assert!(!is_disruptive_campaign(&msg(t, 6, b""), 5), "{t:?}");
        }
    }
}
