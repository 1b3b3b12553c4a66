//! The payload of a Raft entry: one client command, and its binary encoding.
//!
//! Layout (all integers little-endian):
//! `version u8 | op u8 | client_id u64 | seq u64 | watermark u64 | body`
//! where `(client_id, seq)` identifies the request for exactly-once application and
//! `watermark` is the client's lowest sequence still awaiting a reply (every lower sequence
//! is settled and may be forgotten by the dedup table). Byte strings in the body are
//! `len u32 | bytes`. Decoding borrows from the entry and checks every length.

use crate::error::{Error, Result};

const VERSION: u8 = 1;
const HEADER_BYTES: usize = 2 + 8 * 3;

/// Operation codes. Numbers are part of the on-disk format: never reuse one.
mod op {
    pub const NOOP: u8 = 0;
    pub const PUT: u8 = 1;
    pub const DELETE: u8 = 2;
    pub const PUT_TTL: u8 = 3;
    pub const BATCH: u8 = 4;
    pub const CAS: u8 = 5;
    pub const APPEND: u8 = 6;
    pub const EXPIRE: u8 = 7;
    pub const PACKED: u8 = 8;
}

/// Flag bits of a compare-and-swap.
mod cas {
    /// The key must be absent (the expected value is ignored).
    pub const EXPECT_ABSENT: u8 = 1;
    /// On success the key is deleted (the new value is ignored).
    pub const DELETE: u8 = 2;
}

/// A decoded command, borrowing its byte strings from the entry data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command<'a> {
    /// Session of the proposer (random per open handle).
    pub client_id: u64,
    /// Sequence number of the request within the session (≥ 1; 0 = no dedup).
    pub seq: u64,
    /// Lowest sequence of this session still awaiting a reply.
    pub watermark: u64,
    /// What to do.
    pub op: Op<'a>,
}

/// One write of an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp<'a> {
    /// Set a key.
    Put {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Remove a key.
    Delete {
        /// Key.
        key: &'a [u8],
    },
}

