//! The apply thread: applies committed entries to the state machine and completes the callers
//! waiting on them.
//!
//! Entries are applied into one open LMDB write txn that also holds the dedup table updates and
//! the new applied index, and commits them together (see `Applier::serve` for when), so a
//! crash leaves the state machine exactly at some applied index. Entries at or below the
//! applied index (replayed by raft after a restart) are skipped and counted, never applied
//! twice.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use flume::{Receiver, Sender};
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfState, Entry, EntryType};

use super::waiters::Outcome;
use super::{ApplyTask, Shared};
use crate::command::{Command, ConfContext};
use crate::error::{codes, Error, Result};
use crate::storage::snapshot::Staged;
use crate::storage::state_machine::{ApplyTxn, Dedup, StateMachine, SESSION_SWEEP_ENTRIES};

/// Most entries applied in one LMDB txn.
const BATCH_ENTRIES_MAX: usize = 16_384;
/// Longest applied entries are held uncommitted, unless a reader or a watcher needs them
/// sooner. A commit writes every B-tree page its writes touched and fsyncs it, so the longer
/// writes are held the more of them share a page write: with 64 writers over 100 000 keys and
/// three replicas on one disk, holding 10 ms cost ~18 KiB of disk writes per client write,
/// holding 1 s ~4 KiB, and writes/s about doubled. Callers do not wait for the commit: puts,
/// deletes and batches are answered at Raft commit (`RaftLoop::dispatch_committed`), other
/// requests once applied in the open txn.
const HOLD_MAX: Duration = Duration::from_secs(1);
/// How long applied entries are held while a watcher waits for changes: a watcher that is
/// always waiting sees each change within this, and costs the disk a commit per interval.
const HOLD_WATCHED: Duration = Duration::from_millis(10);
/// Most memory the open txn may dirty before it is committed, estimated as one page per key
/// written, up to the number of pages the keyed tables had (a hot key set is rewritten in place
/// however often it is written), plus the entries' bytes twice (new data lands in the data
/// pages and in the change feed) and [`WRITE_OVERHEAD_BYTES`] per key written.
const HOLD_DIRTY_MAX: u64 = 64 << 20;
/// What a key written costs beyond its bytes in that estimate: node headers, its deadline
/// entries, and the unused part of pages split by new keys.
const WRITE_OVERHEAD_BYTES: u64 = 128;
/// LMDB page size assumed by that estimate.
const PAGE_BYTES: u64 = 4096;
/// Attempts at committing a batch before the replica fails closed.
const COMMIT_ATTEMPTS_MAX: u32 = 5;

/// The watch window is trimmed at least each time the applied index crosses a multiple of
/// this; smaller windows more often (an eighth of the window), so it never overshoots by much.
const CHANGES_PRUNE_ENTRIES: u64 = 1024;
/// How long an install waits for readers to let go of the old state machine.
const INSTALL_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why [`Applier::serve`] returned.
enum Next {
    /// Install this snapshot, then serve again.
    Install(Staged, Sender<Result<()>>),
    /// Shut down.
    Stop,
}

/// Entries applied in the open txn and not yet committed.
#[derive(Default)]
struct Held {
    /// The entries (applied again from scratch if the txn fails).
    entries: Vec<Entry>,
    /// Membership after each conf-change entry among them.
    confs: Vec<(u64, ConfState)>,
    /// Bytes of entry data.
    bytes: u64,
    /// When the first of them arrived.
    since: Option<Instant>,
    /// A membership change is among them: commit before answering its caller.
    membership: bool,
    /// Outcomes answered only after the commit.
    deferred: Vec<(u64, Outcome)>,
    /// Entries seen again at or below the applied index.
    skipped: u64,
}

/// The apply thread's state.
pub struct Applier {
    shared: Arc<Shared>,
    rx: Receiver<ApplyTask>,
    applied: u64,
    reads: BTreeMap<u64, Vec<Sender<Result<()>>>>,
    dir: PathBuf,
    map_size_mb: u64,
    snapshot_entries: u64,
    watch_retain: u64,
    watch_retain_bytes: u64,
    last_snapshot: u64,
}

