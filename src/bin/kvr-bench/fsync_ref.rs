//! The disk's floor: how long one 4 KiB write plus `fdatasync` takes in the run's data
//! directory. A durable replicated write needs at least one of these on the leader and one on
//! a follower, so kvr's single-writer latency is compared with it.

use std::fs::{self, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use crate::load::round1;

/// Bytes written before each fdatasync (one page).
const WRITE_BYTES: usize = 4096;
/// Distinct pages cycled through, in a file allocated up front so that fdatasync never has
/// to persist a size change.
const SLOTS: u64 = 256;
/// Unmeasured iterations first (the first syncs also allocate).
const WARMUP_ITERATIONS: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct FsyncStats {
    pub iterations: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

/// pwrite + fdatasync `iterations` times in `dir`.
pub fn measure(dir: &Path, iterations: usize) -> Result<FsyncStats, String> {
    fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join("fdatasync.probe");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    let page = [0xA5u8; WRITE_BYTES];
    for slot in 0..SLOTS {
        f.write_all_at(&page, slot * WRITE_BYTES as u64)
            .map_err(|e| format!("write: {e}"))?;
    }
    f.sync_all().map_err(|e| format!("fsync: {e}"))?;
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..WARMUP_ITERATIONS + iterations {
        crate::signal::check()?;
        let t0 = Instant::now();
        f.write_all_at(&page, (i as u64 % SLOTS) * WRITE_BYTES as u64)
            .map_err(|e| format!("write: {e}"))?;
        // SAFETY: a valid open file descriptor.
        if unsafe { libc::fdatasync(f.as_raw_fd()) } != 0 {
            return Err(format!("fdatasync: {}", std::io::Error::last_os_error()));
        }
        if i >= WARMUP_ITERATIONS {
            samples.push(t0.elapsed().as_nanos() as f64 / 1e3);
        }
    }
    drop(f);
    let _ = fs::remove_file(&path);
    samples.sort_by(f64::total_cmp);
    let q =
        |q: f64| samples[((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len()) - 1];
    Ok(FsyncStats {
        iterations,
        p50_us: round1(q(0.50)),
        p99_us: round1(q(0.99)),
        mean_us: round1(samples.iter().sum::<f64>() / samples.len() as f64),
    })
}
