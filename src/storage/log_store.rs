//! The Raft log, implementing [`raft::Storage`] on the write-ahead log of [`super::wal`].
//!
//! The log always covers `(truncated_index, last_index]` without gaps. An in-memory index maps
//! each of those entries to its place in the segment files; recent entries are also kept
//! decoded in a bounded cache, so replicating them and handing them to the apply thread never
//! touches the disk.
//!
//! Only the raft thread mutates a `LogStore`. Every append is one write and one fdatasync:
//! once [`LogStore::append`] returns, the entries and hard state survive power loss.

use std::collections::VecDeque;
use std::path::Path;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::wal::{Loc, Meta, Wal};
use crate::error::{Error, Result};

/// Index and term at which a freshly bootstrapped cluster starts. Starting above zero means a
/// replica that joins later (with an empty log) can only catch up through a snapshot, which
/// carries the initial membership; it can never replay a log that lacks it.
pub const INIT_INDEX: u64 = 5;
/// Term of [`INIT_INDEX`].
pub const INIT_TERM: u64 = 5;

/// Most bytes of recently appended entries kept decoded in memory.
const CACHE_BYTES_MAX: usize = 64 << 20;
/// Most entries kept decoded in memory. The cache's ring buffer is allocated for this many up
/// front (104 bytes each, touched as it fills) and never grows: a ring grown on demand doubles
/// the first time the count passes a power of two, which shows as a step in a long-running
/// replica's memory minutes after start.
const CACHE_ENTRIES_MAX: usize = 1 << 16;

/// Persistent identity of a replica's log: which cluster and node it belongs to, and a random
/// incarnation chosen when the log was created (a wiped replica comes back with a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Cluster the log belongs to.
    pub cluster_id: u64,
    /// Node the log belongs to.
    pub node_id: u64,
    /// Random number fixed when the log was created.
    pub incarnation: u64,
}

/// Source of snapshots for [`raft::Storage::snapshot`], provided by the node layer.
pub type SnapshotSource = Box<dyn Fn(u64, u64) -> raft::Result<Snapshot> + Send>;

/// The Raft log store. See the module docs.
pub struct LogStore {
    wal: Wal,
    hard_state: HardState,
    /// The hard state last written to the wal.
    persisted_hs: HardState,
    conf_state: ConfState,
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    /// `(term, location)` of every entry in `(truncated_index, last_index]`.
    index: VecDeque<(u64, Loc)>,
    cache: EntryCache,
    snapshot_source: Option<SnapshotSource>,
}

impl LogStore {
    /// Opens (creating if needed) the log in directory `path` and recovers it.
    pub fn open(path: &Path) -> Result<LogStore> {
        let (wal, rec) = Wal::open(path)?;
        let (truncated_index, truncated_term) = wal.meta().truncated;
        let mut index: VecDeque<(u64, Loc)> = VecDeque::new();
        let mut last_index = truncated_index;
        for (i, term, loc) in rec.entries {
            if i <= truncated_index {
                continue;
            }
            if i <= last_index {
                // A later write replaced this suffix (a conflict resolved by the leader).
                index.truncate((i - truncated_index - 1) as usize);
            } else if i != last_index + 1 {
                return Err(Error::Corrupt(format!(
                    "wal has entry {i} after {last_index}: a gap"
                )));
            }
            index.push_back((term, loc));
            last_index = i;
        }
        Ok(LogStore {
            wal,
            persisted_hs: rec.hard_state.clone(),
            hard_state: rec.hard_state,
            conf_state: ConfState::default(),
            truncated_index,
            truncated_term,
            last_index,
            index,
            cache: EntryCache::new(),
            snapshot_source: None,
        })
    }

    /// True when nothing was ever written: no identity, hard state, entries or truncation point.
    pub fn is_empty(&self) -> bool {
        self.wal.meta().identity.is_none()
            && self.hard_state == HardState::default()
            && self.last_index == 0
            && self.truncated_index == 0
    }

    /// Stored identity, if any.
    pub fn identity(&self) -> Result<Option<Identity>> {
        Ok(self.wal.meta().identity)
    }

    /// Stores the identity.
    pub fn set_identity(&mut self, id: Identity) -> Result<()> {
        let meta = Meta {
            identity: Some(id),
            ..self.meta_now()
        };
        self.wal.write_meta(meta)
    }