/// The state-machine operation of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// Nothing (used to probe the log).
    Noop,
    /// Set `key` to `value`; the key expires at `expires_at_ms` (Unix ms) unless it is 0.
    Put {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// Expiry deadline in Unix milliseconds, 0 for none.
        expires_at_ms: u64,
    },
    /// Remove `key` (absent is fine).
    Delete {
        /// Key.
        key: &'a [u8],
    },
    /// Apply every write or none.
    Batch(Vec<BatchOp<'a>>),
    /// Replace `key` only if it holds `expected` (or is absent, when `expected` is `None`).
    Cas {
        /// Proposer's clock (Unix ms): keys whose deadline passed by then count as absent.
        now_ms: u64,
        /// Key.
        key: &'a [u8],
        /// Required current value; `None` requires the key to be absent.
        expected: Option<&'a [u8]>,
        /// New value; `None` deletes the key.
        new: Option<&'a [u8]>,
    },
    /// Append `value` to the current value of `key` (absent counts as empty).
    Append {
        /// Proposer's clock (Unix ms): keys whose deadline passed by then count as absent.
        now_ms: u64,
        /// Key.
        key: &'a [u8],
        /// Bytes to append.
        value: &'a [u8],
    },
    /// Remove keys whose deadline passed, as decided by the leader. A key is removed only if
    /// its deadline is still the one named here (it was not written again since).
    Expire(Vec<(&'a [u8], u64)>),
}

impl Op<'_> {
    /// True when applying the op succeeds whatever the state (the write is unconditional).
    pub fn settled_on_commit(&self) -> bool {
        matches!(
            self,
            Op::Noop | Op::Put { .. } | Op::Delete { .. } | Op::Batch(_) | Op::Expire(_)
        )
    }
}

impl Command<'_> {
    /// Encodes into a fresh buffer sized exactly.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.body_len());
        out.push(VERSION);
        out.push(self.code());
        out.extend_from_slice(&self.client_id.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.watermark.to_le_bytes());
        match &self.op {
            Op::Noop => {}
            Op::Put {
                key,
                value,
                expires_at_ms,
            } => {
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
                if *expires_at_ms != 0 {
                    out.extend_from_slice(&expires_at_ms.to_le_bytes());
                }
            }
            Op::Delete { key } => put_bytes(&mut out, key),
            Op::Batch(ops) => {
                out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
                for o in ops {
                    match o {
                        BatchOp::Put { key, value } => {
                            out.push(op::PUT);
                            put_bytes(&mut out, key);
                            put_bytes(&mut out, value);
                        }
                        BatchOp::Delete { key } => {
                            out.push(op::DELETE);
                            put_bytes(&mut out, key);
                        }
                    }
                }
            }
            Op::Cas {
                now_ms,
                key,
                expected,
                new,
            } => {
                let mut flags = 0;
                if expected.is_none() {
                    flags |= cas::EXPECT_ABSENT;
                }
                if new.is_none() {
                    flags |= cas::DELETE;
                }
                out.push(flags);
                out.extend_from_slice(&now_ms.to_le_bytes());
                put_bytes(&mut out, key);
                put_bytes(&mut out, expected.unwrap_or_default());
                put_bytes(&mut out, new.unwrap_or_default());
            }
            Op::Append { now_ms, key, value } => {
                out.extend_from_slice(&now_ms.to_le_bytes());
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Op::Expire(keys) => {
                out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                for (k, at) in keys {
                    put_bytes(&mut out, k);
                    out.extend_from_slice(&at.to_le_bytes());
                }
            }
        }
        out
    }

    fn code(&self) -> u8 {
        match &self.op {
            Op::Noop => op::NOOP,
            Op::Put {
                expires_at_ms: 0, ..
            } => op::PUT,
            Op::Put { .. } => op::PUT_TTL,
            Op::Delete { .. } => op::DELETE,
            Op::Batch(_) => op::BATCH,
            Op::Cas { .. } => op::CAS,
            Op::Append { .. } => op::APPEND,
            Op::Expire(_) => op::EXPIRE,
        }
    }

    fn body_len(&self) -> usize {
        match &self.op {
            Op::Noop => 0,
            Op::Put {
                key,
                value,
                expires_at_ms,
            } => 8 + key.len() + value.len() + if *expires_at_ms == 0 { 0 } else { 8 },
            Op::Delete { key } => 4 + key.len(),
            Op::Batch(ops) => {
                4 + ops
                    .iter()
                    .map(|o| match o {
                        BatchOp::Put { key, value } => 9 + key.len() + value.len(),
                        BatchOp::Delete { key } => 5 + key.len(),
                    })
                    .sum::<usize>()
            }
            Op::Cas {
                key, expected, new, ..
            } => 21 + key.len() + expected.map_or(0, <[u8]>::len) + new.map_or(0, <[u8]>::len),
            Op::Append { key, value, .. } => 16 + key.len() + value.len(),
            Op::Expire(keys) => 4 + keys.iter().map(|(k, _)| 12 + k.len()).sum::<usize>(),
        }
    }

    /// Decodes an entry payload. Any inconsistency is `Error::Corrupt`.
    pub fn decode(data: &[u8]) -> Result<Command<'_>> {
        let mut r = Reader { buf: data };
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::Corrupt(format!("command version {version} unknown")));
        }
        let code = r.u8()?;
        let client_id = r.u64()?;
        let seq = r.u64()?;
        let watermark = r.u64()?;
        let op = match code {
            op::NOOP => Op::Noop,
            op::PUT => Op::Put {
                key: r.bytes()?,
                value: r.bytes()?,
                expires_at_ms: 0,
            },
            op::PUT_TTL => {
                let (key, value) = (r.bytes()?, r.bytes()?);
                Op::Put {
                    key,
                    value,
                    expires_at_ms: r.u64()?,
                }
            }
            op::DELETE => Op::Delete { key: r.bytes()? },
            op::BATCH => Op::Batch(decode_batch(&mut r)?),
            op::CAS => {
                let (flags, now_ms) = (r.u8()?, r.u64()?);
                let (key, expected, new) = (r.bytes()?, r.bytes()?, r.bytes()?);
                Op::Cas {
                    now_ms,
                    key,
                    expected: (flags & cas::EXPECT_ABSENT == 0).then_some(expected),
                    new: (flags & cas::DELETE == 0).then_some(new),
                }
            }
            op::APPEND => {
                let now_ms = r.u64()?;
                Op::Append {
                    now_ms,
                    key: r.bytes()?,
                    value: r.bytes()?,
                }
            }
            op::EXPIRE => {
                let n = r.count(12)?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push((r.bytes()?, r.u64()?));
                }
                Op::Expire(keys)
            }
            other => return Err(Error::Corrupt(format!("command op {other} unknown"))),
        };
        if !r.buf.is_empty() {
            return Err(Error::Corrupt(format!(
                "{} trailing bytes in command",
                r.buf.len()
            )));
        }
        Ok(Command {
            client_id,
            seq,
            watermark,
            op,
        })
    }
}

