//! One writer thread per peer: bounded queue in, coalesced frames out, reconnect with backoff.
//! Snapshot messages are handed to a snapshot thread with a connection of its own.
//!
//! Small messages skip the queue when nothing is queued ahead of them: the raft thread writes
//! them to the socket itself, without blocking (see [`PeerWriter::send`]), which saves the
//! writer thread's wake-up on every round trip. Whatever the socket does not take at once is
//! left to the writer thread, which writes it before anything else.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
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
/// Largest group of messages the raft thread writes to the socket itself; larger ones (a
/// follower catching up) go through the writer thread, so the raft thread never spends long
/// copying into a socket.
const DIRECT_BYTES_MAX: usize = 64 << 10;

enum Cmd {
    Msg(Message),
    /// Bytes were left in [`Link::rest`].
    Flush,
    Stop,
}

/// The connection, shared by the writer thread and the raft thread. Whoever writes to the
/// socket holds the lock for the whole write, so frames never interleave.
#[derive(Default)]
struct Link {
    conn: Option<TcpStream>,
    /// The part of a direct write the socket did not take at once; written before anything
    /// else, and dropped with the connection it belongs to.
    rest: Vec<u8>,
    /// Messages whose frames end in `rest` (counted as sent or dropped with it).
    rest_msgs: usize,
}

