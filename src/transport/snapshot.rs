//! Streaming a snapshot to a peer on a dedicated connection, and receiving one.
//!
//! Sender: `SNAP_BEGIN`, `SNAP_CHUNK`×n, `SNAP_END`, then the Raft `MsgSnapshot` itself; then it
//! waits for `SNAP_ACK`. Receiver: stages the chunks into a fresh environment, checks the
//! totals and the applied index, hands the message to its raft thread, and only then acks.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};

use super::frame::{
    self, KIND_RAFT, KIND_SNAP_ACK, KIND_SNAP_BEGIN, KIND_SNAP_CHUNK, KIND_SNAP_END,
};
use super::{Host, TransportConfig, TransportStats};
use crate::error::{Error, Result};
use crate::storage::snapshot::{Outgoing, Totals};

/// A snapshot connection stalled this long is abandoned.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the receiver has to sync the staged environment and answer.
const ACK_TIMEOUT: Duration = Duration::from_secs(300);

/// The transport context a snapshot stream runs in.
pub struct Link<'a> {
    /// This node's transport configuration.
    pub cfg: &'a TransportConfig,
    /// The replica.
    pub host: &'a dyn Host,
    /// Counters to update.
    pub stats: &'a TransportStats,
}

/// Sends `out` and then `msg` to `peer` at `addr`.
pub fn send(
    link: &Link<'_>,
    peer: u64,
    addr: &str,
    msg: &Message,
    out: &Outgoing,
    stop: &AtomicBool,
) -> Result<()> {
    let (cfg, host, stats) = (link.cfg, link.host, link.stats);
    let mut s = super::dial(cfg, host, peer, addr, STREAM_TIMEOUT)?;
    let mut buf = Vec::with_capacity(crate::storage::snapshot::CHUNK_BYTES + 4096);
    let mut begin = Vec::with_capacity(24);
    for w in [out.id, out.index, out.term] {
        begin.extend_from_slice(&w.to_le_bytes());
    }
    frame::put_frame(&mut buf, KIND_SNAP_BEGIN, &begin);
    s.write_all(&buf)?;
    let totals = out.stream(|chunk| {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Closed);
        }
        buf.clear();
        frame::put_frame(&mut buf, KIND_SNAP_CHUNK, chunk);
        s.write_all(&buf)?;
        Ok(())
    })?;
    buf.clear();
    let mut end = Vec::with_capacity(16);
    end.extend_from_slice(&totals.records.to_le_bytes());
    end.extend_from_slice(&totals.bytes.to_le_bytes());
    frame::put_frame(&mut buf, KIND_SNAP_END, &end);
    frame::put_frame_with(&mut buf, KIND_RAFT, |b| msg.write_to_vec(b))
        .map_err(|e| Error::Corrupt(format!("encoding snapshot message: {e}")))?;
    s.write_all(&buf)?;
    s.set_read_timeout(Some(ACK_TIMEOUT))?;
    let kind = frame::read_frame(&mut s, 4096, &mut buf)?;
    if kind != KIND_SNAP_ACK || buf.is_empty() {
        return Err(Error::Corrupt(format!(
            "expected snapshot ack, got frame kind {kind}"
        )));
    }
    if buf[0] != 0 {
        return Err(Error::Refused(format!(
            "peer rejected the snapshot: {}",
            String::from_utf8_lossy(&buf[1..])
        )));
    }
    stats
        .snapshots_sent
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    stats
        .snapshot_bytes_sent
        .fetch_add(totals.bytes, std::sync::atomic::Ordering::Relaxed);
    log::info!(
        "node {}: sent snapshot at {} to node {peer}: {} records, {} bytes",
        cfg.node_id,
        out.index,
        totals.records,
        totals.bytes
    );
    Ok(())
}

/// Receives the rest of a snapshot stream that began with `begin` on `s` from node `from`,
/// and hands it to the host. Returns once the stream is complete (or failed).
pub fn receive(
    cfg: &TransportConfig,
    host: &dyn Host,
    stats: &TransportStats,
    s: &mut TcpStream,
    from: u64,
    begin: &[u8],
    buf: &mut Vec<u8>,
) -> Result<()> {
    // The snapshot goes to the raft thread before the sender hears it arrived: the sender then
    // reports it sent, and the leader probes from its index. Every message the leader sends
    // after that reaches the raft thread's inbox behind the snapshot, so none finds this
    // replica without it (a probe rejected then would send the leader back to the start of
    // the log, and so to another full snapshot).
    let result = receive_inner(cfg, host, s, from, begin, buf).and_then(|(msg, staged)| {
        stats
            .snapshots_received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if host.deliver_snapshot(msg, staged) {
            Ok(())
        } else {
            Err(Error::Closed)
        }
    });
    let mut ack = Vec::new();
    match &result {
        Ok(()) => frame::put_frame(&mut ack, KIND_SNAP_ACK, &[0]),
        Err(e) => {
            let mut p = vec![1u8];
            p.extend_from_slice(e.to_string().as_bytes());
            frame::put_frame(&mut ack, KIND_SNAP_ACK, &p);
        }
    }
    let _ = s.write_all(&ack);
    result
}

