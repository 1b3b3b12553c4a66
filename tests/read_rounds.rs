//! Linearizable reads in ReadIndex rounds, on a replica hosted in this process whose two peers
//! are `kvr` processes: concurrent readers share rounds, every read sees each write
//! acknowledged before it began (on any replica), and readers carry on through the crash of
//! the leader their rounds went to.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{free_ports, json_numbers, kvr_bin, wait_until, Node, FAST_RAFT};
use kvr::{Config, Replica};

struct Trio {
    replica: Arc<Replica>,
    /// Replicas 2 and 3.
    nodes: Vec<Node>,
    _tmp: tempfile::TempDir,
}

impl Trio {
    fn start() -> Trio {
        let tmp = tempfile::tempdir().unwrap();
        let peers: Vec<String> = free_ports(3)
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let peers = peers.join(",");
        let nodes = (2..=3)
            .map(|id| {
                let dir = tmp.path().join(format!("n{id}"));
                let program = vec![kvr_bin().display().to_string()];
                let mut n = Node::new(program, id, &dir, &peers, FAST_RAFT);
                n.start();
                n
            })
            .collect();
        let mut cfg = Config::new(1, tmp.path().join("n1"));
        cfg.set("peers", &peers).unwrap();
        for (k, v) in FAST_RAFT {
            cfg.set(k, v).unwrap();
        }
        let replica = Arc::new(Replica::open(cfg).unwrap());
        wait_until("a first write", Duration::from_secs(60), || {
            replica.put(b"k", b"0").is_ok()
        });
        Trio {
            replica,
            nodes,
            _tmp: tmp,
        }
    }

    /// Makes replica `id` (a child process) lead.
    fn lead_by(&self, id: u64) {
        wait_until("the transfer", Duration::from_secs(30), || {
            if self.replica.status().leader_id == id {
                return true;
            }
            let _ = self.replica.transfer_leader(id);
            thread::sleep(Duration::from_millis(200));
            self.replica.status().leader_id == id
        });
    }

    fn rounds(&self) -> u64 {
        json_numbers(&self.replica.stats_json(), "read_rounds")[0]
    }
}

fn version(value: Option<Vec<u8>>) -> u64 {
    let v = value.expect("k is always set");
    String::from_utf8(v).unwrap().parse().unwrap()
}

#[test]
fn concurrent_readers_share_rounds_and_see_every_acknowledged_write() {
    let mut t = Trio::start();
    // The in-process replica follows: its rounds go to the leader and its state machine may
    // lag the read index, which is where a broken barrier would show.
    t.lead_by(2);
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let rounds_before = t.rounds();
    let readers: Vec<_> = (0..16)
        .map(|_| {
            let (r, acked, done) = (t.replica.clone(), acked.clone(), done.clone());
            thread::spawn(move || {
                let mut reads = 0u64;
                while !done.load(Ordering::SeqCst) || reads < 200 {
                    let floor = acked.load(Ordering::SeqCst);
                    let seen = version(r.get(b"k").unwrap());
                    assert!(
                        seen >= floor,
                        "a read that began after write {floor} was acknowledged saw {seen}"
                    );
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    // Writes through both other replicas (the in-process one may lead or follow): each
    // acknowledged one must be seen by every read that begins after it.
    for i in 1..=30u64 {
        let node = &mut t.nodes[(i % 2) as usize];
        assert_eq!(node.put("k", &i.to_string()), "OK");
        acked.store(i, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
    let rounds = t.rounds() - rounds_before;
    eprintln!("{reads} linearizable reads in {rounds} ReadIndex rounds");
    assert!(
        rounds > 0 && rounds * 2 <= reads,
        "{reads} reads took {rounds} ReadIndex rounds"
    );
    assert_eq!(version(t.replica.get(b"k").unwrap()), 30);
    t.replica.close().unwrap();
}

#[test]
fn readers_carry_on_when_the_leader_crashes() {
    let mut t = Trio::start();
    // Make a child process lead, so that it can be killed.
    let leader = 2;
    t.lead_by(leader);
    assert_eq!(t.nodes[0].put("k", "1"), "OK");
    let done = Arc::new(AtomicBool::new(false));
    let after_kill = Arc::new(AtomicU64::new(0));
    let killed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let readers: Vec<_> = (0..8)
        .map(|_| {
            let r = t.replica.clone();
            let (done, after_kill, killed_at) =
                (done.clone(), after_kill.clone(), killed_at.clone());
            thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let began = Instant::now();
                    let seen = version(r.get(b"k").expect("reads go on through the crash"));
                    assert!(seen >= 1);
                    if killed_at.lock().unwrap().is_some_and(|at| began > at) {
                        after_kill.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    t.nodes[0].kill9();
    *killed_at.lock().unwrap() = Some(Instant::now());
    wait_until(
        "reads begun after the crash to complete",
        Duration::from_secs(30),
        || after_kill.load(Ordering::SeqCst) >= 100,
    );
    done.store(true, Ordering::SeqCst);
    for h in readers {
        h.join().unwrap();
    }
    let s = t.replica.status();
    assert_ne!(s.leader_id, leader, "a new leader serves the rounds");
    assert_eq!(t.nodes[1].put("k", "2"), "OK");
    assert_eq!(version(t.replica.get(b"k").unwrap()), 2);
    t.replica.close().unwrap();
}
