//! The replicated state machine in its own LMDB environment.
//!
//! Databases (their order is the snapshot order; the position is the id in snapshot records):
//! - `kv`: user keys → values;
//! - `meta`: `applied` index and term, applied `conf_state`, `changes_floor`;
//! - `sessions`: client id → dedup watermark and last index used;
//! - `dedup`: client id ‖ sequence → result code of an applied request;
//! - `members`: node id → address; `removed`: ids removed from the cluster, never reused;
//! - `ttl`: key → expiry deadline (Unix ms); `expiry`: deadline ‖ key, to find due keys in order;
//! - `changes`: index ‖ n → one change (the watch feed), kept for a bounded window of entries.
//!
//! One [`ApplyTxn`] changes all of them atomically, so after any crash the state is exactly
//! "every entry up to `applied`". A snapshot is this whole environment as seen by one read txn.
//!
//! The environment commits with `NO_META_SYNC`: each commit fsyncs the data pages and leaves the
//! meta page to the next sync, so power loss can roll back at most the last apply batch, never
//! tear it. That is safe because the log (fully synced) is the source of truth: restart
//! replays everything after the recovered `applied` index.

mod txn;

use std::ops::Bound;
use std::path::Path;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, EnvFlags, RoTxn, WithoutTls};
use protobuf::Message as PbMessage;
use raft::eraftpb::ConfState;

use crate::error::{Error, Result};

pub use txn::{ApplyTxn, Dedup, TtlChange};

/// A session that sends nothing for this many applied entries is forgotten (with its dedup rows).
/// Expiry is driven by the applied index, so every replica expires the same sessions at the
/// same entry. A request can only be retried while its caller waits, which is far shorter.
pub const SESSION_EXPIRY_ENTRIES: u64 = 1_000_000;
/// Sessions are swept each time the applied index crosses a multiple of this.
pub const SESSION_SWEEP_ENTRIES: u64 = 8192;

type KvDb = Database<Bytes, Bytes>;
type MetaDb = Database<Str, Bytes>;
type IdDb = Database<U64<BigEndian>, Bytes>;

/// Names of the databases, in snapshot order; the position is the id used in snapshot records.
pub(crate) const DB_NAMES: [&str; DB_COUNT] = [
    "kv", "meta", "sessions", "dedup", "members", "removed", "ttl", "expiry", "changes",
];
/// Number of databases.
pub(crate) const DB_COUNT: usize = 9;

/// Kinds of change in the watch feed.
pub mod change {
    /// A key was set.
    pub const PUT: u8 = 1;
    /// A key was deleted.
    pub const DELETE: u8 = 2;
    /// A key expired.
    pub const EXPIRE: u8 = 3;
}

/// One change in the watch feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Raft index of the entry that made it.
    pub index: u64,
    /// Position among the changes of that entry.
    pub n: u32,
    /// [`change::PUT`], [`change::DELETE`] or [`change::EXPIRE`].
    pub op: u8,
    /// The key.
    pub key: Vec<u8>,
    /// The new value (empty for deletions).
    pub value: Vec<u8>,
}

/// The state machine environment. Cheap to share: reads open their own LMDB read txn.
pub struct StateMachine {
    pub(crate) env: Env<WithoutTls>,
    kv: KvDb,
    meta: MetaDb,
    sessions: IdDb,
    dedup: KvDb,
    members: IdDb,
    removed: IdDb,
    ttl: KvDb,
    expiry: KvDb,
    changes: KvDb,
}

/// A member as recorded in the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Peer address (`host:port`).
    pub addr: String,
}

/// Most change records examined per read of the watch feed.
const CHANGES_SCAN_MAX: usize = 4096;

/// One read of the watch feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangesPage {
    /// Matching changes, in apply order.
    pub changes: Vec<Change>,
    /// Applied index as of the read.
    pub applied: u64,
    /// Position of the last change examined (matching or not).
    pub scanned_to: (u64, u32),
}

/// One page of a range scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Key/value pairs in key order.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where to resume when the limit cut the scan short (`None` when the range is done).
    pub next: Option<Vec<u8>>,
}

impl StateMachine {
    /// Opens (creating if needed) the state machine environment at `path`.
    pub fn open(path: &Path, map_size_mb: u64) -> Result<StateMachine> {
        Self::open_with(path, map_size_mb, EnvFlags::NO_META_SYNC)
    }

    /// Opens an environment to receive a snapshot into: no sync per txn (it is synced once,
    /// complete, before it is installed).
    pub(crate) fn open_staging(path: &Path, map_size_mb: u64) -> Result<StateMachine> {
        Self::open_with(path, map_size_mb, EnvFlags::NO_SYNC)
    }