fn receive_inner(
    cfg: &TransportConfig,
    host: &dyn Host,
    s: &mut TcpStream,
    from: u64,
    begin: &[u8],
    buf: &mut Vec<u8>,
) -> Result<(Message, crate::storage::snapshot::Staged)> {
    if begin.len() != 24 {
        return Err(Error::Corrupt(
            "snapshot begin frame has the wrong length".into(),
        ));
    }
    let word = |i: usize| u64::from_le_bytes(begin[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (index, term) = (word(1), word(2));
    s.set_read_timeout(Some(STREAM_TIMEOUT))?;
    let mut stage = host.stage_snapshot(from, index, term)?;
    let totals = loop {
        match frame::read_frame(s, cfg.frame_bytes_max, buf)? {
            KIND_SNAP_CHUNK => stage.chunk(buf)?,
            KIND_SNAP_END if buf.len() == 16 => {
                break Totals {
                    records: u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")),
                    bytes: u64::from_le_bytes(buf[8..].try_into().expect("8 bytes")),
                };
            }
            other => {
                return Err(Error::Corrupt(format!(
                    "unexpected frame kind {other} in a snapshot"
                )))
            }
        }
    };
    if frame::read_frame(s, cfg.frame_bytes_max, buf)? != KIND_RAFT {
        return Err(Error::Corrupt(
            "snapshot stream does not end with its Raft message".into(),
        ));
    }
    let msg = Message::parse_from_bytes(buf)
        .map_err(|e| Error::Corrupt(format!("snapshot message: {e}")))?;
    let meta = msg.get_snapshot().get_metadata();
    if msg.get_msg_type() != MessageType::MsgSnapshot
        || msg.from != from
        || msg.to != cfg.node_id
        || (meta.index, meta.term) != (index, term)
    {
        return Err(Error::Corrupt(
            "snapshot message does not match its stream".into(),
        ));
    }
    let staged = stage.finish(totals)?;
    log::info!(
        "node {}: received snapshot at {index} from node {from}: {} records, {} bytes",
        cfg.node_id,
        totals.records,
        totals.bytes
    );
    Ok((msg, staged))
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read};
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::Mutex;

    use raft::eraftpb::Snapshot;

    use super::*;
    use crate::storage::snapshot::{Stage, Staged};

    /// A replica whose raft thread is the `delivered` list; on delivery it looks whether the
    /// sender's socket already holds the ack.
    struct Receiver {
        dir: PathBuf,
        sender_side: TcpStream,
        delivered: Mutex<Vec<(u64, bool)>>,
    }

    impl Host for Receiver {
        fn deliver(&self, _: Message) -> bool {
            unreachable!("only a snapshot arrives")
        }
        fn deliver_snapshot(&self, msg: Message, staged: Staged) -> bool {
            self.sender_side.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            let acked = match (&self.sender_side).read(&mut b) {
                Ok(n) => n > 0,
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(e) => panic!("reading the sender's side: {e}"),
            };
            self.sender_side.set_nonblocking(false).unwrap();
            assert_eq!(staged.index, msg.get_snapshot().get_metadata().index);
            self.delivered.lock().unwrap().push((staged.index, acked));
            true
        }
        fn stage_snapshot(&self, _: u64, index: u64, term: u64) -> Result<Stage> {
            Stage::create(&self.dir.join("stage"), 8, index, term)
        }
        fn outgoing_snapshot(&self, _: &Snapshot) -> Option<Outgoing> {
            None
        }
        fn snapshot_sent(&self, _: u64, _: bool) {}
        fn unreachable(&self, _: u64) {}
        fn check_peer(&self, _: u64, _: u64, _: &str) -> Result<()> {
            Ok(())
        }
        fn refused(&self, _: u64, _: &Error) {}
    }

    /// Once the sender hears the snapshot arrived, the leader goes on from its index; a message
    /// it sends then must not reach a raft thread that does not have the snapshot yet.
    #[test]
    fn a_received_snapshot_reaches_the_raft_thread_before_the_sender_is_acked() {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut sender = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut receiving, _) = listener.accept().unwrap();
        let host = Receiver {
            dir: dir.path().to_path_buf(),
            sender_side: sender.try_clone().unwrap(),
            delivered: Mutex::new(Vec::new()),
        };
        let cfg = TransportConfig {
            node_id: 1,
            cluster_id: 0,
            incarnation: 1,
            advertise: "127.0.0.1:1".into(),
            frame_bytes_max: 1 << 20,
            secret: None,
        };

        // An empty state at (0, 0): no records, totals zero, then the Raft message.
        let mut begin = Vec::new();
        for w in [7u64, 0, 0] {
            begin.extend_from_slice(&w.to_le_bytes());
        }
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg.from = 2;
        msg.to = 1;
        let mut out = Vec::new();
        frame::put_frame(&mut out, KIND_SNAP_END, &[0u8; 16]);
        frame::put_frame_with(&mut out, KIND_RAFT, |b| msg.write_to_vec(b)).unwrap();
        sender.write_all(&out).unwrap();

        let stats = TransportStats::default();
        let mut buf = Vec::new();
        receive(&cfg, &host, &stats, &mut receiving, 2, &begin, &mut buf).unwrap();
        assert_eq!(*host.delivered.lock().unwrap(), vec![(0, false)]);
        let kind = frame::read_frame(&mut sender, 4096, &mut buf).unwrap();
        assert_eq!((kind, buf.as_slice()), (KIND_SNAP_ACK, &[0u8][..]));
    }
}
