//! kvr's share of the run: a fresh cluster per API, then every concurrency in turn: writes,
//! and through the Rust API also linearizable, lease and stale reads. The CPU each replica's threads
//! burn during every measured window is recorded, as a first profile, and so is where replica
//! 1's raft and apply threads spend their time (its `stats` counters).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::cluster::Cluster;
use crate::load::{self, Op, Stats, Watch, Window, Workload};
use crate::procfs::{self, CpuSnapshot, CpuUse, Mem};
use crate::store::{Api, Store};

/// What every kvr measurement shares.
pub struct Plan<'a> {
    pub concurrency: &'a [usize],
    pub work: &'a Workload,
    pub win: Window,
    pub kvr_bin: &'a Path,
}

/// One measured phase and the CPU it used on replicas 1, 2, 3.
pub struct Phase {
    pub stats: Stats,
    pub cpu: Vec<CpuUse>,
    /// Replica 1's time split over the window (Rust API run only).
    pub profile: Option<Profile>,
}

/// Replica 1's log and apply work over a window, from its `stats` counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Profile {
    pub seconds: f64,
    /// Log appends (one write and one fdatasync each).
    pub log_writes: f64,
    /// Microseconds the raft thread spent in them.
    pub log_write_us: f64,
    pub apply_batches: f64,
    pub entries_applied: f64,
    /// Microseconds the apply thread spent committing batches.
    pub apply_commit_us: f64,
    /// Bytes written by the disk holding every replica's data (all three replicas share it;
    /// `NaN` when the device is unknown).
    pub disk_bytes: f64,
    /// Writes the clients completed.
    pub client_writes: f64,
    /// ReadIndex rounds replica 1 started.
    pub read_rounds: f64,
}

impl Profile {
    /// The counters now (`seconds` unset).
    fn sample(store: &Store, disk: Option<&Path>) -> Option<Profile> {
        let j = crate::json::parse(&store.stats_json()?).ok()?;
        let disk_bytes = disk
            .and_then(procfs::disk_bytes_written)
            .map_or(f64::NAN, |b| b as f64);
        Some(Profile {
            disk_bytes,
            client_writes: 0.0,
            seconds: 0.0,
            log_writes: j.num("log_writes")?,
            log_write_us: j.num("log_write_us")?,
            apply_batches: j.num("apply_batches")?,
            entries_applied: j.num("entries_applied")?,
            apply_commit_us: j.num("apply_commit_us")?,
            read_rounds: j.num("read_rounds")?,
        })
    }

    fn since(&self, before: &Profile, seconds: f64) -> Profile {
        Profile {
            seconds,
            log_writes: self.log_writes - before.log_writes,
            log_write_us: self.log_write_us - before.log_write_us,
            apply_batches: self.apply_batches - before.apply_batches,
            entries_applied: self.entries_applied - before.entries_applied,
            apply_commit_us: self.apply_commit_us - before.apply_commit_us,
            disk_bytes: self.disk_bytes - before.disk_bytes,
            client_writes: 0.0,
            read_rounds: self.read_rounds - before.read_rounds,
        }
    }

    /// Megabytes per second the shared disk wrote.
    pub fn disk_mb_per_s(&self) -> f64 {
        self.disk_bytes / 1e6 / self.seconds.max(1e-9)
    }

    /// Disk bytes written per client write (all replicas, log and state machine).
    pub fn disk_bytes_per_write(&self) -> f64 {
        self.disk_bytes / self.client_writes.max(1.0)
    }

    /// Share of the window the raft thread spent in log appends.
    pub fn log_busy(&self) -> f64 {
        self.log_write_us / 1e6 / self.seconds.max(1e-9)
    }

    /// Share of the window the apply thread spent committing.
    pub fn apply_busy(&self) -> f64 {
        self.apply_commit_us / 1e6 / self.seconds.max(1e-9)
    }

    pub fn log_write_avg_us(&self) -> f64 {
        self.log_write_us / self.log_writes.max(1.0)
    }

    pub fn commit_avg_us(&self) -> f64 {
        self.apply_commit_us / self.apply_batches.max(1.0)
    }

    pub fn entries_per_batch(&self) -> f64 {
        self.entries_applied / self.apply_batches.max(1.0)
    }
}

/// Results at one concurrency.
pub struct Point {
    pub concurrency: usize,
    pub writes: Phase,
    pub reads: Option<Phase>,
    pub lease: Option<Phase>,
    pub stale: Option<Phase>,
}

impl Phase {
    /// Reads per ReadIndex round replica 1 started over the window (linearizable reads).
    pub fn reads_per_round(&self) -> Option<f64> {
        let rounds = self.profile?.read_rounds;
        (rounds > 0.0).then(|| self.stats.ops as f64 / rounds)
    }
}