/// Settings of the apply thread.
pub struct ApplySettings {
    /// Replica directory (snapshots are installed into it).
    pub dir: PathBuf,
    /// LMDB map size of a state machine.
    pub map_size_mb: u64,
    /// Entries between durable snapshot points.
    pub snapshot_entries: u64,
    /// Entries whose changes the watch feed keeps (0: no feed).
    pub watch_retain: u64,
    /// Bytes the watch feed holds at most (0: no bound).
    pub watch_retain_bytes: u64,
}

impl Applier {
    /// Creates the applier; `applied` is the state machine's applied index (and a durable
    /// snapshot point: the state machine was synced at open).
    pub fn new(
        shared: Arc<Shared>,
        rx: Receiver<ApplyTask>,
        applied: u64,
        settings: ApplySettings,
    ) -> Applier {
        Applier {
            shared,
            rx,
            applied,
            reads: BTreeMap::new(),
            dir: settings.dir,
            map_size_mb: settings.map_size_mb,
            snapshot_entries: settings.snapshot_entries,
            watch_retain: settings.watch_retain,
            watch_retain_bytes: settings.watch_retain_bytes,
            last_snapshot: applied,
        }
    }

    /// Runs until shut down or failed.
    pub fn run(mut self) {
        loop {
            match self.serve() {
                Ok(Next::Install(staged, reply)) => {
                    let r = self.install(staged);
                    let failed = r.clone().err();
                    let _ = reply.send(r);
                    if let Some(e) = failed {
                        self.fail_reads(&e);
                        return;
                    }
                }
                Ok(Next::Stop) => break,
                Err(e) => {
                    self.shared.fail(e.clone());
                    self.fail_reads(&e);
                    return;
                }
            }
        }
        self.fail_reads(&Error::Closed);
    }

    /// Applies committed entries as they come, each into the one open write txn, and answers
    /// the callers the raft thread has not answered already; commits the txn (one fsync) when
    /// [`Applier::must_commit`] says so. A restart replays the uncommitted entries from the log
    /// to the same outcomes, so holding them costs no durability.
    /// Returns when a snapshot is to be installed (after committing) or on shutdown.
    fn serve(&mut self) -> Result<Next> {
        let sm = self.shared.state_machine()?;
        let mut txn: Option<ApplyTxn<'_>> = None;
        let mut held = Held::default();
        loop {
            let first = match &held.since {
                None => self.rx.recv().unwrap_or(ApplyTask::Shutdown),
                Some(since) => {
                    match self
                        .rx
                        .recv_timeout(self.hold().saturating_sub(since.elapsed()))
                    {
                        Ok(t) => t,
                        Err(flume::RecvTimeoutError::Timeout) => ApplyTask::Flush,
                        Err(flume::RecvTimeoutError::Disconnected) => ApplyTask::Shutdown,
                    }
                }
            };
            let mut next = None;
            let mut task = Some(first);
            while let Some(t) = task.take() {
                match t {
                    ApplyTask::Entries { entries, confs } => {
                        self.take_entries(&sm, &mut txn, &mut held, entries, confs)?
                    }
                    ApplyTask::ReadIndex { index, waiters } => {
                        self.reads.entry(index).or_default().extend(waiters);
                    }
                    // Entries queued before the snapshot are committed first; none can follow
                    // it, raft hands them over only after the install.
                    ApplyTask::Install { staged, reply } => {
                        next = Some(Next::Install(staged, reply))
                    }
                    ApplyTask::Flush => {}
                    ApplyTask::Shutdown => next = Some(Next::Stop),
                }
                // A backlog (a follower catching up, or entries answered at commit faster
                // than they are applied) is committed as it goes, within the same bounds, and
                // a reader waiting meanwhile is not kept behind all of it.
                if next.is_some()
                    || txn
                        .as_ref()
                        .is_some_and(|t| self.must_commit(&held, t, false))
                {
                    break;
                }
                task = self.rx.try_recv().ok();
            }
            if let Some(t) = txn.take() {
                if next.is_some() || self.must_commit(&held, &t, true) {
                    self.commit(t, &mut held)?;
                } else {
                    txn = Some(t);
                }
            }
            self.complete_reads();
            if let Some(n) = next {
                return Ok(n);
            }
        }
    }

