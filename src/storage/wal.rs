//! The write-ahead log that holds the Raft log: append-only segment files, one `pwrite` and one
//! `fdatasync` per append, plus a small `META` file replaced atomically.
//!
//! Segment `NNNNNNNNNNNNNNNN.log` (hex sequence number) is written full of zeros before it is
//! used, so an append overwrites blocks the file system has already allocated and written: its
//! fdatasync flushes the data alone, with no size change and no extent conversion to journal
//! (ext4 and XFS journal the first write into a `fallocate`d range). A background thread fills
//! the next segment, `spare.tmp`, while the active one is written; a roll renames it into
//! place, or preallocates a segment when the spare is not ready (it waits only for a small
//! one). The first segment of a new log is 1 MiB and each one after it four times the size of
//! the one before, up to [`SEGMENT_BYTES`], so a new replica opens quickly (a few MiB of zeros)
//! and a busy one rolls rarely. A segment holds batches, one per append:
//! `magic u32 | body_len u32 | body_crc u32 | body`, the body being records
//! `type u8 | len u32 | crc u32 | payload` (CRC-32C, little-endian). Record types: an entry
//! (protobuf `Entry`) and a hard state (protobuf `HardState`). Every segment starts with the
//! hard state, so deleting old segments never loses the latest one.
//!
//! `META` holds the identity, the truncation point, the hard state as of the last truncation,
//! and the floor: segments numbered below it are dead (a snapshot replaced the log).
//!
//! Recovery reads every live segment in order. A bad batch at the end of the last segment is a
//! torn append of a crash and ends the log, and whatever of it reached the disk is zeroed (a
//! later, shorter append might not cover it, and once the segment is no longer the last one
//! it would read as damage); anything else that does not check out — a bad
//! batch followed by a good one, or a bad batch in an older segment — is corruption.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Entry, HardState};

use super::crc32c;
use super::log_store::Identity;
use crate::error::{Error, Result};

/// Largest size of a segment; a segment is closed once an append would go past its size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Size of the first segment of a new log.
pub const FIRST_SEGMENT_BYTES: u64 = 1 << 20;
/// Name of the segment being filled in the background.
pub const SPARE_NAME: &str = "spare.tmp";
/// A roll waits for a spare this small to be filled rather than preallocate its segment.
const SPARE_WAIT_MAX: u64 = 4 * FIRST_SEGMENT_BYTES;
/// Zeros written per step while filling a segment. Each step's writeback is started at once
/// and the one before waited for, so at most two steps are ever dirty and the appends of the
/// active segment never queue behind a large writeback; one fsync at the end makes it durable.
const FILL_CHUNK: usize = 256 << 10;
const BATCH_MAGIC: u32 = 0x5752_564b;
const BATCH_HEADER_BYTES: usize = 12;
const RECORD_HEADER_BYTES: usize = 9;
const REC_ENTRY: u8 = 1;
const REC_HARD_STATE: u8 = 2;
const META_MAGIC: &[u8; 4] = b"KVRM";
const META_VERSION: u8 = 1;

/// Where a record's payload lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// Segment sequence number.
    pub seg: u64,
    /// Byte offset of the payload in the segment.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
    /// CRC-32C of the payload.
    pub crc: u32,
}

/// The contents of `META`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Meta {
    /// Identity of the log, once initialized.
    pub identity: Option<Identity>,
    /// Index and term of the last entry dropped (compaction or snapshot).
    pub truncated: (u64, u64),
    /// Segments below this sequence number are dead.
    pub floor: u64,
    /// Hard state as of the last rewrite of `META`.
    pub hard_state: HardState,
}

/// What recovery found.
pub struct Recovered {
    /// Every entry record of the live segments, in write order: `(index, term, location)`.
    pub entries: Vec<(u64, u64, Loc)>,
    /// The latest hard state.
    pub hard_state: HardState,
}

struct Segment {
    seq: u64,
    file: File,
    path: PathBuf,
    /// Size of the file when it was taken into use; a batch goes past it only when the segment
    /// holds nothing else (a batch larger than a segment, or a segment cut short by a crash).
    cap: u64,
}

