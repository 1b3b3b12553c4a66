//! The closed-loop load generator: N threads, each issuing one request and waiting for its
//! reply before the next, against one [`Store`]. Same rules as the peers' Go load generator:
//! after the warm-up, only requests *started* inside the measured window count, so requests in
//! flight at either edge neither inflate nor deflate the rate.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::hist::Histogram;
use crate::signal;
use crate::store::Store;
use kvr::ReadConsistency;

/// Extra random bytes behind the values, so that each value is a different slice.
const VALUE_BLOCK_EXTRA_BYTES: usize = 4096;
/// Pause after a failed request, so a replica that fails fast does not turn a worker into a
/// spinning loop that steals the CPU of the others.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);
/// Longest sleep of the observing thread, so a stop request is noticed promptly.
const STOP_POLL: Duration = Duration::from_millis(100);

/// Keys and values: keys are the zero-padded decimal index (as the peers make them), values
/// are slices of one random block (incompressible, without a random fill per request).
pub struct Workload {
    keys: Vec<u8>,
    key_bytes: usize,
    block: Vec<u8>,
    value_bytes: usize,
}

impl Workload {
    pub fn new(key_bytes: usize, value_bytes: usize, keyspace: usize) -> Workload {
        let mut keys = Vec::with_capacity(key_bytes * keyspace);
        for i in 0..keyspace {
            keys.extend_from_slice(format!("{i:0key_bytes$}").as_bytes());
        }
        assert_eq!(
            keys.len(),
            key_bytes * keyspace,
            "keys wider than key_bytes"
        );
        let mut rng = Rng::seeded(0);
        let block = (0..value_bytes + VALUE_BLOCK_EXTRA_BYTES)
            .map(|_| rng.next() as u8)
            .collect();
        Workload {
            keys,
            key_bytes,
            block,
            value_bytes,
        }
    }

    fn keyspace(&self) -> usize {
        self.keys.len() / self.key_bytes
    }

    fn key(&self, rng: &mut Rng) -> &[u8] {
        let i = rng.below(self.keyspace());
        &self.keys[i * self.key_bytes..(i + 1) * self.key_bytes]
    }

    fn value(&self, rng: &mut Rng) -> &[u8] {
        let off = rng.below(self.block.len() - self.value_bytes + 1);
        &self.block[off..off + self.value_bytes]
    }
}

/// splitmix64: fast, and plenty random for choosing keys.
struct Rng(u64);

impl Rng {
    fn seeded(stream: u64) -> Rng {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Rng(now ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for our n).
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }
}

/// The request every worker repeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    LeaseGet,
    StaleGet,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "writes",
            Op::Get => "linearizable reads",
            Op::LeaseGet => "lease reads",
            Op::StaleGet => "stale reads",
        }
    }
}

/// Warm-up, then the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
}

/// Called by the observing thread while the workers run: at the start of the measured window,
/// every `every()` inside it, and at its end.
pub trait Watch {
    fn start(&mut self) {}
    fn tick(&mut self) {}
    fn end(&mut self) {}
    fn every(&self) -> Option<Duration> {
        None
    }
}

/// A watch that does nothing.
pub struct NoWatch;

impl Watch for NoWatch {}

/// The outcome of one measured window. Latencies in microseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub ops: u64,
    pub errors: u64,
    pub per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub first_error: Option<String>,
}

#[derive(Default)]
struct WorkerResult {
    hist: Histogram,
    errors: u64,
    first_error: Option<String>,
}

/// Runs `op` from `concurrency` workers for the warm-up and the window.
pub fn run(
    store: &Store,
    op: Op,
    concurrency: usize,
    work: &Workload,
    win: Window,
    watch: &mut dyn Watch,
) -> Result<Stats, String> {
    let from = Instant::now() + win.warmup;
    let end = from + win.duration;
    let results = thread::scope(|s| {
        let mut handles = Vec::with_capacity(concurrency);
        for w in 0..concurrency {
            let h = thread::Builder::new()
                .name("bench-worker".into())
                .spawn_scoped(s, move || worker(store, op, work, w as u64, from, end))
                .map_err(|e| format!("cannot spawn worker {w}: {e}"));
            match h {
                Ok(h) => handles.push(h),
                // The workers already started stop at `end`; the scope waits for them.
                Err(e) => return Err(e),
            }
        }
        observe(watch, from, end);
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a worker panicked".to_string()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    signal::check()?;
    Ok(summarize(results, win.duration))
}

fn worker(
    store: &Store,
    op: Op,
    work: &Workload,
    w: u64,
    from: Instant,
    end: Instant,
) -> WorkerResult {
    let mut rng = Rng::seeded(w + 1);
    let mut out = WorkerResult::default();
    loop {
        let t0 = Instant::now();
        if t0 >= end || signal::stopped() {
            return out;
        }
        let key = work.key(&mut rng);
        let r = match op {
            Op::Put => store.put(key, work.value(&mut rng)),
            Op::Get => store.get(key, ReadConsistency::Linearizable),
            Op::LeaseGet => store.get(key, ReadConsistency::Lease),
            Op::StaleGet => store.get(key, ReadConsistency::Stale),
        };
        let nanos = t0.elapsed().as_nanos() as u64;
        match r {
            Ok(()) if t0 >= from => out.hist.record(nanos),
            Ok(()) => {}
            Err(e) => {
                if t0 >= from {
                    out.errors += 1;
                    out.first_error.get_or_insert(e);
                }
                thread::sleep(ERROR_BACKOFF);
            }
        }
    }
}

/// Runs the watch on the calling thread until the window is over.
fn observe(watch: &mut dyn Watch, from: Instant, end: Instant) {
    sleep_until(from);
    if signal::stopped() {
        return;
    }
    watch.start();
    if let Some(every) = watch.every() {
        let mut next = Instant::now() + every;
        while next < end {
            sleep_until(next);
            if signal::stopped() {
                return;
            }
            watch.tick();
            next += every;
        }
    }
    sleep_until(end);
    watch.end();
}

fn sleep_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t || signal::stopped() {
            return;
        }
        thread::sleep((t - now).min(STOP_POLL));
    }
}

fn summarize(results: Vec<WorkerResult>, window: Duration) -> Stats {
    let mut hist = Histogram::default();
    let mut stats = Stats::default();
    for r in results {
        hist.merge(&r.hist);
        stats.errors += r.errors;
        if stats.first_error.is_none() {
            stats.first_error = r.first_error;
        }
    }
    let us = |q| round1(hist.quantile(q) / 1e3);
    stats.ops = hist.len();
    stats.per_s = round1(hist.len() as f64 / window.as_secs_f64());
    stats.p50_us = us(0.50);
    stats.p99_us = us(0.99);
    stats.p999_us = us(0.999);
    stats
}

/// Rounds to one decimal, as the peers report their figures.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
