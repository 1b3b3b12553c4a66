//! Ports for replicas and proxies, taken below the kernel's ephemeral range.
//!
//! A replica killed by the nemesis must get its port back when it restarts. Ports that the
//! kernel hands out (to `bind(0)`, or as the local end of an outgoing connection, and there
//! are thousands of those here) could take it meanwhile. Ports below the ephemeral range
//! (Linux: 32768 and up) are only ever taken by someone asking for that very port, and this
//! process hands each out once.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

const FIRST: u16 = 20_000;
const COUNT: u16 = 12_000;

struct Allocator {
    next: u16,
    used: HashSet<u16>,
}

static PORTS: Mutex<Option<Allocator>> = Mutex::new(None);

/// A listener on a port of 127.0.0.1 no one else in this process was given.
pub fn listen() -> TcpListener {
    let mut guard = PORTS.lock().unwrap_or_else(|p| p.into_inner());
    let alloc = guard.get_or_insert_with(|| {
        // Different processes (parallel test runs) start at different places.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = t.subsec_nanos() ^ std::process::id().wrapping_mul(2_654_435_761);
        Allocator {
            next: (seed % u32::from(COUNT)) as u16,
            used: HashSet::new(),
        }
    });
    for _ in 0..COUNT {
        let port = FIRST + alloc.next;
        alloc.next = (alloc.next + 1) % COUNT;
        if alloc.used.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))) {
            alloc.used.insert(port);
            return l;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + COUNT);
}

/// A port for a replica to listen on: free now, and given to no one else here.
pub fn reserve() -> SocketAddr {
    listen().local_addr().expect("bound address")
}
