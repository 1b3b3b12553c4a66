//! Snapshots of the state machine, streamed in bounded chunks.
//!
//! A snapshot is the state-machine environment as seen by one LMDB read txn, opened when
//! raft-rs asks for a snapshot: its metadata (index, term, membership) is read from that same
//! txn, so it describes exactly the bytes that will be sent. Writes go on meanwhile (LMDB MVCC).
//! The sender walks every database in key order and emits chunks of records
//! (`db u8 | key_len u32 | key | value_len u32 | value`, little-endian) of about
//! [`CHUNK_BYTES`]; the receiver appends them into a fresh staging environment, one write txn
//! per chunk, and syncs it once at the end. Memory on both sides is bounded by the chunk size
//! (plus one value), whatever the size of the database.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, PutFlags, RoTxn, WithoutTls};
use raft::eraftpb::{Snapshot, SnapshotMetadata};

use super::state_machine::{StateMachine, DB_COUNT, DB_NAMES};
use crate::error::{Error, Result};

/// Target size of one snapshot chunk.
pub const CHUNK_BYTES: usize = 1 << 20;
/// An outgoing snapshot not picked up by the transport within this time is dropped (its read
/// txn pins old pages of the state machine).
const PENDING_TTL: Duration = Duration::from_secs(600);
/// Bytes of the `Snapshot.data` descriptor: the snapshot id.
const DESCRIPTOR_BYTES: usize = 8;

/// A snapshot ready to stream: the read txn it was taken from, and what it holds.
pub struct Outgoing {
    /// Id carried in the Raft snapshot message.
    pub id: u64,
    /// Applied index of the state in `txn`.
    pub index: u64,
    /// Term of that index.
    pub term: u64,
    txn: RoTxn<'static, WithoutTls>,
    dbs: [Database<Bytes, Bytes>; DB_COUNT],
}

/// Outgoing snapshots created by raft-rs (through `Storage::snapshot`) and not yet sent.
#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, (Instant, Outgoing)>>,
    created: AtomicU64,
}

impl Registry {
    /// Takes a snapshot of `sm` for node `to`. `Ok(None)` when it cannot serve `to` yet: the
    /// state machine has not applied `to`'s own admission, so `to` would ignore the snapshot.
    pub fn create(
        &self,
        sm: &StateMachine,
        to: u64,
        request_index: u64,
    ) -> Result<Option<Snapshot>> {
        let txn = sm.env.clone().static_read_txn()?;
        let (index, term) = sm.applied_at(&txn)?;
        let cs = sm.conf_state_at(&txn)?;
        let member = cs
            .voters
            .iter()
            .chain(&cs.learners)
            .chain(&cs.voters_outgoing)
            .any(|&id| id == to);
        if !member || index < request_index {
            return Ok(None);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let out = Outgoing {
            id,
            index,
            term,
            txn,
            dbs: sm.raw_dbs(),
        };
        let mut pending = self.lock();
        let now = Instant::now();
        pending.retain(|_, (at, _)| now.duration_since(*at) < PENDING_TTL);
        pending.insert(id, (now, out));
        drop(pending);
        self.created.fetch_add(1, Ordering::Relaxed);
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..SnapshotMetadata::default()
        };
        meta.set_conf_state(cs);
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = id.to_le_bytes().to_vec().into();
        Ok(Some(snap))
    }

    /// Takes the outgoing snapshot a Raft snapshot message refers to.
    pub fn take(&self, snap: &Snapshot) -> Option<Outgoing> {
        let id = descriptor_id(snap)?;
        self.lock().remove(&id).map(|(_, o)| o)
    }

    /// Forgets the snapshot a message refers to (it will not be sent).
    pub fn discard(&self, snap: &Snapshot) {
        let _ = self.take(snap);
    }

    /// Snapshots taken so far.
    pub fn created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Instant, Outgoing)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn descriptor_id(snap: &Snapshot) -> Option<u64> {
    let b: [u8; DESCRIPTOR_BYTES] = snap.data.as_ref().try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// Totals of a streamed snapshot, checked by the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Records sent.
    pub records: u64,
    /// Key and value bytes sent.
    pub bytes: u64,
}

