//! The first exchange on every peer connection, checked before any Raft message is read.
//!
//! Dialer → acceptor, frame `HELLO` (integers little-endian):
//! `magic "KVR\x01" | version u16 | cluster_id u64 | from u64 | to u64 | incarnation u64 |
//!  addr_len u16 | addr` — `addr` is the address the dialer listens on, so that a node can
//! answer a peer it has not been told about (a replica that has just joined).
//! Acceptor → dialer, frame `HELLO_ACK`: `status u8 | incarnation u64 | reason utf-8`.
//! A refused hello is answered with its reason and the connection is closed.

use crate::error::{Error, Result};

/// Bytes that open every hello.
pub const MAGIC: [u8; 4] = *b"KVR\x01";
/// Wire protocol version.
pub const PROTOCOL_VERSION: u16 = 1;
const HELLO_FIXED_BYTES: usize = 4 + 2 + 8 * 4 + 2;
/// Longest advertised address.
pub const ADDR_BYTES_MAX: usize = 255;

/// Status byte of an accepting ack.
pub const ACK_OK: u8 = 0;
/// Status byte of a refusing ack.
pub const ACK_REFUSED: u8 = 1;
/// Status byte telling the dialer it was removed from the cluster.
pub const ACK_REMOVED: u8 = 2;

/// A decoded hello.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Address the dialer listens on (may be empty).
    pub addr: String,
}

impl Hello {
    /// Encodes the hello payload.
    pub fn encode(&self) -> Vec<u8> {
        let addr = &self.addr.as_bytes()[..self.addr.len().min(ADDR_BYTES_MAX)];
        let mut b = Vec::with_capacity(HELLO_FIXED_BYTES + addr.len());
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        for w in [self.cluster_id, self.from, self.to, self.incarnation] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&(addr.len() as u16).to_le_bytes());
        b.extend_from_slice(addr);
        b
    }

    /// Decodes and sanity-checks a hello payload.
    pub fn decode(b: &[u8]) -> Result<Hello> {
        if b.len() < HELLO_FIXED_BYTES {
            return Err(Error::Corrupt(format!(
                "hello of {} bytes is too short",
                b.len()
            )));
        }
        if b[..4] != MAGIC {
            return Err(Error::Corrupt("hello has a bad magic number".into()));
        }
        let word =
            |i: usize| u64::from_le_bytes(b[6 + i * 8..14 + i * 8].try_into().expect("8 bytes"));
        let addr_len = u16::from_le_bytes([b[38], b[39]]) as usize;
        if addr_len > ADDR_BYTES_MAX || b.len() != HELLO_FIXED_BYTES + addr_len {
            return Err(Error::Corrupt(
                "hello address length is inconsistent".into(),
            ));
        }
        let addr = std::str::from_utf8(&b[HELLO_FIXED_BYTES..])
            .map_err(|_| Error::Corrupt("hello address is not UTF-8".into()))?
            .to_string();
        Ok(Hello {
            version: u16::from_le_bytes([b[4], b[5]]),
            cluster_id: word(0),
            from: word(1),
            to: word(2),
            incarnation: word(3),
            addr,
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

/// An acceptor's answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// `ACK_OK`, `ACK_REFUSED` or `ACK_REMOVED`.
    pub status: u8,
    /// Incarnation of the acceptor's log.
    pub incarnation: u64,
    /// Why the hello was refused (empty when accepted).
    pub reason: String,
}

impl Ack {
    /// Encodes an ack.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(9 + self.reason.len());
        b.push(self.status);
        b.extend_from_slice(&self.incarnation.to_le_bytes());
        b.extend_from_slice(self.reason.as_bytes());
        b
    }

    /// Decodes an ack.
    pub fn decode(b: &[u8]) -> Result<Ack> {
        if b.len() < 9 {
            return Err(Error::Corrupt("hello ack too short".into()));
        }
        Ok(Ack {
            status: b[0],
            incarnation: u64::from_le_bytes(b[1..9].try_into().expect("8 bytes")),
            reason: String::from_utf8_lossy(&b[9..]).into_owned(),
        })
    }

    /// The ack as a result: `Ok(incarnation)` when accepted.
    pub fn into_result(self) -> Result<u64> {
        match self.status {
            ACK_OK => Ok(self.incarnation),
            ACK_REMOVED => Err(Error::Removed),
            _ => Err(Error::Refused(self.reason)),
        }
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
            addr: "127.0.0.1:7002".into(),
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
        let good = h.encode();
        for cut in 0..good.len() {
            assert!(Hello::decode(&good[..cut]).is_err(), "truncated at {cut}");
        }
        let mut long = good.clone();
        long.push(b'x');
        assert!(Hello::decode(&long).is_err());
    }

    #[test]
    fn ack_round_trip() {
        let a = Ack {
            status: ACK_OK,
            incarnation: 5,
            reason: String::new(),
        };
        assert_eq!(Ack::decode(&a.encode()).unwrap().into_result().unwrap(), 5);
        let r = Ack {
            status: ACK_REFUSED,
            incarnation: 0,
            reason: "no".into(),
        };
        assert!(
            matches!(Ack::decode(&r.encode()).unwrap().into_result(), Err(Error::Refused(m)) if m == "no")
        );
        let r = Ack {
            status: ACK_REMOVED,
            incarnation: 0,
            reason: String::new(),
        };
        assert_eq!(
            Ack::decode(&r.encode()).unwrap().into_result(),
            Err(Error::Removed)
        );
        assert!(Ack::decode(&[0, 1]).is_err());
    }
}
