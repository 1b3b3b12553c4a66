//! An inbound connection carrying Raft messages, read by the raft thread itself.
//!
//! A reader thread checks the handshake and the first frame. When that frame is a Raft message
//! (not the start of a snapshot stream), it hands the connection to the raft thread, which
//! waits on it together with its inbox and reads it without blocking: a message from a peer
//! then wakes the raft thread directly, not a reader thread that would wake it in turn (on a
//! loaded machine each wake-up costs tens of microseconds, and every write waits for one
//! message from a follower).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as PbMessage;
use raft::eraftpb::Message;

use super::frame::{self, HEADER_BYTES, KIND_RAFT};
use super::listener::Conns;
use super::TransportStats;
use crate::error::{Error, Result};

/// An inbound connection silent this long is closed (the dialer reconnects when it has
/// something to say). A live leader or follower talks every heartbeat.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from the socket at a time (the buffer grows past this only for a frame that
/// needs it, and only once its header has passed the frame limit).
const READ_CHUNK: usize = 64 << 10;
/// An idle connection's buffer is shrunk back to [`READ_CHUNK`] once it grew past this.
const KEEP_BYTES: usize = 4 * READ_CHUNK;

/// An inbound connection from a peer, past its handshake.
pub struct RaftConn {
    stream: TcpStream,
    /// The peer, as it proved in the handshake.
    from: u64,
    node_id: u64,
    frame_bytes_max: usize,
    peer_addr: SocketAddr,
    stats: Arc<TransportStats>,
    /// Received bytes not yet decoded: `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    last_heard: Instant,
    /// The listener's record of the connection, dropped with it.
    conns: Conns,
    conn_id: u64,
}

/// What reading a connection found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reading {
    /// The socket has nothing more for now.
    Drained,
    /// The budget ran out with data still waiting.
    More,
    /// The peer closed the connection.
    Closed,
}

impl RaftConn {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        stream: TcpStream,
        from: u64,
        node_id: u64,
        frame_bytes_max: usize,
        peer_addr: SocketAddr,
        stats: Arc<TransportStats>,
        conns: Conns,
        conn_id: u64,
    ) -> io::Result<RaftConn> {
        stream.set_nonblocking(true)?;
        Ok(RaftConn {
            stream,
            from,
            node_id,
            frame_bytes_max,
            peer_addr,
            stats,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            last_heard: Instant::now(),
            conns,
            conn_id,
        })
    }

    /// The socket, to wait on.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The node at the other end.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// Where the connection comes from (for logs).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// How long since the last byte arrived.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_heard)
    }

    /// Reads what the socket holds, up to about `budget` bytes, and appends the messages it
    /// completes to `out`. An error (a frame over the limit, a frame that is not a Raft
    /// message, an undecodable message or one that is not from this peer to this node) means
    /// the connection must be dropped; the messages decoded before it are still good.
    pub fn read(&mut self, out: &mut Vec<Message>, budget: usize) -> Result<Reading> {
        let mut taken = 0;
        loop {
            let need = self.decode(out)?;
            if taken >= budget {
                return Ok(Reading::More);
            }
            self.make_room(need);
            let len = self.buf.len();
            let room = self.buf.capacity() - len;
            // SAFETY: `room` bytes of spare capacity start at `len`; `read` writes at most
            // that many, and exactly the `n` counted below are kept.
            let n = unsafe {
                libc::read(
                    self.stream.as_raw_fd(),
                    self.buf.as_mut_ptr().add(len).cast(),
                    room,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(Reading::Drained),
                    io::ErrorKind::Interrupted => continue,
                    // The peer went away (a crash, a restart): as ordinary as a close.
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        return Ok(Reading::Closed)
                    }
                    _ => return Err(Error::from(e)),
                }
            }
            if n == 0 {
                return Ok(Reading::Closed);
            }
            let n = n as usize;
            // SAFETY: the kernel initialized these `n` bytes.
            unsafe { self.buf.set_len(len + n) };
            taken += n;
            self.last_heard = Instant::now();
        }
    }

    /// Decodes every whole frame buffered; returns the bytes the next frame needs in all
    /// (header included), once its header is known to be within the limit.
    fn decode(&mut self, out: &mut Vec<Message>) -> Result<usize> {
        let mut need = HEADER_BYTES;
        while self.buf.len() - self.start >= HEADER_BYTES {
            let h = &self.buf[self.start..self.start + HEADER_BYTES];
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            frame::check_len(len, self.frame_bytes_max)?;
            let kind = h[4];
            if kind != KIND_RAFT {
                return Err(Error::Corrupt(format!("unexpected frame kind {kind}")));
            }
            let total = 4 + len;
            if self.buf.len() - self.start < total {
                need = total;
                break;
            }
            let payload = &self.buf[self.start + HEADER_BYTES..self.start + total];
            let msg = check_message(payload, self.from, self.node_id)?;
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            out.push(msg);
            self.start += total;
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            if self.buf.capacity() > KEEP_BYTES {
                self.buf.shrink_to(READ_CHUNK);
            }
        }
        Ok(need)
    }

    /// Moves the undecoded bytes (part of one frame at most) to the front, and makes room for
    /// the rest of a frame that needs `need` bytes in all, or for a chunk of reading. A buffer
    /// grown for a frame is grown to its exact size, so reading it stops at its end and
    /// `decode` finds the buffer empty and gives the room back.
    fn make_room(&mut self, need: usize) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let target = need.max(READ_CHUNK);
        if self.buf.capacity() < target {
            self.buf.reserve_exact(target - self.buf.len());
        }
    }
}

