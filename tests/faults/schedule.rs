//! One fault schedule from start to verdict: start a cluster, run clients and the nemesis,
//! heal, wait for convergence, read everything back, check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::checker;
use super::cluster::{raft_options, Cluster, CONVERGE_TIMEOUT};
use super::history::{History, Op, OpKind, Outcome};
use super::nemesis::{FaultCounts, Kind, Nemesis, KINDS};
use super::process::{Proc, Reply};
use super::rng::Rng;
use super::workload::{read_result, Client, ClientStats, Mix};

/// Everything a schedule does follows from this; `Spec::from_seed` derives it from a seed.
#[derive(Debug, Clone)]
pub struct Spec {
    pub seed: u64,
    pub nodes: usize,
    pub kinds: Vec<Kind>,
    pub secs: u64,
    pub snapshot_entries: u64,
    pub mix: Mix,
    pub hold_ms_max: u64,
    pub quiet_ms_max: u64,
}

impl Spec {
    /// Bit 0 of the seed picks 3 or 5 replicas; bits 1..4 pick the kind of fault of the
    /// first episode; the rest of the seed adds up to two more kinds and the other settings.
    pub fn from_seed(seed: u64, secs: u64) -> Spec {
        let nodes = if seed & 1 == 0 { 3 } else { 5 };
        let mut rng = Rng::new(seed);
        let mut kinds = vec![KINDS[((seed >> 1) & 0xf) as usize % KINDS.len()]];
        for _ in 0..rng.below(3) {
            let k = *rng.pick(&KINDS);
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        Spec {
            seed,
            nodes,
            kinds,
            secs,
            snapshot_entries: *rng.pick(&[300, 1000, 2000]),
            mix: Mix {
                keys: nodes + 1,
                set_percent: 35,
                read_percent: 50,
                lease_percent: 50,
                delete_percent: 10,
            },
            hold_ms_max: rng.range(3000, 14_000),
            quiet_ms_max: rng.range(1000, 4000),
        }
    }

    /// Crash recovery: kill -9 only, often, during continuous writes.
    pub fn crash(seed: u64, nodes: usize, secs: u64) -> Spec {
        let mut s = Spec::from_seed(seed, secs);
        s.nodes = nodes;
        s.kinds = vec![Kind::Kill];
        s.mix.keys = nodes + 1;
        s.hold_ms_max = 2500;
        s.quiet_ms_max = 1500;
        s
    }

    /// The seed of schedule `i` of a run whose base seed is `base`: both cluster sizes and
    /// every kind of fault come up within the first few schedules.
    pub fn seed_for(base: u64, i: u64) -> u64 {
        let mut r = Rng::new(base).fork(i);
        let kind = i % KINDS.len() as u64;
        (r.next_u64() & !0x1f) | (kind << 1) | (i & 1)
    }

    pub fn describe(&self) -> String {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        format!(
            "seed={} nodes={} faults={} secs={} snapshot_entries={}",
            self.seed,
            self.nodes,
            kinds.join("+"),
            self.secs,
            self.snapshot_entries
        )
    }
}

/// What a schedule found.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub nodes: usize,
    pub ops: u64,
    pub ok: u64,
    pub unknown: u64,
    pub failed_reads: u64,
    pub lease_reads: u64,
    /// Lease reads the replicas (since their last start) answered from a leader's lease.
    pub lease_local: u64,
    pub adds_acked: u64,
    pub faults: FaultCounts,
    pub violations: u64,
    pub lost: u64,
    pub phantoms: u64,
    /// Everything wrong, in words; empty when the schedule passed.
    pub problems: Vec<String>,
    pub checker: String,
    pub digest: String,
    /// Raft messages the proxies forwarded and dropped.
    pub frames: (u64, u64),
    /// Where the schedule's time went.
    pub timing: String,
    /// Highest term any replica reached (elections happened when it is above a few).
    pub term: u64,
    pub dir: PathBuf,
    /// Per node: the parsed `status` at the end.
    pub status: Vec<HashMap<String, String>>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn line(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        format!(
            "seed={} nodes={} ops={} ok={} unknown={} failed_reads={} lease_reads={} lease_local={} \
             acked_adds={} \
             faults=[{}] \
             frames={}/{}dropped term={} violations={} lost={} phantoms={} {} | {} | {}",
            self.seed,
            self.nodes,
            self.ops,
            self.ok,
            self.unknown,
            self.failed_reads,
            self.lease_reads,
            self.lease_local,
            self.adds_acked,
            faults.join(" "),
            self.frames.0,
            self.frames.1,
            self.term,
            self.violations,
            self.lost,
            self.phantoms,
            if self.passed() { "PASS" } else { "FAIL" },
            self.checker,
            self.timing
        )
    }
}

