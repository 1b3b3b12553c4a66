//! [`ApplyTxn`]: the write transaction of one apply batch.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use heed::RwTxn;
use protobuf::Message as PbMessage;
use raft::eraftpb::ConfState;

use super::{change, change_key, decode_u64, encode_pair, StateMachine, SESSION_EXPIRY_ENTRIES};
use crate::error::{Error, Result};

/// What the dedup table says about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedup {
    /// Not applied before: apply it.
    New,
    /// Already applied (with this result code, when still known): skip it.
    Duplicate(Option<i32>),
}

/// What a write does to the key's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlChange {
    /// Leave it as it is.
    Keep,
    /// Remove it: the key no longer expires.
    Clear,
    /// Set it to this Unix-ms deadline.
    Set(u64),
}

/// One apply batch: every change plus the new applied index, committed atomically.
pub struct ApplyTxn<'a> {
    sm: &'a StateMachine,
    txn: RwTxn<'a>,
    applied: u64,
    applied_term: u64,
    /// Entry whose changes are being recorded, and how many it made so far.
    entry: (u64, u32),
    /// Changes are recorded only when the watch window is not zero.
    record_changes: bool,
    /// Bytes (keys and values) of the change feed, once read; written back at commit.
    changes_bytes: Option<u64>,
    /// Keys written or removed in this txn (each may dirty a page of its own).
    writes: u64,
    /// Pages of the keyed tables (keys, deadlines, expiry index) when the txn began: however
    /// many keys it writes, it cannot dirty more of their existing pages than that.
    pages: u64,
    /// Sessions touched in this txn, written to their table once, by [`ApplyTxn::flush_sessions`].
    sessions: HashMap<u64, Session>,
    /// Result codes recorded in this txn and not yet written: `(client id, seq)` → code. A row
    /// whose sequence the session's watermark passes within the txn is never written at all.
    results: BTreeMap<(u64, u64), i32>,
}

/// A session as this txn sees it.
#[derive(Debug, Clone, Copy)]
struct Session {
    /// Dedup watermark: every lower sequence of the client is settled.
    watermark: u64,
    /// Index of the last entry the client sent.
    last: u64,
    /// The watermark as the table holds it: its rows from here up to `watermark` are dropped
    /// when the session is written.
    stored_watermark: u64,
}

impl<'a> ApplyTxn<'a> {
    pub(super) fn begin(sm: &'a StateMachine) -> Result<ApplyTxn<'a>> {
        let txn = sm.env.write_txn()?;
        let (applied, applied_term) = sm.applied_at(&txn)?;
        let mut pages = 0;
        for db in [&sm.kv, &sm.ttl, &sm.expiry] {
            let st = db.stat(&txn)?;
            pages += (st.branch_pages + st.leaf_pages + st.overflow_pages) as u64;
        }
        Ok(ApplyTxn {
            sm,
            txn,
            applied,
            applied_term,
            entry: (0, 0),
            record_changes: false,
            changes_bytes: None,
            writes: 0,
            pages,
            sessions: HashMap::new(),
            results: BTreeMap::new(),
        })
    }

    /// Applied index as of this txn (including entries applied in it so far).
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Keys written or removed in this txn so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Existing pages of the keyed tables this txn may have dirtied so far, at most: one per
    /// key written or removed, and no more than the tables had. Pages added by new data are
    /// not counted here.
    pub fn pages_touched_max(&self) -> u64 {
        self.writes.min(self.pages)
    }

    /// Starts recording changes for entry `index` (or stops, when `record` is false).
    pub fn begin_entry(&mut self, index: u64, record: bool) {
        self.entry = (index, 0);
        self.record_changes = record;
    }

    /// Sets a key and adjusts its deadline.
    pub fn put(&mut self, key: &[u8], value: &[u8], ttl: TtlChange) -> Result<()> {
        self.writes += 1;
        self.sm.kv.put(&mut self.txn, key, value)?;
        match ttl {
            TtlChange::Keep => {}
            TtlChange::Clear => self.clear_ttl(key)?,
            TtlChange::Set(at) => {
                self.clear_ttl(key)?;
                self.sm.ttl.put(&mut self.txn, key, &at.to_le_bytes())?;
                self.sm
                    .expiry
                    .put(&mut self.txn, &expiry_key(at, key), &[])?;
            }
        }
        self.record(change::PUT, key, value)
    }

    /// Removes a key; returns whether it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        self.writes += 1;
        let existed = self.sm.kv.delete(&mut self.txn, key)?;
        self.clear_ttl(key)?;
        if existed {
            self.record(change::DELETE, key, &[])?;
        }
        Ok(existed)
    }

