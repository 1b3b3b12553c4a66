//! Lease reads, with replicas in separate processes: the leader answers them on the caller's
//! thread from the lease its raft thread publishes; a leadership transfer ends the lease, for
//! the rest of the term, before the transferee can campaign; a replica that restarts does not help elect another leader until
//! an election timeout has passed, as if it had just heard from the old one (a fresh one, which
//! never backed a leader, does).

mod common;

use std::time::{Duration, Instant};

use common::{json_numbers, kvr_bin, wait_until, Cluster, Node, FAST_RAFT};

fn stat(c: &mut Cluster, id: u64, field: &str) -> u64 {
    let stats = c.node(id).cmd("stats");
    json_numbers(&stats, field)[0]
}

fn others(leader: u64) -> (u64, u64) {
    let mut it = (1..=3).filter(|&i| i != leader);
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn the_leader_answers_lease_reads_itself_and_a_transfer_ends_its_lease() {
    let mut c = Cluster::start(3);
    let mut leader = c.wait_leader();
    assert_eq!(c.node(leader).put("k", "v0"), "OK");
    let before = stat(&mut c, leader, "lease_reads_local");
    for _ in 0..20 {
        assert_eq!(c.node(leader).cmd("lget k"), "v0");
    }
    // The first read (at most a few, if the state machine commit lagged) won the lease
    // through the raft thread; the others were answered from it.
    let local = stat(&mut c, leader, "lease_reads_local") - before;
    assert!(
        local >= 15,
        "{local} of 20 lease reads answered from the lease"
    );
    // Between writes too: the state machine lags the commit index then (writes are answered
    // at commit), and the caller asks the apply thread to commit rather than go through the
    // raft thread.
    let before = stat(&mut c, leader, "lease_reads_local");
    for i in 0..20 {
        let value = format!("w{i}");
        assert_eq!(c.node(leader).put("k", &value), "OK");
        assert_eq!(c.node(leader).cmd("lget k"), value);
    }
    let local = stat(&mut c, leader, "lease_reads_local") - before;
    assert!(
        local >= 15,
        "{local} of 20 lease reads after a write answered from the lease"
    );
    assert_eq!(c.node(leader).put("k", "v0"), "OK");
    let (f1, _) = others(leader);
    assert_eq!(
        stat(&mut c, f1, "lease_reads_local"),
        0,
        "a follower never answers from a lease"
    );

    for round in 1..=6 {
        let (target, _) = others(leader);
        // The leader holds a lease right before the transfer.
        assert_eq!(c.node(leader).cmd("lget k"), format!("v{}", round - 1));
        assert_eq!(c.node(leader).cmd(&format!("transfer {target}")), "OK");
        wait_until("the transferee leads", Duration::from_secs(10), || {
            c.node(target).status().get("role").map(String::as_str) == Some("leader")
        });
        let value = format!("v{round}");
        assert_eq!(c.node(target).put("k", &value), "OK");
        // The old leader's lease ended before the transferee could campaign.
        assert_eq!(c.node(leader).cmd("lget k"), value, "round {round}");
        assert_eq!(c.node(target).cmd("lget k"), value, "round {round}");
        leader = target;
    }
}

/// A transfer to a replica that cannot act on it (stopped) runs out, and the leader stays. The
/// transferee may still campaign whenever it wakes up and reads its TimeoutNow, winning votes
/// that ignore any lease, so the leader answers no lease read from its lease for the rest of
/// the term; they still succeed, through ReadIndex.
#[test]
fn after_an_abandoned_transfer_the_leader_answers_no_read_from_its_lease_in_that_term() {
    let opts = |_| {
        let mut o = FAST_RAFT.to_vec();
        o.retain(|(k, _)| *k != "request_timeout_ms");
        o.push(("request_timeout_ms", "2000"));
        o
    };
    let mut c = Cluster::start_each(3, opts, |_| vec![kvr_bin().display().to_string()]);
    let leader = c.wait_leader();
    let (target, other) = others(leader);
    assert_eq!(c.node(leader).put("k", "v1"), "OK");
    let commit = c.node(leader).status_u64("commit");
    c.wait_applied(target, commit);
    let before = stat(&mut c, leader, "lease_reads_local");
    for _ in 0..5 {
        assert_eq!(c.node(leader).cmd("lget k"), "v1");
    }
    assert!(
        stat(&mut c, leader, "lease_reads_local") > before,
        "the lease is in use"
    );
    let term = c.node(leader).status_u64("term");

    c.node(target).signal("STOP");
    // Asked on the third replica, so the leader's REPL stays free; it fails after 2 s.
    let reply = c.node(other).cmd(&format!("transfer {target}"));
    assert!(
        reply.starts_with("ERR"),
        "transfer to a stopped replica: {reply}"
    );
    // Raft gives a transfer up after an election timeout (300 ms).
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(c.node(leader).status_u64("leader"), leader);
    assert_eq!(c.node(leader).status_u64("term"), term);
    let before = stat(&mut c, leader, "lease_reads_local");
    for _ in 0..20 {
        assert_eq!(c.node(leader).cmd("lget k"), "v1");
    }
    assert_eq!(
        stat(&mut c, leader, "lease_reads_local"),
        before,
        "a lease read was answered from the lease in the term of a transfer"
    );

    c.node(target).signal("CONT");
    let now_leading = c.wait_leader();
    assert_eq!(c.node(now_leading).put("k", "v2"), "OK");
    for id in 1..=3 {
        assert_eq!(c.node(id).cmd("lget k"), "v2", "node {id}");
    }
}

/// The bench's setup: replicas 2 and 3 with an election timeout ten times replica 1's. Fresh,
/// they vote for replica 1 at its first campaign, long before their own timeout.
#[test]
fn fresh_replicas_vote_at_once() {
    let mut c = Cluster::start_each(
        3,
        |id| {
            let mut o = FAST_RAFT.to_vec();
            if id != 1 {
                o.retain(|(k, _)| *k != "election_ticks");
                o.push(("election_ticks", "100"));
            }
            o
        },
        |_| vec![kvr_bin().display().to_string()],
    );
    assert_eq!(c.wait_leader(), 1);
    for id in 1..=3 {
        assert_eq!(stat(&mut c, id, "votes_held"), 0, "node {id}");
    }
}

#[test]
fn a_restarted_replica_helps_elect_no_leader_for_an_election_timeout() {
    let mut c = Cluster::start(3);
    let leader = c.wait_leader();
    assert_eq!(c.node(leader).put("k", "v"), "OK");
    let (survivor, restarted) = others(leader);
    c.node(leader).kill9();
    c.node(restarted).kill9();
    // The survivor campaigns again and again: it needs the restarted replica's vote.
    wait_until("the survivor campaigns", Duration::from_secs(10), || {
        c.node(survivor).status_u64("leader") == 0
    });

    // Restart with a long election timeout (3 s at 30 ms ticks), so that the survivor
    // campaigns several times while the restarted replica holds its vote.
    const HELD: Duration = Duration::from_millis(3000);
    let mut opts = FAST_RAFT.to_vec();
    opts.retain(|(k, _)| *k != "election_ticks");
    opts.push(("election_ticks", "100"));
    let dir = c.node(restarted).dir.clone();
    let peers = c.peers.clone();
    let program = vec![kvr_bin().display().to_string()];
    let started = Instant::now();
    *c.node(restarted) = Node::new(program, restarted, &dir, &peers, &opts);
    c.node(restarted).start();

    let new_leader = c.wait_leader();
    let took = started.elapsed();
    assert!(
        took >= HELD,
        "node {new_leader} was elected {took:?} after the restart, inside the {HELD:?} hold"
    );
    assert!(
        stat(&mut c, restarted, "votes_held") >= 1,
        "the restarted replica ignored no campaign"
    );
    assert_eq!(c.node(new_leader).get("k"), "v");
    assert_eq!(c.node(survivor).put("after", "1"), "OK");
}
