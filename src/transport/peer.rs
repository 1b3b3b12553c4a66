//! One writer thread per peer: bounded queue in, coalesced frames out, reconnect with backoff.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};
use protobuf::Message as PbMessage;
use raft::eraftpb::Message;

use super::frame::{self, KIND_HELLO, KIND_HELLO_ACK, KIND_RAFT};
use super::handshake::{self, Hello, PROTOCOL_VERSION};
use super::{OnUnreachable, TransportConfig, TransportStats, PEER_QUEUE_LEN};
use crate::error::{Error, Result};

/// Most bytes coalesced into one socket write.
const WRITE_BATCH_BYTES_MAX: usize = 4 << 20;
/// Most messages coalesced into one socket write.
const WRITE_BATCH_MSGS_MAX: usize = 1024;
/// First reconnect delay; doubles per failure up to [`BACKOFF_MAX_MS`].
const BACKOFF_MIN_MS: u64 = 20;
/// Longest reconnect delay.
const BACKOFF_MAX_MS: u64 = 1000;
/// Time allowed for connect and handshake.
const CONNECT_TIMEOUT_MS: u64 = 1000;
/// A write blocked this long (peer stopped reading) drops the connection.
const WRITE_TIMEOUT_MS: u64 = 2000;

enum Cmd {
    Msg(Message),
    Stop,
}

/// Handle of a peer's writer thread.
pub struct PeerWriter {
    tx: Sender<Cmd>,
    addr: Arc<Mutex<String>>,
    handle: Option<JoinHandle<()>>,
}

impl PeerWriter {
    /// Starts the writer thread for peer `id` at `addr`.
    pub fn spawn(
        id: u64,
        addr: String,
        cfg: Arc<TransportConfig>,
        on_unreachable: OnUnreachable,
        stats: Arc<TransportStats>,
    ) -> PeerWriter {
        let (tx, rx) = channel::bounded(PEER_QUEUE_LEN);
        let addr = Arc::new(Mutex::new(addr));
        let worker = Worker {
            peer: id,
            addr: addr.clone(),
            cfg: cfg.clone(),
            rx,
            on_unreachable,
            stats,
            conn: None,
            backoff_ms: BACKOFF_MIN_MS,
            retry_at: Instant::now(),
            last_error: String::new(),
            buf: Vec::new(),
        };
        let handle = thread::Builder::new()
            .name(format!("kvr-peer-{}-{}", cfg.node_id, id))
            .spawn(move || worker.run())
            .expect("spawning a peer writer thread");
        PeerWriter {
            tx,
            addr,
            handle: Some(handle),
        }
    }

    /// Queues a message; false when the queue is full (the message is dropped).
    pub fn try_send(&self, m: Message) -> bool {
        match self.tx.try_send(Cmd::Msg(m)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Changes the address used from the next connection on.
    pub fn set_addr(&self, addr: &str) {
        let mut a = self.addr.lock().unwrap_or_else(|p| p.into_inner());
        if *a != addr {
            *a = addr.to_string();
        }
    }

    /// Current address.
    pub fn addr(&self) -> String {
        self.addr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        // The queue may be full; a blocking send of Stop would then wait for the writer to
        // drain it, which it does within WRITE_TIMEOUT_MS at worst.
        let _ = self
            .tx
            .send_timeout(Cmd::Stop, Duration::from_millis(WRITE_TIMEOUT_MS * 2));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for PeerWriter {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

struct Worker {
    peer: u64,
    addr: Arc<Mutex<String>>,
    cfg: Arc<TransportConfig>,
    rx: Receiver<Cmd>,
    on_unreachable: OnUnreachable,
    stats: Arc<TransportStats>,
    conn: Option<TcpStream>,
    backoff_ms: u64,
    retry_at: Instant,
    last_error: String,
    buf: Vec<u8>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let first = match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Cmd::Msg(m)) => m,
                Ok(Cmd::Stop) => return,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            let mut stop = false;
            while batch.len() < WRITE_BATCH_MSGS_MAX {
                match self.rx.try_recv() {
                    Ok(Cmd::Msg(m)) => batch.push(m),
                    Ok(Cmd::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.deliver(batch);
            if stop {
                return;
            }
        }
    }

    fn deliver(&mut self, batch: Vec<Message>) {
        if self.conn.is_none() && !self.connect() {
            self.stats
                .dropped
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            return;
        }
        let mut i = 0;
        while i < batch.len() {
            self.buf.clear();
            let start = i;
            while i < batch.len() && (i == start || self.buf.len() < WRITE_BATCH_BYTES_MAX) {
                let m = &batch[i];
                if let Err(e) =
                    frame::put_frame_with(&mut self.buf, KIND_RAFT, |b| m.write_to_vec(b))
                {
                    log::error!(
                        "node {}: cannot encode message to {}: {e}",
                        self.cfg.node_id,
                        self.peer
                    );
                }
                i += 1;
            }
            let conn = self.conn.as_mut().expect("connected above");
            if let Err(e) = conn.write_all(&self.buf) {
                self.fail(format!("write to node {} failed: {e}", self.peer));
                self.stats
                    .dropped
                    .fetch_add((batch.len() - start) as u64, Ordering::Relaxed);
                return;
            }
            self.stats
                .sent
                .fetch_add((i - start) as u64, Ordering::Relaxed);
        }
    }

    /// Connects and handshakes, unless still backing off. True when connected.
    fn connect(&mut self) -> bool {
        if Instant::now() < self.retry_at {
            return false;
        }
        let addr = self.addr.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match self.dial(&addr) {
            Ok(s) => {
                if !self.last_error.is_empty() {
                    log::info!(
                        "node {}: connected to node {} at {addr}",
                        self.cfg.node_id,
                        self.peer
                    );
                }
                self.conn = Some(s);
                self.backoff_ms = BACKOFF_MIN_MS;
                self.last_error.clear();
                true
            }
            Err(e) => {
                if matches!(e, Error::Refused(_)) {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                self.fail(format!("cannot reach node {} at {addr}: {e}", self.peer));
                false
            }
        }
    }

    fn fail(&mut self, msg: String) {
        if msg != self.last_error {
            log::warn!("node {}: {msg}", self.cfg.node_id);
            self.last_error = msg;
        }
        self.conn = None;
        self.retry_at = Instant::now() + Duration::from_millis(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
        (self.on_unreachable)(self.peer);
    }

    fn dial(&self, addr: &str) -> Result<TcpStream> {
        let sock = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| Error::Io(format!("{addr} resolves to no address")))?;
        let timeout = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let mut s = TcpStream::connect_timeout(&sock, timeout)?;
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(Duration::from_millis(WRITE_TIMEOUT_MS)))?;
        s.set_read_timeout(Some(timeout))?;
        let hello = Hello {
            version: PROTOCOL_VERSION,
            cluster_id: self.cfg.cluster_id,
            from: self.cfg.node_id,
            to: self.peer,
            incarnation: self.cfg.incarnation,
        };
        let mut out = Vec::new();
        frame::put_frame(&mut out, KIND_HELLO, &hello.encode());
        s.write_all(&out)?;
        let mut buf = Vec::new();
        let kind = frame::read_frame(&mut s, 4096, &mut buf)?;
        if kind != KIND_HELLO_ACK {
            return Err(Error::Corrupt(format!(
                "expected hello ack, got frame kind {kind}"
            )));
        }
        handshake::decode_ack(&buf)?;
        // Nothing is read after the ack; a dead peer shows up as a failed write.
        s.set_read_timeout(None)?;
        Ok(s)
    }
}