    /// Applies newly committed entries into the open txn (opening one if needed) and answers
    /// their callers; batches changing membership are answered after the commit.
    fn take_entries<'s>(
        &mut self,
        sm: &'s StateMachine,
        txn: &mut Option<ApplyTxn<'s>>,
        held: &mut Held,
        entries: Vec<Entry>,
        confs: Vec<(u64, ConfState)>,
    ) -> Result<()> {
        let normal = all_normal(&entries);
        let from = held.entries.len();
        held.bytes += entries.iter().map(|e| e.data.len() as u64).sum::<u64>();
        held.entries.extend(entries);
        held.confs.extend(confs);
        held.since.get_or_insert_with(Instant::now);
        if txn.is_none() {
            match sm.begin() {
                Ok(t) => *txn = Some(t),
                Err(e) => return self.recover(None, held, e),
            }
        }
        let t = txn.as_mut().expect("opened above");
        let mut done = Vec::new();
        match self.apply_entries(t, &held.entries[from..], &held.confs, &mut done) {
            Ok(skipped) => {
                held.skipped += skipped;
                if normal {
                    self.answer_early(t.applied(), done);
                } else {
                    held.membership = true;
                    held.deferred.extend(done);
                }
                Ok(())
            }
            Err(e) => self.recover(txn.take(), held, e),
        }
    }

    /// Answers callers whose entries are applied up to `applied` but not yet committed to the
    /// state machine: the outcomes are decided and the entries durable in a majority's logs
    /// (see `try_apply`). Local reads wait for the commit past `replied_index`.
    fn answer_early(&self, applied: u64, done: Vec<(u64, Outcome)>) {
        if done.is_empty() {
            return;
        }
        self.shared
            .replied_index
            .fetch_max(applied, Ordering::AcqRel);
        self.shared.waiters.complete_all(done);
    }

    /// How long applied entries are held uncommitted at most, as of now.
    fn hold(&self) -> Duration {
        if self.shared.watchers_waiting.load(Ordering::Acquire) > 0 {
            HOLD_WATCHED
        } else {
            HOLD_MAX
        }
    }

    /// True when the open txn is to be committed now; `drained` when nothing more is queued
    /// to be applied in it first.
    ///
    /// A caller waiting for the state machine to reach `flush_to` is served by one commit
    /// once the txn reaches that index, not by a commit (and an fsync) after every queued
    /// batch on the way there: when writes are answered at Raft commit, the apply thread can
    /// be many batches behind the writer that then reads.
    fn must_commit(&self, held: &Held, txn: &ApplyTxn<'_>, drained: bool) -> bool {
        let applied = txn.applied();
        let flush_to = self.shared.flush_to.load(Ordering::Acquire);
        held.membership
            || held.entries.len() >= BATCH_ENTRIES_MAX
            || 2 * held.bytes
                + txn.writes() * WRITE_OVERHEAD_BYTES
                + txn.pages_touched_max() * PAGE_BYTES
                >= HOLD_DIRTY_MAX
            || held.since.is_some_and(|s| s.elapsed() >= self.hold())
            || (flush_to > self.applied
                && (applied >= flush_to || (drained && applied >= self.handed_upto(flush_to))))
            || self
                .reads
                .first_key_value()
                .is_some_and(|(i, _)| *i <= applied)
            || applied >= self.last_snapshot + self.snapshot_entries
    }

    /// How far the txn must reach, for a reader waiting for `flush_to`, before nothing queued
    /// means nothing more is coming: the raft thread may have answered a write, and its
    /// caller asked for a commit, a moment before it hands over the entry.
    fn handed_upto(&self, flush_to: u64) -> u64 {
        flush_to.min(self.shared.handed_index.load(Ordering::Acquire))
    }

    /// Commits the open txn and publishes its applied index.
    fn commit(&mut self, txn: ApplyTxn<'_>, held: &mut Held) -> Result<()> {
        let applied = txn.applied();
        let started = Instant::now();
        if let Err(e) = txn.commit() {
            return self.recover(None, held, e);
        }
        self.shared
            .apply_commit_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if held.skipped > 0 {
            self.shared
                .entries_skipped
                .fetch_add(held.skipped, Ordering::Relaxed);
        }
        let deferred = std::mem::take(held).deferred;
        self.published(applied, deferred);
        Ok(())
    }

    /// Publishes a committed applied index: counters, waiters answered after the commit,
    /// watchers, and the snapshot point.
    fn published(&mut self, applied: u64, done: Vec<(u64, Outcome)>) {
        let newly = applied.saturating_sub(self.applied);
        self.applied = applied;
        self.shared.applied_index.store(applied, Ordering::Release);
        self.shared
            .entries_applied
            .fetch_add(newly, Ordering::Relaxed);
        self.shared.waiters.complete_all(done);
        self.shared.apply_batches.fetch_add(1, Ordering::Relaxed);
        self.shared
            .apply_batch_max
            .fetch_max(newly, Ordering::Relaxed);
        self.shared.notify_applied();
        self.maybe_snapshot();
    }

    /// After a failed apply or commit: drops the open txn (nothing of it was committed) and
    /// applies every held entry again in fresh txns, with retries.
    fn recover(&mut self, txn: Option<ApplyTxn<'_>>, held: &mut Held, e: Error) -> Result<()> {
        drop(txn);
        let Held {
            entries,
            confs,
            deferred,
            ..
        } = std::mem::take(held);
        if !matches!(e, Error::Io(_)) {
            return Err(e);
        }
        log::warn!(
            "node {}: apply failed, applying {} entries again: {e}",
            self.shared.node_id,
            entries.len()
        );
        self.apply_batch(&entries, &confs)?;
        self.shared.waiters.complete_all(deferred);
        Ok(())
    }

    fn apply_batch(&mut self, entries: &[Entry], confs: &[(u64, ConfState)]) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut done = Vec::new();
            match self.try_apply(entries, confs, &mut done) {
                Ok(applied) => {
                    self.published(applied, done);
                    return Ok(());
                }
                Err(e) if attempt < COMMIT_ATTEMPTS_MAX && matches!(e, Error::Io(_)) => {
                    log::warn!(
                        "node {}: apply batch failed (attempt {attempt}): {e}",
                        self.shared.node_id
                    );
                    thread::sleep(Duration::from_millis(50 << attempt));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies the batch in one txn; returns the new applied index.
    fn try_apply(
        &self,
        entries: &[Entry],
        confs: &[(u64, ConfState)],
        done: &mut Vec<(u64, Outcome)>,
    ) -> Result<u64> {
        let sm = self.shared.state_machine()?;
        let mut txn = sm.begin()?;
        let start = txn.applied();
        let skipped = self.apply_entries(&mut txn, entries, confs, done)?;
        let applied = txn.applied();
        if applied > start {
            // The outcomes are decided and the entries are durable in a majority's logs, so
            // the callers get them now rather than after this commit's fsync; a restart would
            // replay the same entries to the same outcomes. Reads on this replica wait for
            // the commit (`replied_index`), so they still see every answered write. Batches
            // changing membership reply after the commit, as member lists read it directly.
            if all_normal(entries) {
                self.answer_early(applied, std::mem::take(done));
            }
            let started = Instant::now();
            txn.commit()?;
            self.shared
                .apply_commit_us
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        if skipped > 0 {
            self.shared
                .entries_skipped
                .fetch_add(skipped, Ordering::Relaxed);
        }
        Ok(applied)
    }

    /// Applies `entries` in `txn` (those at or below its applied index are skipped, and
    /// counted in the result); the outcomes of this replica's requests go to `done`.
    fn apply_entries(
        &self,
        txn: &mut ApplyTxn<'_>,
        entries: &[Entry],
        confs: &[(u64, ConfState)],
        done: &mut Vec<(u64, Outcome)>,
    ) -> Result<u64> {
        let mut skipped = 0u64;
        for e in entries {
            if e.index <= txn.applied() {
                skipped += 1;
                continue;
            }
            assert_eq!(
                e.index,
                txn.applied() + 1,
                "committed entries must apply without gaps (applied {})",
                txn.applied()
            );
            txn.begin_entry(e.index, self.watch_retain > 0);
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => self.apply_command(txn, e, done)?,
                EntryType::EntryConfChange => self.apply_conf_change(txn, e, done)?,
                EntryType::EntryConfChangeV2 => {}
            }
            if e.get_entry_type() != EntryType::EntryNormal {
                if let Some((_, cs)) = confs.iter().find(|(i, _)| *i == e.index) {
                    txn.set_conf_state(cs)?;
                }
            }
            let before = txn.applied();
            txn.set_applied(e.index, e.term);
            if before / SESSION_SWEEP_ENTRIES != e.index / SESSION_SWEEP_ENTRIES {
                txn.expire_sessions(e.index)?;
            }
            if self.watch_retain > 0
                && (before / self.prune_every() != e.index / self.prune_every()
                    || self.feed_over_budget(txn)?)
            {
                let floor = e.index.saturating_sub(self.watch_retain);
                txn.prune_changes(floor, self.watch_retain_bytes)?;
            }
        }
        Ok(skipped)
    }

    /// Applies the command (or the packed commands) of a normal entry.
    fn apply_command(
        &self,
        txn: &mut ApplyTxn<'_>,
        e: &Entry,
        done: &mut Vec<(u64, Outcome)>,
    ) -> Result<()> {
        // A committed entry is part of history on every replica; it cannot be skipped on one
        // of them without diverging, so one that does not decode stops the replica.
        let corrupt =
            |err: Error| Error::Corrupt(format!("entry {} does not decode: {err}", e.index));
        match crate::command::unpack(&e.data).map_err(corrupt)? {
            Some(parts) => {
                for part in parts {
                    let cmd = Command::decode(part).map_err(corrupt)?;
                    self.apply_one(txn, cmd, e.index, done)?;
                }
                Ok(())
            }
            None => {
                let cmd = Command::decode(&e.data).map_err(corrupt)?;
                self.apply_one(txn, cmd, e.index, done)
            }
        }
    }

    fn apply_one(
        &self,
        txn: &mut ApplyTxn<'_>,
        cmd: Command<'_>,
        index: u64,
        done: &mut Vec<(u64, Outcome)>,
    ) -> Result<()> {
        let mine = cmd.client_id == self.shared.client_id;
        match txn.check_session(cmd.client_id, cmd.seq, cmd.watermark, index)? {
            Dedup::Duplicate(code) => {
                self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                if mine {
                    done.push((cmd.seq, outcome_of(code.unwrap_or(codes::OK))));
                }
                return Ok(());
            }
            Dedup::New => {}
        }
        let code = super::execute::execute(txn, &cmd.op)?;
        txn.record_result(cmd.client_id, cmd.seq, code)?;
        if mine {
            done.push((cmd.seq, outcome_of(code)));
        }
        Ok(())
    }

    fn apply_conf_change(
        &self,
        txn: &mut ApplyTxn<'_>,
        e: &Entry,
        done: &mut Vec<(u64, Outcome)>,
    ) -> Result<()> {
        let cc = ConfChange::parse_from_bytes(&e.data)
            .map_err(|err| Error::Corrupt(format!("conf change {}: {err}", e.index)))?;
        let ctx = ConfContext::decode(&cc.context)?;
        match cc.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if !ctx.addr.is_empty() {
                    txn.set_member(cc.node_id, &ctx.addr)?;
                }
            }
            ConfChangeType::RemoveNode => txn.remove_member(cc.node_id, e.index)?,
        }
        if ctx.client_id == self.shared.client_id && ctx.seq != 0 {
            done.push((ctx.seq, Ok(())));
        }
        Ok(())
    }

    /// True when the feed holds an eighth more than its byte bound: pruned now rather than at
    /// the next pruning point, so big values cannot overshoot the bound by much.
    fn feed_over_budget(&self, txn: &mut ApplyTxn<'_>) -> Result<bool> {
        let max = self.watch_retain_bytes;
        Ok(max > 0 && txn.changes_bytes()? > max.saturating_add(max / 8))
    }

    fn prune_every(&self) -> u64 {
        (self.watch_retain / 8).clamp(1, CHANGES_PRUNE_ENTRIES)
    }

    /// Marks a durable snapshot point every `snapshot_entries` entries: the state machine is
    /// synced, and the raft thread may then compact the log below it.
    fn maybe_snapshot(&mut self) {
        if self.applied < self.last_snapshot + self.snapshot_entries {
            return;
        }
        let synced = self.shared.state_machine().and_then(|sm| sm.sync());
        match synced {
            Ok(()) => {
                self.last_snapshot = self.applied;
                self.shared
                    .snapshot_index
                    .store(self.applied, Ordering::Release);
                self.shared.snapshots_taken.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::warn!(
                "node {}: cannot sync state machine: {e}",
                self.shared.node_id
            ),
        }
    }

    /// Replaces the state machine with a received snapshot.
    fn install(&mut self, staged: Staged) -> Result<()> {
        let started = Instant::now();
        let mut slot = self.shared.sm.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.take() {
            let deadline = Instant::now() + INSTALL_DRAIN_TIMEOUT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
        }
        let installed = crate::storage::install_data_dir(&self.dir, &staged.path)
            .and_then(|path| StateMachine::open(&path, self.map_size_mb));
        let sm = match installed {
            Ok(sm) => sm,
            Err(e) => {
                // The old state machine is still current on disk; reopen it and fail closed.
                if let Ok(p) = crate::storage::current_data_dir(&self.dir) {
                    if let Ok(old) = StateMachine::open(&p, self.map_size_mb) {
                        *slot = Some(Arc::new(old));
                    }
                }
                return Err(e);
            }
        };
        let (applied, _) = sm.applied()?;
        assert_eq!(
            applied, staged.index,
            "installed state machine must hold the snapshot index"
        );
        *slot = Some(Arc::new(sm));
        drop(slot);
        self.applied = applied;
        self.last_snapshot = applied;
        self.shared.applied_index.store(applied, Ordering::Release);
        self.shared.snapshot_index.store(applied, Ordering::Release);
        self.shared
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        log::info!(
            "node {}: installed snapshot at {applied} in {:?}",
            self.shared.node_id,
            started.elapsed()
        );
        self.complete_reads();
        Ok(())
    }

    fn complete_reads(&mut self) {
        let later = self.reads.split_off(&(self.applied + 1));
        for (_, waiters) in std::mem::replace(&mut self.reads, later) {
            for w in waiters {
                let _ = w.try_send(Ok(()));
            }
        }
    }

    fn fail_reads(&mut self, e: &Error) {
        for (_, waiters) in std::mem::take(&mut self.reads) {
            for w in waiters {
                let _ = w.try_send(Err(e.clone()));
            }
        }
    }
}

fn outcome_of(code: i32) -> Outcome {
    match code {
        codes::OK => Ok(()),
        codes::CAS_FAILED => Err(Error::CasFailed),
        codes::NOT_FOUND => Err(Error::NotFound),
        codes::INVALID_ARG => Err(Error::invalid(format!(
            "the value would exceed {} bytes",
            crate::config::VALUE_BYTES_MAX
        ))),
        other => Err(Error::Io(format!("request failed with code {other}"))),
    }
}

/// True when every entry is a normal one (no membership change).
fn all_normal(entries: &[Entry]) -> bool {
    entries
        .iter()
        .all(|e| e.get_entry_type() == EntryType::EntryNormal)
}