    fn open_with(path: &Path, map_size_mb: u64, flags: EnvFlags) -> Result<StateMachine> {
        let env = super::open_env(path, map_size_mb, DB_COUNT as u32 + 2, flags)?;
        let mut wtxn = env.write_txn()?;
        let mut raw = Vec::with_capacity(DB_COUNT);
        for name in DB_NAMES {
            raw.push(env.create_database::<Bytes, Bytes>(&mut wtxn, Some(name))?);
        }
        wtxn.commit()?;
        Ok(StateMachine {
            kv: raw[0],
            meta: raw[1].remap_key_type::<Str>(),
            sessions: raw[2].remap_key_type::<U64<BigEndian>>(),
            dedup: raw[3],
            members: raw[4].remap_key_type::<U64<BigEndian>>(),
            removed: raw[5].remap_key_type::<U64<BigEndian>>(),
            ttl: raw[6],
            expiry: raw[7],
            changes: raw[8],
            env,
        })
    }

    /// Every database as raw bytes → bytes, indexed like [`DB_NAMES`].
    pub(crate) fn raw_dbs(&self) -> [Database<Bytes, Bytes>; DB_COUNT] {
        [
            self.kv,
            self.meta.remap_key_type::<Bytes>(),
            self.sessions.remap_key_type::<Bytes>(),
            self.dedup,
            self.members.remap_key_type::<Bytes>(),
            self.removed.remap_key_type::<Bytes>(),
            self.ttl,
            self.expiry,
            self.changes,
        ]
    }

    /// `(applied_index, applied_term)`; `(0, 0)` for a fresh state machine.
    pub fn applied(&self) -> Result<(u64, u64)> {
        let rtxn = self.env.read_txn()?;
        self.applied_at(&rtxn)
    }

    /// `(applied_index, applied_term)` as seen by `rtxn`.
    /// First entry whose changes the feed still holds, as of `rtxn`.
    pub(crate) fn changes_floor_at(&self, rtxn: &RoTxn<'_, WithoutTls>) -> Result<u64> {
        match self.meta.get(rtxn, "changes_floor")? {
            Some(b) => decode_u64(b),
            None => Ok(0),
        }
    }

    pub(crate) fn applied_at(&self, rtxn: &RoTxn<'_, WithoutTls>) -> Result<(u64, u64)> {
        match self.meta.get(rtxn, "applied")? {
            None => Ok((0, 0)),
            Some(b) => {
                decode_pair(b).ok_or_else(|| Error::Corrupt("state machine applied index".into()))
            }
        }
    }

    /// The membership as seen by `rtxn`.
    pub(crate) fn conf_state_at(&self, rtxn: &RoTxn<'_, WithoutTls>) -> Result<ConfState> {
        match self.meta.get(rtxn, "conf_state")? {
            None => Ok(ConfState::default()),
            Some(b) => ConfState::parse_from_bytes(b)
                .map_err(|e| Error::Corrupt(format!("state machine conf_state: {e}"))),
        }
    }

    /// The membership as of the applied index.
    pub fn conf_state(&self) -> Result<ConfState> {
        let rtxn = self.env.read_txn()?;
        self.conf_state_at(&rtxn)
    }

    /// Known member addresses.
    pub fn members(&self) -> Result<Vec<Member>> {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for item in self.members.iter(&rtxn)? {
            let (id, addr) = item?;
            out.push(Member {
                id,
                addr: String::from_utf8_lossy(addr).into_owned(),
            });
        }
        Ok(out)
    }

    /// True when `id` was removed from the cluster.
    pub fn is_removed(&self, id: u64) -> Result<bool> {
        let rtxn = self.env.read_txn()?;
        Ok(self.removed.get(&rtxn, &id)?.is_some())
    }

