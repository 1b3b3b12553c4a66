//! Embedding a replica in a Rust program.
//!
//! ```text
//! cargo run --example embed                       # a single-node replica in ./embed-data
//! cargo run --example embed -- 1 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 data/1
//! ```
//! (arguments: node id, the cluster's addresses in node-id order, directory; run one per node).

use std::time::Duration;

use kvr::{BatchWrite, Config, ReadConsistency, Replica, ScanRange};

fn main() -> kvr::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cfg = Config::new(1, "embed-data");
    if let [id, addrs, dir] = args.as_slice() {
        cfg.set("node_id", id)?;
        let peers: Vec<String> = addrs
            .split(',')
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect();
        cfg.set("peers", &peers.join(","))?;
        cfg.set("dir", dir)?;
    }
    let replica = Replica::open(cfg)?;

    // Blocks until a majority has it on disk and this replica applied it.
    replica.put(b"greeting", b"hello")?;
    replica.batch(&[
        BatchWrite::Put(b"user/1", b"ada"),
        BatchWrite::Put(b"user/2", b"grace"),
    ])?;
    replica.put_with_ttl(b"session", b"token", Duration::from_secs(30))?;
    if replica
        .cas(b"greeting", Some(b"hello"), Some(b"hello, world"))
        .is_ok()
    {
        println!("greeting updated");
    }

    let page = replica.scan(
        ScanRange::Prefix(b"user/"),
        100,
        ReadConsistency::Linearizable,
    )?;
    for (k, v) in &page.items {
        println!(
            "{} = {}",
            String::from_utf8_lossy(k),
            String::from_utf8_lossy(v)
        );
    }
    let stale = replica.get_with(b"greeting", ReadConsistency::Stale)?;
    println!(
        "greeting (local read): {:?}",
        stale.map(|v| String::from_utf8_lossy(&v).into_owned())
    );
    println!("{}", replica.stats_json());
    replica.close()
}