    fn meta_now(&self) -> Meta {
        Meta {
            identity: self.wal.meta().identity,
            truncated: (self.truncated_index, self.truncated_term),
            floor: self.wal.meta().floor,
            hard_state: self.hard_state.clone(),
        }
    }

    /// Gives a fresh log its identity and, for a founding member, its starting point `(index,
    /// term)` and membership, in one atomic write: a log has an identity exactly when it has
    /// been initialized. A replica that joins an existing cluster passes no starting point and
    /// waits for a snapshot.
    pub fn initialize(
        &mut self,
        id: Identity,
        founding: Option<(ConfState, u64, u64)>,
    ) -> Result<()> {
        assert!(self.is_empty(), "initialize on a non-empty log");
        match founding {
            None => self.set_identity(id),
            Some((cs, index, term)) => {
                let hs = HardState {
                    term,
                    commit: index,
                    ..HardState::default()
                };
                let meta = Meta {
                    identity: Some(id),
                    truncated: (index, term),
                    floor: 0,
                    hard_state: hs.clone(),
                };
                self.wal.restart(meta)?;
                self.truncated_index = index;
                self.truncated_term = term;
                self.last_index = index;
                self.index.clear();
                self.persisted_hs = hs.clone();
                self.hard_state = hs;
                self.conf_state = cs;
                Ok(())
            }
        }
    }

    /// Marks a fresh log as starting at [`INIT_INDEX`]/[`INIT_TERM`] with the given membership.
    /// Every founding member does the same, so all start from identical state.
    pub fn bootstrap(&mut self, conf_state: ConfState) -> Result<()> {
        assert!(self.is_empty(), "bootstrap on a non-empty log");
        let hs = HardState {
            term: INIT_TERM,
            commit: INIT_INDEX,
            ..HardState::default()
        };
        self.reset_to(INIT_INDEX, INIT_TERM, hs)?;
        self.conf_state = conf_state;
        Ok(())
    }

    /// Drops the whole log and restarts it after `(index, term)`: used when a snapshot is installed,
    /// and at open when the state machine is already ahead of the log (a crash between installing
    /// a snapshot's data and truncating the log).
    pub fn reset_to(&mut self, index: u64, term: u64, mut hs: HardState) -> Result<()> {
        hs.commit = hs.commit.max(index);
        hs.term = hs.term.max(term);
        let meta = Meta {
            truncated: (index, term),
            hard_state: hs.clone(),
            ..self.meta_now()
        };
        self.wal.restart(meta)?;
        self.truncated_index = index;
        self.truncated_term = term;
        self.last_index = index;
        self.index.clear();
        self.persisted_hs = hs.clone();
        self.hard_state = hs;
        self.cache.clear();
        Ok(())
    }

    /// Brings the log in line with a state machine that has applied up to `(applied, term)`.
    ///
    /// The commit index is raised to `applied` (those entries were committed: they were applied),
    /// since the commit index is persisted lazily. If the log does not reach `applied`, or holds a
    /// different term there, the state machine came from a snapshot the log never recorded, and
    /// the log restarts after it.
    pub fn reconcile(&mut self, applied: u64, applied_term: u64) -> Result<()> {
        if applied <= self.truncated_index {
            if applied < self.truncated_index {
                return Err(Error::Corrupt(format!(
                    "state machine applied {applied} is behind the log truncation point {}",
                    self.truncated_index
                )));
            }
            return Ok(());
        }
        let log_has_it = applied <= self.last_index
            && raft::Storage::term(self, applied).ok() == Some(applied_term);
        if !log_has_it {
            log::warn!(
                "log (last {}) does not hold applied {applied}/{applied_term}; restarting log there",
                self.last_index
            );
            let hs = self.hard_state.clone();
            return self.reset_to(applied, applied_term, hs);
        }
        if self.hard_state.commit < applied {
            self.hard_state.commit = applied;
        }
        Ok(())
    }

    /// Sets the membership reported by `initial_state` and put in snapshot metadata.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// The current membership as known to this store.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The current hard state (including a commit index not yet persisted).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Installs the provider of snapshots.
    pub fn set_snapshot_source(&mut self, source: SnapshotSource) {
        self.snapshot_source = Some(source);
    }

