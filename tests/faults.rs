//! Fault tests: real replica processes under a seeded nemesis (kill -9, SIGSTOP, partitions
//! through per-link proxies, message loss and delay, leader transfer), every history checked
//! for linearizability with porcupine, for lost acknowledged writes and for convergence.
//! Crash recovery (cluster and single node) and disk faults (libfiu, ENOSPC) too.
//!
//! See tests/faults/README.md for the knobs: `KVR_FAULT_SEED`, `KVR_FAULT_SCHEDULES`,
//! `KVR_FAULT_SECS`, `KVR_FAULT_KEEP`.

mod common;
#[path = "faults/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use harness::schedule::{self, Report, Spec};

/// The heavy tests of this file run one at a time: each already keeps both cores busy.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// Where runs keep their files: failed schedules leave their logs and history here.
fn runs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults")
}

/// A fresh base seed per run, unless given: every run explores new schedules, and each
/// schedule's own seed is printed so that a failure can be replayed.
fn base_seed() -> u64 {
    env_u64("KVR_FAULT_BASE_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32)
    })
}

/// Totals over schedules.
#[derive(Default)]
struct Campaign {
    schedules: u64,
    ops: u64,
    unknown: u64,
    acked_adds: u64,
    faults: BTreeMap<String, u64>,
    violations: u64,
    lost: u64,
    phantoms: u64,
    failed: Vec<String>,
}

impl Campaign {
    fn add(&mut self, r: &Report) {
        self.schedules += 1;
        self.ops += r.ops;
        self.unknown += r.unknown;
        self.acked_adds += r.adds_acked;
        for (k, v) in &r.faults {
            *self.faults.entry(k.clone()).or_default() += v;
        }
        self.violations += r.violations;
        self.lost += r.lost;
        self.phantoms += r.phantoms;
        if !r.passed() {
            self.failed.push(format!(
                "seed {} ({}):\n  {}",
                r.seed,
                r.dir.display(),
                r.problems.join("\n  ")
            ));
        }
    }

    fn summary(&self) -> String {
        let faults: u64 = self.faults.values().sum();
        let by_kind: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "schedules={} ops={} unknown_outcomes={} acked_set_writes={} faults={} ({}) \
             violations={} lost_acked_writes={} phantom_writes={} failed_schedules={}",
            self.schedules,
            self.ops,
            self.unknown,
            self.acked_adds,
            faults,
            by_kind.join(" "),
            self.violations,
            self.lost,
            self.phantoms,
            self.failed.len()
        )
    }
}

/// Runs `count` schedules of `secs` seconds (3 and 5 replicas, every kind of fault), or
/// just the one of `KVR_FAULT_SEED`.
#[test]
fn fault_schedules_are_linearizable_and_lose_nothing() {
    let _serial = serial();
    let count = env_u64("KVR_FAULT_SCHEDULES").unwrap_or(8);
    let secs = env_u64("KVR_FAULT_SECS").unwrap_or(30);
    let seeds: Vec<u64> = match env_u64("KVR_FAULT_SEED") {
        Some(seed) => vec![seed],
        None => {
            let base = base_seed();
            eprintln!(
                "fault schedules: base seed {base} (KVR_FAULT_BASE_SEED={base} replays the run)"
            );
            (0..count).map(|i| Spec::seed_for(base, i)).collect()
        }
    };
    let mut campaign = Campaign::default();
    for seed in seeds {
        let spec = Spec::from_seed(seed, secs);
        let report = schedule::run(&spec, &runs_dir());
        eprintln!("{}", report.line());
        campaign.add(&report);
        eprintln!("so far: {}", campaign.summary());
    }
    eprintln!("CAMPAIGN SUMMARY: {}", campaign.summary());
    assert!(
        campaign.failed.is_empty(),
        "{} schedule(s) failed (replay one with KVR_FAULT_SEED=<seed>):\n{}",
        campaign.failed.len(),
        campaign.failed.join("\n")
    );
    assert!(
        campaign.ops > 0 && campaign.faults.values().sum::<u64>() > 0,
        "the schedules did nothing: {}",
        campaign.summary()
    );
}

fn seed_or_random() -> u64 {
    env_u64("KVR_FAULT_SEED").unwrap_or_else(base_seed)
}

/// kill -9 of random replicas (the leader half the time, now and then a majority) during
/// continuous writes; after the last restart every acknowledged write is there, none was
/// applied twice, and the replicas agree.
fn crash_recovery(nodes: usize, secs: u64) {
    let _serial = serial();
    let spec = Spec::crash(seed_or_random(), nodes, secs);
    eprintln!(
        "crash recovery: {} (KVR_FAULT_SEED={} replays it)",
        spec.describe(),
        spec.seed
    );
    let report = schedule::run(&spec, &runs_dir().join("crash"));
    eprintln!("{}", report.line());
    assert!(
        report.passed(),
        "crash recovery failed (seed {}, files in {}):\n{}",
        report.seed,
        report.dir.display(),
        report.problems.join("\n")
    );
    let kills: u64 = report.faults.values().sum();
    assert!(
        kills >= 3,
        "too few kills to say anything: {:?}",
        report.faults
    );
    assert!(
        report.adds_acked > 0,
        "no write was acknowledged: {}",
        report.line()
    );
    let recovered = report
        .status
        .iter()
        .any(|st| st.get("applied_at_open").is_some_and(|v| v != "0"));
    assert!(
        recovered,
        "no replica recovered state from its files: {:?}",
        report.status
    );
}

#[test]
fn crash_recovery_cluster_keeps_every_acknowledged_write() {
    crash_recovery(3, 25);
}

/// A single-node replica acknowledges a write once it is in its own synced log: a crash
/// right after must not lose it.
#[test]
fn crash_recovery_single_node_keeps_every_acknowledged_write() {
    crash_recovery(1, 20);
}