    /// Removes `key` if its deadline is still `at`; returns whether it did.
    pub fn expire(&mut self, key: &[u8], at: u64) -> Result<bool> {
        match self.sm.ttl.get(&self.txn, key)? {
            Some(b) if decode_u64(b)? == at => {}
            _ => return Ok(false),
        }
        self.writes += 1;
        self.sm.kv.delete(&mut self.txn, key)?;
        self.clear_ttl(key)?;
        self.record(change::EXPIRE, key, &[])?;
        Ok(true)
    }

    /// Reads a key inside this txn; a key whose deadline is at or before `now_ms` reads as
    /// absent (`now_ms` comes from the log, so every replica decides alike).
    pub fn get_live(&self, key: &[u8], now_ms: u64) -> Result<Option<&[u8]>> {
        let Some(v) = self.sm.kv.get(&self.txn, key)? else {
            return Ok(None);
        };
        if let Some(b) = self.sm.ttl.get(&self.txn, key)? {
            if decode_u64(b)? <= now_ms {
                return Ok(None);
            }
        }
        Ok(Some(v))
    }

    fn clear_ttl(&mut self, key: &[u8]) -> Result<()> {
        if self.sm.ttl.is_empty(&self.txn)? {
            return Ok(());
        }
        if let Some(b) = self.sm.ttl.get(&self.txn, key)? {
            let at = decode_u64(b)?;
            self.sm.ttl.delete(&mut self.txn, key)?;
            self.sm.expiry.delete(&mut self.txn, &expiry_key(at, key))?;
        }
        Ok(())
    }

    fn record(&mut self, op: u8, key: &[u8], value: &[u8]) -> Result<()> {
        if !self.record_changes {
            return Ok(());
        }
        let (index, n) = self.entry;
        let mut v = Vec::with_capacity(5 + key.len() + value.len());
        v.push(op);
        v.extend_from_slice(&(key.len() as u32).to_le_bytes());
        v.extend_from_slice(key);
        v.extend_from_slice(value);
        // Counted before the put: a first count from the records must not include this one.
        let bytes = self.changes_bytes()?;
        let k = change_key(index, n);
        self.sm.changes.put(&mut self.txn, &k, &v)?;
        self.changes_bytes = Some(bytes + (k.len() + v.len()) as u64);
        self.entry.1 += 1;
        Ok(())
    }

    /// Bytes (keys and values) the change feed holds. Counted once from the records when the
    /// state machine has no count yet (written by an older version).
    pub fn changes_bytes(&mut self) -> Result<u64> {
        if let Some(b) = self.changes_bytes {
            return Ok(b);
        }
        let b = match self.sm.meta.get(&self.txn, "changes_bytes")? {
            Some(b) => decode_u64(b)?,
            None => {
                let mut total = 0u64;
                for item in self.sm.changes.iter(&self.txn)? {
                    let (k, v) = item?;
                    total += (k.len() + v.len()) as u64;
                }
                total
            }
        };
        self.changes_bytes = Some(b);
        Ok(b)
    }