/// The next segment, being filled with zeros by a thread of its own.
struct Spare {
    bytes: u64,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<std::io::Result<File>>,
}

/// The write-ahead log of one replica.
pub struct Wal {
    dir: PathBuf,
    meta: Meta,
    segments: Vec<Segment>,
    /// Write offset in the last segment.
    active_len: u64,
    buf: Vec<u8>,
    spare: Option<Spare>,
}

impl Drop for Wal {
    /// Stops the fill (within one step) and removes the spare, so a closed log leaves no thread
    /// and no file behind.
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.stop.store(true, Ordering::Relaxed);
            let _ = spare.handle.join();
            let _ = fs::remove_file(self.dir.join(SPARE_NAME));
        }
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and recovers its contents.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered)> {
        fs::create_dir_all(dir)
            .map_err(|e| Error::Io(format!("cannot create {}: {e}", dir.display())))?;
        let meta = read_meta(&dir.join("META"))?;
        // A spare left by an earlier run may be half filled; it is filled again.
        match fs::remove_file(dir.join(SPARE_NAME)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io(format!(
                    "cannot remove the old spare segment: {e}"
                )))
            }
            _ => {}
        }
        let mut seqs = list_segments(dir)?;
        for &seq in seqs.iter().filter(|&&s| s < meta.floor) {
            let _ = fs::remove_file(segment_path(dir, seq));
        }
        seqs.retain(|&s| s >= meta.floor);
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            meta,
            segments: Vec::new(),
            active_len: 0,
            buf: Vec::new(),
            spare: None,
        };
        let mut rec = Recovered {
            entries: Vec::new(),
            hard_state: wal.meta.hard_state.clone(),
        };
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let end = recover_segment(&file, seq, i + 1 == seqs.len(), &mut rec)?;
            let cap = file.metadata()?.len();
            wal.segments.push(Segment {
                seq,
                file,
                path,
                cap,
            });
            wal.active_len = end;
        }
        if wal.segments.is_empty() {
            wal.new_segment(wal.meta.floor.max(1), &rec.hard_state.clone())?;
        } else {
            wal.start_spare();
        }
        Ok((wal, rec))
    }

    /// The contents of `META`.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Replaces `META` atomically.
    pub fn write_meta(&mut self, meta: Meta) -> Result<()> {
        write_meta(&self.dir, &meta)?;
        self.meta = meta;
        Ok(())
    }

    /// Sequence number of the segment being written.
    pub fn active_seq(&self) -> u64 {
        self.segments
            .last()
            .expect("a wal always has a segment")
            .seq
    }

    /// Appends `entries` and, when `hs_changed`, the hard state `hs`, with one write and one
    /// fdatasync. Returns where each entry landed.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hs: &HardState,
        hs_changed: bool,
    ) -> Result<Vec<Loc>> {
        let estimate: usize = entries
            .iter()
            .map(|e| e.compute_size() as usize + RECORD_HEADER_BYTES)
            .sum();
        let mut with_hs = hs_changed;
        let cap = self.segments.last().map_or(0, |s| s.cap);
        if self.active_len > 0 && self.active_len + (estimate + 256) as u64 > cap {
            self.roll(hs)?;
            with_hs = true;
        }
        let seg = self.active_seq();
        let base = self.active_len + BATCH_HEADER_BYTES as u64;
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; BATCH_HEADER_BYTES]);
        let mut locs = Vec::with_capacity(entries.len());
        for e in entries {
            let (offset, len, crc) = put_record(&mut self.buf, REC_ENTRY, |b| e.write_to_vec(b))?;
            locs.push(Loc {
                seg,
                offset: base - BATCH_HEADER_BYTES as u64 + offset as u64,
                len,
                crc,
            });
        }
        if with_hs {
            put_record(&mut self.buf, REC_HARD_STATE, |b| hs.write_to_vec(b))?;
        }
        if self.buf.len() == BATCH_HEADER_BYTES {
            return Ok(locs);
        }
        self.write_batch()?;
        Ok(locs)
    }

    fn write_batch(&mut self) -> Result<()> {
        let body_len = (self.buf.len() - BATCH_HEADER_BYTES) as u32;
        let crc = crc32c::checksum(&self.buf[BATCH_HEADER_BYTES..]);
        self.buf[0..4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        self.buf[4..8].copy_from_slice(&body_len.to_le_bytes());
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        let seg = self.segments.last().expect("a wal always has a segment");
        seg.file.write_all_at(&self.buf, self.active_len)?;
        seg.file.sync_data()?;
        self.active_len += self.buf.len() as u64;
        Ok(())
    }

    /// Reads and checks the payload at `loc`.
    pub fn read(&self, loc: Loc) -> Result<Vec<u8>> {
        let seg = self
            .segments
            .iter()
            .find(|s| s.seq == loc.seg)
            .ok_or_else(|| Error::Corrupt(format!("wal segment {:x} is gone", loc.seg)))?;
        let mut payload = vec![0u8; loc.len as usize];
        seg.file.read_exact_at(&mut payload, loc.offset)?;
        if crc32c::checksum(&payload) != loc.crc {
            return Err(Error::Corrupt(format!(
                "wal record at {:x}:{} fails its checksum",
                loc.seg, loc.offset
            )));
        }
        Ok(payload)
    }

    /// Starts over after `meta` (a snapshot replaced the log): `META` first, with the floor set
    /// to a fresh segment, so a crash at any point leaves either the old log or the new one.
    pub fn restart(&mut self, mut meta: Meta) -> Result<()> {
        let next = self.active_seq() + 1;
        meta.floor = next;
        let hs = meta.hard_state.clone();
        self.write_meta(meta)?;
        self.new_segment(next, &hs)?;
        self.drop_segments_before(next);
        Ok(())
    }

    /// Deletes the segments numbered below `seq` (never the active one).
    pub fn drop_segments_before(&mut self, seq: u64) {
        let seq = seq.min(self.active_seq());
        self.segments.retain(|s| {
            if s.seq < seq {
                let _ = fs::remove_file(&s.path);
                false
            } else {
                true
            }
        });
    }

    /// Bytes of all segment files, the spare included.
    pub fn disk_bytes(&self) -> u64 {
        let spare = fs::metadata(self.dir.join(SPARE_NAME)).map_or(0, |m| m.len());
        self.segments
            .iter()
            .filter_map(|s| s.file.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>()
            + spare
    }

    /// Waits until the spare, if one is filling, is ready; tests use it to make a roll take
    /// the spare whatever the disk's speed.
    #[doc(hidden)]
    pub fn wait_for_spare(&self) {
        while self.spare.as_ref().is_some_and(|s| !s.handle.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn roll(&mut self, hs: &HardState) -> Result<()> {
        let next = self.active_seq() + 1;
        self.new_segment(next, hs)
    }

    /// Creates segment `seq`, whose first batch is the hard state, from the spare when it is
    /// filled (a roll waits only for a small one, as right after a new log starts), and starts
    /// filling the next spare.
    fn new_segment(&mut self, seq: u64, hs: &HardState) -> Result<()> {
        let path = segment_path(&self.dir, seq);
        let (file, cap) = match self.take_spare() {
            Some((file, cap)) => {
                fs::rename(self.dir.join(SPARE_NAME), &path)?;
                (file, cap)
            }
            None => {
                let cap = self.next_segment_bytes();
                // With no spare at all (a new log), a small segment is filled in its place.
                let via = self.spare.is_none().then(|| self.dir.join(SPARE_NAME));
                (create_segment(&path, cap, via.as_deref())?, cap)
            }
        };
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            seq,
            file,
            path,
            cap,
        });
        self.active_len = 0;
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; BATCH_HEADER_BYTES]);
        put_record(&mut self.buf, REC_HARD_STATE, |b| hs.write_to_vec(b))?;
        self.write_batch()?;
        self.start_spare();
        Ok(())
    }

    /// Size of the segment after the active one.
    fn next_segment_bytes(&self) -> u64 {
        self.segments
            .last()
            .map_or(FIRST_SEGMENT_BYTES, |s| s.cap.max(FIRST_SEGMENT_BYTES) * 4)
            .min(SEGMENT_BYTES)
    }

    /// The filled spare and its size, if its thread has finished (or is filling a small one)
    /// and succeeded.
    fn take_spare(&mut self) -> Option<(File, u64)> {
        let spare = self.spare.as_ref()?;
        if !spare.handle.is_finished() && spare.bytes > SPARE_WAIT_MAX {
            return None;
        }
        let spare = self.spare.take()?;
        let failed = match spare.handle.join() {
            Ok(Ok(file)) => return Some((file, spare.bytes)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the thread panicked".to_string(),
        };
        log::warn!("wal: filling the next segment failed ({failed}); preallocating instead");
        // Its space goes back before the preallocation asks for as much again.
        let _ = fs::remove_file(self.dir.join(SPARE_NAME));
        None
    }

    /// Starts filling the next segment unless one is filling or filled already. Failing to
    /// start is not an error: the next roll preallocates its segment instead.
    fn start_spare(&mut self) {
        if self.spare.is_some() {
            return;
        }
        let bytes = self.next_segment_bytes();
        let path = self.dir.join(SPARE_NAME);
        // Opened here, not in the thread: a thread left over from a closed log writes only to
        // its own file, never to one a later open created under the same name.
        let file = match create_empty(&path) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("wal: cannot create {}: {e}", path.display());
                return;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let spawned = std::thread::Builder::new()
            .name("kvr-wal-fill".into())
            .spawn(move || write_zeros(&file, 0, bytes, &flag).map(|()| file));
        match spawned {
            Ok(handle) => {
                self.spare = Some(Spare {
                    bytes,
                    stop,
                    handle,
                })
            }
            Err(e) => log::warn!("wal: cannot start filling the next segment: {e}"),
        }
    }
}