/// Runs one schedule with its data under `root`. The run directory is removed when the
/// schedule passes (unless `KVR_FAULT_KEEP` is set) and kept, with logs, history and any
/// visualization, when it fails.
pub fn run(spec: &Spec, root: &Path) -> Report {
    let dir = root.join(format!("seed-{}", spec.seed));
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("schedule {} in {}", spec.describe(), dir.display());
    let opts = raft_options(spec.snapshot_entries);
    let booted = Instant::now();
    let disk = spec.kinds.contains(&Kind::Disk);
    if disk {
        super::disk::require_fiu();
    }
    let cluster = Cluster::start_with(spec.nodes, &dir, &opts, spec.seed, |_| None, disk);
    let mut report = Report {
        seed: spec.seed,
        nodes: spec.nodes,
        dir: dir.clone(),
        ..Report::default()
    };
    if let Err(e) = wait_leader(&cluster) {
        report.problems.push(e);
        return report;
    }
    let history = Arc::new(History::new());
    let stats = Arc::new(ClientStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rng = Rng::new(spec.seed);
    let clients = std::sync::Mutex::new(Vec::new());
    let spawn_client = |p: Arc<Proc>| {
        let c = Client::new(
            p.clone(),
            history.clone(),
            stats.clone(),
            spec.mix.clone(),
            rng.fork(p.id),
        );
        let stop = stop.clone();
        let h = thread::spawn(move || c.run(&stop));
        clients.lock().unwrap_or_else(|p| p.into_inner()).push(h);
    };
    for p in cluster.members() {
        spawn_client(p);
    }
    let mut nemesis = Nemesis {
        cluster: &cluster,
        on_join: &spawn_client,
        problems: Vec::new(),
        kinds: spec.kinds.clone(),
        rng: rng.fork(0),
        hold_ms_max: spec.hold_ms_max,
        quiet_ms_max: spec.quiet_ms_max,
        counts: FaultCounts::new(),
        started: Instant::now(),
        disk_faulted: Vec::new(),
    };
    let started = Instant::now();
    nemesis.run(
        Instant::now() + Duration::from_secs(spec.secs),
        &AtomicBool::new(false),
    );
    let faulted = started.elapsed();
    report.problems.append(&mut nemesis.problems);
    report.faults = nemesis.counts;
    stop.store(true, Ordering::SeqCst);
    for c in clients.into_inner().unwrap_or_else(|p| p.into_inner()) {
        c.join().expect("client thread");
    }
    report.ops = stats.ops.load(Ordering::Relaxed);
    report.ok = stats.ok.load(Ordering::Relaxed);
    report.unknown = stats.unknown.load(Ordering::Relaxed);
    report.failed_reads = stats.failed_reads.load(Ordering::Relaxed);
    report.lease_reads = stats.lease_reads.load(Ordering::Relaxed);
    let drained = started.elapsed();
    verify(spec, &cluster, &history, &mut report);
    report.timing = format!(
        "leader after {:.0}s, faults {:.0}s, clients drained {:.0}s, checked {:.0}s",
        (started - booted).as_secs_f64(),
        faulted.as_secs_f64(),
        (drained - faulted).as_secs_f64(),
        (started.elapsed() - drained).as_secs_f64()
    );
    if let Some(net) = &cluster.net {
        report.frames = net.frame_counts();
    }
    cluster.stop();
    let keep = std::env::var_os("KVR_FAULT_KEEP").is_some();
    if report.passed() && !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    report
}

fn wait_leader(cluster: &Cluster) -> Result<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = cluster.leader();
        if l != 0 {
            return Ok(l);
        }
        if Instant::now() > deadline {
            return Err("no leader within 60 s of starting".into());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The end-of-run checks: convergence, final reads, lost writes, status, linearizability.
pub fn verify(spec: &Spec, cluster: &Cluster, history: &History, report: &mut Report) {
    match cluster.converge(CONVERGE_TIMEOUT) {
        Ok(d) => report.digest = d,
        Err(e) => report.problems.push(e),
    }
    final_reads(spec, cluster, history, report);
    check_set(cluster, history, report);
    check_status(cluster, report);
    let path = report.dir.join("history.jsonl");
    std::fs::write(&path, history.to_jsonl()).expect("writing the history");
    let verdict = checker::check(&path, &report.dir);
    report.checker = verdict.summary.clone();
    if !verdict.linearizable {
        report.violations += 1;
        report.problems.push(format!(
            "history is not linearizable: {} ({})",
            verdict.summary,
            path.display()
        ));
    }
}

/// A linearizable read of every register key on every replica, into the history.
fn final_reads(spec: &Spec, cluster: &Cluster, history: &History, report: &mut Report) {
    for p in &cluster.members() {
        for k in 0..spec.mix.keys {
            let key = format!("r{k}");
            let call_ns = history.now_ns();
            let r = p.call(&format!("get {key}"), Duration::from_secs(60));
            let ret_ns = history.now_ns();
            match read_result(&r) {
                Some(v) => history.record(Op {
                    client: 999_000_000 + p.id,
                    key,
                    kind: OpKind::Get(v),
                    call_ns,
                    ret_ns: Some(ret_ns),
                }),
                None => report
                    .problems
                    .push(format!("node {}: final read of {key} failed: {r:?}", p.id)),
            }
        }
    }
}

/// Every acknowledged add must be present on every replica (they have converged: reading
/// one replica locally is enough), and no add that definitely failed may be.
fn check_set(cluster: &Cluster, history: &History, report: &mut Report) {
    let p = &cluster.members()[0];
    for (element, outcome) in history.adds() {
        let r = p.call(&format!("sget {element}"), Duration::from_secs(60));
        let present = match &r {
            Reply::Line(l) if l == "NOT_FOUND" => false,
            Reply::Line(l) if !l.starts_with("ERR") => true,
            other => {
                report.problems.push(format!(
                    "node {}: reading {element} failed: {other:?}",
                    p.id
                ));
                continue;
            }
        };
        match (outcome, present) {
            (Outcome::Ok, false) => {
                report.lost += 1;
                report
                    .problems
                    .push(format!("acknowledged write of {element} is lost"));
            }
            (Outcome::Failed, true) => {
                report.phantoms += 1;
                report
                    .problems
                    .push(format!("{element} is present although its write failed"));
            }
            _ => {}
        }
        if outcome == Outcome::Ok {
            report.adds_acked += 1;
        }
    }
}

/// Per replica: no entry counted as applied twice (`entries_applied` is exactly the
/// distance from the applied index at open, unless a snapshot replaced the state), and the
/// replica did not fail closed.
fn check_status(cluster: &Cluster, report: &mut Report) {
    for p in &cluster.members() {
        let st = p.status();
        if !st.contains_key("applied") {
            report
                .problems
                .push(format!("node {}: no status after healing: {st:?}", p.id));
            continue;
        }
        let n = |k: &str| st.get(k).and_then(|v| v.parse::<i128>().ok()).unwrap_or(0);
        let since_open = n("applied") - n("applied_at_open");
        if n("snapshots_installed") == 0 && n("entries_applied") != since_open {
            report.problems.push(format!(
                "node {}: entries_applied={} but applied - applied_at_open = {since_open}",
                p.id,
                n("entries_applied"),
            ));
        }
        if n("applied") > n("commit") {
            report.problems.push(format!(
                "node {}: applied {} beyond commit {}",
                p.id,
                n("applied"),
                n("commit")
            ));
        }
        report.term = report.term.max(n("term") as u64);
        report.status.push(st);
        let stats = p.must("stats", Duration::from_secs(60));
        report.lease_local += crate::common::json_numbers(&stats, "lease_reads_local")
            .first()
            .copied()
            .unwrap_or(0);
    }
}
