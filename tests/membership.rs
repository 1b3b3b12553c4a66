//! Snapshots, log compaction and membership changes, with replicas in separate processes.

mod common;

use std::time::{Duration, Instant};

use common::{kvr_bin, Cluster, FAST_RAFT};

/// Fast Raft plus frequent snapshot points, so the log is compacted often.
fn opts() -> Vec<(&'static str, &'static str)> {
    let mut o = FAST_RAFT.to_vec();
    o.push(("snapshot_entries", "300"));
    o.push(("compaction_margin", "50"));
    o
}

fn start(n: usize) -> Cluster {
    let o = opts();
    Cluster::start_with(n, &o, |_| vec![kvr_bin().display().to_string()])
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn joiner_catches_up_by_snapshot_while_writes_continue_then_a_node_is_removed() {
    let mut c = start(3);
    let leader = c.wait_leader();
    c.node(leader).send("fill k 100000 24 64");
    assert_eq!(
        c.node(leader).recv("fill", Duration::from_secs(600)),
        "OK 100000"
    );
    let s = c.node(leader).status();
    let first: u64 = s["first"].parse().unwrap();
    assert!(first > 6 + 50, "log compacted past its start: {s:?}");

    let term_before = c.node(leader).status_u64("term");
    let (id, addr) = c.spawn_joiner(&opts());
    let writer = (1..=3).find(|&i| i != leader).unwrap();
    c.node(writer).send("fill live 3000 24 8");
    assert_eq!(c.node(leader).cmd(&format!("add {id} {addr}")), "OK");
    assert_eq!(
        c.node(writer).recv("fill live", Duration::from_secs(120)),
        "OK 3000"
    );

    let commit = c.node(leader).status_u64("commit");
    c.wait_applied(id, commit);
    // One snapshot, then the log: the leader keeps the entries after the snapshot it sends.
    // (A new leader, on a stalled machine, knows nothing of the transfer and may send its own.)
    let s = c.node(id).status();
    let allowed: &[&str] = if s["term"].parse::<u64>().unwrap() == term_before {
        &["1"]
    } else {
        &["1", "2"]
    };
    assert!(
        allowed.contains(&s["snapshots_installed"].as_str()),
        "{s:?}\nleader log:\n{}\njoiner log:\n{}",
        c.node(leader).tail_log(),
        c.node(id).tail_log()
    );
    assert_eq!(c.node(id).get("k-0"), format!("v0{}", ".".repeat(22)));
    assert_eq!(c.node(id).get("k-99999").len(), 24);
    assert_eq!(c.node(id).get("live-2999").len(), 24);
    assert_eq!(c.node(id).cmd("put from-joiner yes"), "OK");
    assert_eq!(c.node(leader).get("from-joiner"), "yes");
    let members = c.node(id).cmd("members");
    assert!(
        members.contains(&format!(
            "{{\"id\":{id},\"addr\":\"{addr}\",\"role\":\"voter\"}}"
        )),
        "{members}"
    );

    // Remove an old node: the cluster keeps working, the removed one refuses work.
    let victim = (1..=3).find(|&i| i != leader && i != writer).unwrap();
    assert_eq!(c.node(id).cmd(&format!("remove {victim}")), "OK");
    assert_eq!(c.node(leader).cmd("put after-remove 1"), "OK");
    assert_eq!(c.node(id).get("after-remove"), "1");
    wait_until(
        "victim learns it was removed",
        Duration::from_secs(20),
        || c.node(victim).cmd("put x y").starts_with("ERR -12"),
    );
    let members = c.node(leader).cmd("members");
    assert!(!members.contains(&format!("\"id\":{victim},")), "{members}");
    // A removed id cannot come back.
    let reply = c.node(leader).cmd(&format!("add {victim} 127.0.0.1:1"));
    assert!(reply.starts_with("ERR -2"), "{reply}");
}

#[test]
fn leader_transfer_moves_leadership() {
    let mut c = start(3);
    let leader = c.wait_leader();
    let target = (1..=3).find(|&i| i != leader).unwrap();
    assert_eq!(c.node(leader).cmd(&format!("transfer {target}")), "OK");
    assert_eq!(c.wait_leader(), target);
    assert_eq!(c.node(leader).cmd("put after-transfer 1"), "OK");
    let other = (1..=3).find(|&i| i != leader && i != target).unwrap();
    // Transfer asked on a follower reaches the leader too.
    assert_eq!(c.node(other).cmd(&format!("transfer {leader}")), "OK");
    assert_eq!(c.wait_leader(), leader);
    assert_eq!(c.node(target).get("after-transfer"), "1");
}

#[test]
fn learner_receives_the_log_then_is_promoted() {
    let mut c = start(3);
    let leader = c.wait_leader();
    assert_eq!(c.node(leader).cmd("fill pre 5000 16 16"), "OK 5000");
    let (id, addr) = c.spawn_joiner(&opts());
    assert_eq!(c.node(leader).cmd(&format!("learner {id} {addr}")), "OK");
    assert_eq!(c.node(leader).cmd("put while-learner 1"), "OK");
    let commit = c.node(leader).status_u64("commit");
    c.wait_applied(id, commit);
    assert_eq!(c.node(id).sget("while-learner"), "1");
    wait_until(
        "the raft thread reports the learner role",
        Duration::from_secs(10),
        || c.node(id).status()["role"] == "learner",
    );
    let members = c.node(leader).cmd("members");
    assert!(
        members.contains(&format!(
            "{{\"id\":{id},\"addr\":\"{addr}\",\"role\":\"learner\"}}"
        )),
        "{members}"
    );

    assert_eq!(
        c.node(id).cmd(&format!("add {id} {addr}")),
        "OK",
        "promotion asked on the learner itself"
    );
    let members = c.node(leader).cmd("members");
    assert!(
        members.contains(&format!(
            "{{\"id\":{id},\"addr\":\"{addr}\",\"role\":\"voter\"}}"
        )),
        "{members}"
    );
    wait_until(
        "promoted node reports follower",
        Duration::from_secs(10),
        || c.node(id).status()["role"] == "follower",
    );
    // With four voters, losing one old node keeps a quorum that needs the promoted one.
    let old = (1..=3).find(|&i| i != leader).unwrap();
    c.node(old).kill9();
    assert_eq!(c.node(leader).cmd("put after-promotion 1"), "OK");
    assert_eq!(c.node(id).get("after-promotion"), "1");
}

#[test]
fn restart_after_compaction() {
    let mut c = start(3);
    let leader = c.wait_leader();
    // Four writers: few enough that most writes are entries of their own.
    assert_eq!(c.node(leader).cmd("fill r 3000 16 4"), "OK 3000");
    let commit = c.node(leader).status_u64("commit");
    for id in 1..=3 {
        c.wait_applied(id, commit);
    }
    let firsts: Vec<u64> = (1..=3).map(|id| c.node(id).status_u64("first")).collect();
    assert!(
        firsts.iter().all(|&f| f > 300),
        "every log was compacted: {firsts:?}"
    );
    for id in 1..=3 {
        c.node(id).stop();
    }
    for id in 1..=3 {
        c.node(id).start();
    }
    c.wait_leader();
    for id in 1..=3 {
        let s = c.node(id).status();
        assert!(s["first"].parse::<u64>().unwrap() > 300, "{s:?}");
        assert_eq!(c.node(id).get("r-0"), "v0..............");
        assert_eq!(c.node(id).get("r-2999"), "v2999...........");
        let applied: u64 = s["applied"].parse().unwrap();
        let at_open: u64 = s["applied_at_open"].parse().unwrap();
        assert_eq!(
            s["entries_applied"].parse::<u64>().unwrap(),
            applied - at_open
        );
    }
}

#[test]
fn crash_during_snapshot_install_leaves_state_intact_and_catch_up_completes() {
    let mut c = start(3);
    let leader = c.wait_leader();
    // Big enough that receiving it takes a while.
    c.node(leader).send("fill big 40000 1000 64");
    assert_eq!(
        c.node(leader).recv("fill", Duration::from_secs(600)),
        "OK 40000"
    );
    let (id, addr) = c.spawn_joiner(&opts());
    let dir = c.node(id).dir.clone();
    c.node(leader).send(&format!("add {id} {addr}"));
    wait_until("snapshot staging starts", Duration::from_secs(60), || {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("snap-in-"))
            })
            .unwrap_or(false)
    });
    c.node(id).kill9();
    assert_eq!(c.node(leader).recv("add", Duration::from_secs(30)), "OK");
    c.node(id).start();
    let s = c.node(id).status();
    assert_eq!(
        s["applied_at_open"], "0",
        "nothing was installed before the crash: {s:?}"
    );
    let commit = c.node(leader).status_u64("commit");
    c.wait_applied(id, commit);
    assert_eq!(c.node(id).get("big-39999").len(), 1000);
    assert!(
        !std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("snap-in-")),
        "no staging leftovers"
    );
}

#[test]
fn wiped_replica_rejoining_under_its_old_id_is_refused_without_harm() {
    let mut c = start(3);
    let leader = c.wait_leader();
    assert_eq!(c.node(leader).cmd("fill w 500 16 8"), "OK 500");
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    let commit = c.node(leader).status_u64("commit");
    c.wait_applied(victim, commit);
    c.node(victim).kill9();
    std::fs::remove_dir_all(&c.node(victim).dir).unwrap();
    c.node(victim).start();
    wait_until(
        "the wiped node is told why it is refused",
        Duration::from_secs(30),
        || {
            let r = c.node(victim).cmd("put x y");
            r.starts_with("ERR -13") && r.contains("different identity")
        },
    );
    // The others carry on.
    for i in 0..50 {
        assert_eq!(c.node(leader).cmd(&format!("put after-wipe-{i} v")), "OK");
    }
    let other = (1..=3).find(|&i| i != leader && i != victim).unwrap();
    assert_eq!(c.node(other).get("after-wipe-49"), "v");
    assert_eq!(c.node(leader).status()["leader"], leader.to_string());
}
