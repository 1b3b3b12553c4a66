//! The first exchange on every peer connection, checked before any Raft message is read.
//!
//! Dialer → acceptor, frame `HELLO` (integers little-endian):
//! `magic "KVR\x01" | version u16 | cluster_id u64 | from u64 | to u64 | incarnation u64 |
//!  nonce [16] | flags u8 | addr_len u16 | addr` — `addr` is the address the dialer listens
//! on, so that a node can answer a peer it has not been told about (a replica that just
//! joined); flag bit 0 says the dialer authenticates.
//!
//! With a cluster secret, a challenge-response follows (the secret never crosses the wire):
//! acceptor → dialer `CHALLENGE`: `nonce [16] | mac [32]`, where
//! `mac = HMAC-SHA256(secret, "kvr-accept" | cluster | from | to | dialer nonce | acceptor nonce)`
//! proves the acceptor knows the secret; dialer → acceptor `PROOF`: `mac [32]` with the label
//! `"kvr-dial"` proves the dialer does. Both nonces are fresh per connection, so a recorded
//! exchange cannot be replayed.
//!
//! Finally acceptor → dialer `HELLO_ACK`: `status u8 | incarnation u64 | reason utf-8`. A
//! refused hello is answered with its reason and the connection is closed.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// Bytes that open every hello.
pub const MAGIC: [u8; 4] = *b"KVR\x01";
/// Wire protocol version.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 16;
/// Bytes of an authentication code.
pub const MAC_BYTES: usize = 32;
const HELLO_FIXED_BYTES: usize = 4 + 2 + 8 * 4 + NONCE_BYTES + 1 + 2;
/// Longest advertised address.
pub const ADDR_BYTES_MAX: usize = 255;
const FLAG_AUTH: u8 = 1;

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
    /// Fresh random bytes of the dialer.
    pub nonce: [u8; NONCE_BYTES],
    /// The dialer will answer a challenge.
    pub auth: bool,
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
        b.extend_from_slice(&self.nonce);
        b.push(if self.auth { FLAG_AUTH } else { 0 });
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
        let nonce: [u8; NONCE_BYTES] = b[38..38 + NONCE_BYTES].try_into().expect("16 bytes");
        let flags = b[54];
        let addr_len = u16::from_le_bytes([b[55], b[56]]) as usize;
        if flags & !FLAG_AUTH != 0 {
            return Err(Error::Corrupt(format!(
                "hello has unknown flags {flags:#x}"
            )));
        }
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
            nonce,
            auth: flags & FLAG_AUTH != 0,
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

/// Which side computes an authentication code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The side that dialed.
    Dialer,
    /// The side that accepted.
    Acceptor,
}

/// The authentication code of `role` for a handshake between `from` (dialer) and `to`.
pub fn auth_mac(
    secret: &[u8],
    role: Role,
    cluster_id: u64,
    from: u64,
    to: u64,
    dialer_nonce: &[u8; NONCE_BYTES],
    acceptor_nonce: &[u8; NONCE_BYTES],
) -> [u8; MAC_BYTES] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(match role {
        Role::Dialer => b"kvr-dial",
        Role::Acceptor => b"kvr-accept",
    });
    for w in [cluster_id, from, to] {
        mac.update(&w.to_le_bytes());
    }
    mac.update(dialer_nonce);
    mac.update(acceptor_nonce);
    mac.finalize().into_bytes().into()
}

/// Checks `got` against the expected code in constant time.
pub fn verify_mac(
    secret: &[u8],
    role: Role,
    hello: &Hello,
    acceptor_nonce: &[u8; NONCE_BYTES],
    got: &[u8],
) -> Result<()> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(match role {
        Role::Dialer => b"kvr-dial",
        Role::Acceptor => b"kvr-accept",
    });
    for w in [hello.cluster_id, hello.from, hello.to] {
        mac.update(&w.to_le_bytes());
    }
    mac.update(&hello.nonce);
    mac.update(acceptor_nonce);
    mac.verify_slice(got)
        .map_err(|_| Error::Refused("authentication failed: wrong cluster secret".into()))
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

    fn hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            cluster_id: 9,
            from: 2,
            to: 1,
            incarnation: 77,
            nonce: [7; NONCE_BYTES],
            auth: true,
            addr: "127.0.0.1:7002".into(),
        }
    }

    #[test]
    fn hello_round_trip_and_checks() {
        let h = hello();
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
        let mut flags = good.clone();
        flags[54] = 0x80;
        assert!(Hello::decode(&flags).is_err());
    }

    #[test]
    fn macs_bind_role_identities_and_both_nonces() {
        let h = hello();
        let s = b"secret";
        let n = [3u8; NONCE_BYTES];
        let m = auth_mac(s, Role::Dialer, h.cluster_id, h.from, h.to, &h.nonce, &n);
        verify_mac(s, Role::Dialer, &h, &n, &m).unwrap();
        assert!(
            verify_mac(b"other", Role::Dialer, &h, &n, &m).is_err(),
            "wrong secret"
        );
        assert!(
            verify_mac(s, Role::Acceptor, &h, &n, &m).is_err(),
            "a dialer code is no acceptor code"
        );
        assert!(
            verify_mac(s, Role::Dialer, &h, &[4; NONCE_BYTES], &m).is_err(),
            "replayed for another nonce"
        );
        let mut other = h.clone();
        other.from = 3;
        assert!(
            verify_mac(s, Role::Dialer, &other, &n, &m).is_err(),
            "bound to the node ids"
        );
        assert!(verify_mac(s, Role::Dialer, &h, &n, &m[..31]).is_err());
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