impl Drop for RaftConn {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        super::listener::forget(&self.conns, self.conn_id);
    }
}

/// Decodes a Raft message that arrived on a connection from `from` to `node_id`, and checks
/// it belongs there.
pub(crate) fn check_message(payload: &[u8], from: u64, node_id: u64) -> Result<Message> {
    let msg = Message::parse_from_bytes(payload)
        .map_err(|e| Error::Corrupt(format!("undecodable raft message: {e}")))?;
    // A forwarded leader-transfer request names the transferee as its sender.
    let forwarded = msg.get_msg_type() == raft::eraftpb::MessageType::MsgTransferLeader;
    if (msg.from != from && !forwarded) || msg.to != node_id {
        return Err(Error::Corrupt(format!(
            "message {}->{} on a connection from node {}",
            msg.from, msg.to, from
        )));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::Mutex;

    use crate::transport::testing::append;

    use super::*;
    use crate::transport::frame::put_frame;

    /// A connection from node 1 to node 2 as the raft thread holds it, and the peer's end.
    fn pair(frame_bytes_max: usize) -> (RaftConn, TcpStream, Conns) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (ours, addr) = listener.accept().unwrap();
        let conns: Conns = Arc::new(Mutex::new(HashMap::new()));
        conns.lock().unwrap().insert(7, ours.try_clone().unwrap());
        let stats = Arc::new(TransportStats::default());
        let conn =
            RaftConn::new(ours, 1, 2, frame_bytes_max, addr, stats, conns.clone(), 7).unwrap();
        (conn, peer, conns)
    }

    fn frame_of(m: &Message) -> Vec<u8> {
        let mut out = Vec::new();
        put_frame(&mut out, KIND_RAFT, &m.write_to_bytes().unwrap());
        out
    }

    /// Reads until `n` messages arrived or the connection ends.
    fn read_until(conn: &mut RaftConn, n: usize) -> (Vec<Message>, Result<Reading>) {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = conn.read(&mut out, 1 << 20);
            if out.len() >= n || !matches!(r, Ok(Reading::Drained | Reading::More)) {
                return (out, r);
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} messages",
                out.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Frames split at every byte, several frames in one write, and a frame far larger than a
    /// read all come out whole and in order.
    #[test]
    fn frames_arrive_whole_however_the_bytes_are_cut() {
        let (mut conn, mut peer, _) = pair(64 << 20);
        let small = frame_of(&append(1, 10));
        for b in &small {
            peer.write_all(&[*b]).unwrap();
            peer.flush().unwrap();
        }
        let mut burst = Vec::new();
        for i in 2..=50 {
            burst.extend(frame_of(&append(i, 100)));
        }
        burst.extend(frame_of(&append(51, 3 << 20)));
        burst.extend(frame_of(&append(52, 1)));
        let writer = std::thread::spawn(move || {
            peer.write_all(&burst).unwrap();
            peer
        });
        let (msgs, r) = read_until(&mut conn, 52);
        assert!(r.is_ok(), "{r:?}");
        let indexes: Vec<u64> = msgs.iter().map(|m| m.index).collect();
        assert_eq!(indexes, (1..=52).collect::<Vec<_>>());
        assert_eq!(msgs[50].entries[0].data.len(), 3 << 20);
        assert_eq!(conn.stats.received.load(Ordering::Relaxed), 52);
        // The large frame's room is given back once it is decoded.
        assert!(conn.buf.capacity() <= KEEP_BYTES, "{}", conn.buf.capacity());
        let peer = writer.join().unwrap();
        drop(peer);
        let (_, r) = read_until(&mut conn, 1);
        assert_eq!(r.unwrap(), Reading::Closed);
    }

    /// A length over the limit is refused from the header, before anything is allocated.
    #[test]
    fn an_oversized_length_is_refused_before_allocation() {
        let (mut conn, mut peer, _) = pair(1 << 20);
        let good = frame_of(&append(1, 10));
        peer.write_all(&good).unwrap();
        peer.write_all(&[0xff, 0xff, 0xff, 0xff, KIND_RAFT])
            .unwrap();
        let (msgs, r) = read_until(&mut conn, 2);
        assert_eq!(
            msgs.len(),
            1,
            "the message before the bad frame still counts"
        );
        let e = r.unwrap_err().to_string();
        assert!(e.contains("exceeds limit"), "{e}");
        assert!(conn.buf.capacity() <= READ_CHUNK, "{}", conn.buf.capacity());
    }

    /// Garbage, a frame of another kind and a message meant for another pair of nodes each end
    /// the connection with an error.
    #[test]
    fn garbage_and_misaddressed_messages_end_the_connection() {
        let mut wrong_sender = append(1, 1);
        wrong_sender.from = 3;
        let mut wrong_receiver = append(1, 1);
        wrong_receiver.to = 5;
        let mut other_kind = Vec::new();
        put_frame(&mut other_kind, frame::KIND_SNAP_BEGIN, &[0; 24]);
        let mut garbage = Vec::new();
        put_frame(&mut garbage, KIND_RAFT, &[0xff; 40]);
        let zero = vec![0, 0, 0, 0, KIND_RAFT];
        for (bytes, want) in [
            (frame_of(&wrong_sender), "on a connection from node 1"),
            (frame_of(&wrong_receiver), "on a connection from node 1"),
            (other_kind, "unexpected frame kind"),
            (garbage, "undecodable"),
            (zero, "frame length 0"),
        ] {
            let (mut conn, mut peer, _) = pair(1 << 20);
            peer.write_all(&bytes).unwrap();
            let (msgs, r) = read_until(&mut conn, 1);
            assert!(msgs.is_empty());
            let e = r.unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    /// A frame of another kind is refused from its header, before its payload arrives; and the
    /// room a large frame took is given back when the next frame has already begun to arrive
    /// (the buffer grows to a frame's exact size, so each read stops at the frame's end).
    #[test]
    fn headers_decide_early() {
        let (mut conn, mut peer, _) = pair(64 << 20);
        peer.write_all(&[0x01, 0, 0, 0, frame::KIND_SNAP_BEGIN])
            .unwrap();
        let (_, r) = read_until(&mut conn, 1);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("unexpected frame kind"), "{e}");
        assert!(conn.buf.capacity() <= READ_CHUNK, "{}", conn.buf.capacity());

        let (mut conn, mut peer, _) = pair(64 << 20);
        let mut bytes = frame_of(&append(1, 2 << 20));
        let next = frame_of(&append(2, 10));
        bytes.extend_from_slice(&next[..3]);
        let writer = std::thread::spawn(move || {
            peer.write_all(&bytes).unwrap();
            peer
        });
        let (msgs, r) = read_until(&mut conn, 1);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(msgs.len(), 1);
        let mut peer = writer.join().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let mut out = Vec::new();
        assert_eq!(conn.read(&mut out, 1 << 20).unwrap(), Reading::Drained);
        assert!(conn.buf.capacity() <= KEEP_BYTES, "{}", conn.buf.capacity());
        peer.write_all(&next[3..]).unwrap();
        let (msgs, _) = read_until(&mut conn, 1);
        assert_eq!(msgs[0].index, 2);
    }

    /// A read stops at its budget and the rest waits; dropping the connection closes it for
    /// the peer and removes the listener's record of it.
    #[test]
    fn budget_and_drop() {
        let (mut conn, mut peer, conns) = pair(64 << 20);
        let mut burst = Vec::new();
        for i in 1..=20 {
            burst.extend(frame_of(&append(i, 10 << 10)));
        }
        peer.write_all(&burst).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let mut out = Vec::new();
        assert_eq!(conn.read(&mut out, 1).unwrap(), Reading::More);
        assert!(out.len() < 20);
        let (rest, _) = read_until(&mut conn, 20 - out.len());
        assert_eq!(out.len() + rest.len(), 20);
        drop(conn);
        assert!(conns.lock().unwrap().is_empty());
        let mut b = [0u8; 1];
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(std::io::Read::read(&mut peer, &mut b).unwrap(), 0);
    }
}
