//! Frame decoder on arbitrary bytes: `read_frame` in a loop until the stream ends or is
//! refused. It must never panic, never hold a buffer larger than the limit it was given,
//! and must refuse a bad length from the 5-byte header alone, before reading (or allocating
//! for) the payload.
//!
//! Input: `limit u24 (big-endian) | stream`. The limit comes from the input, not from
//! `FRAME_BYTES_MAX` (64 MiB), so that frames near it fit in the fuzzer's small inputs; the
//! length prefixes in the stream still range up to 4 GiB.

#![no_main]

use std::io::{self, Read};

use kvr::transport::frame::{read_frame, HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

/// A reader that counts what it hands out, to check how far each call read.
struct Counting<'a> {
    rest: &'a [u8],
    taken: usize,
}

impl Read for Counting<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.rest.read(out)?;
        self.taken += n;
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, stream)) = data.split_first_chunk::<3>() else {
        return;
    };
    let limit = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut r = Counting {
        rest: stream,
        taken: 0,
    };
    let mut buf = Vec::new();
    loop {
        let before = r.taken;
        let header = r
            .rest
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize);
        let result = read_frame(&mut r, limit, &mut buf);
        assert!(
            buf.capacity() <= limit,
            "buffer capacity {} exceeds the frame limit {limit}",
            buf.capacity()
        );
        match result {
            Ok(_kind) => {
                let len = header.expect("a frame was read, so its header was there");
                assert!(
                    len >= 1 && len <= limit,
                    "accepted length {len}, limit {limit}"
                );
                assert_eq!(buf.len(), len - 1);
                assert_eq!(r.taken - before, HEADER_BYTES + buf.len());
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let len = header.expect("a length was judged, so the header was there");
                assert!(
                    len == 0 || len > limit,
                    "refused length {len}, limit {limit}"
                );
                assert_eq!(
                    r.taken - before,
                    HEADER_BYTES,
                    "refused from the header alone"
                );
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
                break;
            }
        }
    }
});
