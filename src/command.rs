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

/// The state-machine operation of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    /// Nothing (used to probe the log).
    Noop,
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Remove `key` (absent is fine).
    Delete {
        /// Key.
        key: &'a [u8],
    },
}

impl Command<'_> {
    /// Encodes into a fresh buffer sized exactly.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.body_len());
        out.push(VERSION);
        out.push(match self.op {
            Op::Noop => op::NOOP,
            Op::Put { .. } => op::PUT,
            Op::Delete { .. } => op::DELETE,
        });
        out.extend_from_slice(&self.client_id.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.watermark.to_le_bytes());
        match &self.op {
            Op::Noop => {}
            Op::Put { key, value } => {
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Op::Delete { key } => put_bytes(&mut out, key),
        }
        out
    }

    fn body_len(&self) -> usize {
        match &self.op {
            Op::Noop => 0,
            Op::Put { key, value } => 8 + key.len() + value.len(),
            Op::Delete { key } => 4 + key.len(),
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
            },
            op::DELETE => Op::Delete { key: r.bytes()? },
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cmds = [
            Command {
                client_id: 7,
                seq: 9,
                watermark: 3,
                op: Op::Put {
                    key: b"k",
                    value: b"v",
                },
            },
            Command {
                client_id: 1,
                seq: 2,
                watermark: 2,
                op: Op::Delete { key: b"key" },
            },
            Command {
                client_id: 0,
                seq: 0,
                watermark: 0,
                op: Op::Noop,
            },
            Command {
                client_id: u64::MAX,
                seq: 1,
                watermark: 1,
                op: Op::Put {
                    key: b"",
                    value: b"",
                },
            },
        ];
        for c in cmds {
            let enc = c.encode();
            assert_eq!(Command::decode(&enc).unwrap(), c);
        }
    }

    #[test]
    fn rejects_garbage() {
        let good = Command {
            client_id: 1,
            seq: 1,
            watermark: 1,
            op: Op::Put {
                key: b"k",
                value: b"v",
            },
        }
        .encode();
        for cut in 0..good.len() {
            assert!(Command::decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut bad = good.clone();
        bad[0] = 9;
        assert!(Command::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[1] = 200;
        assert!(Command::decode(&bad).is_err());
        let mut bad = good.clone();
        bad.push(0);
        assert!(Command::decode(&bad).is_err());
        let mut huge = good[..HEADER_BYTES].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(Command::decode(&huge).is_err());
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
