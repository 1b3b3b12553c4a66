//! A fault-injecting TCP proxy for one directed link between two replicas.
//!
//! kvr dials a separate connection per direction (the sender dials the receiver), so the
//! link i→j carries everything i sends to j: Raft messages on one connection, snapshot
//! streams on others. Node i is configured to reach node j at this proxy's address; the
//! proxy forwards to j's real listen address.
//!
//! The proxy understands kvr's frames (`u32 big-endian length | u8 kind | payload`). The
//! first frame (the hello) and the reverse direction (hello ack, snapshot ack) are always
//! forwarded as they are. On a Raft connection each later frame is one Raft message, which
//! the proxy may drop or delay, like a lossy or slow network; order within a connection is
//! kept, as TCP keeps it. A snapshot stream is never cut into, only cut off whole: TCP never
//! loses bytes in the middle of a stream.
//!
//! A cut link closes its connections and refuses new ones (the dialer sees a reset, like a
//! host that is unreachable and answers so); a blackholed link keeps connections open and
//! silently drops every Raft message (like packets lost on the way), and cuts snapshot
//! streams.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::rng::Rng;

/// kvr's frame kinds that matter here.
const KIND_RAFT: u8 = 3;
const KIND_SNAP_BEGIN: u8 = 4;
/// Larger than any frame kvr sends (its own limit is 64 MiB).
const FRAME_BYTES_MAX: usize = 64 << 20;

/// The faults currently applied to a link. Changed at any time by the nemesis.
#[derive(Default)]
pub struct LinkCtl {
    cut: AtomicBool,
    blackhole: AtomicBool,
    /// Probability of dropping a Raft message, per mille.
    drop_permille: AtomicU32,
    /// Added to every Raft message, plus up to `jitter_ms`.
    delay_ms: AtomicU32,
    jitter_ms: AtomicU32,
    conns: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_conn: AtomicU64,
    pub frames_forwarded: AtomicU64,
    pub frames_dropped: AtomicU64,
}

