//! A frame's length prefix is judged before anything is allocated for the frame: a peer that
//! announces 4 GiB costs the reader a few bytes of error text, not 4 GiB. Allocations are
//! counted by a global allocator, per thread so that concurrent tests do not blur the figures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io;

use kvr::config::FRAME_BYTES_MAX;
use kvr::transport::frame::{put_frame, read_frame, HEADER_BYTES, KIND_RAFT};

struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: the allocator also runs while thread-locals are being torn down.
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
    let _ = TOTAL.try_with(|c| c.set(c.get() + size));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the largest single allocation and the total
/// allocated by this thread meanwhile.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    LARGEST.with(|c| c.set(0));
    TOTAL.with(|c| c.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get), TOTAL.with(Cell::get))
}

/// Error text and its box: anything beyond this would be an allocation for the frame.
const ERROR_BYTES_MAX: usize = 1024;

#[test]
fn an_oversized_length_prefix_costs_no_allocation() {
    for limit in [1 << 20, FRAME_BYTES_MAX] {
        for len in [u32::MAX, limit as u32 + 1] {
            let mut stream = len.to_be_bytes().to_vec();
            stream.push(KIND_RAFT);
            stream.extend_from_slice(&[0xab; 64]);
            let mut r = &stream[..];
            let mut buf = Vec::new();
            let (result, largest, total) = measure(|| read_frame(&mut r, limit, &mut buf));
            let err = result.expect_err("an oversized frame is refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            assert!(
                err.to_string().contains(&len.to_string()),
                "the error names the length: {err}"
            );
            assert_eq!(buf.capacity(), 0, "length {len}, limit {limit}");
            assert!(
                largest <= ERROR_BYTES_MAX && total <= ERROR_BYTES_MAX,
                "length {len}, limit {limit}: largest allocation {largest}, total {total}"
            );
            assert_eq!(
                stream.len() - r.len(),
                HEADER_BYTES,
                "refused from the header alone: not a byte of payload read"
            );
        }
    }
}

#[test]
fn a_refused_frame_leaves_the_reused_buffer_alone() {
    let mut stream = Vec::new();
    put_frame(&mut stream, KIND_RAFT, b"first");
    stream.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, KIND_RAFT]);
    let mut r = &stream[..];
    let mut buf = Vec::new();
    assert_eq!(read_frame(&mut r, 1 << 20, &mut buf).unwrap(), KIND_RAFT);
    let capacity = buf.capacity();
    let (result, largest, _) = measure(|| read_frame(&mut r, 1 << 20, &mut buf));
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
    assert!(largest <= ERROR_BYTES_MAX, "largest allocation {largest}");
    assert_eq!(buf.capacity(), capacity);
    assert_eq!(buf, b"first");
}

#[test]
fn an_accepted_frame_allocates_its_own_size() {
    let payload = vec![7u8; 100_000];
    let mut stream = Vec::new();
    put_frame(&mut stream, KIND_RAFT, &payload);
    let mut buf = Vec::new();
    let (kind, largest, _) = measure(|| read_frame(&mut &stream[..], 1 << 20, &mut buf));
    assert_eq!(kind.unwrap(), KIND_RAFT);
    assert_eq!(buf, payload);
    assert_eq!(largest, payload.len());
}

/// Found by the `frame` fuzz target: `read_frame` grows its reused buffer with `Vec::resize`,
/// whose amortized growth can double the capacity past `max_bytes` (here 1.2 MB under a
/// 1 MiB limit, up to 128 MiB per connection under `FRAME_BYTES_MAX`).
#[test]
fn the_reused_buffer_never_exceeds_the_limit() {
    let limit = 1 << 20;
    let mut stream = Vec::new();
    put_frame(&mut stream, KIND_RAFT, &vec![1u8; 600_000]);
    put_frame(&mut stream, KIND_RAFT, &vec![2u8; 700_000]);
    let mut r = &stream[..];
    let mut buf = Vec::new();
    for _ in 0..2 {
        read_frame(&mut r, limit, &mut buf).unwrap();
        assert!(
            buf.capacity() <= limit,
            "capacity {} over the limit {limit}",
            buf.capacity()
        );
    }
}
