//! The replicated state machine in its own LMDB environment.
//!
//! Databases: `kv` (user keys → values), `meta` (`applied` index and term, applied
//! `conf_state`), `sessions` (client id → dedup watermark and last index used), `dedup`
//! (client id ‖ sequence → result code of an applied request), `members` (node id → address)
//! and `removed` (ids removed from the cluster, never to be reused). One [`ApplyTxn`] changes
//! all of them atomically, so after any crash the state is exactly "every entry up to
//! `applied`". A snapshot is this whole environment as seen by one read txn.
//!
//! The environment commits with `NO_META_SYNC`: each commit fsyncs the data pages and leaves the
//! meta page to the next sync, so power loss can roll back at most the last apply batch, never
//! tear it. That is safe because the log (fully synced) is the source of truth: restart
//! replays everything after the recovered `applied` index.

use std::ops::Bound;
use std::path::Path;

use heed::byteorder::BigEndian;
use heed::types::{Bytes, Str, U64};
use heed::{Database, Env, EnvFlags, RoTxn, RwTxn, WithoutTls};
use protobuf::Message as PbMessage;
use raft::eraftpb::ConfState;

use crate::error::{Error, Result};

/// A session that sends nothing for this many applied entries is forgotten (with its dedup rows).
/// Expiry is driven by the applied index, so every replica expires the same sessions at the
/// same entry. A request can only be retried while its caller waits, which is far shorter.
pub const SESSION_EXPIRY_ENTRIES: u64 = 1_000_000;
/// Sessions are swept each time the applied index crosses a multiple of this.
pub const SESSION_SWEEP_ENTRIES: u64 = 8192;

type KvDb = Database<Bytes, Bytes>;
type MetaDb = Database<Str, Bytes>;
type SessionsDb = Database<U64<BigEndian>, Bytes>;
type DedupDb = Database<Bytes, Bytes>;
type IdDb = Database<U64<BigEndian>, Bytes>;

/// Names of the databases, in snapshot order; the position is the id used in snapshot records.
pub(crate) const DB_NAMES: [&str; 6] = ["kv", "meta", "sessions", "dedup", "members", "removed"];

/// The state machine environment. Cheap to share: reads open their own LMDB read txn.
pub struct StateMachine {
    pub(crate) env: Env<WithoutTls>,
    kv: KvDb,
    meta: MetaDb,
    sessions: SessionsDb,
    dedup: DedupDb,
    members: IdDb,
    removed: IdDb,
}

/// A member as recorded in the state machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Peer address (`host:port`).
    pub addr: String,
}