/// The requests of session `client_id` in an entry payload whose outcome is `OK` whatever
/// state they apply to (puts, deletes, atomic batches): once the entry is committed their
/// callers can be told, before the state machine applies it. Requests with other outcomes
/// (compare-and-swap, append) and payloads that do not decode are left to the apply thread,
/// which decides them (and stops the replica on a payload that does not decode).
pub fn settled_on_commit(data: &[u8], client_id: u64, out: &mut Vec<u64>) {
    let parts = match unpack(data) {
        Ok(Some(parts)) => parts,
        Ok(None) => vec![data],
        Err(_) => return,
    };
    // Every part must decode: the apply thread stops the replica on an entry that does not,
    // so none of its requests may be answered.
    let from = out.len();
    for part in parts {
        match Command::decode(part) {
            Ok(cmd) => {
                if cmd.client_id == client_id && cmd.seq != 0 && cmd.op.settled_on_commit() {
                    out.push(cmd.seq);
                }
            }
            Err(_) => {
                out.truncate(from);
                return;
            }
        }
    }
}

/// Packs several encoded commands into one entry payload, so that a burst of proposals costs
/// one Raft entry: `header (op PACKED, no session) | count u32 | (len u32 | command)*`.
pub fn pack(commands: &[Vec<u8>]) -> Vec<u8> {
    let bytes: usize = commands.iter().map(|c| 4 + c.len()).sum();
    let mut out = Vec::with_capacity(HEADER_BYTES + 4 + bytes);
    out.push(VERSION);
    out.push(op::PACKED);
    out.extend_from_slice(&[0u8; 24]);
    out.extend_from_slice(&(commands.len() as u32).to_le_bytes());
    for c in commands {
        put_bytes(&mut out, c);
    }
    out
}

/// The commands packed in an entry payload, or `None` when it holds a single command.
pub fn unpack(data: &[u8]) -> Result<Option<Vec<&[u8]>>> {
    if data.len() < 2 || data[1] != op::PACKED {
        return Ok(None);
    }
    let mut r = Reader { buf: data };
    if r.u8()? != VERSION {
        return Err(Error::Corrupt("packed command version unknown".into()));
    }
    r.take(1 + 24)?;
    let n = r.count(4)?;
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        let part = r.bytes()?;
        if part.get(1) == Some(&op::PACKED) {
            return Err(Error::Corrupt("packed commands do not nest".into()));
        }
        parts.push(part);
    }
    if !r.buf.is_empty() {
        return Err(Error::Corrupt(format!(
            "{} trailing bytes after packed commands",
            r.buf.len()
        )));
    }
    Ok(Some(parts))
}

