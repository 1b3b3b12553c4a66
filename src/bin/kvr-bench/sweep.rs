//! kvr's share of the run: a fresh cluster per API, then every concurrency in turn: writes,
//! and through the Rust API also linearizable and stale reads. The CPU each replica's threads
//! burn during every measured window is recorded, as a first profile.

use std::path::Path;

use crate::cluster::Cluster;
use crate::load::{self, Op, Stats, Watch, Window, Workload};
use crate::procfs::{self, CpuSnapshot, CpuUse, Mem};
use crate::store::Api;

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
}

/// Results at one concurrency.
pub struct Point {
    pub concurrency: usize,
    pub writes: Phase,
    pub reads: Option<Phase>,
    pub stale: Option<Phase>,
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
    let (reads, stale) = if api == Api::Rust {
        (
            Some(phase(cluster, api, Op::Get, c, plan)?),
            Some(phase(cluster, api, Op::StaleGet, c, plan)?),
        )
    } else {
        (None, None)
    };
    Ok(Point {
        concurrency: c,
        writes,
        reads,
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
    let mut watch = CpuWatch::new(cluster.pids());
    let stats = load::run(cluster.store(), op, c, plan.work, plan.win, &mut watch)?;
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
        cpu: watch.used,
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

/// Samples every thread's CPU time at the start and the end of the measured window.
struct CpuWatch {
    pids: Vec<u32>,
    before: Vec<CpuSnapshot>,
    used: Vec<CpuUse>,
}

impl CpuWatch {
    fn new(pids: Vec<u32>) -> CpuWatch {
        CpuWatch {
            pids,
            before: Vec::new(),
            used: Vec::new(),
        }
    }
}

impl Watch for CpuWatch {
    fn start(&mut self) {
        self.before = self.pids.iter().map(|&p| procfs::cpu_snapshot(p)).collect();
    }

    fn end(&mut self) {
        self.used = self
            .pids
            .iter()
            .zip(&self.before)
            .map(|(&p, b)| procfs::cpu_use(b, &procfs::cpu_snapshot(p)))
            .collect();
    }
}
