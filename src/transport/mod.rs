//! Peer-to-peer transport over plain TCP, one thread per role.
//!
//! - [`listener::Listener`]: one accept thread; one reader thread per inbound connection that
//!   checks the handshake and the first frame. A snapshot stream stays with its reader thread;
//!   a connection of Raft messages goes to the raft thread, which reads it without blocking
//!   alongside its inbox ([`inbound`]), so a peer's message wakes the raft thread directly.
//! - [`peer::PeerWriter`]: one writer thread per peer with a bounded queue. The raft thread
//!   never blocks on a peer: when a queue is full the message is dropped and Raft retransmits.
//!   The writer coalesces whatever is queued into one `write`, and reconnects with capped
//!   exponential backoff. Small messages with nothing queued ahead of them are written by the
//!   raft thread itself, without blocking, which saves a thread wake-up per hop.
//! - Snapshots travel on a connection of their own ([`snapshot`]), so that heartbeats and
//!   appends keep flowing while a large state is streamed.
//!
//! Each direction between two nodes uses its own connection, dialed by the sender. What the
//! transport needs from the replica (delivering messages, staging snapshots, judging a peer's
//! identity) goes through the [`Host`] trait.

pub mod frame;
pub mod handshake;
pub mod inbound;
pub mod listener;
pub mod peer;
pub mod snapshot;

#[cfg(test)]
pub(crate) mod testing {
    use raft::eraftpb::{Entry, Message, MessageType};

    /// An append from node 1 to node 2 at `index`, carrying one entry of `bytes` bytes.
    pub fn append(index: u64, bytes: usize) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 1;
        m.to = 2;
        m.index = index;
        m.entries = vec![Entry {
            index,
            data: vec![(index % 251) as u8; bytes].into(),
            ..Default::default()
        }]
        .into();
        m
    }
}

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{Message, Snapshot};

use crate::error::{Error, Result};
use crate::storage::snapshot::{Outgoing, Stage, Staged};
use frame::{KIND_CHALLENGE, KIND_HELLO, KIND_HELLO_ACK, KIND_PROOF};
use handshake::{Ack, Hello, Role, MAC_BYTES, NONCE_BYTES, PROTOCOL_VERSION};

/// Messages a peer queue holds before further ones are dropped.
pub const PEER_QUEUE_LEN: usize = 4096;

/// What the transport needs from the replica that hosts it. Called from transport threads.
pub trait Host: Send + Sync + 'static {
    /// Hands a received message to the raft thread; false once nobody listens any more.
    fn deliver(&self, msg: Message) -> bool;
    /// Hands a received snapshot message, whose state is staged on disk, to the raft thread.
    fn deliver_snapshot(&self, msg: Message, staged: Staged) -> bool;
    /// Prepares to receive a snapshot at `(index, term)` from `from`.
    fn stage_snapshot(&self, from: u64, index: u64, term: u64) -> Result<Stage>;
    /// The outgoing snapshot a Raft snapshot message refers to.
    fn outgoing_snapshot(&self, snap: &Snapshot) -> Option<Outgoing>;
    /// Reports how sending a snapshot to `to` ended.
    fn snapshot_sent(&self, to: u64, ok: bool);
    /// Tells the raft thread that `peer` could not be reached.
    fn unreachable(&self, peer: u64);
    /// Judges the identity a peer presented in a handshake (either direction). An error
    /// refuses the connection: `Error::Removed` for removed nodes, `Error::Refused` otherwise.
    fn check_peer(&self, peer: u64, incarnation: u64, addr: &str) -> Result<()>;
    /// A peer refused this node (it was removed, or its identity does not match).
    fn refused(&self, by: u64, e: &Error);
    /// True when inbound connections of Raft messages go to the raft thread ([`Host::adopt`])
    /// once their first message is delivered; otherwise their reader thread reads them.
    fn takes_connections(&self) -> bool {
        false
    }
    /// Hands an inbound connection of Raft messages to the raft thread, which reads it from
    /// then on; dropping it closes it.
    fn adopt(&self, conn: inbound::RaftConn) {
        drop(conn);
    }
}

