//! The network between replicas: every directed link has its own faults ([`LinkCtl`]),
//! enforced by proxies, and partitions are built from link faults.
//!
//! A founding node i's `peers` option lists itself at its real listen address and every
//! other node j at the proxy of link i→j (configured addresses win over replicated ones in
//! kvr), so every byte between replicas crosses a proxy the harness controls. A node added
//! later is reached by the others at the address replicated with its `add`: that address is
//! a routed proxy into the new node, which applies the faults of link k→new according to the
//! sender k named in each connection's hello.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::proxy::{LinkCtl, Proxy, Route};

type Ctls = Arc<Mutex<BTreeMap<(u64, u64), Arc<LinkCtl>>>>;

#[derive(Default)]
struct Inner {
    /// Real listen address of each node.
    listen: BTreeMap<u64, SocketAddr>,
    /// The address `from` uses to reach `to`.
    route: BTreeMap<(u64, u64), SocketAddr>,
    proxies: Vec<Proxy>,
}

pub struct Net {
    inner: Mutex<Inner>,
    ctls: Ctls,
    seed: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Net {
    /// Proxies for every ordered pair of `ids`; each node listens on a fresh port.
    pub fn new(ids: &[u64], seed: u64) -> Net {
        let net = Net {
            inner: Mutex::default(),
            ctls: Ctls::default(),
            seed,
        };
        let ports = crate::common::free_ports(ids.len());
        let mut inner = lock(&net.inner);
        for (&id, p) in ids.iter().zip(ports) {
            inner
                .listen
                .insert(id, SocketAddr::from(([127, 0, 0, 1], p)));
        }
        for &from in ids {
            for &to in ids {
                if from != to {
                    net.dedicated(&mut inner, from, to);
                }
            }
        }
        drop(inner);
        net
    }

    /// A proxy of its own for link from→to.
    fn dedicated(&self, inner: &mut Inner, from: u64, to: u64) {
        let p = Proxy::start(inner.listen[&to], self.seed ^ (from << 32) ^ to);
        lock(&self.ctls).insert((from, to), p.ctl.clone());
        inner.route.insert((from, to), p.addr);
        inner.proxies.push(p);
    }

    /// Makes room for node `id`, joining `members`: its listen address, the address the
    /// others will reach it at (to replicate with `add`), and its outbound proxies.
    pub fn add_node(&self, id: u64, members: &[u64]) -> (SocketAddr, SocketAddr) {
        let mut inner = lock(&self.inner);
        let listen = super::ports::reserve();
        inner.listen.insert(id, listen);
        for &m in members {
            lock(&self.ctls).insert((m, id), Arc::default());
            self.dedicated(&mut inner, id, m);
        }
        let ctls = self.ctls.clone();
        let route: Route = Arc::new(move |from| lock(&ctls).get(&(from, id)).cloned());
        let inbound = Proxy::start_routed(listen, route, self.seed ^ id);
        let addr = inbound.addr;
        for &m in members {
            inner.route.insert((m, id), addr);
        }
        inner.proxies.push(inbound);
        (listen, addr)
    }

    /// The `peers` option for node `id` among `members`: itself directly (if a member),
    /// everyone else through the proxies of its outbound links.
    pub fn peers_for(&self, id: u64, members: &[u64]) -> String {
        let inner = lock(&self.inner);
        members
            .iter()
            .map(|&j| {
                let a = if j == id {
                    inner.listen[&j]
                } else {
                    inner.route[&(id, j)]
                };
                format!("{j}={a}")
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn listen_addr(&self, id: u64) -> SocketAddr {
        lock(&self.inner).listen[&id]
    }

    pub fn link(&self, from: u64, to: u64) -> Arc<LinkCtl> {
        lock(&self.ctls)[&(from, to)].clone()
    }

    fn links(&self) -> Vec<((u64, u64), Arc<LinkCtl>)> {
        lock(&self.ctls)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    pub fn heal(&self) {
        for (_, c) in self.links() {
            c.heal();
        }
    }

    /// Cuts (or blackholes) every link between nodes of different groups, both ways.
    pub fn partition(&self, groups: &[Vec<u64>], blackhole: bool) {
        for ((from, to), c) in self.links() {
            let gf = groups.iter().position(|g| g.contains(&from));
            let gt = groups.iter().position(|g| g.contains(&to));
            if gf.is_some() && gt.is_some() && gf != gt {
                if blackhole {
                    c.blackhole();
                } else {
                    c.cut();
                }
            }
        }
    }

    /// Applies loss and delay to every link.
    pub fn degrade(&self, drop_permille: u32, delay_ms: u32, jitter_ms: u32) {
        for (_, c) in self.links() {
            c.set_loss(drop_permille, delay_ms, jitter_ms);
        }
    }

    /// Raft messages forwarded and dropped by all proxies so far.
    pub fn frame_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.links().iter().fold((0, 0), |(f, d), (_, c)| {
            (
                f + c.frames_forwarded.load(Relaxed),
                d + c.frames_dropped.load(Relaxed),
            )
        })
    }
}
