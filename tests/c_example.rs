//! The C example (`examples/c/kvr_host.c`) compiles warning-free against the committed header
//! and the built library, and three of its processes form a working cluster.

mod common;

use common::{build_c_host, Cluster, FAST_RAFT};

#[test]
fn c_example_hosts_a_three_process_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let host = build_c_host(tmp.path());
    let host = host.display().to_string();
    let mut c = Cluster::start_with(3, FAST_RAFT, |_| vec![host.clone()]);

    let leader = c.wait_leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    assert_eq!(c.node(leader).put("c-key", "from C leader"), "OK");
    assert_eq!(c.node(follower).put("c-key2", "from C follower"), "OK");
    for id in 1..=3 {
        assert_eq!(c.node(id).get("c-key"), "from C leader");
        assert_eq!(c.node(id).get("c-key2"), "from C follower");
        assert_eq!(c.node(id).get("nope"), "NOT_FOUND");
    }
    // Errors surface as codes with text through the ABI.
    let reply = c.node(follower).cmd("put");
    assert!(reply.starts_with("ERR"), "{reply}");
    let too_long = "k".repeat(600);
    let reply = c.node(follower).put(&too_long, "v");
    assert!(
        reply.starts_with("ERR -2:") && reply.contains("exceeds"),
        "{reply}"
    );

    // A C host killed with -9 restarts from its directory and catches up.
    c.node(follower).kill9();
    assert_eq!(c.node(leader).put("while-down", "yes"), "OK");
    c.node(follower).start();
    assert_eq!(c.node(follower).get("while-down"), "yes");
    let s = c.node(follower).status();
    assert!(s["applied_at_open"].parse::<u64>().unwrap() > 5, "{s:?}");
    for id in 1..=3 {
        c.node(id).stop();
    }
}