    /// Drops the changes of entries before `floor`, and then of the oldest entries while the
    /// feed holds more than `max_bytes` (0: no bound), whole entries at a time and never the
    /// newest applied one (a watcher that is caught up always has it); remembers the new floor
    /// of the window (it never moves back).
    pub fn prune_changes(&mut self, floor: u64, max_bytes: u64) -> Result<()> {
        let mut bytes = self.changes_bytes()?;
        let mut last_dropped: Option<u64> = None;
        let mut keep_from: Option<u64> = None;
        for item in self.sm.changes.iter(&self.txn)? {
            let (k, v) = item?;
            let index = change_index(k)?;
            let over = max_bytes > 0 && bytes > max_bytes && index < self.applied;
            if index >= floor && !over && last_dropped != Some(index) {
                keep_from = Some(index);
                break;
            }
            bytes = bytes.saturating_sub((k.len() + v.len()) as u64);
            last_dropped = Some(index);
        }
        let end = keep_from.map(|i| change_key(i, 0));
        let upper = match &end {
            Some(e) => Bound::Excluded(&e[..]),
            None => Bound::Unbounded,
        };
        self.sm
            .changes
            .delete_range(&mut self.txn, &(Bound::Unbounded, upper))?;
        let old_floor = self.sm.changes_floor_at(&self.txn)?;
        let new_floor = old_floor.max(floor).max(last_dropped.map_or(0, |i| i + 1));
        self.sm
            .meta
            .put(&mut self.txn, "changes_floor", &new_floor.to_le_bytes())?;
        // An emptied feed holds nothing, whatever the count said.
        self.changes_bytes = Some(if keep_from.is_some() { bytes } else { 0 });
        Ok(())
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

    /// Forgets every member address and removed id (a new cluster seeded from a backup).
    pub fn reset_members(&mut self) -> Result<()> {
        self.sm.members.clear(&mut self.txn)?;
        self.sm.removed.clear(&mut self.txn)?;
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
    ///
    /// The session and its rows change in memory; [`ApplyTxn::flush_sessions`] writes them,
    /// once per txn rather than once per request.
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
        let mut session = self.session(client_id)?;
        let verdict = if seq < session.watermark {
            Dedup::Duplicate(None)
        } else if let Some(&code) = self.results.get(&(client_id, seq)) {
            Dedup::Duplicate(Some(code))
        } else if let Some(b) = self.sm.dedup.get(&self.txn, &dedup_key(client_id, seq))? {
            Dedup::Duplicate(b.first().map(|&c| i32::from(c as i8)))
        } else {
            Dedup::New
        };
        if watermark > session.watermark {
            let settled = (client_id, session.watermark)..(client_id, watermark);
            while let Some((&k, _)) = self.results.range(settled.clone()).next() {
                self.results.remove(&k);
            }
            session.watermark = watermark;
        }
        session.last = index;
        self.sessions.insert(client_id, session);
        Ok(verdict)
    }

    /// Remembers the result code of an applied request (written by
    /// [`ApplyTxn::flush_sessions`], unless the watermark passes it first).
    pub fn record_result(&mut self, client_id: u64, seq: u64, code: i32) -> Result<()> {
        if seq != 0 {
            self.results.insert((client_id, seq), i32::from(code as i8));
        }
        Ok(())
    }

    /// Writes the sessions touched in this txn and their rows: the rows a session's watermark
    /// passed are dropped, and the result codes recorded above it are written.
    pub fn flush_sessions(&mut self) -> Result<()> {
        for (&client_id, s) in &self.sessions {
            if s.watermark > s.stored_watermark {
                let from = dedup_key(client_id, s.stored_watermark);
                let to = dedup_key(client_id, s.watermark);
                let range = (Bound::Included(&from[..]), Bound::Excluded(&to[..]));
                self.sm.dedup.delete_range(&mut self.txn, &range)?;
            }
            let b = encode_pair(s.watermark, s.last);
            self.sm.sessions.put(&mut self.txn, &client_id, &b)?;
        }
        self.sessions.clear();
        for ((client_id, seq), code) in std::mem::take(&mut self.results) {
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
        self.flush_sessions()?;
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
            let range = (Bound::Included(&from[..]), Bound::Included(&to[..]));
            self.sm.dedup.delete_range(&mut self.txn, &range)?;
        }
        Ok(expired.len())
    }

    /// The session of `client_id` as of this txn (a new one when it has none).
    fn session(&self, client_id: u64) -> Result<Session> {
        if let Some(s) = self.sessions.get(&client_id) {
            return Ok(*s);
        }
        let (watermark, last) = match self.sm.sessions.get(&self.txn, &client_id)? {
            None => (0, 0),
            Some(b) => decode_session(b)?,
        };
        Ok(Session {
            watermark,
            last,
            stored_watermark: watermark,
        })
    }

    /// Writes the applied index and commits everything.
    pub fn commit(mut self) -> Result<()> {
        self.flush_sessions()?;
        let b = encode_pair(self.applied, self.applied_term);
        self.sm.meta.put(&mut self.txn, "applied", &b)?;
        if let Some(bytes) = self.changes_bytes {
            self.sm
                .meta
                .put(&mut self.txn, "changes_bytes", &bytes.to_le_bytes())?;
        }
        self.txn.commit()?;
        Ok(())
    }
}

/// Entry index of a change record's key.
fn change_index(k: &[u8]) -> Result<u64> {
    k.get(..8)
        .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| Error::Corrupt("change record key is too short".into()))
}