/// Handle of a peer's writer thread.
pub struct PeerWriter {
    tx: Sender<Cmd>,
    addr: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    link: Arc<Mutex<Link>>,
    /// Messages handed to the writer thread and not yet written or dropped by it.
    queued: Arc<AtomicUsize>,
    stats: Arc<TransportStats>,
    /// Frames of a direct write.
    buf: Vec<u8>,
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
        let link = Arc::new(Mutex::new(Link::default()));
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            peer: id,
            addr: addr.clone(),
            cfg: cfg.clone(),
            rx,
            host,
            stats: stats.clone(),
            stop: stop.clone(),
            link: link.clone(),
            queued: queued.clone(),
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
            link,
            queued,
            stats,
            buf: Vec::new(),
        }
    }

    /// Sends `msgs`, all to this peer, in order and without blocking. When nothing is queued
    /// ahead of them, they are small and the connection is up and free, they are written to
    /// the socket here (what it does not take at once goes to the writer thread); otherwise
    /// they are queued. Returns the messages dropped because the queue was full.
    pub fn send(&mut self, msgs: Vec<Message>) -> Vec<Message> {
        if msgs.is_empty() || self.write_now(&msgs) {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        for m in msgs {
            self.queued.fetch_add(1, Ordering::AcqRel);
            if let Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) =
                self.tx.try_send(Cmd::Msg(m))
            {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                if let Cmd::Msg(m) = c {
                    dropped.push(m);
                }
            }
        }
        dropped
    }

    /// Writes `msgs` to the socket from this thread if that cannot block or reorder them.
    /// True when they are written, or handed to the writer thread as bytes.
    fn write_now(&mut self, msgs: &[Message]) -> bool {
        let small = msgs
            .iter()
            .map(|m| match m.get_msg_type() {
                MessageType::MsgSnapshot => DIRECT_BYTES_MAX,
                _ => 64 + m.entries.iter().map(|e| e.data.len() + 32).sum::<usize>(),
            })
            .sum::<usize>()
            < DIRECT_BYTES_MAX;
        if !small || self.queued.load(Ordering::Acquire) > 0 {
            return false;
        }
        let mut link = match self.link.try_lock() {
            Ok(l) => l,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        // Checked again under the lock: the writer thread counts a message as written only
        // once it is, while holding it.
        if self.queued.load(Ordering::Acquire) > 0 || !link.rest.is_empty() {
            return false;
        }
        let Some(conn) = link.conn.as_ref() else {
            return false;
        };
        self.buf.clear();
        for m in msgs {
            if frame::put_frame_with(&mut self.buf, KIND_RAFT, |b| m.write_to_vec(b)).is_err() {
                return false;
            }
        }
        if self.buf.len() > DIRECT_BYTES_MAX {
            return false;
        }
        let taken = send_nonblocking(conn, &self.buf);
        let n = msgs.len() as u64;
        self.stats.sent_direct.fetch_add(n, Ordering::Relaxed);
        if taken == self.buf.len() {
            self.stats.sent.fetch_add(n, Ordering::Relaxed);
        } else {
            // The socket is full or broken: the writer thread writes the rest, or finds the
            // connection failed and drops it (raft sends again).
            link.rest.extend_from_slice(&self.buf[taken..]);
            link.rest_msgs = msgs.len();
            drop(link);
            let _ = self.tx.try_send(Cmd::Flush);
        }
        true
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes as much of `buf` as the socket takes without blocking; returns how much that was
/// (less than all when its send buffer is full, or on an error the writer thread will meet).
fn send_nonblocking(conn: &TcpStream, buf: &[u8]) -> usize {
    let mut off = 0;
    while off < buf.len() {
        let rest = &buf[off..];
        // SAFETY: `rest` is valid for reads of its length; the fd is open while `conn` is.
        let n = unsafe {
            libc::send(
                conn.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            off += n as usize;
        } else if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {
            continue;
        } else {
            break;
        }
    }
    off
}

struct Worker {
    peer: u64,
    addr: Arc<Mutex<String>>,
    cfg: Arc<TransportConfig>,
    rx: Receiver<Cmd>,
    host: Arc<dyn Host>,
    stats: Arc<TransportStats>,
    stop: Arc<AtomicBool>,
    link: Arc<Mutex<Link>>,
    queued: Arc<AtomicUsize>,
    backoff_ms: u64,
    retry_at: Instant,
    last_error: String,
    buf: Vec<u8>,
    snapshot: Option<JoinHandle<()>>,
}

impl Worker {
    fn run(mut self) {
        loop {
            let mut batch = Vec::new();
            match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Cmd::Msg(m)) => batch.push(m),
                Ok(Cmd::Flush) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Cmd::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            }
            let mut stop = false;
            while batch.len() < WRITE_BATCH_MSGS_MAX {
                match self.rx.try_recv() {
                    Ok(Cmd::Msg(m)) => batch.push(m),
                    Ok(Cmd::Flush) => {}
                    Ok(Cmd::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let mut snapshots = 0;
            batch.retain_mut(|m| {
                if m.get_msg_type() == MessageType::MsgSnapshot {
                    self.start_snapshot(std::mem::take(m));
                    snapshots += 1;
                    false
                } else {
                    true
                }
            });
            self.queued.fetch_sub(snapshots, Ordering::AcqRel);
            self.deliver(batch);
            if stop {
                break;
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.snapshot.take() {
            let _ = h.join();
        }
    }

    /// Writes what a direct write left over, then `batch`, on the connection (connecting
    /// first if needed). Each message of `batch` stops counting as queued once it is written
    /// or dropped, with the connection's lock held.
    fn deliver(&mut self, batch: Vec<Message>) {
        let shared = self.link.clone();
        let mut link = lock(&shared);
        if link.conn.is_none() {
            if batch.is_empty() {
                return;
            }
            drop(link);
            let conn = self.connect();
            link = lock(&shared);
            match conn {
                Some(c) => {
                    link.conn = Some(c);
                    link.rest.clear();
                }
                None => {
                    self.dropped(batch.len());
                    return;
                }
            }
        }
        if !link.rest.is_empty() {
            let rest = std::mem::take(&mut link.rest);
            let conn = link.conn.as_mut().expect("connected above");
            if let Err(e) = conn.write_all(&rest) {
                // Counts the leftover's messages as dropped.
                self.fail(
                    &mut link,
                    format!("write to node {} failed: {e}", self.peer),
                );
                self.dropped(batch.len());
                return;
            }
            let n = std::mem::take(&mut link.rest_msgs) as u64;
            self.stats.sent.fetch_add(n, Ordering::Relaxed);
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
            let conn = link.conn.as_mut().expect("connected above");
            if let Err(e) = conn.write_all(&self.buf) {
                self.fail(
                    &mut link,
                    format!("write to node {} failed: {e}", self.peer),
                );
                self.dropped(batch.len() - start);
                return;
            }
            self.stats
                .sent
                .fetch_add((i - start) as u64, Ordering::Relaxed);
            self.queued.fetch_sub(i - start, Ordering::AcqRel);
        }
    }

    /// Counts `n` queued messages as dropped.
    fn dropped(&self, n: usize) {
        self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
        self.queued.fetch_sub(n, Ordering::AcqRel);
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

    /// Connects and handshakes, unless still backing off.
    fn connect(&mut self) -> Option<TcpStream> {
        if Instant::now() < self.retry_at {
            return None;
        }
        let addr = lock(&self.addr).clone();
        match super::dial(&self.cfg, self.host.as_ref(), self.peer, &addr, IO_TIMEOUT) {
            Ok(s) => {
                // Nothing is read after the handshake; a dead peer shows up as a failed write.
                if let Err(e) = s.set_read_timeout(None) {
                    self.failed(format!(
                        "cannot configure connection to node {}: {e}",
                        self.peer
                    ));
                    return None;
                }
                if !self.last_error.is_empty() {
                    log::info!(
                        "node {}: connected to node {} at {addr}",
                        self.cfg.node_id,
                        self.peer
                    );
                }
                self.backoff_ms = BACKOFF_MIN_MS;
                self.last_error.clear();
                Some(s)
            }
            Err(e) => {
                if matches!(e, Error::Refused(_) | Error::Removed) {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                }
                self.failed(format!("cannot reach node {} at {addr}: {e}", self.peer));
                None
            }
        }
    }

    /// Drops the connection (and what was left to write on it, counted as dropped) after a
    /// failed write.
    fn fail(&mut self, link: &mut Link, msg: String) {
        link.conn = None;
        link.rest.clear();
        let n = std::mem::take(&mut link.rest_msgs) as u64;
        self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        self.failed(msg);
    }

    /// Reports a failure to connect or write and backs off before the next attempt.
    fn failed(&mut self, msg: String) {
        if msg != self.last_error {
            log::warn!("node {}: {msg}", self.cfg.node_id);
            self.last_error = msg;
        }
        self.retry_at = Instant::now() + Duration::from_millis(self.backoff_ms);
        self.backoff_ms = (self.backoff_ms * 2).min(BACKOFF_MAX_MS);
        self.host.unreachable(self.peer);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use crate::transport::testing::append;

    use super::*;
    use crate::error::Result;
    use crate::storage::snapshot::{Outgoing, Stage, Staged};
    use crate::transport::handshake::{Ack, ACK_OK};

    struct NoHost;

    impl Host for NoHost {
        fn deliver(&self, _: Message) -> bool {
            true
        }
        fn deliver_snapshot(&self, _: Message, _: Staged) -> bool {
            false
        }
        fn stage_snapshot(&self, _: u64, _: u64, _: u64) -> Result<Stage> {
            Err(Error::Io("no snapshots here".into()))
        }
        fn outgoing_snapshot(&self, _: &raft::eraftpb::Snapshot) -> Option<Outgoing> {
            None
        }
        fn snapshot_sent(&self, _: u64, _: bool) {}
        fn unreachable(&self, _: u64) {}
        fn check_peer(&self, _: u64, _: u64, _: &str) -> Result<()> {
            Ok(())
        }
        fn refused(&self, _: u64, _: &Error) {}
    }

    fn config() -> Arc<TransportConfig> {
        Arc::new(TransportConfig {
            node_id: 1,
            cluster_id: 9,
            incarnation: 1,
            advertise: "127.0.0.1:1".into(),
            frame_bytes_max: 64 << 20,
            secret: None,
        })
    }

    /// A writer to node 2 at a listener of the test's own.
    fn writer() -> (TcpListener, PeerWriter, Arc<TransportStats>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stats = Arc::new(TransportStats::default());
        let w = PeerWriter::spawn(2, addr, config(), Arc::new(NoHost), stats.clone());
        (listener, w, stats)
    }

    /// Accepts the writer's connection and answers its handshake.
    fn accept(listener: &TcpListener) -> TcpStream {
        let (peer, _) = listener.accept().unwrap();
        handshake(peer)
    }

    /// Answers the handshake of a connection just accepted.
    fn handshake(mut peer: TcpStream) -> TcpStream {
        peer.set_nonblocking(false).unwrap();
        let mut buf = Vec::new();
        let kind = frame::read_frame(&mut peer, 4096, &mut buf).unwrap();
        assert_eq!(kind, frame::KIND_HELLO);
        let ack = Ack {
            status: ACK_OK,
            incarnation: 1,
            reason: String::new(),
        };
        let mut out = Vec::new();
        frame::put_frame(&mut out, frame::KIND_HELLO_ACK, &ack.encode());
        peer.write_all(&out).unwrap();
        peer
    }

    /// Waits until `n` messages are written and nothing is queued.
    fn wait_sent(w: &PeerWriter, stats: &TransportStats, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while stats.sent.load(Ordering::Relaxed) < n || w.queued.load(Ordering::Acquire) > 0 {
            assert!(Instant::now() < deadline, "messages were not sent");
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// True when the writer thread has a direct write's leftover or queued messages to
    /// write, as it has once the socket is full.
    fn backed_up(w: &PeerWriter) -> bool {
        w.queued.load(Ordering::Acquire) > 0 || w.link.try_lock().is_ok_and(|l| !l.rest.is_empty())
    }

    /// Reads one raft frame and checks it is message `index`, whole.
    fn read_append(stream: &mut impl Read, buf: &mut Vec<u8>, bytes: usize) -> u64 {
        let kind = frame::read_frame(stream, 64 << 20, buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kind, KIND_RAFT);
        let m = Message::parse_from_bytes(buf).expect("a whole raft message");
        assert_eq!(m.entries[0].data.len(), bytes);
        assert!(m.entries[0]
            .data
            .iter()
            .all(|b| *b == (m.index % 251) as u8));
        m.index
    }

    /// A peer that stops reading fills its socket: the raft thread's direct writes stop part
    /// way through a frame, the writer thread writes the rest before anything queued after
    /// it, direct writes resume only once the queue is empty, and every message arrives
    /// whole and in order while messages keep coming before, during and after the stall.
    #[test]
    fn messages_arrive_whole_and_in_order_when_the_peer_stops_reading_for_a_while() {
        let (listener, mut w, stats) = writer();

        const MESSAGES: u64 = 3000;
        const BYTES: usize = 12 << 10;
        // The first message connects (through the writer thread).
        assert!(w.send(vec![append(1, BYTES)]).is_empty());
        let peer = accept(&listener);
        wait_sent(&w, &stats, 1);
        let (start_reading, go) = channel::bounded::<()>(1);
        let reader = thread::spawn(move || {
            // Reads nothing until told, then everything.
            let _ = go.recv_timeout(Duration::from_secs(30));
            peer.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut stream = std::io::BufReader::new(peer);
            let mut buf = Vec::new();
            for i in 1..=MESSAGES {
                assert_eq!(read_append(&mut stream, &mut buf, BYTES), i, "out of order");
            }
            let mut tail = Vec::new();
            stream.read_to_end(&mut tail).unwrap();
            tail.len()
        });

        // Groups of one and of two messages, as Readies have them; sending goes on while
        // the peer reads again.
        const BACKLOG: usize = 1000;
        let mut i = 2;
        let (mut filled, mut reading) = (false, false);
        while i <= MESSAGES {
            let n = if i % 3 == 0 { 2 } else { 1 }.min(MESSAGES + 1 - i);
            let group = (i..i + n).map(|j| append(j, BYTES)).collect();
            assert!(w.send(group).is_empty(), "message {i} was dropped");
            i += n;
            filled |= backed_up(&w);
            // The peer reads again once a backlog has built up behind the full socket, so
            // the writer thread drains it in several writes while direct writes are tried.
            if !reading && w.queued.load(Ordering::Acquire) >= BACKLOG {
                reading = true;
                start_reading.send(()).unwrap();
            }
            thread::sleep(Duration::from_micros(200));
        }
        if !reading {
            start_reading.send(()).unwrap();
        }
        wait_sent(&w, &stats, MESSAGES);
        w.stop();
        assert_eq!(reader.join().unwrap(), 0, "bytes after the last frame");
        assert!(filled, "the peer's socket never filled");
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
        let direct = stats.sent_direct.load(Ordering::Relaxed);
        assert!(
            direct > 0 && MESSAGES - direct > 1,
            "{direct} of {MESSAGES} messages written directly"
        );
    }

    /// A connection that fails while a direct write's leftover waits (or is being written) is
    /// dropped with it: the next connection starts with a whole frame, and messages keep
    /// their order on it.
    #[test]
    fn the_leftover_of_a_failed_connection_never_reaches_the_next_one() {
        let (listener, mut w, stats) = writer();
        const BYTES: usize = 12 << 10;
        assert!(w.send(vec![append(1, BYTES)]).is_empty());
        let first = accept(&listener);
        wait_sent(&w, &stats, 1);
        listener.set_nonblocking(true).unwrap();

        // Fill the socket of a peer that reads nothing.
        let mut index = 2;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !backed_up(&w) {
            assert!(Instant::now() < deadline, "the socket never filled");
            assert!(w.send(vec![append(index, BYTES)]).is_empty());
            index += 1;
        }
        assert!(stats.sent_direct.load(Ordering::Relaxed) > 0);
        // The peer goes away with all that unread: the writer's pending write fails, or its
        // next one does.
        first.shutdown(std::net::Shutdown::Both).unwrap();
        drop(first);

        // Messages sent until the failure is noticed, and while the writer backs off, may be
        // dropped (raft sends again); the next connection is made for one of them.
        let deadline = Instant::now() + Duration::from_secs(10);
        let second = loop {
            assert!(w.send(vec![append(index, BYTES)]).is_empty());
            index += 1;
            thread::sleep(Duration::from_millis(5));
            if let Ok((s, _)) = listener.accept() {
                break handshake(s);
            }
            assert!(Instant::now() < deadline, "the writer did not reconnect");
        };
        assert!(stats.dropped.load(Ordering::Relaxed) > 0);
        for _ in 0..20 {
            assert!(w.send(vec![append(index, BYTES)]).is_empty());
            index += 1;
        }
        let last = index - 1;
        let mut second = std::io::BufReader::new(second);
        second
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Whole frames from the first byte on (a leftover would be the tail of a frame), in
        // order; queued messages the old connection never took may come first.
        let mut buf = Vec::new();
        let mut seen = read_append(&mut second, &mut buf, BYTES);
        while seen < last {
            let next = read_append(&mut second, &mut buf, BYTES);
            assert!(next > seen, "message {next} after {seen}");
            seen = next;
        }
        w.stop();
    }
}
