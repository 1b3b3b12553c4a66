//! One writer thread per peer: bounded queue in, coalesced frames out, reconnect with backoff.
//! Snapshot messages are handed to a snapshot thread with a connection of its own.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};

use super::frame::{self, KIND_RAFT};
use super::{Host, TransportConfig, TransportStats, PEER_QUEUE_LEN};
use crate::error::Error;

/// Most bytes coalesced into one socket write.
const WRITE_BATCH_BYTES_MAX: usize = 4 << 20;
/// Most messages coalesced into one socket write.
const WRITE_BATCH_MSGS_MAX: usize = 1024;
/// First reconnect delay; doubles per failure up to [`BACKOFF_MAX_MS`].
const BACKOFF_MIN_MS: u64 = 20;
/// Longest reconnect delay.
const BACKOFF_MAX_MS: u64 = 1000;
/// Time allowed for connect and handshake, and for a blocked write (peer stopped reading).
const IO_TIMEOUT: Duration = Duration::from_millis(2000);

enum Cmd {
    Msg(Message),
    Stop,
}

/// Handle of a peer's writer thread.
pub struct PeerWriter {
    tx: Sender<Cmd>,
    addr: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl PeerWriter {
    /// Starts the writer thread for peer `id` at `addr`.
    pub fn spawn(
        id: u64,
        addr: String,
        cfg: Arc<TransportConfig>,
        host: Arc<dyn Host>,
        stats: Arc<TransportStats>,
    ) -> PeerWriter {
        let (tx, rx) = channel::bounded(PEER_QUEUE_LEN);
        let addr = Arc::new(Mutex::new(addr));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            peer: id,
            addr: addr.clone(),
            cfg: cfg.clone(),
            rx,
            host,
            stats,
            stop: stop.clone(),
            conn: None,
            backoff_ms: BACKOFF_MIN_MS,
            retry_at: Instant::now(),
            last_error: String::new(),
            buf: Vec::new(),
            snapshot: None,
        };
        let handle = thread::Builder::new()
            .name(format!("kvr-peer-{}-{}", cfg.node_id, id))
            .spawn(move || worker.run())
            .expect("spawning a peer writer thread");
        PeerWriter {
            tx,
            addr,
            stop,
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
        let mut a = lock(&self.addr);
        if *a != addr {
            *a = addr.to_string();
        }
    }

    /// Current address.
    pub fn addr(&self) -> String {
        lock(&self.addr).clone()
    }

    /// Stops the thread (and any snapshot it is sending) and waits for it.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // The queue may be full; the writer drains it within one write timeout at worst.
        let _ = self.tx.send_timeout(Cmd::Stop, IO_TIMEOUT * 2);
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Worker {
    peer: u64,
    addr: Arc<Mutex<String>>,
    cfg: Arc<TransportConfig>,
    rx: Receiver<Cmd>,
    host: Arc<dyn Host>,
    stats: Arc<TransportStats>,
    stop: Arc<AtomicBool>,
    conn: Option<TcpStream>,
    backoff_ms: u64,
    retry_at: Instant,
    last_error: String,
    buf: Vec<u8>,
    snapshot: Option<JoinHandle<()>>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let first = match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Cmd::Msg(m)) => m,
                Ok(Cmd::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => continue,
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
            batch.retain_mut(|m| {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    self.start_snapshot(std::mem::take(m));
                    false
                } else {
                    true
                }
            });
            if !batch.is_empty() {
                self.deliver(batch);
            }
            if stop {
                break;
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.snapshot.take() {
            let _ = h.join();
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

    /// Sends a snapshot on a thread and connection of its own; one at a time per peer.
    fn start_snapshot(&mut self, msg: Message) {
        let busy = self.snapshot.as_ref().is_some_and(|h| !h.is_finished());
        let Some(out) = self.host.outgoing_snapshot(msg.get_snapshot()) else {
            self.host.snapshot_sent(self.peer, false);
            return;
        };
        if busy {
            drop(out);
            self.host.snapshot_sent(self.peer, false);
            return;
        }
        if let Some(h) = self.snapshot.take() {
            let _ = h.join();
        }
        let (cfg, host, stats, stop) = (
            self.cfg.clone(),
            self.host.clone(),
            self.stats.clone(),
            self.stop.clone(),
        );
        let peer = self.peer;
        let addr = lock(&self.addr).clone();
        let spawned = thread::Builder::new()
            .name(format!("kvr-snap-{}-{peer}", cfg.node_id))
            .spawn(move || {
                let link = super::snapshot::Link {
                    cfg: &cfg,
                    host: host.as_ref(),
                    stats: &stats,
                };
                let r = super::snapshot::send(&link, peer, &addr, &msg, &out, &stop);
                drop(out);
                if let Err(e) = &r {
                    log::warn!("node {}: snapshot to node {peer} failed: {e}", cfg.node_id);
                }
                host.snapshot_sent(peer, r.is_ok());
            });
        match spawned {
            Ok(h) => self.snapshot = Some(h),
            Err(e) => {
                log::error!(
                    "node {}: cannot spawn snapshot thread: {e}",
                    self.cfg.node_id
                );
                self.host.snapshot_sent(self.peer, false);
            }
        }
    }

    /// Connects and handshakes, unless still backing off. True when connected.
    fn connect(&mut self) -> bool {
        if Instant::now() < self.retry_at {
            return false;
        }
        let addr = lock(&self.addr).clone();
        match super::dial(&self.cfg, self.host.as_ref(), self.peer, &addr, IO_TIMEOUT) {
            Ok(s) => {
                // Nothing is read after the handshake; a dead peer shows up as a failed write.
                if let Err(e) = s.set_read_timeout(None) {
                    self.fail(format!(
                        "cannot configure connection to node {}: {e}",
                        self.peer
                    ));
                    return false;
                }
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
                if matches!(e, Error::Refused(_) | Error::Removed) {
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
        self.host.unreachable(self.peer);
    }
}