/// What the dedup table says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedup {
    /// Not applied before: apply it.
    New,
    /// Already applied (with this result code, when still known): skip it.
    Duplicate(Option<i32>),
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
        let env = super::open_env(path, map_size_mb, 8, flags)?;
        let mut wtxn = env.write_txn()?;
        let kv = env.create_database(&mut wtxn, Some(DB_NAMES[0]))?;
        let meta = env.create_database(&mut wtxn, Some(DB_NAMES[1]))?;
        let sessions = env.create_database(&mut wtxn, Some(DB_NAMES[2]))?;
        let dedup = env.create_database(&mut wtxn, Some(DB_NAMES[3]))?;
        let members = env.create_database(&mut wtxn, Some(DB_NAMES[4]))?;
        let removed = env.create_database(&mut wtxn, Some(DB_NAMES[5]))?;
        wtxn.commit()?;
        Ok(StateMachine {
            env,
            kv,
            meta,
            sessions,
            dedup,
            members,
            removed,
        })
    }

    /// Every database as raw bytes → bytes, indexed like [`DB_NAMES`].
    pub(crate) fn raw_dbs(&self) -> [Database<Bytes, Bytes>; 6] {
        [
            self.kv,
            self.meta.remap_key_type::<Bytes>(),
            self.sessions.remap_key_type::<Bytes>(),
            self.dedup,
            self.members.remap_key_type::<Bytes>(),
            self.removed.remap_key_type::<Bytes>(),
        ]
    }

    /// `(applied_index, applied_term)` as seen by `rtxn`.
    pub(crate) fn applied_at(&self, rtxn: &RoTxn<'_, WithoutTls>) -> Result<(u64, u64)> {
        self.applied_in(rtxn)
    }

    /// The membership as seen by `rtxn`.
    pub(crate) fn conf_state_at(&self, rtxn: &RoTxn<'_, WithoutTls>) -> Result<ConfState> {
        match self.meta.get(rtxn, "conf_state")? {
            None => Ok(ConfState::default()),
            Some(b) => ConfState::parse_from_bytes(b)
                .map_err(|e| Error::Corrupt(format!("state machine conf_state: {e}"))),
        }
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

    /// `(applied_index, applied_term)`; `(0, 0)` for a fresh state machine.
    pub fn applied(&self) -> Result<(u64, u64)> {
        let rtxn = self.env.read_txn()?;
        self.applied_in(&rtxn)
    }

    fn applied_in(&self, rtxn: &RoTxn<'_, WithoutTls>) -> Result<(u64, u64)> {
        match self.meta.get(rtxn, "applied")? {
            None => Ok((0, 0)),
            Some(b) if b.len() == 16 => Ok((
                u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
            )),
            Some(_) => Err(Error::Corrupt(
                "state machine applied index has the wrong length".into(),
            )),
        }
    }

    /// The membership as of the applied index.
    pub fn conf_state(&self) -> Result<ConfState> {
        let rtxn = self.env.read_txn()?;
        self.conf_state_at(&rtxn)
    }

    /// Reads a key (copying the value out of the map) in its own read txn.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let rtxn = self.env.read_txn()?;
        Ok(self.kv.get(&rtxn, key)?.map(<[u8]>::to_vec))
    }

    /// `(applied_index, keys, digest)` of the user data as of one read txn: replicas that
    /// applied the same entries have the same digest (FNV-1a over every key and value).
    pub fn digest(&self) -> Result<(u64, u64, u64)> {
        let rtxn = self.env.read_txn()?;
        let (applied, _) = self.applied_in(&rtxn)?;
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
        let txn = self.env.write_txn()?;
        let (applied, applied_term) = self.applied_in(&txn)?;
        Ok(ApplyTxn {
            sm: self,
            txn,
            applied,
            applied_term,
        })
    }

    /// Flushes everything to disk (used before the log is compacted).
    pub fn sync(&self) -> Result<()> {
        self.env.force_sync()?;
        Ok(())
    }
}

/// One apply batch: every change plus the new applied index, committed atomically.
pub struct ApplyTxn<'a> {
    sm: &'a StateMachine,
    txn: RwTxn<'a>,
    applied: u64,
    applied_term: u64,
}

