//! Frame codec: `len u32 (big-endian) | kind u8 | payload`, where `len` counts `kind` and
//! `payload`. A length above the limit is refused before anything is allocated for it.

use std::io::{self, Read};

/// First frame on a connection, from the dialer: see [`super::handshake`].
pub const KIND_HELLO: u8 = 1;
/// Reply of the acceptor to a hello.
pub const KIND_HELLO_ACK: u8 = 2;
/// One protobuf-encoded `raft::eraftpb::Message`.
pub const KIND_RAFT: u8 = 3;
/// Start of a snapshot stream: `id u64 | index u64 | term u64` (little-endian).
pub const KIND_SNAP_BEGIN: u8 = 4;
/// A chunk of snapshot records.
pub const KIND_SNAP_CHUNK: u8 = 5;
/// End of the records: `records u64 | bytes u64`; the Raft snapshot message follows.
pub const KIND_SNAP_END: u8 = 6;
/// The receiver's verdict on a snapshot stream: `status u8 | reason`.
pub const KIND_SNAP_ACK: u8 = 7;
/// The acceptor's challenge: `nonce [16] | mac [32]` (see [`super::handshake`]).
pub const KIND_CHALLENGE: u8 = 8;
/// The dialer's answer to a challenge: `mac [32]`.
pub const KIND_PROOF: u8 = 9;

/// Bytes of the frame header.
pub const HEADER_BYTES: usize = 5;

/// Appends a frame holding `payload` to `out`.
pub fn put_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// Appends a frame whose payload is written by `write` straight into `out` (no copy); on an
/// error `out` is left as it was.
pub fn put_frame_with<E>(
    out: &mut Vec<u8>,
    kind: u8,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, kind]);
    if let Err(e) = write(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Reads one frame into `buf` (reusing its allocation) and returns its kind.
///
/// Errors: `UnexpectedEof` at a clean end of stream, `InvalidData` for a zero or oversized length.
pub fn read_frame(r: &mut impl Read, max_bytes: usize, buf: &mut Vec<u8>) -> io::Result<u8> {
    let mut header = [0u8; HEADER_BYTES];
    r.read_exact(&mut header)?;
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    check_len(len, max_bytes)?;
    buf.clear();
    // Exact growth: amortized doubling could take the buffer to twice the frame limit.
    buf.reserve_exact(len - 1);
    buf.resize(len - 1, 0);
    r.read_exact(buf)?;
    Ok(header[4])
}

/// Validates a frame length field against the limit.
pub fn check_len(len: usize, max_bytes: usize) -> io::Result<()> {
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "frame length 0"));
    }
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {len} exceeds limit {max_bytes}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payload that fails to encode leaves no header or partial payload behind, so the
    /// frames around it still read back.
    #[test]
    fn a_failed_payload_leaves_the_buffer_as_it_was() {
        let mut out = Vec::new();
        put_frame(&mut out, KIND_RAFT, b"before");
        let err = put_frame_with(&mut out, KIND_RAFT, |b| {
            b.extend_from_slice(b"half");
            Err("too big")
        });
        assert_eq!(err, Err("too big"));
        put_frame(&mut out, KIND_RAFT, b"after");
        let mut r = &out[..];
        let mut buf = Vec::new();
        read_frame(&mut r, 100, &mut buf).unwrap();
        assert_eq!(buf, b"before");
        read_frame(&mut r, 100, &mut buf).unwrap();
        assert_eq!(buf, b"after");
        assert!(r.is_empty());
    }

    #[test]
    fn round_trip_and_limits() {
        let mut out = Vec::new();
        put_frame(&mut out, KIND_RAFT, b"hello");
        put_frame_with::<()>(&mut out, KIND_HELLO, |b| {
            b.extend_from_slice(b"xy");
            Ok(())
        })
        .unwrap();
        let mut r = &out[..];
        let mut buf = Vec::new();
        assert_eq!(read_frame(&mut r, 100, &mut buf).unwrap(), KIND_RAFT);
        assert_eq!(buf, b"hello");
        assert_eq!(read_frame(&mut r, 100, &mut buf).unwrap(), KIND_HELLO);
        assert_eq!(buf, b"xy");
        assert_eq!(
            read_frame(&mut r, 100, &mut buf).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );

        // A 4 GiB length is refused from the header alone.
        let huge = [0xff, 0xff, 0xff, 0xff, KIND_RAFT];
        let err = read_frame(&mut &huge[..], 1 << 20, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(buf.capacity() < 1 << 20);
        let zero = [0, 0, 0, 0, KIND_RAFT];
        assert!(read_frame(&mut &zero[..], 100, &mut buf).is_err());
    }
}