impl Outgoing {
    /// Walks every database and hands chunks of records to `emit`.
    pub fn stream(&self, mut emit: impl FnMut(&[u8]) -> Result<()>) -> Result<Totals> {
        let mut totals = Totals::default();
        let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
        for (db_id, db) in self.dbs.iter().enumerate() {
            for item in db.iter(&self.txn)? {
                let (k, v) = item?;
                chunk.push(db_id as u8);
                chunk.extend_from_slice(&(k.len() as u32).to_le_bytes());
                chunk.extend_from_slice(k);
                chunk.extend_from_slice(&(v.len() as u32).to_le_bytes());
                chunk.extend_from_slice(v);
                totals.records += 1;
                totals.bytes += (k.len() + v.len()) as u64;
                if chunk.len() >= CHUNK_BYTES {
                    emit(&chunk)?;
                    chunk.clear();
                }
            }
        }
        if !chunk.is_empty() {
            emit(&chunk)?;
        }
        Ok(totals)
    }
}

/// A snapshot being received into a staging environment.
pub struct Stage {
    sm: Option<StateMachine>,
    dbs: [Database<Bytes, Bytes>; DB_COUNT],
    path: PathBuf,
    index: u64,
    term: u64,
    totals: Totals,
    last_db: u8,
}

impl Stage {
    /// Creates an empty staging environment at `path` for a snapshot at `(index, term)`.
    pub fn create(path: &Path, map_size_mb: u64, index: u64, term: u64) -> Result<Stage> {
        if path.exists() {
            fs::remove_dir_all(path)?;
        }
        let sm = StateMachine::open_staging(path, map_size_mb)?;
        let dbs = sm.raw_dbs();
        Ok(Stage {
            sm: Some(sm),
            dbs,
            path: path.to_path_buf(),
            index,
            term,
            totals: Totals::default(),
            last_db: 0,
        })
    }

    /// Writes one chunk of records in one txn. Records must arrive in snapshot order.
    pub fn chunk(&mut self, payload: &[u8]) -> Result<()> {
        let sm = self
            .sm
            .as_ref()
            .ok_or_else(|| Error::Corrupt("snapshot chunk after end".into()))?;
        let mut txn = sm.env.write_txn()?;
        let mut r = payload;
        while !r.is_empty() {
            let db_id = take(&mut r, 1)?[0];
            let key = take_bytes(&mut r)?;
            let value = take_bytes(&mut r)?;
            let db = self.dbs.get(db_id as usize).ok_or_else(|| {
                Error::Corrupt(format!("snapshot record for unknown database {db_id}"))
            })?;
            if db_id < self.last_db {
                return Err(Error::Corrupt("snapshot records out of order".into()));
            }
            self.last_db = db_id;
            // Keys arrive sorted: appending is both faster and a check of the order.
            db.put_with_flags(&mut txn, PutFlags::APPEND, key, value)
                .map_err(|e| {
                    Error::Corrupt(format!(
                        "snapshot record for {}: {e}",
                        DB_NAMES[db_id as usize]
                    ))
                })?;
            self.totals.records += 1;
            self.totals.bytes += (key.len() + value.len()) as u64;
        }
        txn.commit()?;
        Ok(())
    }

    /// Checks the totals and the applied index, syncs and closes the environment.
    pub fn finish(mut self, expected: Totals) -> Result<Staged> {
        if expected != self.totals {
            return Err(Error::Corrupt(format!(
                "snapshot incomplete: received {:?}, sender sent {expected:?}",
                self.totals
            )));
        }
        let sm = self.sm.take().expect("finish runs once");
        let applied = sm.applied()?;
        if applied != (self.index, self.term) {
            return Err(Error::Corrupt(format!(
                "snapshot holds applied {applied:?}, announced ({}, {})",
                self.index, self.term
            )));
        }
        sm.sync()?;
        drop(sm);
        Ok(Staged {
            path: std::mem::take(&mut self.path),
            index: self.index,
            term: self.term,
        })
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        self.sm = None;
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A complete snapshot on disk, waiting to be installed. Dropping it deletes it.
#[derive(Debug)]
pub struct Staged {
    /// Directory of the staged environment.
    pub path: PathBuf,
    /// Applied index it holds.
    pub index: u64,
    /// Term of that index.
    pub term: u64,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.path.exists() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if r.len() < n {
        return Err(Error::Corrupt("snapshot chunk truncated".into()));
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

fn take_bytes<'a>(r: &mut &'a [u8]) -> Result<&'a [u8]> {
    let n = u32::from_le_bytes(take(r, 4)?.try_into().expect("4 bytes")) as usize;
    take(r, n)
}
