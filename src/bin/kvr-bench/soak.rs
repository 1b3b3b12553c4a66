//! The soak: 64 writers for a long time on a fresh cluster while the resident memory of all
//! three replicas is sampled, to show whether it stays flat.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::load::{self, Op, Stats, Watch, Window};
use crate::procfs::{self, Mem};
use crate::store::Api;
use crate::sweep::{report_progress, Plan};

/// Writers during the soak (the concurrency the targets are stated at).
pub const CONCURRENCY: usize = 64;
/// Longest interval between two memory samples.
const SAMPLE_EVERY_MAX: Duration = Duration::from_secs(5);
/// Share of the soak spent warming up before the first sample (caches, LMDB map pages and
/// allocator arenas fill during the first minutes; flatness is judged after).
const WARMUP_SHARE: f64 = 0.1;
/// The warm-up also lasts until every replica passed this many snapshot points: its log was
/// compacted, so the log's entry cache has filled and been trimmed (the memory it holds in
/// steady state, at most 64 MiB), ...
const WARMUP_SNAPSHOTS: u64 = 2;
/// ... but no longer than this.
const WARMUP_MAX: Duration = Duration::from_secs(600);
/// Length of each warm-up round between two looks at replica 1's snapshot count.
const WARMUP_ROUND: Duration = Duration::from_secs(5);
/// Allowed deviation of any sample from the first one.
pub const RSS_FLAT_TOLERANCE: f64 = 0.10;

pub struct Soak {
    pub seconds: f64,
    pub warmup_s: f64,
    pub leader: u64,
    pub writes: Stats,
    /// Seconds since the first sample, and the memory of replicas 1, 2, 3.
    pub samples: Vec<(f64, Vec<Mem>)>,
}

/// Summary of one replica's RSS over the soak, in KiB.
pub struct RssSummary {
    pub start: u64,
    pub end: u64,
    pub min: u64,
    pub max: u64,
    /// Anonymous memory (heap and stacks) at the first and the last sample.
    pub anon_start: u64,
    pub anon_end: u64,
    /// Largest distance of any sample from the first, as a fraction of the first.
    pub deviation: f64,
    pub flat: bool,
}

impl Soak {
    pub fn rss(&self, replica: usize) -> Option<RssSummary> {
        let series: Vec<u64> = self
            .samples
            .iter()
            .map(|(_, m)| m[replica].rss_kb)
            .collect();
        let (&start, &end) = (series.first()?, series.last()?);
        let (min, max) = (*series.iter().min()?, *series.iter().max()?);
        let deviation = (max - start).max(start - min) as f64 / start.max(1) as f64;
        let anon = |i: usize| self.samples[i].1[replica].anon_kb;
        Some(RssSummary {
            start,
            end,
            min,
            max,
            anon_start: anon(0),
            anon_end: anon(self.samples.len() - 1),
            deviation,
            flat: deviation <= RSS_FLAT_TOLERANCE,
        })
    }
}

/// Runs the soak for `seconds` (after its warm-up) on a fresh cluster in `dir`.
pub fn run(plan: &Plan<'_>, seconds: f64, dir: &Path) -> Result<Soak, String> {
    let warmup = plan
        .win
        .warmup
        .max(Duration::from_secs_f64(seconds * WARMUP_SHARE));
    let mut cluster = Cluster::start(Api::Rust, dir, plan.kvr_bin)?;
    eprintln!(
        "kvr-bench: soak: warming up for {warmup:?} and {WARMUP_SNAPSHOTS} snapshot points on every replica"
    );
    let warmup = settle(&mut cluster, plan, warmup)?;
    let win = Window {
        warmup: Duration::ZERO,
        duration: Duration::from_secs_f64(seconds),
    };
    let every =
        Duration::from_secs_f64((seconds / 10.0).clamp(0.5, SAMPLE_EVERY_MAX.as_secs_f64()));
    let mut watch = MemWatch {
        pids: cluster.pids(),
        every,
        t0: Instant::now(),
        samples: Vec::new(),
    };
    eprintln!("kvr-bench: soak: {CONCURRENCY} writers for {seconds}s after {warmup:?}, RSS every {every:?}");
    let writes = load::run(
        cluster.store(),
        Op::Put,
        CONCURRENCY,
        plan.work,
        win,
        &mut watch,
    )?;
    cluster.check_alive()?;
    report_progress("kvr soak writes", CONCURRENCY, &writes);
    let leader = cluster.leader;
    cluster.stop()?;
    Ok(Soak {
        seconds,
        warmup_s: warmup.as_secs_f64(),
        leader,
        writes,
        samples: watch.samples,
    })
}

/// Writes until `at_least` passed and every replica took `WARMUP_SNAPSHOTS` snapshot points
/// (or `WARMUP_MAX` passed); returns how long that took.
fn settle(cluster: &mut Cluster, plan: &Plan<'_>, at_least: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let round = Window {
        warmup: Duration::ZERO,
        duration: WARMUP_ROUND,
    };
    loop {
        load::run(
            cluster.store(),
            Op::Put,
            CONCURRENCY,
            plan.work,
            round,
            &mut Unwatched,
        )?;
        let mut fewest = u64::MAX;
        for id in 1..=crate::cluster::REPLICAS {
            fewest = fewest.min(cluster.status_u64(id, "snapshots_taken")?);
        }
        let waited = started.elapsed();
        if (waited >= at_least && fewest >= WARMUP_SNAPSHOTS) || waited >= WARMUP_MAX {
            eprintln!(
                "kvr-bench: soak: warm-up done after {waited:?}, fewest snapshot points {fewest}"
            );
            return Ok(waited);
        }
    }
}

struct Unwatched;

impl Watch for Unwatched {}

struct MemWatch {
    pids: Vec<u32>,
    every: Duration,
    t0: Instant,
    samples: Vec<(f64, Vec<Mem>)>,
}

impl MemWatch {
    fn sample(&mut self) {
        let mem = self
            .pids
            .iter()
            .map(|&p| procfs::mem(p).unwrap_or_default())
            .collect();
        self.samples.push((self.t0.elapsed().as_secs_f64(), mem));
    }
}

impl Watch for MemWatch {
    fn start(&mut self) {
        self.t0 = Instant::now();
        self.sample();
    }

    fn tick(&mut self) {
        self.sample();
    }

    fn end(&mut self) {
        self.sample();
    }

    fn every(&self) -> Option<Duration> {
        Some(self.every)
    }
}
