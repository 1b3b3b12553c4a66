//! Peer-to-peer transport over plain TCP, one thread per role.
//!
//! - [`listener::Listener`]: one accept thread; one reader thread per inbound connection that
//!   checks the handshake, then decodes frames and hands Raft messages to the raft thread.
//! - [`peer::PeerWriter`]: one writer thread per peer with a bounded queue. The raft thread
//!   never blocks on a peer: when a queue is full the message is dropped and Raft retransmits.
//!   The writer coalesces whatever is queued into one `write`, and reconnects with capped
//!   exponential backoff.
//!
//! Each direction between two nodes uses its own connection, dialed by the sender.

pub mod frame;
pub mod handshake;
pub mod listener;
pub mod peer;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use raft::eraftpb::Message;

/// Messages a peer queue holds before further ones are dropped.
pub const PEER_QUEUE_LEN: usize = 4096;

/// Hands a received message to the raft thread; returns false once nobody listens any more.
pub type Deliver = Arc<dyn Fn(Message) -> bool + Send + Sync>;
/// Tells the raft thread that a peer could not be reached.
pub type OnUnreachable = Arc<dyn Fn(u64) + Send + Sync>;

/// Identity and limits shared by every transport thread of a replica.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node.
    pub node_id: u64,
    /// Cluster id sent and checked in handshakes.
    pub cluster_id: u64,
    /// Incarnation of this node's log, sent in handshakes.
    pub incarnation: u64,
    /// Largest frame accepted.
    pub frame_bytes_max: usize,
}

/// Counters kept by the transport.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages dropped because a peer queue was full or the peer was unreachable.
    pub dropped: AtomicU64,
    /// Messages written to sockets.
    pub sent: AtomicU64,
    /// Messages received and handed to raft.
    pub received: AtomicU64,
    /// Connections refused during the handshake (either side).
    pub refused: AtomicU64,
}

/// The sending half, owned by the raft thread.
pub struct Transport {
    cfg: Arc<TransportConfig>,
    peers: HashMap<u64, peer::PeerWriter>,
    on_unreachable: OnUnreachable,
    stats: Arc<TransportStats>,
}

impl Transport {
    /// A transport with no peers yet.
    pub fn new(
        cfg: Arc<TransportConfig>,
        on_unreachable: OnUnreachable,
        stats: Arc<TransportStats>,
    ) -> Self {
        Transport {
            cfg,
            peers: HashMap::new(),
            on_unreachable,
            stats,
        }
    }

    /// Adds a peer, or updates its address.
    pub fn set_peer(&mut self, id: u64, addr: &str) {
        if id == self.cfg.node_id {
            return;
        }
        match self.peers.get(&id) {
            Some(p) => p.set_addr(addr),
            None => {
                let w = peer::PeerWriter::spawn(
                    id,
                    addr.to_string(),
                    self.cfg.clone(),
                    self.on_unreachable.clone(),
                    self.stats.clone(),
                );
                self.peers.insert(id, w);
            }
        }
    }

    /// Stops sending to a peer.
    pub fn remove_peer(&mut self, id: u64) {
        if let Some(p) = self.peers.remove(&id) {
            p.stop();
        }
    }

    /// Address of a known peer.
    pub fn peer_addr(&self, id: u64) -> Option<String> {
        self.peers.get(&id).map(|p| p.addr())
    }

    /// Ids of known peers.
    pub fn peer_ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    /// Queues messages to their peers without blocking.
    pub fn send(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            match self.peers.get(&m.to) {
                Some(p) => {
                    if !p.try_send(m) {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    log::debug!(
                        "node {}: no address for node {}, dropping {:?}",
                        self.cfg.node_id,
                        m.to,
                        m.msg_type
                    );
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
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
