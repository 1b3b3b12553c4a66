//! The network between replicas: one [`Proxy`] per directed link, and partitions built from
//! link faults. Node i's `peers` option lists itself at its real listen address and every
//! other node j at the proxy of link i→j (configured addresses win over replicated ones in
//! kvr), so every byte between replicas crosses a proxy the harness controls.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::proxy::{LinkCtl, Proxy};

pub struct Net {
    /// Real listen address of each node, by id.
    pub listen: BTreeMap<u64, SocketAddr>,
    links: BTreeMap<(u64, u64), Proxy>,
}

impl Net {
    /// Proxies for every ordered pair of `ids`; each node listens on a fresh port.
    pub fn new(ids: &[u64], seed: u64) -> Net {
        let ports = crate::common::free_ports(ids.len());
        let listen: BTreeMap<u64, SocketAddr> = ids
            .iter()
            .zip(ports)
            .map(|(&id, p)| (id, SocketAddr::from(([127, 0, 0, 1], p))))
            .collect();
        let mut links = BTreeMap::new();
        for &from in ids {
            for &to in ids {
                if from != to {
                    let link_seed = seed ^ (from << 32) ^ to;
                    links.insert((from, to), Proxy::start(listen[&to], link_seed));
                }
            }
        }
        Net { listen, links }
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.listen.keys().copied().collect()
    }

    /// The `peers` option for node `id`: itself directly, everyone else through its proxies.
    pub fn peers_for(&self, id: u64) -> String {
        self.listen
            .iter()
            .map(|(&j, addr)| {
                let a = if j == id {
                    *addr
                } else {
                    self.links[&(id, j)].addr
                };
                format!("{j}={a}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn link(&self, from: u64, to: u64) -> &LinkCtl {
        &self.links[&(from, to)].ctl
    }

    pub fn heal(&self) {
        for p in self.links.values() {
            p.ctl.heal();
        }
    }

    /// Cuts (or blackholes) every link between nodes of different groups, both ways.
    pub fn partition(&self, groups: &[Vec<u64>], blackhole: bool) {
        for ((from, to), p) in &self.links {
            let gf = groups.iter().position(|g| g.contains(from));
            let gt = groups.iter().position(|g| g.contains(to));
            if gf != gt {
                if blackhole {
                    p.ctl.blackhole();
                } else {
                    p.ctl.cut();
                }
            }
        }
    }

    /// Applies loss and delay to every link.
    pub fn degrade(&self, drop_permille: u32, delay_ms: u32, jitter_ms: u32) {
        for p in self.links.values() {
            p.ctl.set_loss(drop_permille, delay_ms, jitter_ms);
        }
    }

    /// Raft messages forwarded and dropped by all proxies so far.
    pub fn frame_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.links.values().fold((0, 0), |(f, d), p| {
            (
                f + p.ctl.frames_forwarded.load(Relaxed),
                d + p.ctl.frames_dropped.load(Relaxed),
            )
        })
    }
}