/// Identity and limits shared by every transport thread of a replica.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node.
    pub node_id: u64,
    /// Cluster id sent and checked in handshakes.
    pub cluster_id: u64,
    /// Incarnation of this node's log, sent in handshakes.
    pub incarnation: u64,
    /// Address this node listens on, advertised in handshakes.
    pub advertise: String,
    /// Largest frame accepted.
    pub frame_bytes_max: usize,
    /// Shared secret peers prove they know in the handshake (`None`: no authentication).
    pub secret: Option<Vec<u8>>,
}

/// Counters kept by the transport.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages dropped because a peer queue was full or the peer was unreachable.
    pub dropped: AtomicU64,
    /// Messages written to sockets.
    pub sent: AtomicU64,
    /// Messages the raft thread wrote itself, in full or in part (the rest of a part written
    /// goes through the writer thread, as do all other messages).
    pub sent_direct: AtomicU64,
    /// Messages received and handed to raft.
    pub received: AtomicU64,
    /// Connections refused during the handshake (either side).
    pub refused: AtomicU64,
    /// Snapshots sent completely.
    pub snapshots_sent: AtomicU64,
    /// Snapshots received completely.
    pub snapshots_received: AtomicU64,
    /// Snapshot bytes sent (keys and values).
    pub snapshot_bytes_sent: AtomicU64,
}

/// The sending half, owned by the raft thread.
pub struct Transport {
    cfg: Arc<TransportConfig>,
    peers: HashMap<u64, peer::PeerWriter>,
    /// Peers whose address was configured explicitly: replicated addresses do not override it
    /// (each node may reach a peer through its own route, e.g. a proxy).
    pinned: std::collections::HashSet<u64>,
    host: Arc<dyn Host>,
    stats: Arc<TransportStats>,
}

impl Transport {
    /// A transport with no peers yet.
    pub fn new(cfg: Arc<TransportConfig>, host: Arc<dyn Host>, stats: Arc<TransportStats>) -> Self {
        Transport {
            cfg,
            peers: HashMap::new(),
            pinned: Default::default(),
            host,
            stats,
        }
    }

    /// Sets a peer's address for good: later [`Transport::set_peer`] calls leave it alone.
    pub fn pin_peer(&mut self, id: u64, addr: &str) {
        self.pinned.remove(&id);
        self.set_peer(id, addr);
        self.pinned.insert(id);
    }

    /// Adds a peer, or updates its address (unless pinned).
    pub fn set_peer(&mut self, id: u64, addr: &str) {
        if id == self.cfg.node_id || addr.is_empty() || self.pinned.contains(&id) {
            return;
        }
        match self.peers.get(&id) {
            Some(p) => p.set_addr(addr),
            None => {
                let w = peer::PeerWriter::spawn(
                    id,
                    addr.to_string(),
                    self.cfg.clone(),
                    self.host.clone(),
                    self.stats.clone(),
                );
                self.peers.insert(id, w);
            }
        }
    }

    /// Stops sending to a peer.
    pub fn remove_peer(&mut self, id: u64) {
        self.pinned.remove(&id);
        if let Some(p) = self.peers.remove(&id) {
            p.stop();
        }
    }

    /// True when the transport has an address for `id`.
    pub fn has_peer(&self, id: u64) -> bool {
        self.peers.contains_key(&id)
    }

    /// Address of a known peer.
    pub fn peer_addr(&self, id: u64) -> Option<String> {
        self.peers.get(&id).map(|p| p.addr())
    }

