//! The apply thread: applies committed entries to the state machine, batch by batch, and
//! completes the callers waiting on them.
//!
//! Each batch is one LMDB write txn holding the data changes, the dedup table updates and the
//! new applied index, so a crash leaves the state machine exactly at some applied index.
//! Entries at or below the applied index (replayed by raft after a restart) are skipped and
//! counted, never applied twice.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam::channel::Sender;
use flume::Receiver;
use raft::eraftpb::{ConfState, Entry, EntryType};

use super::waiters::Outcome;
use super::{ApplyTask, Shared};
use crate::command::{Command, Op};
use crate::error::{codes, Error, Result};
use crate::storage::state_machine::{ApplyTxn, Dedup, SESSION_SWEEP_ENTRIES};

/// Most entries applied in one LMDB txn.
const BATCH_ENTRIES_MAX: usize = 16_384;
/// Attempts at committing a batch before the replica fails closed.
const COMMIT_ATTEMPTS_MAX: u32 = 5;

/// The apply thread's state.
pub struct Applier {
    shared: Arc<Shared>,
    rx: Receiver<ApplyTask>,
    applied: u64,
    reads: BTreeMap<u64, Vec<Sender<Result<()>>>>,
}

impl Applier {
    /// Creates the applier; `applied` is the state machine's applied index.
    pub fn new(shared: Arc<Shared>, rx: Receiver<ApplyTask>, applied: u64) -> Applier {
        Applier {
            shared,
            rx,
            applied,
            reads: BTreeMap::new(),
        }
    }

    /// Runs until shut down or failed.
    pub fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut entries: Vec<Entry> = Vec::new();
            let mut confs: Vec<(u64, ConfState)> = Vec::new();
            let mut stop = false;
            let mut task = Some(first);
            while let Some(t) = task.take() {
                match t {
                    ApplyTask::Entries {
                        entries: e,
                        confs: c,
                    } => {
                        entries.extend(e);
                        confs.extend(c);
                    }
                    ApplyTask::ReadIndex { index, waiters } => {
                        self.reads.entry(index).or_default().extend(waiters);
                    }
                    ApplyTask::Shutdown => stop = true,
                }
                if stop || entries.len() >= BATCH_ENTRIES_MAX {
                    break;
                }
                task = self.rx.try_recv().ok();
            }
            if !entries.is_empty() {
                if let Err(e) = self.apply_batch(&entries, &confs) {
                    self.shared.fail(e.clone());
                    self.fail_reads(&e);
                    return;
                }
            }
            self.complete_reads();
            if stop {
                break;
            }
        }
        self.fail_reads(&Error::Closed);
    }

    fn apply_batch(&mut self, entries: &[Entry], confs: &[(u64, ConfState)]) -> Result<()> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut done = Vec::new();
            match self.try_apply(entries, confs, &mut done) {
                Ok(applied) => {
                    let newly = applied.saturating_sub(self.applied);
                    self.applied = applied;
                    self.shared.applied_index.store(applied, Ordering::Release);
                    self.shared
                        .entries_applied
                        .fetch_add(newly, Ordering::Relaxed);
                    self.shared.waiters.complete_all(done);
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
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal => self.apply_command(&mut txn, e, done)?,
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    if let Some((_, cs)) = confs.iter().find(|(i, _)| *i == e.index) {
                        txn.set_conf_state(cs)?;
                    }
                }
            }
            let before = txn.applied();
            txn.set_applied(e.index, e.term);
            if before / SESSION_SWEEP_ENTRIES != e.index / SESSION_SWEEP_ENTRIES {
                txn.expire_sessions(e.index)?;
            }
        }
        let applied = txn.applied();
        if applied > start {
            txn.commit()?;
        }
        if skipped > 0 {
            self.shared
                .entries_skipped
                .fetch_add(skipped, Ordering::Relaxed);
        }
        Ok(applied)
    }

    fn apply_command(
        &self,
        txn: &mut ApplyTxn<'_>,
        e: &Entry,
        done: &mut Vec<(u64, Outcome)>,
    ) -> Result<()> {
        let cmd = match Command::decode(&e.data) {
            Ok(c) => c,
            Err(err) => {
                // A committed entry is part of history on every replica; it cannot be skipped
                // on one of them without diverging, so refuse to go on.
                return Err(Error::Corrupt(format!(
                    "entry {} does not decode: {err}",
                    e.index
                )));
            }
        };
        let mine = cmd.client_id == self.shared.client_id;
        match txn.check_session(cmd.client_id, cmd.seq, cmd.watermark, e.index)? {
            Dedup::Duplicate(code) => {
                self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                if mine {
                    done.push((cmd.seq, outcome_of(code.unwrap_or(codes::OK))));
                }
                return Ok(());
            }
            Dedup::New => {}
        }
        let code = match cmd.op {
            Op::Noop => codes::OK,
            Op::Put { key, value } => {
                txn.put(key, value)?;
                codes::OK
            }
            Op::Delete { key } => {
                txn.delete(key)?;
                codes::OK
            }
        };
        txn.record_result(cmd.client_id, cmd.seq, code)?;
        if mine {
            done.push((cmd.seq, outcome_of(code)));
        }
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
        other => Err(Error::Io(format!("request failed with code {other}"))),
    }
}