impl ApplyTxn<'_> {
    /// Applied index as of this txn (including entries applied in it so far).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Sets a key.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.sm.kv.put(&mut self.txn, key, value)?;
        Ok(())
    }

    /// Removes a key; absent is fine.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        self.sm.kv.delete(&mut self.txn, key)?;
        Ok(())
    }

    /// Reads a key as seen inside this txn.
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>> {
        Ok(self.sm.kv.get(&self.txn, key)?)
    }

    /// Records that entry `(index, term)` has been applied.
    ///
    /// # Panics
    /// If `index` does not follow the applied index: entries are applied once, in order.
    pub fn set_applied(&mut self, index: u64, term: u64) {
        assert!(
            index > self.applied,
            "apply of entry {index} at or below applied index {}",
            self.applied
        );
        self.applied = index;
        self.applied_term = term;
    }

    /// Records the address of a member.
    pub fn set_member(&mut self, id: u64, addr: &str) -> Result<()> {
        self.sm.members.put(&mut self.txn, &id, addr.as_bytes())?;
        Ok(())
    }

    /// Forgets a member's address and remembers that its id was removed.
    pub fn remove_member(&mut self, id: u64, index: u64) -> Result<()> {
        self.sm.members.delete(&mut self.txn, &id)?;
        self.sm
            .removed
            .put(&mut self.txn, &id, &index.to_le_bytes())?;
        Ok(())
    }

    /// Stores the membership as of the entry being applied.
    pub fn set_conf_state(&mut self, cs: &ConfState) -> Result<()> {
        let b = cs
            .write_to_bytes()
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        self.sm.meta.put(&mut self.txn, "conf_state", &b)?;
        Ok(())
    }

    /// Checks `(client_id, seq)` against the dedup table and advances the session's watermark.
    /// `seq == 0` opts out of dedup.
    pub fn check_session(
        &mut self,
        client_id: u64,
        seq: u64,
        watermark: u64,
        index: u64,
    ) -> Result<Dedup> {
        if seq == 0 {
            return Ok(Dedup::New);
        }
        let (mut wm, _) = self.session(client_id)?;
        let verdict = if seq < wm {
            Dedup::Duplicate(None)
        } else if let Some(b) = self.sm.dedup.get(&self.txn, &dedup_key(client_id, seq))? {
            Dedup::Duplicate(b.first().map(|&c| i32::from(c as i8)))
        } else {
            Dedup::New
        };
        if watermark > wm {
            let from = dedup_key(client_id, wm);
            let to = dedup_key(client_id, watermark);
            self.sm.dedup.delete_range(
                &mut self.txn,
                &(Bound::Included(&from[..]), Bound::Excluded(&to[..])),
            )?;
            wm = watermark;
        }
        self.put_session(client_id, wm, index)?;
        Ok(verdict)
    }

    /// Remembers the result code of an applied request.
    pub fn record_result(&mut self, client_id: u64, seq: u64, code: i32) -> Result<()> {
        if seq != 0 {
            let b = [code as i8 as u8];
            self.sm
                .dedup
                .put(&mut self.txn, &dedup_key(client_id, seq), &b)?;
        }
        Ok(())
    }

    /// Forgets sessions idle for more than [`SESSION_EXPIRY_ENTRIES`] as of `index`.
    pub fn expire_sessions(&mut self, index: u64) -> Result<usize> {
        let Some(horizon) = index.checked_sub(SESSION_EXPIRY_ENTRIES) else {
            return Ok(0);
        };
        let mut expired = Vec::new();
        for item in self.sm.sessions.iter(&self.txn)? {
            let (client, b) = item?;
            let (_, last) = decode_session(b)?;
            if last < horizon {
                expired.push(client);
            }
        }
        for &client in &expired {
            self.sm.sessions.delete(&mut self.txn, &client)?;
            let from = dedup_key(client, 0);
            let to = dedup_key(client, u64::MAX);
            self.sm.dedup.delete_range(
                &mut self.txn,
                &(Bound::Included(&from[..]), Bound::Included(&to[..])),
            )?;
        }
        Ok(expired.len())
    }

    fn session(&self, client_id: u64) -> Result<(u64, u64)> {
        match self.sm.sessions.get(&self.txn, &client_id)? {
            None => Ok((0, 0)),
            Some(b) => decode_session(b),
        }
    }

    fn put_session(&mut self, client_id: u64, watermark: u64, last: u64) -> Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&watermark.to_le_bytes());
        b[8..].copy_from_slice(&last.to_le_bytes());
        self.sm.sessions.put(&mut self.txn, &client_id, &b)?;
        Ok(())
    }

    /// Writes the applied index and commits everything.
    pub fn commit(mut self) -> Result<()> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.applied.to_le_bytes());
        b[8..].copy_from_slice(&self.applied_term.to_le_bytes());
        self.sm.meta.put(&mut self.txn, "applied", &b)?;
        self.txn.commit()?;
        Ok(())
    }
}

fn dedup_key(client_id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&client_id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn decode_session(b: &[u8]) -> Result<(u64, u64)> {
    if b.len() != 16 {
        return Err(Error::Corrupt("session record has the wrong length".into()));
    }
    Ok((
        u64::from_le_bytes(b[..8].try_into().expect("8 bytes")),
        u64::from_le_bytes(b[8..].try_into().expect("8 bytes")),
    ))
}