fn decode_batch<'a>(r: &mut Reader<'a>) -> Result<Vec<BatchOp<'a>>> {
    let n = r.count(5)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        ops.push(match r.u8()? {
            op::PUT => BatchOp::Put {
                key: r.bytes()?,
                value: r.bytes()?,
            },
            op::DELETE => BatchOp::Delete { key: r.bytes()? },
            other => return Err(Error::Corrupt(format!("batch op {other} unknown"))),
        });
    }
    Ok(ops)
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(Error::Corrupt(format!(
                "command truncated: need {n} bytes, have {}",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().expect("take(8) returns 8 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8]> {
        let b = self.take(4)?;
        let n = u32::from_le_bytes(b.try_into().expect("take(4) returns 4 bytes")) as usize;
        self.take(n)
    }

    /// An element count, checked against the bytes left (each element takes at least
    /// `min_bytes`), so a forged count cannot make the decoder allocate.
    fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let b = self.take(4)?;
        let n = u32::from_le_bytes(b.try_into().expect("take(4) returns 4 bytes")) as usize;
        if n.saturating_mul(min_bytes) > self.buf.len() {
            return Err(Error::Corrupt(format!(
                "command claims {n} elements in {} bytes",
                self.buf.len()
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(op: Op<'_>) -> Command<'_> {
        Command {
            client_id: 7,
            seq: 9,
            watermark: 3,
            op,
        }
    }

    #[test]
    fn round_trip() {
        let cmds = [
            cmd(Op::Put {
                key: b"k",
                value: b"v",
                expires_at_ms: 0,
            }),
            cmd(Op::Put {
                key: b"k",
                value: b"",
                expires_at_ms: 1_700_000_000_000,
            }),
            cmd(Op::Delete { key: b"key" }),
            cmd(Op::Noop),
            cmd(Op::Batch(vec![
                BatchOp::Put {
                    key: b"a",
                    value: b"1",
                },
                BatchOp::Delete { key: b"b" },
            ])),
            cmd(Op::Batch(vec![])),
            cmd(Op::Cas {
                now_ms: 1,
                key: b"k",
                expected: Some(b"old"),
                new: Some(b"new"),
            }),
            cmd(Op::Cas {
                now_ms: 2,
                key: b"k",
                expected: None,
                new: Some(b""),
            }),
            cmd(Op::Cas {
                now_ms: 3,
                key: b"k",
                expected: Some(b""),
                new: None,
            }),
            cmd(Op::Append {
                now_ms: 4,
                key: b"k",
                value: b"tail",
            }),
            cmd(Op::Expire(vec![(b"a", 5), (b"bb", 6)])),
        ];
        for c in cmds {
            let enc = c.encode();
            assert_eq!(enc.len(), HEADER_BYTES + c.body_len(), "{c:?}");
            assert_eq!(Command::decode(&enc).unwrap(), c);
        }
    }

    #[test]
    fn packs_and_unpacks() {
        let a = cmd(Op::Put {
            key: b"a",
            value: b"1",
            expires_at_ms: 0,
        })
        .encode();
        let b = cmd(Op::Delete { key: b"b" }).encode();
        let packed = pack(&[a.clone(), b.clone()]);
        let parts = unpack(&packed).unwrap().unwrap();
        assert_eq!(parts, vec![&a[..], &b[..]]);
        assert_eq!(unpack(&a).unwrap(), None);
        for cut in 2..packed.len() {
            assert!(unpack(&packed[..cut]).is_err(), "truncated at {cut}");
        }
        let nested = pack(std::slice::from_ref(&packed));
        assert!(unpack(&nested).is_err());
        assert!(
            Command::decode(&packed).is_err(),
            "a packed payload is not a command"
        );
    }

    #[test]
    fn only_unconditional_writes_of_the_session_settle_on_commit() {
        let with = |client_id, seq, op| {
            Command {
                client_id,
                seq,
                watermark: 0,
                op,
            }
            .encode()
        };
        let put = Op::Put {
            key: b"k",
            value: b"v",
            expires_at_ms: 0,
        };
        let batch = Op::Batch(vec![BatchOp::Delete { key: b"b" }]);
        let cas = Op::Cas {
            now_ms: 1,
            key: b"k",
            expected: None,
            new: Some(b"v"),
        };
        let append = Op::Append {
            now_ms: 1,
            key: b"k",
            value: b"v",
        };
        let packed = pack(&[
            with(7, 1, put.clone()),
            with(7, 2, cas),
            with(7, 3, Op::Delete { key: b"k" }),
            with(8, 4, put.clone()),
            with(7, 0, put.clone()),
            with(7, 5, append),
            with(7, 6, batch),
        ]);
        let mut out = Vec::new();
        settled_on_commit(&packed, 7, &mut out);
        assert_eq!(
            out,
            vec![1, 3, 6],
            "CAS, append, other sessions, seq 0 are not"
        );
        out.clear();
        settled_on_commit(&with(7, 9, put.clone()), 7, &mut out);
        assert_eq!(out, vec![9]);
        out.clear();
        settled_on_commit(&packed[..packed.len() - 1], 7, &mut out);
        assert!(
            out.is_empty(),
            "a payload that does not decode settles nothing"
        );
        let mut garbage = with(8, 1, Op::Noop);
        garbage[1] = 99;
        settled_on_commit(&pack(&[with(7, 1, put), garbage]), 7, &mut out);
        assert!(
            out.is_empty(),
            "one part that does not decode settles none of the entry"
        );
    }

    #[test]
    fn rejects_garbage() {
        let samples = [
            cmd(Op::Put {
                key: b"k",
                value: b"v",
                expires_at_ms: 9,
            }),
            cmd(Op::Batch(vec![BatchOp::Put {
                key: b"a",
                value: b"1",
            }])),
            cmd(Op::Cas {
                now_ms: 5,
                key: b"k",
                expected: Some(b"x"),
                new: None,
            }),
            cmd(Op::Expire(vec![(b"a", 5)])),
        ];
        for c in samples {
            let good = c.encode();
            for cut in 0..good.len() {
                assert!(
                    Command::decode(&good[..cut]).is_err(),
                    "{c:?} truncated at {cut}"
                );
            }
            let mut long = good.clone();
            long.push(0);
            assert!(Command::decode(&long).is_err());
        }
        let good = cmd(Op::Delete { key: b"k" }).encode();
        let mut bad = good.clone();
        bad[0] = 9;
        assert!(Command::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[1] = 200;
        assert!(Command::decode(&bad).is_err());
        let mut huge = good[..HEADER_BYTES].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Command::decode(&huge).is_err());
        // A batch claiming four billion ops in a few bytes is refused before allocating.
        let mut forged = cmd(Op::Batch(vec![])).encode();
        forged.truncate(HEADER_BYTES);
        forged.extend_from_slice(&u32::MAX.to_le_bytes());
        forged.push(op::DELETE);
        assert!(Command::decode(&forged).is_err());
    }
}

/// The context carried by a conf-change entry: who proposed it (to complete their waiter) and,
/// for additions, the new member's address.
/// Layout: `version u8 | client_id u64 | seq u64 | addr utf-8`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfContext {
    /// Session of the proposer.
    pub client_id: u64,
    /// Sequence of the request in that session.
    pub seq: u64,
    /// Address of the member being added (empty for removals).
    pub addr: String,
}

impl ConfContext {
    /// Encodes the context.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(17 + self.addr.len());
        b.push(VERSION);
        b.extend_from_slice(&self.client_id.to_le_bytes());
        b.extend_from_slice(&self.seq.to_le_bytes());
        b.extend_from_slice(self.addr.as_bytes());
        b
    }

    /// Decodes a context; an empty one (from a conf change made outside kvr) decodes to default.
    pub fn decode(b: &[u8]) -> Result<ConfContext> {
        if b.is_empty() {
            return Ok(ConfContext::default());
        }
        let mut r = Reader { buf: b };
        let version = r.u8()?;
        if version != VERSION {
            return Err(Error::Corrupt(format!(
                "conf change context version {version} unknown"
            )));
        }
        let client_id = r.u64()?;
        let seq = r.u64()?;
        let addr = std::str::from_utf8(r.buf)
            .map_err(|_| Error::Corrupt("conf change address is not UTF-8".into()))?
            .to_string();
        Ok(ConfContext {
            client_id,
            seq,
            addr,
        })
    }
}

#[cfg(test)]
mod conf_context_tests {
    use super::*;

    #[test]
    fn round_trip() {
        let c = ConfContext {
            client_id: 3,
            seq: 4,
            addr: "127.0.0.1:1".into(),
        };
        assert_eq!(ConfContext::decode(&c.encode()).unwrap(), c);
        assert_eq!(ConfContext::decode(&[]).unwrap(), ConfContext::default());
        assert!(ConfContext::decode(&[9, 0]).is_err());
        assert!(ConfContext::decode(&c.encode()[..10]).is_err());
    }
}