    /// Sends messages to their peers without blocking: written at once or queued (see
    /// [`peer::PeerWriter::send`]).
    pub fn send(&mut self, msgs: Vec<Message>) {
        // Grouped by peer, in order, so that each peer's messages of a Ready go out together.
        let mut groups: Vec<(u64, Vec<Message>)> = Vec::new();
        for m in msgs {
            match groups.iter_mut().find(|(to, _)| *to == m.to) {
                Some((_, g)) => g.push(m),
                None => groups.push((m.to, vec![m])),
            }
        }
        for (to, group) in groups {
            let dropped = match self.peers.get_mut(&to) {
                Some(p) => p.send(group),
                None => {
                    log::debug!(
                        "node {}: no address for node {to}, dropping {} messages",
                        self.cfg.node_id,
                        group.len()
                    );
                    for m in &group {
                        if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                            self.host.outgoing_snapshot(m.get_snapshot());
                        }
                    }
                    group
                }
            };
            for m in dropped {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
                    self.host.snapshot_sent(to, false);
                }
            }
        }
    }

    /// Stops every writer thread and waits for them.
    pub fn shutdown(&mut self) {
        for (_, p) in self.peers.drain() {
            p.stop();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Dials `peer` at `addr` and completes the handshake (with the challenge-response when a
/// cluster secret is set); returns the connected stream.
pub(crate) fn dial(
    cfg: &TransportConfig,
    host: &dyn Host,
    peer: u64,
    addr: &str,
    timeout: Duration,
) -> Result<TcpStream> {
    use std::io::Write;
    let sock = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| Error::Io(format!("{addr} resolves to no address")))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(timeout))?;
    s.set_read_timeout(Some(timeout))?;
    let hello = Hello {
        version: PROTOCOL_VERSION,
        cluster_id: cfg.cluster_id,
        from: cfg.node_id,
        to: peer,
        incarnation: cfg.incarnation,
        nonce: crate::replica::random_bytes()?,
        auth: cfg.secret.is_some(),
        addr: cfg.advertise.clone(),
    };
    let mut out = Vec::new();
    frame::put_frame(&mut out, KIND_HELLO, &hello.encode());
    s.write_all(&out)?;
    let mut buf = Vec::new();
    let mut kind = frame::read_frame(&mut s, 4096, &mut buf)?;
    if let Some(secret) = &cfg.secret {
        let answered = if kind == KIND_CHALLENGE {
            answer_challenge(&mut s, secret, &hello, &buf)
        } else if kind == KIND_HELLO_ACK {
            Ack::decode(&buf)?.into_result().and(Err(Error::Refused(
                "the peer does not authenticate (it has no cluster secret)".into(),
            )))
        } else {
            Err(Error::Corrupt(format!(
                "expected a challenge, got frame kind {kind}"
            )))
        };
        if let Err(e) = answered {
            if matches!(e, Error::Refused(_) | Error::Removed) {
                host.refused(peer, &e);
            }
            return Err(e);
        }
        kind = frame::read_frame(&mut s, 4096, &mut buf)?;
    }
    if kind != KIND_HELLO_ACK {
        return Err(Error::Corrupt(format!(
            "expected hello ack, got frame kind {kind}"
        )));
    }
    let incarnation = match Ack::decode(&buf)?.into_result() {
        Ok(i) => i,
        Err(e) => {
            host.refused(peer, &e);
            return Err(e);
        }
    };
    host.check_peer(peer, incarnation, addr)?;
    Ok(s)
}

/// Checks the acceptor's proof of the secret and sends ours.
fn answer_challenge(
    s: &mut TcpStream,
    secret: &[u8],
    hello: &Hello,
    challenge: &[u8],
) -> Result<()> {
    use std::io::Write;
    if challenge.len() != NONCE_BYTES + MAC_BYTES {
        return Err(Error::Corrupt("challenge has the wrong length".into()));
    }
    let nonce: [u8; NONCE_BYTES] = challenge[..NONCE_BYTES].try_into().expect("16 bytes");
    handshake::verify_mac(
        secret,
        Role::Acceptor,
        hello,
        &nonce,
        &challenge[NONCE_BYTES..],
    )
    .map_err(|_| Error::Refused("the peer does not know the cluster secret".into()))?;
    let proof = handshake::auth_mac(
        secret,
        Role::Dialer,
        hello.cluster_id,
        hello.from,
        hello.to,
        &hello.nonce,
        &nonce,
    );
    let mut out = Vec::new();
    frame::put_frame(&mut out, KIND_PROOF, &proof);
    s.write_all(&out)?;
    Ok(())
}
