//! The data model of the Rust API: writes (put with TTL, delete, atomic batch, CAS, append)
//! and reads (get, scans) with a consistency per call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{check_key, check_value, ReadConsistency, Replica};
use crate::command::{BatchOp, Op};
use crate::config::TTL_KEY_BYTES_MAX;
use crate::error::{Error, Result};
use crate::storage::state_machine::ScanPage;

/// Most writes in one atomic batch.
pub const BATCH_OPS_MAX: usize = 10_000;
/// Most bytes (keys and values) in one atomic batch.
pub const BATCH_BYTES_MAX: usize = 16 << 20;
/// Most pairs a scan returns per call.
pub const SCAN_LIMIT_MAX: usize = 10_000;

/// One write of an atomic batch, borrowing its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchWrite<'a> {
    /// Set `key` to `value`.
    Put(&'a [u8], &'a [u8]),
    /// Remove `key`.
    Delete(&'a [u8]),
}

/// Which keys a scan covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanRange<'a> {
    /// Keys in `[start, end)`; an empty `end` means no upper bound.
    Range {
        /// First key (inclusive).
        start: &'a [u8],
        /// End key (exclusive), empty for none.
        end: &'a [u8],
    },
    /// Keys starting with the prefix (all keys when empty).
    Prefix(&'a [u8]),
}

/// Current Unix time in milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Replica {
    /// Sets `key` to `value`. Returns once the write is committed by a majority (on disk);
    /// every later read or watch on this replica sees it.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        self.propose(Op::Put {
            key,
            value,
            expires_at_ms: 0,
        })
    }

    /// Sets `key` to `value` for `ttl`: afterwards reads no longer see it, and the leader
    /// removes it through the log (every replica at the same index). The key is at most
    /// [`crate::config::TTL_KEY_BYTES_MAX`] bytes.
    pub fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        if key.len() > TTL_KEY_BYTES_MAX {
            return Err(Error::invalid(format!(
                "key of {} bytes exceeds {TTL_KEY_BYTES_MAX}, the limit for a key with a TTL",
                key.len()
            )));
        }
        if ttl.is_zero() {
            return Err(Error::invalid("ttl must be positive"));
        }
        let expires_at_ms =
            now_ms().saturating_add(ttl.as_millis().min(u128::from(u64::MAX)) as u64);
        self.propose(Op::Put {
            key,
            value,
            expires_at_ms,
        })
    }

    /// Removes `key` (absent is not an error). Same guarantees as [`Replica::put`].
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        check_key(key)?;
        self.propose(Op::Delete { key })
    }

    /// Applies every write of `writes`, in order, atomically: all in one Raft entry and one
    /// LMDB txn, so a crash or leader change never leaves part of it applied.
    pub fn batch(&self, writes: &[BatchWrite<'_>]) -> Result<()> {
        if writes.len() > BATCH_OPS_MAX {
            return Err(Error::invalid(format!(
                "batch of {} writes exceeds {BATCH_OPS_MAX}",
                writes.len()
            )));
        }
        if writes.is_empty() {
            return self.check_open();
        }
        let mut bytes = 0usize;
        let mut ops = Vec::with_capacity(writes.len());
        let at = |i: usize, e: Error| Error::invalid(format!("write {i} of the batch: {e}"));
        for (i, w) in writes.iter().enumerate() {
            match *w {
                BatchWrite::Put(k, v) => {
                    check_key(k)
                        .and_then(|_| check_value(v))
                        .map_err(|e| at(i, e))?;
                    bytes += k.len() + v.len();
                    ops.push(BatchOp::Put { key: k, value: v });
                }
                BatchWrite::Delete(k) => {
                    check_key(k).map_err(|e| at(i, e))?;
                    bytes += k.len();
                    ops.push(BatchOp::Delete { key: k });
                }
            }
        }
        if bytes > BATCH_BYTES_MAX {
            return Err(Error::invalid(format!(
                "batch of {bytes} bytes exceeds {BATCH_BYTES_MAX}"
            )));
        }
        self.propose(Op::Batch(ops))
    }

    /// Sets `key` to `new` (or deletes it when `new` is `None`) only if it currently holds
    /// `expected` (or is absent when `expected` is `None`). `Err(CasFailed)` otherwise.
    pub fn cas(&self, key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<()> {
        check_key(key)?;
        if let Some(v) = expected {
            check_value(v)?;
        }
        if let Some(v) = new {
            check_value(v)?;
        }
        self.propose(Op::Cas {
            now_ms: now_ms(),
            key,
            expected,
            new,
        })
    }

    /// Appends `value` to the value of `key` (absent counts as empty). Fails with
    /// `InvalidArgument` if the result would exceed the value limit.
    pub fn append(&self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        check_value(value)?;
        self.propose(Op::Append {
            now_ms: now_ms(),
            key,
            value,
        })
    }

    /// Reads `key` linearizably; `Ok(None)` when absent.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(key, ReadConsistency::Linearizable)
    }

    /// Reads `key` with the given consistency.
    pub fn get_with(&self, key: &[u8], consistency: ReadConsistency) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.check_open()?;
        self.wait_readable(consistency)?;
        self.shared.state_machine()?.get(key, now_ms())
    }

    /// Reads up to `limit` pairs of `range` in key order. When more remain, `next` in the page
    /// is the key to resume from (`ScanRange::Range { start: next, .. }`).
    pub fn scan(
        &self,
        range: ScanRange<'_>,
        limit: usize,
        consistency: ReadConsistency,
    ) -> Result<ScanPage> {
        if limit == 0 || limit > SCAN_LIMIT_MAX {
            return Err(Error::invalid(format!(
                "scan limit must be in 1..={SCAN_LIMIT_MAX}"
            )));
        }
        self.check_open()?;
        let (start, end) = match range {
            ScanRange::Range { start, end } => {
                if !end.is_empty() && end <= start {
                    return Err(Error::invalid("scan end must be greater than start"));
                }
                (start.to_vec(), (!end.is_empty()).then(|| end.to_vec()))
            }
            ScanRange::Prefix(p) => (p.to_vec(), prefix_end(p)),
        };
        self.wait_readable(consistency)?;
        self.shared
            .state_machine()?
            .scan(&start, end.as_deref(), limit, now_ms())
    }

    /// Writes a consistent copy of this replica's state machine, as of one read txn, to the file
    /// `path` (which must not exist) while writes go on. The copy holds every write
    /// acknowledged before the call (a linearizable read barrier comes first). A new cluster is
    /// seeded from it with the option `restore_from`.
    pub fn backup(&self, path: &std::path::Path) -> Result<()> {
        self.check_open()?;
        self.read_barrier()?;
        self.shared.state_machine()?.backup(path)
    }
}

/// The smallest key greater than every key starting with `prefix` (`None`: no such bound).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