fn expiry_key(at: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn dedup_key(client_id: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&client_id.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn decode_session(b: &[u8]) -> Result<(u64, u64)> {
    super::decode_pair(b)
        .ok_or_else(|| Error::Corrupt("session record has the wrong length".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request: client, sequence, the client's watermark when it sent it.
    type Request = (u64, u64, u64);

    /// Requests of three clients, each with up to `window` outstanding: new sequences in
    /// order, retries of outstanding and settled ones, and watermarks that move unevenly.
    fn requests(seed: u64, n: usize, window: u64) -> Vec<Request> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut clients = [(1u64, 1u64), (1, 1), (1, 1)]; // (watermark, next seq)
        (0..n)
            .map(|_| {
                let c = next() as usize % clients.len();
                let (wm, seq) = &mut clients[c];
                let r = next() % 10;
                let s = if r < 6 || *seq == 1 {
                    *seq += 1;
                    *seq - 1
                } else if r < 8 {
                    *wm + next() % (*seq - *wm).max(1)
                } else {
                    1 + next() % *seq
                };
                if next() % 3 == 0 {
                    *wm = (*wm + next() % (window + 1)).min(*seq);
                }
                *wm = (*wm).max(seq.saturating_sub(window));
                (c as u64 + 7, s, *wm)
            })
            .collect()
    }

    /// Applies `reqs` in txns of `chunk` requests; returns each verdict and the two tables.
    #[allow(clippy::type_complexity)]
    fn run(
        reqs: &[Request],
        chunk: usize,
        expire_at: Option<usize>,
    ) -> (Vec<Dedup>, Vec<(u64, Vec<u8>)>, Vec<(Vec<u8>, Vec<u8>)>) {
        let d = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(&d.path().join("data"), 64).unwrap();
        let mut verdicts = Vec::new();
        for (c, part) in reqs.chunks(chunk).enumerate() {
            let mut txn = sm.begin().unwrap();
            for (i, &(client, seq, wm)) in part.iter().enumerate() {
                let index = (c * chunk + i) as u64 + 1;
                let v = txn.check_session(client, seq, wm, index).unwrap();
                if v == Dedup::New {
                    txn.record_result(client, seq, -(seq as i32 % 5)).unwrap();
                }
                verdicts.push(v);
                if expire_at == Some(index as usize) {
                    // Sessions idle since before the previous entry are forgotten: one at least.
                    let n = txn
                        .expire_sessions(index + SESSION_EXPIRY_ENTRIES - 1)
                        .unwrap();
                    assert!(n > 0, "some session was idle");
                }
                txn.set_applied(index, 1);
            }
            txn.commit().unwrap();
        }
        let rtxn = sm.env.read_txn().unwrap();
        let sessions = sm
            .sessions
            .iter(&rtxn)
            .unwrap()
            .map(|r| r.map(|(k, v)| (k, v.to_vec())).unwrap())
            .collect();
        let dedup = sm
            .dedup
            .iter(&rtxn)
            .unwrap()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect();
        (verdicts, sessions, dedup)
    }

    #[test]
    fn sessions_written_once_per_txn_match_one_txn_per_request() {
        for seed in [1, 2, 3, 0x9e37_79b9] {
            let reqs = requests(seed, 600, 8);
            let (verdicts, sessions, dedup) = run(&reqs, 1, None);
            assert!(
                verdicts
                    .iter()
                    .any(|v| matches!(v, Dedup::Duplicate(Some(_))))
                    && verdicts.contains(&Dedup::Duplicate(None))
                    && verdicts.contains(&Dedup::New),
                "the requests exercise every verdict"
            );
            assert!(!dedup.is_empty(), "outstanding rows are kept");
            for chunk in [2, 7, 64, 600] {
                let got = run(&reqs, chunk, None);
                assert_eq!(got.0, verdicts, "verdicts, seed {seed}, chunk {chunk}");
                assert_eq!(got.1, sessions, "sessions, seed {seed}, chunk {chunk}");
                assert_eq!(got.2, dedup, "dedup rows, seed {seed}, chunk {chunk}");
            }
            let expired = run(&reqs, 1, Some(400));
            for chunk in [5, 600] {
                let got = run(&reqs, chunk, Some(400));
                assert_eq!(got, expired, "with expiry, seed {seed}, chunk {chunk}");
            }
        }
    }
}