    /// Records a commit index learned after the last append. It is written with the next
    /// append; after a crash, [`LogStore::reconcile`] recovers it from the applied index.
    pub fn set_commit(&mut self, commit: u64) {
        assert!(
            commit <= self.last_index,
            "commit {commit} beyond last index {}",
            self.last_index
        );
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
        }
    }

    /// Appends `entries` (replacing any conflicting suffix) and stores `hs`, with one durable
    /// write. Returns false when there was nothing to write (no entries, and a hard state
    /// that differs only in its commit index, which is kept in memory until the next write).
    ///
    /// # Panics
    /// If `entries` would overwrite the truncated part of the log or leave a gap: raft-rs never
    /// asks for either, so it would be a broken invariant.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<bool> {
        let mut new_hs = hs.cloned().unwrap_or_else(|| self.hard_state.clone());
        // Keep a commit index learned in between (set_commit) even if `hs` predates it.
        new_hs.commit = new_hs.commit.max(self.hard_state.commit);
        if let Some(first) = entries.first() {
            let first = first.index;
            assert!(
                first > self.truncated_index,
                "append at {first} overwrites truncated log (truncated at {})",
                self.truncated_index
            );
            assert!(
                first <= self.last_index + 1,
                "append at {first} leaves a gap after {}",
                self.last_index
            );
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(
                    e.index,
                    first + i as u64,
                    "entries to append are not contiguous"
                );
            }
        }
        // Only votes and terms must be durable before answering; a commit index alone can wait
        // for the next write (reconcile recovers it).
        let hs_changed =
            new_hs.term != self.persisted_hs.term || new_hs.vote != self.persisted_hs.vote;
        if entries.is_empty() && !hs_changed {
            self.hard_state = new_hs;
            return Ok(false);
        }
        let locs = self
            .wal
            .append(entries, &new_hs, hs_changed || !entries.is_empty())?;
        if let Some(first) = entries.first() {
            self.index
                .truncate((first.index - self.truncated_index - 1) as usize);
            self.cache.truncate_from(first.index);
            for (e, loc) in entries.iter().zip(locs) {
                self.index.push_back((e.term, loc));
                self.cache.push(e.clone());
            }
            self.last_index = entries.last().map_or(self.last_index, |e| e.index);
        }
        self.persisted_hs = new_hs.clone();
        self.hard_state = new_hs;
        Ok(true)
    }

    /// Drops entries up to and including `index` (which must be applied and in the log).
    pub fn compact(&mut self, index: u64) -> Result<()> {
        if index <= self.truncated_index {
            return Ok(());
        }
        assert!(
            index <= self.last_index,
            "compact to {index} beyond last index {}",
            self.last_index
        );
        let term = raft::Storage::term(self, index).map_err(|e| Error::Io(e.to_string()))?;
        let meta = Meta {
            truncated: (index, term),
            ..self.meta_now()
        };
        self.wal.write_meta(meta)?;
        self.index.drain(..(index - self.truncated_index) as usize);
        self.truncated_index = index;
        self.truncated_term = term;
        self.cache.drop_through(index);
        // Live entries sit in non-decreasing segments: everything before the first one is dead.
        let first_live = self.index.front().map_or(u64::MAX, |(_, loc)| loc.seg);
        self.wal.drop_segments_before(first_live);
        Ok(())
    }

    /// Index of the last entry dropped from the log.
    pub fn truncated_index(&self) -> u64 {
        self.truncated_index
    }

    /// Index of the last entry in the log.
    pub fn last_index_now(&self) -> u64 {
        self.last_index
    }

    /// Bytes used by the log on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.wal.disk_bytes()
    }

    /// Waits until the next segment is filled; see [`Wal::wait_for_spare`].
    #[doc(hidden)]
    pub fn wait_for_spare(&self) {
        self.wal.wait_for_spare()
    }

    fn loc(&self, index: u64) -> Option<&(u64, Loc)> {
        if index <= self.truncated_index {
            return None;
        }
        self.index.get((index - self.truncated_index - 1) as usize)
    }

    fn read_entry(&self, index: u64) -> raft::Result<Entry> {
        if let Some(e) = self.cache.get(index) {
            return Ok(e.clone());
        }
        let (_, loc) = *self
            .loc(index)
            .ok_or(raft::Error::Store(StorageError::Unavailable))?;
        let b = self.wal.read(loc).map_err(store_err)?;
        let e = Entry::parse_from_bytes(&b)
            .map_err(|e| store_err(Error::Corrupt(format!("entry {index}: {e}"))))?;
        if e.index != index {
            return Err(store_err(Error::Corrupt(format!(
                "wal holds entry {} where {index} belongs",
                e.index
            ))));
        }
        Ok(e)
    }
}

