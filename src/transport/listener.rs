//! The accept thread and one reader thread per inbound connection.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::Message;

use super::frame::{self, KIND_HELLO, KIND_HELLO_ACK, KIND_RAFT, KIND_SNAP_BEGIN};
use super::frame::{KIND_CHALLENGE, KIND_PROOF};
use super::handshake::{
    auth_mac, verify_mac, Ack, Hello, Role, ACK_OK, ACK_REFUSED, ACK_REMOVED, NONCE_BYTES,
};
use super::{Host, TransportConfig, TransportStats};
use crate::error::{Error, Result};

/// Time a new connection has to present its hello.
const HELLO_TIMEOUT_MS: u64 = 5000;
/// An inbound connection silent this long is closed (the dialer reconnects when it has
/// something to say). A live leader or follower talks every heartbeat.
const READ_IDLE_TIMEOUT_MS: u64 = 30_000;

type Conns = Arc<Mutex<HashMap<u64, TcpStream>>>;

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

struct Reader {
    cfg: Arc<TransportConfig>,
    host: Arc<dyn Host>,
    stats: Arc<TransportStats>,
    conns: Conns,
    conn_id: u64,
}

impl Reader {
    fn run(self, mut stream: TcpStream, peer_addr: SocketAddr) {
        match self.serve(&mut stream) {
            Ok(()) => {}
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

    fn serve(&self, stream: &mut TcpStream) -> Result<()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_millis(HELLO_TIMEOUT_MS)))?;
        stream.set_write_timeout(Some(Duration::from_millis(HELLO_TIMEOUT_MS)))?;
        let mut buf = Vec::new();
        let hello = self.handshake(stream, &mut buf)?;
        stream.set_read_timeout(Some(Duration::from_millis(READ_IDLE_TIMEOUT_MS)))?;
        loop {
            match frame::read_frame(stream, self.cfg.frame_bytes_max, &mut buf)? {
                KIND_RAFT => {}
                KIND_SNAP_BEGIN => {
                    let begin = std::mem::take(&mut buf);
                    let host = self.host.as_ref();
                    return super::snapshot::receive(
                        &self.cfg,
                        host,
                        &self.stats,
                        stream,
                        hello.from,
                        &begin,
                        &mut buf,
                    );
                }
                kind => return Err(Error::Corrupt(format!("unexpected frame kind {kind}"))),
            }
            let msg = Message::parse_from_bytes(&buf)
                .map_err(|e| Error::Corrupt(format!("undecodable raft message: {e}")))?;
            // A forwarded leader-transfer request names the transferee as its sender.
            let forwarded = msg.get_msg_type() == raft::eraftpb::MessageType::MsgTransferLeader;
            if (msg.from != hello.from && !forwarded) || msg.to != self.cfg.node_id {
                return Err(Error::Corrupt(format!(
                    "message {}->{} on a connection from node {}",
                    msg.from, msg.to, hello.from
                )));
            }
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            if !self.host.deliver(msg) {
                return Ok(());
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