impl LinkCtl {
    /// Closes every connection of the link and refuses new ones until healed.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.close_all();
    }

    /// Keeps connections up but drops every Raft message (and cuts snapshot streams).
    pub fn blackhole(&self) {
        self.blackhole.store(true, Ordering::SeqCst);
    }

    pub fn set_loss(&self, drop_permille: u32, delay_ms: u32, jitter_ms: u32) {
        self.drop_permille.store(drop_permille, Ordering::SeqCst);
        self.delay_ms.store(delay_ms, Ordering::SeqCst);
        self.jitter_ms.store(jitter_ms, Ordering::SeqCst);
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.blackhole.store(false, Ordering::SeqCst);
        self.set_loss(0, 0, 0);
    }

    fn close_all(&self) {
        for (_, socks) in lock(&self.conns).drain() {
            for s in socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    fn register(&self, socks: Vec<TcpStream>) -> u64 {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        lock(&self.conns).insert(id, socks);
        id
    }

    fn unregister(&self, id: u64) {
        if let Some(socks) = lock(&self.conns).remove(&id) {
            for s in socks {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Which link a connection belongs to, given the dialer's node id from its hello (`None`:
/// refuse the connection).
pub type Route = Arc<dyn Fn(u64) -> Option<Arc<LinkCtl>> + Send + Sync>;

/// One proxy: a listener thread plus threads per proxied connection. Usually it serves one
/// directed link; a routed proxy serves every link into one node, telling them apart by the
/// sender named in the hello.
pub struct Proxy {
    pub addr: SocketAddr,
    /// The link's faults (of a routed proxy: unused).
    pub ctl: Arc<LinkCtl>,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on an ephemeral port of 127.0.0.1 and forwards to `target`.
    pub fn start(target: SocketAddr, seed: u64) -> Proxy {
        let ctl = Arc::new(LinkCtl::default());
        let c = ctl.clone();
        Proxy::spawn(target, ctl, Arc::new(move |_| Some(c.clone())), seed)
    }

    /// A proxy to `target` for every sender, each with the faults `route` gives it.
    pub fn start_routed(target: SocketAddr, route: Route, seed: u64) -> Proxy {
        Proxy::spawn(target, Arc::new(LinkCtl::default()), route, seed)
    }

    fn spawn(target: SocketAddr, ctl: Arc<LinkCtl>, route: Route, seed: u64) -> Proxy {
        let listener = super::ports::listen();
        let addr = listener.local_addr().expect("proxy address");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let accept = thread::Builder::new()
            .name(format!("proxy-{}", addr.port()))
            .spawn(move || accept_loop(listener, target, route, s, Rng::new(seed)))
            .expect("spawning a proxy thread");
        Proxy {
            addr,
            ctl,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.ctl.close_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    route: Route,
    stop: Arc<AtomicBool>,
    mut rng: Rng,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(down) = conn else { continue };
        let route = route.clone();
        let seed = rng.next_u64();
        let _ = thread::Builder::new()
            .name("proxy-conn".into())
            .spawn(move || serve(down, target, route, Rng::new(seed)));
    }
}

/// The sender's node id in a hello frame: `len u32 | kind u8 | magic [4] | version u16 |
/// cluster_id u64 | from u64 (little-endian) | ...`.
fn hello_from(frame: &[u8]) -> Option<u64> {
    let b = frame.get(19..27)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// Proxies one connection until either side closes or the link is cut.
fn serve(mut down: TcpStream, target: SocketAddr, route: Route, rng: Rng) {
    let _ = down.set_read_timeout(Some(Duration::from_secs(10)));
    let hello = read_frame(&mut down);
    let _ = down.set_read_timeout(None);
    // A hello too short to name its sender is still forwarded on a dedicated link (kvr
    // will refuse it); a routed proxy cannot place it and refuses it.
    let ctl = hello
        .as_ref()
        .ok()
        .and_then(|h| route(hello_from(h).unwrap_or(0)));
    let (Ok(hello), Some(ctl)) = (hello, ctl) else {
        let _ = down.shutdown(Shutdown::Both);
        return;
    };
    if ctl.cut.load(Ordering::SeqCst) {
        let _ = down.shutdown(Shutdown::Both);
        return;
    }
    let Ok(mut up) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
        let _ = down.shutdown(Shutdown::Both);
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = down.set_nodelay(true);
    if up.write_all(&hello).is_err() {
        let _ = down.shutdown(Shutdown::Both);
        return;
    }
    let clones = (
        down.try_clone(),
        up.try_clone(),
        down.try_clone(),
        up.try_clone(),
    );
    let (Ok(down_back), Ok(up_back), Ok(down_reg), Ok(up_reg)) = clones else {
        return;
    };
    let id = ctl.register(vec![down_reg, up_reg]);
    // A link cut between the check above and the registration.
    if ctl.cut.load(Ordering::SeqCst) {
        ctl.unregister(id);
        return;
    }
    let back = thread::spawn(move || {
        let (mut from, mut to) = (up_back, down_back);
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
    let _ = pump(down, up, &ctl, rng);
    ctl.unregister(id);
    let _ = back.join();
}

fn read_frame(r: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 4];
    r.read_exact(&mut header)?;
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 || len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad frame length",
        ));
    }
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&header);
    r.read_exact(&mut frame[4..])?;
    Ok(frame)
}

/// Forwards frames after the hello from the dialer to the target, applying the link's
/// faults.
fn pump(mut down: TcpStream, up: TcpStream, ctl: &LinkCtl, mut rng: Rng) -> io::Result<()> {
    let up_direct = up.try_clone()?;
    // Delayed frames go through a queue to a writer thread that releases each at its time;
    // release times never decrease, so order is kept.
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = thread::spawn(move || {
        let mut up = up;
        for (at, frame) in rx {
            let now = Instant::now();
            if at > now {
                thread::sleep(at - now);
            }
            if up.write_all(&frame).is_err() {
                let _ = up.shutdown(Shutdown::Both);
                return;
            }
        }
    });
    let mut snapshot = false;
    let mut last_release = Instant::now();
    let result = loop {
        let frame = match read_frame(&mut down) {
            Ok(f) => f,
            Err(e) => break Err(e),
        };
        let kind = frame[4];
        if kind == KIND_SNAP_BEGIN {
            snapshot = true;
        }
        let blackhole = ctl.blackhole.load(Ordering::SeqCst);
        if snapshot {
            if blackhole {
                break Ok(());
            }
        } else if kind == KIND_RAFT {
            let p = ctl.drop_permille.load(Ordering::SeqCst) as u64;
            if blackhole || (p > 0 && rng.below(1000) < p) {
                ctl.frames_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        }
        let delay = ctl.delay_ms.load(Ordering::SeqCst) as u64;
        let jitter = ctl.jitter_ms.load(Ordering::SeqCst) as u64;
        let mut at = Instant::now();
        if delay + jitter > 0 && !snapshot {
            at += Duration::from_millis(delay + rng.range(0, jitter));
        }
        at = at.max(last_release);
        last_release = at;
        ctl.frames_forwarded.fetch_add(1, Ordering::Relaxed);
        if tx.send((at, frame)).is_err() {
            break Ok(());
        }
    };
    drop(tx);
    let _ = down.shutdown(Shutdown::Both);
    let _ = writer.join();
    let _ = up_direct.shutdown(Shutdown::Both);
    result
}