impl Point {
    /// The read phase of `op` (`Get`, `LeaseGet` or `StaleGet`).
    pub fn reads_of(&self, op: Op) -> Option<&Phase> {
        match op {
            Op::Get => self.reads.as_ref(),
            Op::LeaseGet => self.lease.as_ref(),
            Op::StaleGet => self.stale.as_ref(),
            Op::Put => None,
        }
    }
}

/// One cluster's sweep over the concurrencies.
pub struct Run {
    pub api: Api,
    pub leader: u64,
    pub mem_start: Vec<Mem>,
    pub mem_end: Vec<Mem>,
    pub points: Vec<Point>,
}

/// Starts a cluster with replica 1 behind `api` in `dir` and sweeps it.
pub fn run(api: Api, plan: &Plan<'_>, dir: &Path) -> Result<Run, String> {
    let mut cluster = Cluster::start(api, dir, plan.kvr_bin)?;
    let mem_start = cluster.mem();
    let mut points = Vec::new();
    for &c in plan.concurrency {
        points.push(point(&mut cluster, api, c, plan)?);
    }
    let mem_end = cluster.mem();
    let leader = cluster.leader;
    cluster.stop()?;
    Ok(Run {
        api,
        leader,
        mem_start,
        mem_end,
        points,
    })
}

fn point(cluster: &mut Cluster, api: Api, c: usize, plan: &Plan<'_>) -> Result<Point, String> {
    let writes = phase(cluster, api, Op::Put, c, plan)?;
    // The C ABI run measures the write path through the ABI; its reads cost the same as the
    // Rust API's plus one copy, which the Rust run already measures.
    let (reads, lease, stale) = if api == Api::Rust {
        (
            Some(phase(cluster, api, Op::Get, c, plan)?),
            Some(phase(cluster, api, Op::LeaseGet, c, plan)?),
            Some(phase(cluster, api, Op::StaleGet, c, plan)?),
        )
    } else {
        (None, None, None)
    };
    Ok(Point {
        concurrency: c,
        writes,
        reads,
        lease,
        stale,
    })
}

fn phase(
    cluster: &mut Cluster,
    api: Api,
    op: Op,
    c: usize,
    plan: &Plan<'_>,
) -> Result<Phase, String> {
    let disk = procfs::disk_stat_file(cluster.dir());
    let mut watch = CpuWatch::new(cluster.pids(), cluster.store(), disk);
    let stats = load::run(cluster.store(), op, c, plan.work, plan.win, &mut watch)?;
    let (cpu, mut profile) = (watch.used, watch.profile);
    if let Some(p) = profile.as_mut() {
        p.client_writes = stats.ops as f64;
    }
    cluster.check_alive()?;
    report_progress(&format!("kvr {} {}", api.name(), op.name()), c, &stats);
    if stats.ops == 0 {
        return Err(format!(
            "kvr {} {} at concurrency {c}: nothing succeeded ({} errors, first: {})",
            api.name(),
            op.name(),
            stats.errors,
            stats.first_error.as_deref().unwrap_or("none")
        ));
    }
    Ok(Phase {
        stats,
        cpu,
        profile,
    })
}

/// One progress line on stderr per measured phase.
pub fn report_progress(what: &str, c: usize, s: &Stats) {
    eprintln!(
        "kvr-bench: {what} c={c}: {}/s p50 {}us p99 {}us p99.9 {}us{}",
        s.per_s,
        s.p50_us,
        s.p99_us,
        s.p999_us,
        match &s.first_error {
            Some(e) => format!(" ({} errors, first: {e})", s.errors),
            None => String::new(),
        }
    );
}

/// Samples every thread's CPU time, and replica 1's counters, at the start and the end of the
/// measured window.
struct CpuWatch<'a> {
    pids: Vec<u32>,
    store: &'a Store,
    before: Vec<CpuSnapshot>,
    used: Vec<CpuUse>,
    profile_before: Option<(Instant, Profile)>,
    profile: Option<Profile>,
    disk: Option<PathBuf>,
}

impl<'a> CpuWatch<'a> {
    fn new(pids: Vec<u32>, store: &'a Store, disk: Option<PathBuf>) -> CpuWatch<'a> {
        CpuWatch {
            disk,
            pids,
            store,
            before: Vec::new(),
            used: Vec::new(),
            profile_before: None,
            profile: None,
        }
    }
}

impl Watch for CpuWatch<'_> {
    fn start(&mut self) {
        self.before = self.pids.iter().map(|&p| procfs::cpu_snapshot(p)).collect();
        self.profile_before =
            Profile::sample(self.store, self.disk.as_deref()).map(|p| (Instant::now(), p));
    }

    fn end(&mut self) {
        self.used = self
            .pids
            .iter()
            .zip(&self.before)
            .map(|(&p, b)| procfs::cpu_use(b, &procfs::cpu_snapshot(p)))
            .collect();
        if let (Some((at, before)), Some(now)) = (
            self.profile_before,
            Profile::sample(self.store, self.disk.as_deref()),
        ) {
            self.profile = Some(now.since(&before, at.elapsed().as_secs_f64()));
        }
    }
}
