//! The accept thread and one reader thread per inbound connection.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::frame::{self, KIND_HELLO, KIND_HELLO_ACK, KIND_RAFT, KIND_SNAP_BEGIN};
use super::frame::{KIND_CHALLENGE, KIND_PROOF};
use super::handshake::{
    auth_mac, verify_mac, Ack, Hello, Role, ACK_OK, ACK_REFUSED, ACK_REMOVED, NONCE_BYTES,
};
use super::inbound::{check_message, RaftConn, READ_IDLE_TIMEOUT};
use super::{Host, TransportConfig, TransportStats};
use crate::error::{Error, Result};

/// Time a new connection has to present its hello.
const HELLO_TIMEOUT_MS: u64 = 5000;

/// The inbound connections, by id, so that shutting down can close them all.
pub(crate) type Conns = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// Drops the record of connection `id`.
pub(crate) fn forget(conns: &Conns, id: u64) {
    lock(conns).remove(&id);
}

/// The listening side of the transport.
pub struct Listener {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Conns,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

impl Listener {
    /// Binds `addr` and starts accepting.
    pub fn bind(
        addr: &str,
        cfg: Arc<TransportConfig>,
        host: Arc<dyn Host>,
        stats: Arc<TransportStats>,
    ) -> Result<Listener> {
        let listener = TcpListener::bind(addr)
            .map_err(|e| Error::Io(format!("cannot listen on {addr}: {e}")))?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let readers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let acceptor = Acceptor {
            listener,
            cfg: cfg.clone(),
            host,
            stats,
            stop: stop.clone(),
            conns: conns.clone(),
            readers: readers.clone(),
            next_conn: AtomicU64::new(1),
        };
        let accept = thread::Builder::new()
            .name(format!("kvr-listen-{}", cfg.node_id))
            .spawn(move || acceptor.run())
            .map_err(|e| Error::Io(format!("cannot spawn listener thread: {e}")))?;
        Ok(Listener {
            local_addr,
            stop,
            conns,
            readers,
            accept: Some(accept),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every inbound connection and waits for all threads.
    pub fn shutdown(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&wake_addr(self.local_addr), Duration::from_millis(500));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, s) in lock(&self.conns).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let readers: Vec<_> = lock(&self.readers).drain(..).collect();
        for h in readers {
            let _ = h.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn wake_addr(a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        let ip = if a.is_ipv4() {
            "127.0.0.1".parse().expect("ip")
        } else {
            "::1".parse().expect("ip")
        };
        SocketAddr::new(ip, a.port())
    } else {
        a
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Acceptor {
    listener: TcpListener,
    cfg: Arc<TransportConfig>,
    host: Arc<dyn Host>,
    stats: Arc<TransportStats>,
    stop: Arc<AtomicBool>,
    conns: Conns,
    readers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    next_conn: AtomicU64,
}

impl Acceptor {
    fn run(self) {
        loop {
            let accepted = self.listener.accept();
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let (stream, peer_addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("node {}: accept failed: {e}", self.cfg.node_id);
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
            match stream.try_clone() {
                Ok(c) => {
                    lock(&self.conns).insert(id, c);
                }
                Err(e) => {
                    log::warn!("node {}: cannot track connection: {e}", self.cfg.node_id);
                    continue;
                }
            }
            let reader = Reader {
                cfg: self.cfg.clone(),
                host: self.host.clone(),
                stats: self.stats.clone(),
                conns: self.conns.clone(),
                conn_id: id,
            };
            let spawned = thread::Builder::new()
                .name(format!("kvr-reader-{}", self.cfg.node_id))
                .spawn(move || reader.run(stream, peer_addr));
            let mut readers = lock(&self.readers);
            readers.retain(|h| !h.is_finished());
            match spawned {
                Ok(h) => readers.push(h),
                Err(e) => log::error!("node {}: cannot spawn reader: {e}", self.cfg.node_id),
            }
        }
    }
}

/// How a reader thread's connection ended up.
enum Served {
    /// Closed, or served to its end.
    Done,
    /// Handed to the raft thread.
    Adopted,
}

struct Reader {
    cfg: Arc<TransportConfig>,
    host: Arc<dyn Host>,
    stats: Arc<TransportStats>,
    conns: Conns,
    conn_id: u64,
}

impl Reader {
    fn run(self, mut stream: TcpStream, peer_addr: SocketAddr) {
        match self.serve(&mut stream, peer_addr) {
            // The raft thread reads it from now on, and forgets it when it drops it.
            Ok(Served::Adopted) => return,
            Ok(Served::Done) => {}
            Err(e) if is_disconnect(&e) => {
                log::debug!(
                    "node {}: connection from {peer_addr} closed: {e}",
                    self.cfg.node_id
                )
            }
            Err(e) => log::warn!(
                "node {}: connection from {peer_addr} dropped: {e}",
                self.cfg.node_id
            ),
        }
        let _ = stream.shutdown(Shutdown::Both);
        lock(&self.conns).remove(&self.conn_id);
    }

    fn serve(&self, stream: &mut TcpStream, peer_addr: SocketAddr) -> Result<Served> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(HELLO_TIMEOUT_MS)))?;
        stream.set_write_timeout(Some(Duration::from_millis(HELLO_TIMEOUT_MS)))?;
        let mut buf = Vec::new();
        let hello = self.handshake(stream, &mut buf)?;
        stream.set_read_timeout(Some(READ_IDLE_TIMEOUT))?;
        loop {
            match frame::read_frame(stream, self.cfg.frame_bytes_max, &mut buf)? {
                KIND_RAFT => {}
                KIND_SNAP_BEGIN => {
                    let begin = std::mem::take(&mut buf);
                    let host = self.host.as_ref();
                    super::snapshot::receive(
                        &self.cfg,
                        host,
                        &self.stats,
                        stream,
                        hello.from,
                        &begin,
                        &mut buf,
                    )?;
                    return Ok(Served::Done);
                }
                kind => return Err(Error::Corrupt(format!("unexpected frame kind {kind}"))),
            }
            let msg = check_message(&buf, hello.from, self.cfg.node_id)?;
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            if !self.host.deliver(msg) {
                return Ok(Served::Done);
            }
            if self.host.takes_connections() {
                // A connection of Raft messages (a snapshot stream starts with its own frame):
                // the raft thread reads the rest itself. `read_frame` took exactly one frame,
                // so the next byte starts a frame.
                let conn = RaftConn::new(
                    stream.try_clone()?,
                    hello.from,
                    self.cfg.node_id,
                    self.cfg.frame_bytes_max,
                    peer_addr,
                    self.stats.clone(),
                    self.conns.clone(),
                    self.conn_id,
                )?;
                // If nobody takes it, dropping it closes it.
                self.host.adopt(conn);
                return Ok(Served::Adopted);
            }
        }
    }

    /// Reads and judges the hello (and, with a cluster secret, the proof), answers it; returns
    /// it when accepted. Refusals are logged with the peer's address.
    fn handshake(&self, stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Hello> {
        let verdict = self.judge(stream, buf);
        let ack = match &verdict {
            Ok(_) => Ack {
                status: ACK_OK,
                incarnation: self.cfg.incarnation,
                reason: String::new(),
            },
            Err(e) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                let peer = stream
                    .peer_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                log::warn!(
                    "node {}: refused a connection from {peer}: {e}",
                    self.cfg.node_id
                );
                let status = if *e == Error::Removed {
                    ACK_REMOVED
                } else {
                    ACK_REFUSED
                };
                Ack {
                    status,
                    incarnation: self.cfg.incarnation,
                    reason: e.to_string(),
                }
            }
        };
        let mut out = Vec::new();
        frame::put_frame(&mut out, KIND_HELLO_ACK, &ack.encode());
        let written = stream.write_all(&out);
        let hello = verdict?;
        written?;
        Ok(hello)
    }

    fn judge(&self, stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Hello> {
        let kind = frame::read_frame(stream, 4096, buf)?;
        if kind != KIND_HELLO {
            return Err(Error::Refused(format!(
                "first frame is kind {kind}, not a hello"
            )));
        }
        let hello = Hello::decode(buf)?;
        hello.check(self.cfg.cluster_id, self.cfg.node_id)?;
        if let Some(secret) = &self.cfg.secret {
            if !hello.auth {
                return Err(Error::Refused(
                    "this cluster requires a cluster secret".into(),
                ));
            }
            self.challenge(stream, secret, &hello, buf)?;
        }
        self.host
            .check_peer(hello.from, hello.incarnation, &hello.addr)?;
        Ok(hello)
    }

    /// Proves this node knows the secret and checks that the dialer does, over fresh nonces.
    fn challenge(
        &self,
        stream: &mut TcpStream,
        secret: &[u8],
        hello: &Hello,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let nonce: [u8; NONCE_BYTES] = crate::replica::random_bytes()?;
        let mac = auth_mac(
            secret,
            Role::Acceptor,
            hello.cluster_id,
            hello.from,
            hello.to,
            &hello.nonce,
            &nonce,
        );
        let mut payload = nonce.to_vec();
        payload.extend_from_slice(&mac);
        let mut out = Vec::new();
        frame::put_frame(&mut out, KIND_CHALLENGE, &payload);
        stream.write_all(&out)?;
        let kind = frame::read_frame(stream, 4096, buf)?;
        if kind != KIND_PROOF {
            return Err(Error::Refused(format!(
                "expected the proof of the secret, got frame kind {kind}"
            )));
        }
        verify_mac(secret, Role::Dialer, hello, &nonce, buf)
    }
}

fn is_disconnect(e: &Error) -> bool {
    match e {
        Error::Io(m) => {
            let m = m.to_lowercase();
            m.contains("end of file") || m.contains("reset") || m.contains("broken pipe")
        }
        _ => false,
    }
}
