//! The data model across replicas in separate processes, through the Rust API (the `kvr` CLI)
//! and through the C ABI (the C example host): atomic batches, CAS, append, scans, read
//! consistency, the change feed, TTL, stats, backup and restore, exactly-once writes.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use common::{build_c_host, json_numbers, json_strings, kvr_bin, wait_until, Cluster, FAST_RAFT};

/// The host programs: the CLI (Rust API) and the C example (C ABI).
fn hosts() -> Vec<(&'static str, String)> {
    static C_HOST: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, c) = C_HOST.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let bin = build_c_host(d.path());
        (d, bin)
    });
    vec![
        ("rust", kvr_bin().display().to_string()),
        ("c", c.display().to_string()),
    ]
}

fn cluster(host: &str, extra: &[(&str, &str)]) -> Cluster {
    let mut opts = FAST_RAFT.to_vec();
    opts.extend_from_slice(extra);
    let host = host.to_string();
    Cluster::start_with(3, &opts, move |_| vec![host.clone()])
}

fn others(leader: u64) -> (u64, u64) {
    let mut it = (1..=3).filter(|&i| i != leader);
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn batches_cas_append_and_scans_through_both_apis() {
    for (name, host) in hosts() {
        let mut c = cluster(&host, &[]);
        let leader = c.wait_leader();
        let (f1, f2) = others(leader);
        // A batch made on a follower lands whole on every replica.
        assert_eq!(
            c.node(f1)
                .cmd("batch put b1 1 put b2 2 put b3 3 del nothing"),
            "OK",
            "{name}"
        );
        for id in 1..=3 {
            assert_eq!(c.node(id).get("b2"), "2", "{name} node {id}");
        }
        // An invalid write makes the whole batch fail and nothing is written.
        let too_long = "k".repeat(600);
        let reply = c.node(f1).cmd(&format!("batch put b9 9 put {too_long} v"));
        assert!(reply.starts_with("ERR -2"), "{name}: {reply}");
        assert_eq!(c.node(leader).get("b9"), "NOT_FOUND", "{name}");
        // CAS from two replicas: exactly one wins.
        assert_eq!(c.node(f2).cmd("casnew lock owner-a"), "OK", "{name}");
        assert_eq!(
            c.node(f1).cmd("casnew lock owner-b"),
            "CAS_FAILED",
            "{name}"
        );
        assert_eq!(c.node(f1).cmd("cas lock owner-b x"), "CAS_FAILED", "{name}");
        assert_eq!(c.node(f1).cmd("cas lock owner-a owner-b"), "OK", "{name}");
        assert_eq!(c.node(leader).get("lock"), "owner-b", "{name}");
        // Append, from several replicas, in order.
        for (i, id) in [leader, f1, f2, leader].into_iter().enumerate() {
            assert_eq!(c.node(id).cmd(&format!("append log {i}")), "OK", "{name}");
        }
        assert_eq!(c.node(f2).get("log"), "0123", "{name}");
        // Scans: range, open ends, limit with continuation, prefix; linearizable on followers.
        assert_eq!(
            c.node(f2).cmd("scan b1 b3 10"),
            r#"{"items":[["b1","1"],["b2","2"]],"next":null}"#,
            "{name}"
        );
        assert_eq!(
            c.node(f1).cmd("scan b2 - 1"),
            r#"{"items":[["b2","2"]],"next":"b3"}"#,
            "{name}"
        );
        assert_eq!(
            c.node(f1).cmd("scan b3 - 1"),
            r#"{"items":[["b3","3"]],"next":"lock"}"#,
            "{name}"
        );
        assert_eq!(
            c.node(f2).cmd("prefix b 10"),
            r#"{"items":[["b1","1"],["b2","2"],["b3","3"]],"next":null}"#
        );
        assert_eq!(c.node(leader).cmd("delete b2"), "OK");
        assert_eq!(
            c.node(f1).cmd("prefix b 10"),
            r#"{"items":[["b1","1"],["b3","3"]],"next":null}"#,
            "{name}"
        );
        let reply = c.node(f1).cmd("scan b a 10");
        assert!(reply.starts_with("ERR -2"), "{name}: {reply}");
        // Lease reads on the leader and on a follower see the latest write.
        assert_eq!(c.node(f2).cmd("put fresh 1"), "OK");
        assert_eq!(c.node(leader).cmd("lget fresh"), "1", "{name}");
        assert_eq!(c.node(f1).cmd("lget fresh"), "1", "{name}");
        assert_eq!(
            c.node(f1).sget("fresh").len(),
            1,
            "{name}: a stale read still reads the local copy"
        );
    }
}

#[test]
fn ttl_expiry_is_decided_once_and_seen_by_every_replica_at_the_same_index() {
    for (name, host) in hosts() {
        let mut c = cluster(&host, &[]);
        let leader = c.wait_leader();
        let (f1, _) = others(leader);
        assert_eq!(c.node(f1).cmd("putttl session 600 token"), "OK", "{name}");
        assert_eq!(c.node(f1).cmd("put keep forever"), "OK");
        assert_eq!(c.node(leader).get("session"), "token", "{name}");
        std::thread::sleep(Duration::from_millis(700));
        let mut expire_at = Vec::new();
        for id in 1..=3 {
            assert_eq!(
                c.node(id).get("session"),
                "NOT_FOUND",
                "{name}: node {id} hides the expired key"
            );
            wait_until("the expiry entry applies", Duration::from_secs(20), || {
                c.node(id)
                    .cmd("watch session 1 2 100")
                    .contains("\"kind\":\"expire\"")
            });
            let events = c.node(id).cmd("watch session 1 2 100");
            expire_at.push(json_numbers(&events, "index")[1]);
        }
        assert!(
            expire_at.iter().all(|&i| i == expire_at[0]),
            "{name}: expiry indexes differ: {expire_at:?}"
        );
        assert_eq!(c.node(leader).get("keep"), "forever");
        // Overwriting a key removes its deadline.
        assert_eq!(c.node(leader).cmd("putttl renewed 300 a"), "OK");
        assert_eq!(c.node(leader).cmd("put renewed b"), "OK");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(c.node(f1).get("renewed"), "b", "{name}");
    }
}

#[test]
fn watch_resumes_after_restart_without_gaps_or_duplicates() {
    for (name, host) in hosts() {
        let mut c = cluster(&host, &[]);
        let leader = c.wait_leader();
        let (f1, _) = others(leader);
        for i in 0..30 {
            assert_eq!(c.node(leader).cmd(&format!("put w{i:02} {i}")), "OK");
        }
        assert_eq!(c.node(leader).cmd("put other x"), "OK");
        let first = c.node(f1).cmd("watch w 1 100 200");
        let mut keys = json_strings(&first, "key");
        let indexes = json_numbers(&first, "index");
        assert_eq!(keys.len(), 30, "{name}: {first}");
        let last = *indexes.last().unwrap();
        c.node(f1).kill9();
        for i in 30..60 {
            assert_eq!(c.node(leader).cmd(&format!("put w{i:02} {i}")), "OK");
        }
        assert_eq!(c.node(leader).cmd("delete w00"), "OK");
        c.node(f1).start();
        let second = c.node(f1).cmd(&format!("watch w {} 100 500", last + 1));
        keys.extend(json_strings(&second, "key"));
        let kinds = json_strings(&second, "kind");
        let mut want: Vec<String> = (0..60).map(|i| format!("w{i:02}")).collect();
        want.push("w00".into());
        assert_eq!(keys, want, "{name}: every change once, in order");
        assert_eq!(kinds.last().map(String::as_str), Some("delete"), "{name}");
    }
}

/// Fills a 3-replica cluster opened with `option` through one writer (`fill` arguments), then
/// checks that the start of history has left the watch window and its last entries have not.
fn assert_watch_window(option: (&str, &str), fill: &str) {
    let mut c = cluster(&hosts()[0].1, &[option]);
    let leader = c.wait_leader();
    let count = fill
        .split_whitespace()
        .nth(1)
        .expect("fill PREFIX COUNT ...");
    assert_eq!(
        c.node(leader).cmd(&format!("fill {fill}")),
        format!("OK {count}")
    );
    let reply = c.node(leader).cmd("watch - 1 1 10");
    assert!(reply.starts_with("ERR -11"), "{reply}");
    let applied = c.node(leader).status_u64("applied");
    let recent = c
        .node(leader)
        .cmd(&format!("watch - {} 1 1000", applied - 5));
    assert!(recent.starts_with('['), "{recent}");
    assert!(!json_strings(&recent, "key").is_empty(), "{recent}");
}

#[test]
fn watch_reports_compacted_history() {
    // One writer, so that every write is an entry of its own (the window counts entries).
    assert_watch_window(("watch_retain_entries", "20"), "z 2100 8 1");
}

#[test]
fn watch_window_is_also_bounded_in_bytes() {
    // The entry window alone (10 000) would keep every change below; 4 KiB holds ~40 of them.
    assert_watch_window(("watch_retain_bytes", "4096"), "b 300 64 1");
}

#[test]
fn batch_is_all_or_nothing_across_leader_crashes() {
    let mut c = cluster(&hosts()[0].1, &[]);
    for round in 0..6 {
        let leader = c.wait_leader();
        let (f1, _) = others(leader);
        let ops: Vec<String> = (0..20).map(|i| format!("put r{round}-{i} v")).collect();
        c.node(f1).send(&format!("batch {}", ops.join(" ")));
        std::thread::sleep(Duration::from_millis(2 * round as u64));
        c.node(leader).kill9();
        let reply = c.node(f1).recv("batch", Duration::from_secs(60));
        c.node(leader).start();
        c.wait_leader();
        let present: Vec<bool> = (0..20)
            .map(|i| c.node(f1).get(&format!("r{round}-{i}")) == "v")
            .collect();
        assert!(
            present.iter().all(|&p| p) || present.iter().all(|&p| !p),
            "round {round}: {present:?}"
        );
        if reply == "OK" {
            assert!(present[0], "round {round}: acknowledged batch missing");
        }
    }
}

#[test]
fn a_write_whose_reply_was_lost_is_retried_and_applied_once() {
    // Every link into node 3 goes through a proxy that can stall it.
    let mut opts = FAST_RAFT.to_vec();
    opts.push(("request_timeout_ms", "20000"));
    let (mut c, proxies) = Cluster::start_with_proxied_victim(3, &opts, hosts()[0].1.clone(), 3);
    if c.wait_leader() == 3 {
        assert_eq!(c.node(3).cmd("transfer 1"), "OK");
    }
    let leader = c.wait_leader();
    assert_eq!(c.node(3).cmd("append tokens ,t0"), "OK");
    for round in 1..=3 {
        // Node 3's append reaches the leader and commits with the other follower, but nothing
        // comes back to node 3: its proposal looks lost, so it proposes the same request again.
        for p in &proxies {
            p.pause(true);
        }
        c.node(3).send(&format!("append tokens ,t{round}"));
        std::thread::sleep(Duration::from_millis(1500));
        assert!(
            c.node(leader)
                .get("tokens")
                .ends_with(&format!(",t{round}")),
            "committed without node 3"
        );
        for p in &proxies {
            p.pause(false);
        }
        assert_eq!(c.node(3).recv("append", Duration::from_secs(60)), "OK");
    }
    let value = c.node(3).get("tokens");
    assert_eq!(value, ",t0,t1,t2,t3", "each append applied exactly once");
    for id in 1..=3 {
        assert!(
            c.node(id).status_u64("duplicates") >= 1,
            "node {id} skipped no retried copy"
        );
    }
}

#[test]
fn writes_stay_exactly_once_under_repeated_stalls() {
    let mut c = cluster(&hosts()[0].1, &[]);
    let mut acked = Vec::new();
    for i in 0..12 {
        let leader = c.wait_leader();
        let (f1, _) = others(leader);
        c.node(f1).send(&format!("append tokens ,t{i}"));
        let frozen = if i % 2 == 0 { leader } else { f1 };
        c.node(frozen).signal("STOP");
        std::thread::sleep(Duration::from_millis(700));
        c.node(frozen).signal("CONT");
        if c.node(f1).recv("append", Duration::from_secs(60)) == "OK" {
            acked.push(format!("t{i}"));
        }
    }
    let leader = c.wait_leader();
    let value = c.node(leader).get("tokens");
    let tokens: Vec<&str> = value.split(',').filter(|t| !t.is_empty()).collect();
    let unique: HashSet<&str> = tokens.iter().copied().collect();
    assert_eq!(
        unique.len(),
        tokens.len(),
        "a token was applied twice: {value}"
    );
    for t in &acked {
        assert!(
            unique.contains(t.as_str()),
            "acknowledged {t} missing: {value}"
        );
    }
}

#[test]
fn stats_report_replication_progress() {
    for (name, host) in hosts() {
        let mut c = cluster(&host, &[]);
        let leader = c.wait_leader();
        for i in 0..20 {
            assert_eq!(c.node(leader).cmd(&format!("put s{i} v")), "OK");
        }
        wait_until("stats refresh", Duration::from_secs(10), || {
            json_numbers(&c.node(leader).cmd("stats"), "match_index").len() == 2
        });
        let stats = c.node(leader).cmd("stats");
        assert_eq!(
            json_strings(&stats, "role"),
            vec!["leader"],
            "{name}: {stats}"
        );
        assert_eq!(
            json_numbers(&stats, "id"),
            vec![others(leader).0, others(leader).1],
            "{name}: {stats}"
        );
        assert!(
            json_numbers(&stats, "proposals_total")[0] >= 20,
            "{name}: {stats}"
        );
        assert!(json_numbers(&stats, "log_bytes")[0] > 0, "{name}: {stats}");
        // Twenty writes, each waited for: at least as many log appends, each taking time,
        // and apply batches that took time to commit.
        assert!(
            json_numbers(&stats, "log_writes")[0] >= 20,
            "{name}: {stats}"
        );
        assert!(
            json_numbers(&stats, "log_write_us")[0] > 0,
            "{name}: {stats}"
        );
        assert!(
            json_numbers(&stats, "apply_commit_us")[0] > 0,
            "{name}: {stats}"
        );
        let f = c.node(others(leader).0).cmd("stats");
        assert_eq!(json_strings(&f, "role"), vec!["follower"], "{name}: {f}");
        assert!(f.contains("\"peers\":[]"), "{name}: {f}");
    }
}

/// Writes `n` keys `PREFIX-i` through batches of 100 on `node`.
fn load(c: &mut Cluster, node: u64, prefix: &str, n: usize) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let ops: Vec<String> = chunk
            .iter()
            .map(|i| format!("put {prefix}-{i} value-{i:08}"))
            .collect();
        assert_eq!(c.node(node).cmd(&format!("batch {}", ops.join(" "))), "OK");
    }
}

