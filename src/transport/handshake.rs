//! The first exchange on every peer connection, checked before any Raft message is read.
//!
//! Dialer → acceptor, frame `HELLO`:
//! `magic "KVR\x01" | version u16 | cluster_id u64 | from u64 | to u64 | incarnation u64`
//! (integers little-endian). Acceptor → dialer, frame `HELLO_ACK`: `status u8 | reason utf-8`.
//! A refused hello is answered with its reason and the connection is closed.

use crate::error::{Error, Result};

/// Bytes that open every hello.
pub const MAGIC: [u8; 4] = *b"KVR\x01";
/// Wire protocol version.
pub const PROTOCOL_VERSION: u16 = 1;
const HELLO_BYTES: usize = 4 + 2 + 8 * 4;

/// Status byte of an accepting ack.
pub const ACK_OK: u8 = 0;
/// Status byte of a refusing ack.
pub const ACK_REFUSED: u8 = 1;

/// A decoded hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version of the dialer.
    pub version: u16,
    /// Cluster the dialer belongs to.
    pub cluster_id: u64,
    /// Node id of the dialer.
    pub from: u64,
    /// Node id the dialer means to reach.
    pub to: u64,
    /// Incarnation of the dialer's log.
    pub incarnation: u64,
}

impl Hello {
    /// Encodes the hello payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HELLO_BYTES);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        for w in [self.cluster_id, self.from, self.to, self.incarnation] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Decodes and sanity-checks a hello payload.
    pub fn decode(b: &[u8]) -> Result<Hello> {
        if b.len() != HELLO_BYTES {
            return Err(Error::Corrupt(format!(
                "hello of {} bytes, expected {HELLO_BYTES}",
                b.len()
            )));
        }
        if b[..4] != MAGIC {
            return Err(Error::Corrupt("hello has a bad magic number".into()));
        }
        let word =
            |i: usize| u64::from_le_bytes(b[6 + i * 8..14 + i * 8].try_into().expect("8 bytes"));
        Ok(Hello {
            version: u16::from_le_bytes([b[4], b[5]]),
            cluster_id: word(0),
            from: word(1),
            to: word(2),
            incarnation: word(3),
        })
    }

    /// Checks a received hello against the acceptor's own identity.
    pub fn check(&self, cluster_id: u64, my_id: u64) -> Result<()> {
        if self.version != PROTOCOL_VERSION {
            return Err(Error::Refused(format!(
                "protocol version {} not supported (want {PROTOCOL_VERSION})",
                self.version
            )));
        }
        if self.cluster_id != cluster_id {
            return Err(Error::Refused(format!(
                "cluster id {} does not match ours ({cluster_id})",
                self.cluster_id
            )));
        }
        if self.to != my_id {
            return Err(Error::Refused(format!(
                "dialed node {} but this is node {my_id}",
                self.to
            )));
        }
        if self.from == 0 || self.from == my_id {
            return Err(Error::Refused(format!("bad sender node id {}", self.from)));
        }
        Ok(())
    }
}

/// Encodes an ack.
pub fn encode_ack(status: u8, reason: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(1 + reason.len());
    b.push(status);
    b.extend_from_slice(reason.as_bytes());
    b
}

/// Decodes an ack into `Ok(())` or the refusal reason.
pub fn decode_ack(b: &[u8]) -> Result<()> {
    match b.split_first() {
        Some((&ACK_OK, _)) => Ok(()),
        Some((_, reason)) => Err(Error::Refused(String::from_utf8_lossy(reason).into_owned())),
        None => Err(Error::Corrupt("empty hello ack".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trip_and_checks() {
        let h = Hello {
            version: PROTOCOL_VERSION,
            cluster_id: 9,
            from: 2,
            to: 1,
            incarnation: 77,
        };
        let d = Hello::decode(&h.encode()).unwrap();
        assert_eq!(d, h);
        d.check(9, 1).unwrap();
        assert!(matches!(d.check(8, 1), Err(Error::Refused(_))));
        assert!(matches!(d.check(9, 3), Err(Error::Refused(_))));
        assert!(matches!(d.check(9, 2), Err(Error::Refused(_))));
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(Hello::decode(&bad).is_err());
        assert!(Hello::decode(&bad[..10]).is_err());
        assert!(decode_ack(&encode_ack(ACK_OK, "")).is_ok());
        assert!(
            matches!(decode_ack(&encode_ack(ACK_REFUSED, "no")), Err(Error::Refused(r)) if r == "no")
        );
        assert!(decode_ack(&[]).is_err());
    }
}