impl raft::Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if low <= self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(
            high <= self.last_index + 1,
            "entries [{low}, {high}) beyond last index {}",
            self.last_index
        );
        if low >= high {
            return Ok(Vec::new());
        }
        if let Some(ents) = self.cache.range(low, high, max_size) {
            return Ok(ents);
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        for i in low..high {
            let e = self.read_entry(i)?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        self.loc(idx)
            .map(|(term, _)| *term)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot_source {
            Some(source) => source(request_index, to),
            None => Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}

/// Recently appended entries, contiguous, ending at the last index.
struct EntryCache {
    entries: VecDeque<Entry>,
    bytes: usize,
}

impl EntryCache {
    fn new() -> EntryCache {
        EntryCache {
            entries: VecDeque::with_capacity(CACHE_ENTRIES_MAX),
            bytes: 0,
        }
    }

    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    fn get(&self, index: u64) -> Option<&Entry> {
        let first = self.first_index()?;
        if index < first {
            return None;
        }
        self.entries.get((index - first) as usize)
    }

    fn range(&self, low: u64, high: u64, max_size: u64) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.index;
        if low < first || high > last + 1 {
            return None;
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for e in self
            .entries
            .range((low - first) as usize..(high - first) as usize)
        {
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    fn push(&mut self, e: Entry) {
        if let Some(back) = self.entries.back() {
            if back.index + 1 != e.index {
                self.clear();
            }
        }
        // Room first, so that the ring never has to grow.
        let bytes = entry_bytes(&e);
        while !self.entries.is_empty()
            && (self.bytes + bytes > CACHE_BYTES_MAX || self.entries.len() >= CACHE_ENTRIES_MAX)
        {
            let old = self.entries.pop_front().expect("checked non-empty");
            self.bytes -= entry_bytes(&old);
        }
        self.bytes += bytes;
        self.entries.push_back(e);
    }

    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.index >= index) {
            let old = self.entries.pop_back().expect("checked non-empty");
            self.bytes -= entry_bytes(&old);
        }
    }

    fn drop_through(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.index <= index) {
            let old = self.entries.pop_front().expect("checked non-empty");
            self.bytes -= entry_bytes(&old);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

fn entry_bytes(e: &Entry) -> usize {
    e.data.len() + e.context.len() + 48
}

fn store_err(e: impl Into<Error>) -> raft::Error {
    let e: Error = e.into();
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            index,
            term: 1,
            data: vec![7u8; bytes].into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_entry_cache_keeps_its_bounds_without_growing() {
        let mut c = EntryCache::new();
        let capacity = c.entries.capacity();
        assert!(capacity >= CACHE_ENTRIES_MAX);
        // Many small entries: bounded by count.
        for i in 1..=(3 * CACHE_ENTRIES_MAX as u64) {
            c.push(entry(i, 8));
            assert!(c.entries.len() <= CACHE_ENTRIES_MAX);
        }
        assert_eq!(c.entries.len(), CACHE_ENTRIES_MAX);
        assert_eq!(
            c.entries.back().unwrap().index,
            3 * CACHE_ENTRIES_MAX as u64
        );
        assert_eq!(c.first_index(), Some(2 * CACHE_ENTRIES_MAX as u64 + 1));
        // Large entries: bounded by bytes, and still contiguous up to the last.
        let start = 3 * CACHE_ENTRIES_MAX as u64 + 1;
        for i in start..start + 200 {
            c.push(entry(i, 1 << 20));
            assert!(c.bytes <= CACHE_BYTES_MAX);
        }
        assert_eq!(c.entries.back().unwrap().index, start + 199);
        assert_eq!(c.get(start + 199).unwrap().data.len(), 1 << 20);
        assert!(c.get(start).is_none());
        assert_eq!(c.entries.capacity(), capacity, "the ring grew");
    }
}
