//! The replica side of the transport: what reader, writer and snapshot threads ask of it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raft::eraftpb::{Message, Snapshot};

use super::inbox::InboxTx;
use super::{RaftMsg, Shared};
use crate::error::{Error, Result};
use crate::storage::snapshot::{Outgoing, Registry, Stage, Staged};
use crate::transport::Host;

/// How long a transport thread may wait to report to the raft thread before giving up.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Implements [`Host`] for one replica.
pub struct NodeHost {
    shared: Arc<Shared>,
    inbox: InboxTx,
    registry: Arc<Registry>,
    dir: PathBuf,
    map_size_mb: u64,
    identities: PeerIdentities,
    /// Ids listed in the `peers` option: always allowed to talk to this node.
    configured: Vec<u64>,
}

impl NodeHost {
    /// The host of the replica configured by `cfg`.
    pub fn new(
        shared: Arc<Shared>,
        inbox: InboxTx,
        registry: Arc<Registry>,
        cfg: &crate::config::Config,
    ) -> Result<NodeHost> {
        let identities = PeerIdentities::load(cfg.dir.join("PEERS"))?;
        Ok(NodeHost {
            shared,
            inbox,
            registry,
            dir: cfg.dir.clone(),
            map_size_mb: cfg.map_size_mb,
            identities,
            configured: cfg.peers.keys().copied().collect(),
        })
    }

    fn report(&self, msg: RaftMsg) {
        let _ = self.inbox.send_timeout(msg, REPORT_TIMEOUT);
    }
}

impl Host for NodeHost {
    fn deliver(&self, msg: Message) -> bool {
        self.inbox.send(RaftMsg::Step(msg)).is_ok()
    }

    fn deliver_snapshot(&self, msg: Message, staged: Staged) -> bool {
        self.inbox.send(RaftMsg::Snapshot { msg, staged }).is_ok()
    }

    fn stage_snapshot(&self, from: u64, index: u64, term: u64) -> Result<Stage> {
        let nonce = crate::replica::random_u64()?;
        let path = self
            .dir
            .join(format!("snap-in-{from}-{index}-{nonce:016x}"));
        Stage::create(&path, self.map_size_mb, index, term)
    }

    fn outgoing_snapshot(&self, snap: &Snapshot) -> Option<Outgoing> {
        self.registry.take(snap)
    }

    fn snapshot_sent(&self, to: u64, ok: bool) {
        self.report(RaftMsg::SnapshotStatus { to, ok });
    }

    fn takes_connections(&self) -> bool {
        true
    }

    fn adopt(&self, conn: crate::transport::inbound::RaftConn) {
        self.report(RaftMsg::Adopt(conn));
    }

    fn unreachable(&self, peer: u64) {
        let _ = self.inbox.try_send(RaftMsg::Unreachable(peer));
    }

    fn check_peer(&self, peer: u64, incarnation: u64, addr: &str) -> Result<()> {
        if let Ok(sm) = self.shared.state_machine() {
            if sm.is_removed(peer)? {
                return Err(Error::Removed);
            }
            let cs = sm.conf_state()?;
            let members: Vec<u64> = cs
                .voters
                .iter()
                .chain(&cs.learners)
                .chain(&cs.voters_outgoing)
                .copied()
                .collect();
            // A replica that has not learned the membership yet (it is joining) hears from
            // whoever the cluster sends; everyone else only talks to members.
            let known =
                members.is_empty() || members.contains(&peer) || self.configured.contains(&peer);
            if !known {
                return Err(Error::Refused(format!(
                    "node {peer} is not a member of this cluster"
                )));
            }
        }
        self.identities.check(peer, incarnation)?;
        if !addr.is_empty() {
            let _ = self.inbox.try_send(RaftMsg::PeerAddr {
                id: peer,
                addr: addr.to_string(),
            });
        }
        Ok(())
    }

    fn refused(&self, by: u64, e: &Error) {
        if *e == Error::Removed {
            if !self.shared.removed.swap(true, Ordering::SeqCst) {
                log::error!(
                    "node {}: node {by} says this node was removed from the cluster",
                    self.shared.node_id
                );
            }
            return;
        }
        log::error!(
            "node {}: node {by} refused this node: {e}",
            self.shared.node_id
        );
        self.shared
            .set_refusal(format!("node {by} refused this node: {e}"));
    }
}

/// The incarnation each peer presented the first time it was seen, persisted in `dir/PEERS`.
///
/// A peer whose log was wiped comes back with a new incarnation. Talking Raft with it under
/// its old id would let the leader believe entries are on its disk that are not (raft-rs then
/// panics in `commit_to` on that node), so it is refused until it rejoins under a new id.
struct PeerIdentities {
    path: PathBuf,
    known: Mutex<HashMap<u64, u64>>,
}

impl PeerIdentities {
    fn load(path: PathBuf) -> Result<PeerIdentities> {
        let mut known = HashMap::new();
        match fs::read_to_string(&path) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let parsed = line
                        .split_once(' ')
                        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
                    let (id, inc): (u64, u64) = parsed.ok_or_else(|| {
                        Error::Corrupt(format!("{}: bad line {line:?}", path.display()))
                    })?;
                    known.insert(id, inc);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
        }
        Ok(PeerIdentities {
            path,
            known: Mutex::new(known),
        })
    }

    fn check(&self, peer: u64, incarnation: u64) -> Result<()> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        match known.get(&peer) {
            Some(&k) if k == incarnation => Ok(()),
            Some(_) => Err(Error::Refused(format!(
                "node {peer} came back with a different identity (its data was lost or replaced); \
                 remove it and add it back under a new id"
            ))),
            None => {
                known.insert(peer, incarnation);
                self.save(&known)
            }
        }
    }

    fn save(&self, known: &HashMap<u64, u64>) -> Result<()> {
        let mut text = String::new();
        let mut ids: Vec<_> = known.iter().collect();
        ids.sort();
        for (id, inc) in ids {
            text.push_str(&format!("{id} {inc}\n"));
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}