#[test]
fn backup_while_writing_seeds_a_new_cluster() {
    for (name, host) in hosts() {
        let mut c = cluster(&host, &[]);
        let leader = c.wait_leader();
        let (f1, _) = others(leader);
        load(&mut c, leader, "before", 2000);
        let backup = c.root().join("backup.mdb");
        let during: Vec<String> = (0..100).map(|i| format!("put during-{i} v")).collect();
        c.node(leader).send(&format!("batch {}", during.join(" ")));
        assert_eq!(
            c.node(f1).cmd(&format!("backup {}", backup.display())),
            "OK",
            "{name}"
        );
        assert_eq!(c.node(leader).recv("batch", Duration::from_secs(60)), "OK");
        let again = c.node(f1).cmd(&format!("backup {}", backup.display()));
        assert!(again.starts_with("ERR -2"), "{name}: {again}");

        // A new three-node cluster, every founding member seeded from the same backup.
        let b = backup.display().to_string();
        let mut seeded = cluster(&host, &[("restore_from", b.as_str()), ("cluster_id", "7")]);
        let l2 = seeded.wait_leader();
        for id in 1..=3 {
            let got = seeded.node(id).get("before-1999");
            let st = seeded.node(id).status();
            assert_eq!(
                got,
                "value-00001999",
                "{name}: node {id} {st:?}\n{}",
                seeded.node(id).tail_log()
            );
        }
        let during_seen = seeded.node(l2).cmd("prefix during- 1000");
        let pairs = during_seen.matches("[\"during-").count();
        assert!(
            pairs == 0 || pairs == 100,
            "{name}: the backup holds the batch whole or not at all ({pairs})"
        );
        assert_eq!(seeded.node(l2).cmd("put after-restore yes"), "OK");
        assert_eq!(seeded.node(others(l2).0).get("after-restore"), "yes");
        assert_eq!(seeded.node(others(l2).1).get("before-0"), "value-00000000");
    }
}