    /// Reads a key (copying the value out of the map) in its own read txn. A key whose deadline
    /// is at or before `now_ms` reads as absent, even before its expiry entry is applied.
    pub fn get(&self, key: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>> {
        let rtxn = self.env.read_txn()?;
        let Some(v) = self.kv.get(&rtxn, key)? else {
            return Ok(None);
        };
        if self.expired(&rtxn, key, now_ms)? {
            return Ok(None);
        }
        Ok(Some(v.to_vec()))
    }

    fn expired(&self, rtxn: &RoTxn<'_, WithoutTls>, key: &[u8], now_ms: u64) -> Result<bool> {
        Ok(match self.ttl.get(rtxn, key)? {
            Some(b) => decode_u64(b)? <= now_ms,
            None => false,
        })
    }

    /// Up to `limit` live pairs with keys in `[start, end)` (`end` `None`: unbounded).
    pub fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
        now_ms: u64,
    ) -> Result<ScanPage> {
        let rtxn = self.env.read_txn()?;
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        // LMDB cannot position on an empty key: an empty start means "from the first key".
        let lower = if start.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Included(start)
        };
        let has_ttl = !self.ttl.is_empty(&rtxn)?;
        let mut page = ScanPage::default();
        for item in self.kv.range(&rtxn, &(lower, upper))? {
            let (k, v) = item?;
            if page.items.len() == limit {
                page.next = Some(k.to_vec());
                break;
            }
            if has_ttl && self.expired(&rtxn, k, now_ms)? {
                continue;
            }
            page.items.push((k.to_vec(), v.to_vec()));
        }
        Ok(page)
    }

    /// Keys whose deadline is at or before `now_ms`, oldest first, with their deadline.
    pub fn due_keys(&self, now_ms: u64, limit: usize) -> Result<Vec<(Vec<u8>, u64)>> {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for item in self.expiry.iter(&rtxn)? {
            let (k, _) = item?;
            if k.len() < 8 || out.len() == limit {
                break;
            }
            let at = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            if at > now_ms {
                break;
            }
            out.push((k[8..].to_vec(), at));
        }
        Ok(out)
    }

    /// Changes after position `after` (exclusive) whose key starts with `prefix`, in apply
    /// order, at most `limit`. Returns them with the applied index as of the same read txn and
    /// the position scanned up to (past changes that did not match the prefix).
    /// `Err(Compacted)` when changes after `after` were already dropped from the window.
    pub fn changes_after(
        &self,
        after: (u64, u32),
        prefix: &[u8],
        limit: usize,
    ) -> Result<ChangesPage> {
        let rtxn = self.env.read_txn()?;
        let (applied, _) = self.applied_at(&rtxn)?;
        let floor = self.changes_floor_at(&rtxn)?;
        // A position inside an entry (`n` not `u32::MAX`) still needs that entry's later
        // changes: if the entry left the window, they are gone too.
        let mid_entry = after.1 != u32::MAX;
        if after.0.saturating_add(1) < floor || (mid_entry && after.0 < floor) {
            return Err(Error::Compacted);
        }
        let start = change_key(after.0, after.1);
        let mut page = ChangesPage {
            changes: Vec::new(),
            applied,
            scanned_to: after,
        };
        for (scanned, item) in self
            .changes
            .range(&rtxn, &(Bound::Excluded(&start[..]), Bound::Unbounded))?
            .enumerate()
        {
            let (k, v) = item?;
            let c = decode_change(k, v)?;
            page.scanned_to = (c.index, c.n);
            if c.key.starts_with(prefix) {
                page.changes.push(c);
            }
            if page.changes.len() == limit || scanned >= CHANGES_SCAN_MAX {
                break;
            }
        }
        Ok(page)
    }

    /// `(applied_index, keys, digest)` of the user data as of one read txn: replicas that
    /// applied the same entries have the same digest (FNV-1a over every key and value).
    pub fn digest(&self) -> Result<(u64, u64, u64)> {
        let rtxn = self.env.read_txn()?;
        let (applied, _) = self.applied_at(&rtxn)?;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |b: &[u8]| {
            for &x in b {
                h ^= u64::from(x);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        };
        let mut keys = 0u64;
        for item in self.kv.iter(&rtxn)? {
            let (k, v) = item?;
            feed(&(k.len() as u32).to_le_bytes());
            feed(k);
            feed(&(v.len() as u32).to_le_bytes());
            feed(v);
            keys += 1;
        }
        Ok((applied, keys, h))
    }

    /// Number of user keys.
    pub fn len(&self) -> Result<u64> {
        let rtxn = self.env.read_txn()?;
        Ok(self.kv.len(&rtxn)?)
    }

    /// True when there are no user keys.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Bytes used by the environment on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.env.real_disk_size().unwrap_or(0)
    }

    /// Starts the write transaction of one apply batch.
    pub fn begin(&self) -> Result<ApplyTxn<'_>> {
        ApplyTxn::begin(self)
    }

    /// Flushes everything to disk (used before the log is compacted).
    pub fn sync(&self) -> Result<()> {
        self.env.force_sync()?;
        Ok(())
    }

    /// Writes a compacted copy of the environment, as of one read txn, to `path` (a file that
    /// must not exist). Writes go on meanwhile.
    pub fn backup(&self, path: &Path) -> Result<()> {
        if path.exists() {
            return Err(Error::invalid(format!("{} already exists", path.display())));
        }
        let file = self
            .env
            .copy_to_path(path, heed::CompactionOption::Enabled)?;
        file.sync_all()?;
        Ok(())
    }
}

pub(crate) fn change_key(index: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&index.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

fn decode_change(k: &[u8], v: &[u8]) -> Result<Change> {
    let bad = || Error::Corrupt("change record".into());
    if k.len() != 12 || v.len() < 5 {
        return Err(bad());
    }
    let klen = u32::from_le_bytes(v[1..5].try_into().expect("4 bytes")) as usize;
    let key = v.get(5..5 + klen).ok_or_else(bad)?;
    Ok(Change {
        index: u64::from_be_bytes(k[..8].try_into().expect("8 bytes")),
        n: u32::from_be_bytes(k[8..].try_into().expect("4 bytes")),
        op: v[0],
        key: key.to_vec(),
        value: v[5 + klen..].to_vec(),
    })
}

pub(crate) fn decode_u64(b: &[u8]) -> Result<u64> {
    Ok(u64::from_le_bytes(
        b.try_into()
            .map_err(|_| Error::Corrupt("expected 8 bytes".into()))?,
    ))
}

/// Two u64s as 16 little-endian bytes (read back by [`decode_pair`]).
pub(crate) fn encode_pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_le_bytes());
    out[8..].copy_from_slice(&b.to_le_bytes());
    out
}

pub(crate) fn decode_pair(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() != 16 {
        return None;
    }
    Some((
        u64::from_le_bytes(b[..8].try_into().ok()?),
        u64::from_le_bytes(b[8..].try_into().ok()?),
    ))
}