/// Creates the segment file at `path`, `bytes` long. When it is small enough to fill at once
/// and `via` is free, it is filled with zeros there and renamed into place (a crash never
/// leaves a half-filled segment, whose unwritten blocks might hold old data on some file
/// systems); otherwise it is preallocated.
fn create_segment(path: &Path, bytes: u64, via: Option<&Path>) -> Result<File> {
    if let Some(via) = via.filter(|_| bytes <= FIRST_SEGMENT_BYTES) {
        let file = create_empty(via)?;
        write_zeros(&file, 0, bytes, &AtomicBool::new(false))?;
        fs::rename(via, path)?;
        return Ok(file);
    }
    let file = create_empty(path)?;
    // SAFETY: fallocate on a valid, owned descriptor.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, bytes as libc::off_t) };
    if rc != 0 {
        return Err(Error::Io(format!(
            "cannot preallocate {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        )));
    }
    file.sync_all()?;
    Ok(file)
}

/// Opens `path` for reading and writing, created empty.
fn create_empty(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Writes zeros over `[from, to)` of `file` and syncs it; gives up early when `stop` is set.
fn write_zeros(file: &File, from: u64, to: u64, stop: &AtomicBool) -> std::io::Result<()> {
    let zeros = vec![0u8; FILL_CHUNK];
    let mut at = from;
    while at < to {
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("stopped"));
        }
        let n = (to - at).min(FILL_CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        writeback(file, at, n as u64, libc::SYNC_FILE_RANGE_WRITE)?;
        if at > from {
            let prev = at - FILL_CHUNK as u64;
            writeback(
                file,
                prev,
                FILL_CHUNK as u64,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )?;
        }
        at += n as u64;
    }
    file.sync_all()
}

/// `sync_file_range` over `[offset, offset + len)`: starts or waits for the writeback of those
/// pages only (it makes nothing durable; the fsync at the end of a fill does).
fn writeback(file: &File, offset: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: a valid open descriptor; the call touches no memory of ours.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            flags,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Zeros whatever follows the last batch of the last segment, if anything does: pages of a
/// torn append whose header page never reached the disk. It reads the rest of the segment
/// (up to [`SEGMENT_BYTES`]) once per open; a torn append has no bound on its size that would
/// allow less.
fn clear_tail(file: &File, seq: u64, from: u64, size: u64) -> Result<()> {
    let mut chunk = vec![0u8; FILL_CHUNK];
    let mut at = from;
    while at < size {
        let n = (size - at).min(FILL_CHUNK as u64) as usize;
        file.read_exact_at(&mut chunk[..n], at)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            log::warn!(
                "wal segment {seq:x}: leftovers of a torn append after offset {from} cleared"
            );
            return Ok(write_zeros(file, from, size, &AtomicBool::new(false))?);
        }
        at += n as u64;
    }
    Ok(())
}

/// Appends a record written by `payload`; returns its payload's offset in `buf`, length and CRC.
fn put_record(
    buf: &mut Vec<u8>,
    kind: u8,
    payload: impl FnOnce(&mut Vec<u8>) -> protobuf::ProtobufResult<()>,
) -> Result<(usize, u32, u32)> {
    let start = buf.len();
    buf.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0, 0]);
    payload(buf).map_err(|e| Error::Corrupt(format!("encoding a wal record: {e}")))?;
    let offset = start + RECORD_HEADER_BYTES;
    let len = (buf.len() - offset) as u32;
    let crc = crc32c::checksum(&buf[offset..]);
    buf[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
    buf[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
    Ok((offset, len, crc))
}

/// Reads the batches of one segment into `rec`; returns the offset after the last good batch.
fn recover_segment(file: &File, seq: u64, last: bool, rec: &mut Recovered) -> Result<u64> {
    let size = file.metadata()?.len();
    let mut pos = 0u64;
    let mut header = [0u8; BATCH_HEADER_BYTES];
    while pos + BATCH_HEADER_BYTES as u64 <= size {
        file.read_exact_at(&mut header, pos)?;
        if header == [0u8; BATCH_HEADER_BYTES] {
            if last {
                clear_tail(file, seq, pos, size)?;
            }
            return Ok(pos);
        }
        match read_batch(file, pos, &header, size) {
            Some(body) => parse_body(&body, seq, pos + BATCH_HEADER_BYTES as u64, rec)?,
            None => return bad_batch(file, seq, pos, size, last),
        }
        pos += BATCH_HEADER_BYTES as u64
            + u64::from(u32::from_le_bytes(header[4..8].try_into().expect("4")));
    }
    Ok(pos)
}

/// The body of the batch at `pos` if its header and checksum hold.
fn read_batch(
    file: &File,
    pos: u64,
    header: &[u8; BATCH_HEADER_BYTES],
    size: u64,
) -> Option<Vec<u8>> {
    let magic = u32::from_le_bytes(header[0..4].try_into().expect("4"));
    let len = u32::from_le_bytes(header[4..8].try_into().expect("4")) as u64;
    let crc = u32::from_le_bytes(header[8..12].try_into().expect("4"));
    if magic != BATCH_MAGIC || pos + BATCH_HEADER_BYTES as u64 + len > size {
        return None;
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact_at(&mut body, pos + BATCH_HEADER_BYTES as u64)
        .ok()?;
    (crc32c::checksum(&body) == crc).then_some(body)
}

/// A batch that does not check out: the torn tail of the last segment, or corruption.
fn bad_batch(file: &File, seq: u64, pos: u64, size: u64, last: bool) -> Result<u64> {
    if last && !has_good_batch_after(file, pos + 1, size)? {
        log::warn!(
            "wal segment {seq:x}: torn append at offset {pos} dropped (crash during a write)"
        );
        // Whatever of it reached the disk goes: a later, shorter append might not cover it.
        write_zeros(file, pos, size, &AtomicBool::new(false))?;
        return Ok(pos);
    }
    Err(Error::Corrupt(format!(
        "wal segment {seq:x}: bad batch at offset {pos} before intact data"
    )))
}

/// True when a valid batch starts anywhere in `[from, size)`.
fn has_good_batch_after(file: &File, from: u64, size: u64) -> Result<bool> {
    let magic = BATCH_MAGIC.to_le_bytes();
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = from;
    while at < size {
        let n = chunk.len().min((size - at) as usize);
        file.read_exact_at(&mut chunk[..n], at)?;
        for i in 0..n.saturating_sub(3) {
            if chunk[i..i + 4] == magic {
                let pos = at + i as u64;
                let mut header = [0u8; BATCH_HEADER_BYTES];
                if pos + BATCH_HEADER_BYTES as u64 <= size
                    && file.read_exact_at(&mut header, pos).is_ok()
                    && read_batch(file, pos, &header, size).is_some()
                {
                    return Ok(true);
                }
            }
        }
        at += (n.saturating_sub(3)).max(1) as u64;
    }
    Ok(false)
}

fn parse_body(body: &[u8], seq: u64, body_offset: u64, rec: &mut Recovered) -> Result<()> {
    let bad = |what: &str| {
        Error::Corrupt(format!(
            "wal segment {seq:x}: {what} at offset {body_offset}"
        ))
    };
    let mut p = 0usize;
    while p < body.len() {
        if p + RECORD_HEADER_BYTES > body.len() {
            return Err(bad("truncated record header"));
        }
        let kind = body[p];
        let len = u32::from_le_bytes(body[p + 1..p + 5].try_into().expect("4")) as usize;
        let crc = u32::from_le_bytes(body[p + 5..p + 9].try_into().expect("4"));
        let start = p + RECORD_HEADER_BYTES;
        let payload = body
            .get(start..start + len)
            .ok_or_else(|| bad("record past its batch"))?;
        if crc32c::checksum(payload) != crc {
            return Err(bad("record checksum mismatch"));
        }
        match kind {
            REC_ENTRY => {
                let e = Entry::parse_from_bytes(payload).map_err(|_| bad("undecodable entry"))?;
                let loc = Loc {
                    seg: seq,
                    offset: body_offset + start as u64,
                    len: len as u32,
                    crc,
                };
                rec.entries.push((e.index, e.term, loc));
            }
            REC_HARD_STATE => {
                rec.hard_state = HardState::parse_from_bytes(payload)
                    .map_err(|_| bad("undecodable hard state"))?;
            }
            _ => return Err(bad("unknown record type")),
        }
        p = start + len;
    }
    Ok(())
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some(hex) = name.strip_suffix(".log") {
            if let Ok(seq) = u64::from_str_radix(hex, 16) {
                seqs.push(seq);
            }
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

fn read_meta(path: &Path) -> Result<Meta> {
    let b = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Meta::default()),
        Err(e) => return Err(Error::Io(format!("cannot read {}: {e}", path.display()))),
    };
    let bad = || Error::Corrupt(format!("{} is damaged", path.display()));
    if b.len() < 4 + 1 + 1 + 8 * 6 + 4 + 4 || &b[..4] != META_MAGIC || b[4] != META_VERSION {
        return Err(bad());
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::checksum(body) != u32::from_le_bytes(crc.try_into().expect("4")) {
        return Err(bad());
    }
    let word = |i: usize| u64::from_le_bytes(body[6 + i * 8..14 + i * 8].try_into().expect("8"));
    let identity = (body[5] == 1).then(|| Identity {
        cluster_id: word(0),
        node_id: word(1),
        incarnation: word(2),
    });
    let hs_len = u32::from_le_bytes(body[54..58].try_into().expect("4")) as usize;
    let hs_bytes = body.get(58..58 + hs_len).ok_or_else(bad)?;
    let hard_state = HardState::parse_from_bytes(hs_bytes).map_err(|_| bad())?;
    Ok(Meta {
        identity,
        truncated: (word(3), word(4)),
        floor: word(5),
        hard_state,
    })
}

fn write_meta(dir: &Path, m: &Meta) -> Result<()> {
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(META_MAGIC);
    b.push(META_VERSION);
    b.push(u8::from(m.identity.is_some()));
    let id = m.identity.unwrap_or(Identity {
        cluster_id: 0,
        node_id: 0,
        incarnation: 0,
    });
    for w in [
        id.cluster_id,
        id.node_id,
        id.incarnation,
        m.truncated.0,
        m.truncated.1,
        m.floor,
    ] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let hs = m
        .hard_state
        .write_to_bytes()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    b.extend_from_slice(&(hs.len() as u32).to_le_bytes());
    b.extend_from_slice(&hs);
    let crc = crc32c::checksum(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("META.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&b)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join("META"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}
