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

use harness::cluster::{raft_options, Cluster};
use harness::process::Reply;
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
    lease_reads: u64,
    lease_local: u64,
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
        self.lease_reads += r.lease_reads;
        self.lease_local += r.lease_local;
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
            "schedules={} ops={} unknown_outcomes={} acked_set_writes={} lease_reads={} \
             lease_local={} faults={} ({}) \
             violations={} lost_acked_writes={} phantom_writes={} failed_schedules={}",
            self.schedules,
            self.ops,
            self.unknown,
            self.acked_adds,
            self.lease_reads,
            self.lease_local,
            faults,
            by_kind.join(" "),
            self.violations,
            self.lost,
            self.phantoms,
            self.failed.len()
        )
    }
}

/// Runs a schedule; a panic in the harness itself fails that schedule, not the campaign.
fn run_caught(spec: &Spec) -> Report {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        schedule::run(spec, &runs_dir())
    }));
    run.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        Report {
            seed: spec.seed,
            nodes: spec.nodes,
            dir: runs_dir().join(format!("seed-{}", spec.seed)),
            problems: vec![format!("the schedule panicked: {msg}")],
            ..Report::default()
        }
    })
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
        let report = run_caught(&spec);
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
    assert!(
        campaign.lease_reads < 100 || campaign.lease_local > 0,
        "no lease read was answered from a leader's lease, so the checker never saw one: {}",
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

/// Puts `key` through `node` until one attempt is acknowledged (each failed attempt may
/// or may not have applied: the value is the same, so that does not matter).
fn put_acked(node: &harness::process::Proc, key: &str, value: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let r = node.call(
            &format!("put {key} {value}"),
            harness::process::REPLY_TIMEOUT,
        );
        if r == Reply::Line("OK".into()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {}: put {key} never acknowledged, last reply {r:?}; log:\n{}",
            node.id,
            node.tail_log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Every acknowledged key is on every replica, with its value.
fn assert_present(cluster: &Cluster, acked: &[(String, String)]) {
    for p in &cluster.members() {
        for (k, v) in acked {
            let got = p.must(&format!("sget {k}"), std::time::Duration::from_secs(30));
            assert_eq!(&got, v, "node {}: acknowledged write of {k} is lost", p.id);
        }
    }
}

fn expect_io_error(r: &Reply, what: &str) {
    match r {
        Reply::Line(l) if l.starts_with("ERR -6:") => {}
        other => panic!("{what}: expected ERR -6 (I/O), got {other:?}"),
    }
}

/// fsync/fdatasync failing with EIO in one replica (the leader or a follower): the caller
/// of a write through it gets `ERR -6` and no acknowledgement, the replica fails closed
/// (every later call reports the same error), the others go on, and once restarted without
/// the fault it recovers from its files, uncorrupted, and catches up.
fn disk_eio(victim_leads: bool, points: &[&str]) {
    let _serial = serial();
    harness::disk::require_fiu();
    let seed = seed_or_random();
    let dir = runs_dir().join(format!("disk-eio-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    let ctl = dir.join("fiu-ctrl");
    let victim = 3;
    let fiu = harness::disk::fiu_program(&ctl);
    let cluster = Cluster::start_with(
        3,
        &dir,
        &raft_options(1000),
        seed,
        |id| (id == victim).then(|| fiu.clone()),
        false,
    );
    let leader = wait_leader(&cluster);
    let want = if victim_leads { victim } else { 1 };
    if (leader == victim) != victim_leads {
        let r = cluster
            .proc(leader)
            .call(&format!("transfer {want}"), harness::process::REPLY_TIMEOUT);
        eprintln!("transfer {leader} -> {want}: {r:?}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while (cluster.leader() == victim) != victim_leads {
        assert!(
            std::time::Instant::now() < deadline,
            "leadership did not move as asked"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut acked = Vec::new();
    for i in 0..30 {
        let p = &cluster.members()[i % 3];
        let (k, v) = (format!("pre-{i}"), format!("v{i}"));
        put_acked(p, &k, &v);
        acked.push((k, v));
    }

    let v = cluster.proc(victim);
    let pid = v.pid().expect("victim runs");
    harness::disk::fiu_ctrl(&ctl, pid, points, Some(harness::disk::EIO));
    let r = v.call("put during-0 x", harness::process::REPLY_TIMEOUT);
    expect_io_error(&r, "a write through the replica whose fsync fails");
    expect_io_error(
        &v.call("get pre-0", harness::process::REPLY_TIMEOUT),
        "a read after it failed",
    );
    expect_io_error(
        &v.call("put during-1 y", harness::process::REPLY_TIMEOUT),
        "a write after it failed",
    );

    // The fault clears, but the process stays as it was: it must not resume as if its
    // unsynced writes were durable (after a failed fsync the kernel may have dropped them).
    harness::disk::fiu_ctrl(&ctl, pid, points, None);
    expect_io_error(
        &v.call("put during-2 z", harness::process::REPLY_TIMEOUT),
        "a write once the fault cleared, before a restart",
    );

    // The other two are a majority and go on (electing a new leader if the victim led).
    for i in 0..30 {
        let p = &cluster.members()[i % 2];
        let (k, v) = (format!("post-{i}"), format!("w{i}"));
        put_acked(p, &k, &v);
        acked.push((k, v));
    }
    // The fault clears: the replica restarts without it and recovers from its own files.
    v.kill9();
    v.set_program(vec![common::kvr_bin().display().to_string()]);
    v.start();
    let digest = cluster
        .converge(harness::cluster::CONVERGE_TIMEOUT)
        .unwrap_or_else(|e| panic!("after the fault cleared: {e}"));
    eprintln!("converged: {digest}");
    assert_present(&cluster, &acked);
    for (k, written) in [("during-0", "x"), ("during-1", "y"), ("during-2", "z")] {
        let got = v.must(&format!("get {k}"), std::time::Duration::from_secs(30));
        assert!(
            got == "NOT_FOUND" || got == written,
            "unacknowledged write {k} has a value nobody wrote: {got}"
        );
    }
    let log = std::fs::read_to_string(&v.log).unwrap_or_default();
    assert!(
        !log.contains("corrupt"),
        "the replica reports corruption:\n{log}"
    );
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn disk_fault_fsync_eio_on_a_follower_fails_closed_and_recovers() {
    disk_eio(false, harness::disk::SYNC_POINTS);
}

#[test]
fn disk_fault_fsync_eio_on_the_leader_fails_closed_and_recovers() {
    disk_eio(true, harness::disk::SYNC_POINTS);
}

/// Page writes (pwrite) failing with EIO, on the leader.
#[test]
fn disk_fault_write_eio_on_the_leader_fails_closed_and_recovers() {
    disk_eio(true, harness::disk::WRITE_POINTS);
}

/// A single-node replica whose disk fills up (a real ENOSPC from a small tmpfs; injected
/// through libfiu where mounting is not permitted): the write that does not fit gets
/// `ERR -6` and no acknowledgement, the replica fails closed, and once there is room again
/// it reopens its files with every acknowledged write.
#[test]
fn disk_full_fails_closed_and_recovers() {
    let _serial = serial();
    let seed = seed_or_random();
    let dir = runs_dir().join(format!("disk-full-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    // The replica's own directory is the small file system; its log (stderr) stays outside.
    let mnt = dir.join("n1");
    // Room for the log segments kvr preallocates when it opens (64 MiB each; two on a fresh
    // replica) and some data, then no more.
    let tmpfs = harness::disk::Tmpfs::mount(&mnt, 160);
    let ctl = dir.join("fiu-ctrl");
    let injected = tmpfs.is_none();
    if injected {
        harness::disk::require_fiu();
        eprintln!("cannot mount a tmpfs here: injecting ENOSPC with libfiu instead");
    }
    let fiu = harness::disk::fiu_program(&ctl);
    let cluster = Cluster::start_with(
        1,
        &dir,
        &raft_options(1000),
        seed,
        |_| injected.then(|| fiu.clone()),
        false,
    );
    let node = cluster.proc(1);
    let value = "x".repeat(64 << 10);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..6000 {
        if injected && i == 50 {
            let pid = node.pid().expect("running");
            harness::disk::fiu_ctrl(
                &ctl,
                pid,
                harness::disk::WRITE_POINTS,
                Some(harness::disk::ENOSPC),
            );
        }
        let key = format!("big-{i}");
        match node.call(
            &format!("put {key} {value}"),
            harness::process::REPLY_TIMEOUT,
        ) {
            Reply::Line(l) if l == "OK" => acked.push(key),
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    let refused = refused.expect("the disk never filled up");
    eprintln!("after {} acknowledged writes: {refused:?}", acked.len());
    expect_io_error(
        &refused,
        &format!(
            "a write that does not fit on the disk (process {}; log:\n{})",
            node.exit_status(),
            node.tail_log()
        ),
    );
    assert!(!acked.is_empty(), "nothing fitted at all");
    expect_io_error(
        &node.call("get big-0", harness::process::REPLY_TIMEOUT),
        "a read after the replica failed",
    );
    // Room again: the replica restarts and has every acknowledged write.
    node.kill9();
    match &tmpfs {
        Some(t) => t.resize(512),
        None => node.set_program(vec![common::kvr_bin().display().to_string()]),
    }
    node.start();
    for key in &acked {
        let got = node.must(&format!("get {key}"), std::time::Duration::from_secs(60));
        assert_eq!(got, value, "acknowledged write of {key} is lost");
    }
    assert_eq!(
        node.must("put after-full ok", std::time::Duration::from_secs(60)),
        "OK"
    );
    cluster.stop();
    drop(cluster);
    drop(tmpfs);
    let _ = std::fs::remove_dir_all(&dir);
}

fn wait_leader(cluster: &Cluster) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let l = cluster.leader();
        if l != 0 {
            return l;
        }
        assert!(std::time::Instant::now() < deadline, "no leader");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The checker is able to say no: a read that returns a value overwritten before it began
/// is a violation, while an unknown write that a later read observes is fine.
#[test]
fn checker_rejects_a_stale_read_and_accepts_unknown_writes() {
    let dir = runs_dir().join(format!("checker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = r#"{"client":0,"op":"put","key":"r0","value":"a","call":0,"ret":10}
{"client":1,"op":"put","key":"r0","value":"b","call":20,"ret":-1}
{"client":2,"op":"get","key":"r0","found":true,"value":"a","call":30,"ret":40}
{"client":2,"op":"get","key":"r0","found":true,"value":"b","call":50,"ret":60}
{"client":3,"op":"delete","key":"r1","call":0,"ret":-1}
{"client":4,"op":"get","key":"r1","found":false,"call":70,"ret":80}
"#;
    let path = dir.join("ok.jsonl");
    std::fs::write(&path, ok).unwrap();
    let v = harness::checker::check(&path, &dir);
    assert!(v.linearizable, "{}", v.summary);
    let stale = format!(
        "{ok}{}\n",
        r#"{"client":2,"op":"get","key":"r0","found":true,"value":"a","call":90,"ret":95}"#
    );
    let path = dir.join("stale.jsonl");
    std::fs::write(&path, stale).unwrap();
    let v = harness::checker::check(&path, &dir);
    assert!(!v.linearizable, "a stale read passed: {}", v.summary);
    assert!(
        dir.join("linearizability.html").exists(),
        "no visualization"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The proxy really drops, and really cuts: frames sent through a link with 100 % loss
/// never arrive (the hello does), and a cut link refuses connections until healed.
#[test]
fn proxy_drops_frames_and_cuts_links() {
    use std::io::{Read, Write};
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = harness::proxy::Proxy::start(target.local_addr().unwrap(), 1);
    let frame = |kind: u8, body: &[u8]| {
        let mut f = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        f.push(kind);
        f.extend_from_slice(body);
        f
    };
    proxy.ctl.set_loss(1000, 0, 0);
    let mut c = std::net::TcpStream::connect(proxy.addr).unwrap();
    c.write_all(&frame(1, b"hello")).unwrap();
    for _ in 0..10 {
        c.write_all(&frame(3, b"raft")).unwrap();
    }
    // The proxy works on its own threads: heal only once it has judged all ten.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while proxy
        .ctl
        .frames_dropped
        .load(std::sync::atomic::Ordering::SeqCst)
        < 10
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the proxy dropped too few frames"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    proxy.ctl.heal();
    c.write_all(&frame(3, b"last")).unwrap();
    let (mut s, _) = target.accept().unwrap();
    let mut got = vec![0u8; frame(1, b"hello").len() + frame(3, b"last").len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, [frame(1, b"hello"), frame(3, b"last")].concat());

    proxy.ctl.cut();
    let mut buf = [0u8; 1];
    assert_eq!(
        s.read(&mut buf).unwrap_or(0),
        0,
        "a cut link keeps its connection"
    );
    let mut c2 = std::net::TcpStream::connect(proxy.addr).unwrap();
    let _ = c2.write_all(&frame(1, b"hello"));
    c2.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    assert_eq!(
        c2.read(&mut buf).unwrap_or(0),
        0,
        "a cut link accepted a connection"
    );
    drop(c);
}

/// kvr bug, found by the fault campaign (seed 947937384260230982): a follower that has
/// received a snapshot but not yet finished installing it panics in raft-rs
/// (`unexpected error getting unapplied entries [applied+1, snapshot+1): Store(Compacted)`)
/// when its election timer fires meanwhile: raft's applied index still lags, `hup` reads
/// the entries between it and the snapshot from the log store, which no longer has them.
/// The replica then fails closed with `ERR -8`. Here: a lagging follower gets a large
/// snapshot, and Raft messages to it are dropped (snapshot streams pass) from the moment
/// it receives it, so its election timer runs out during the install.
#[test]
fn election_timeout_during_snapshot_install_does_not_panic() {
    let _serial = serial();
    let dir = runs_dir().join(format!("snapshot-hup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts: Vec<(String, String)> = [
        ("tick_ms", "10"),
        ("election_ticks", "10"),
        ("heartbeat_ticks", "2"),
        ("request_timeout_ms", "10000"),
        ("snapshot_entries", "500"),
        ("compaction_margin", "50"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cluster = Cluster::start(3, &dir, &opts, 1);
    let leader = wait_leader(&cluster);
    let victim = if leader == 1 { 2 } else { 1 };
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != victim).collect();
    let net = cluster.net.as_ref().expect("a cluster has a network");
    net.partition(&[vec![victim], others.clone()], false);
    let fill = cluster.proc(leader).must(
        "fill bulk 20000 1024 16",
        std::time::Duration::from_secs(300),
    );
    assert!(fill.starts_with("OK"), "fill: {fill}");

    let log = cluster.proc(victim).log.clone();
    let seen = std::fs::read_to_string(&log).unwrap_or_default().len();
    net.heal();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .get(seen..)
            .is_some_and(|t| t.contains("received snapshot"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no snapshot was sent");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    for &o in &others {
        net.link(o, victim).set_loss(1000, 0, 0);
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    net.heal();
    let converged = cluster.converge(harness::cluster::CONVERGE_TIMEOUT);
    let v = cluster.proc(victim);
    assert!(
        converged.is_ok(),
        "{}\nnode {victim} log:\n{}",
        converged.unwrap_err(),
        v.tail_log()
    );
    cluster.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
