//! A single-node replica through the Rust API: put/get/delete, restart, limits, misuse.

use std::sync::Arc;
use std::thread;

use kvr::{Config, Error, ReadConsistency, Replica};

fn open(dir: &std::path::Path) -> Replica {
    Replica::open(Config::new(1, dir)).unwrap()
}

#[test]
fn put_get_delete_and_restart() {
    let d = tempfile::tempdir().unwrap();
    let r = open(d.path());
    assert_eq!(r.get(b"a").unwrap(), None);
    r.put(b"a", b"1").unwrap();
    r.put(b"b", b"").unwrap();
    r.put(b"\x00bin\xff", b"\x00\x01\x02").unwrap();
    r.put(b"a", b"2").unwrap();
    r.delete(b"b").unwrap();
    r.delete(b"never-existed").unwrap();
    assert_eq!(r.get(b"a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(r.get(b"b").unwrap(), None);
    assert_eq!(
        r.get_with(b"\x00bin\xff", ReadConsistency::Stale).unwrap(),
        Some(vec![0, 1, 2])
    );
    let before = r.status();
    assert_eq!(before.leader_id, 1);
    assert_eq!(before.applied_index, before.commit_index);
    r.close().unwrap();

    let r = open(d.path());
    let s = r.status();
    assert_eq!(
        s.applied_index_at_open, before.applied_index,
        "resumes from its applied index"
    );
    assert_eq!(r.get(b"a").unwrap(), Some(b"2".to_vec()));
    assert_eq!(r.get(b"b").unwrap(), None);
    let s = r.status();
    assert_eq!(
        s.entries_applied,
        s.applied_index - s.applied_index_at_open,
        "nothing re-applied"
    );
    assert_eq!(s.entries_skipped, 0);
}

#[test]
fn empty_and_binary_values_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let r = open(d.path());
    r.put(b"empty", b"").unwrap();
    assert_eq!(
        r.get(b"empty").unwrap(),
        Some(Vec::new()),
        "empty value is not absence"
    );
    let all: Vec<u8> = (0..=255).collect();
    r.put(&all[1..], &all).unwrap();
    assert_eq!(r.get(&all[1..]).unwrap(), Some(all));
}

#[test]
fn limits_are_enforced() {
    let d = tempfile::tempdir().unwrap();
    let r = open(d.path());
    let invalid = |res: kvr::Result<()>| matches!(res, Err(Error::InvalidArgument(_)));
    assert!(invalid(r.put(b"", b"v")));
    assert!(invalid(r.delete(b"")));
    assert!(matches!(r.get(b""), Err(Error::InvalidArgument(_))));
    r.put(&[b'k'; 511], b"max key").unwrap();
    assert!(invalid(r.put(&[b'k'; 512], b"v")));
    let big = vec![7u8; 4 << 20];
    r.put(b"big", &big).unwrap();
    assert_eq!(r.get(b"big").unwrap().unwrap().len(), big.len());
    assert!(invalid(r.put(b"too-big", &vec![0u8; (4 << 20) + 1])));
    assert_eq!(
        r.get(b"too-big").unwrap(),
        None,
        "a refused write leaves nothing behind"
    );
    // A key with a TTL is also a key of the expiry index, behind its 8-byte deadline.
    let hour = std::time::Duration::from_secs(3600);
    r.put_with_ttl(&[b't'; 503], b"max ttl key", hour).unwrap();
    assert!(invalid(r.put_with_ttl(&[b't'; 504], b"v", hour)));
    assert_eq!(
        r.get(&[b't'; 503]).unwrap().as_deref(),
        Some(&b"max ttl key"[..]),
        "the replica still serves"
    );
    assert_eq!(
        kvr::ffi::KVR_TTL_KEY_BYTES_MAX,
        kvr::config::TTL_KEY_BYTES_MAX
    );
}

#[test]
fn concurrent_writers_all_land() {
    let d = tempfile::tempdir().unwrap();
    let r = Arc::new(open(d.path()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let r = r.clone();
            thread::spawn(move || {
                for i in 0..200 {
                    r.put(
                        format!("t{t}-{i}").as_bytes(),
                        format!("{t}:{i}").as_bytes(),
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for t in 0..8 {
        for i in 0..200 {
            let got = r
                .get_with(format!("t{t}-{i}").as_bytes(), ReadConsistency::Stale)
                .unwrap();
            assert_eq!(got, Some(format!("{t}:{i}").into_bytes()));
        }
    }
    let s = r.status();
    // Writes that arrive together share an entry: never more entries than writes (+ the
    // leader's first empty entry).
    assert!(s.entries_applied >= 1 && s.entries_applied <= 1601, "{s:?}");
    assert_eq!(s.duplicates, 0, "no retries without faults");
}

/// A write is answered once its outcome is decided, before the state-machine commit holding
/// it is on disk; every read on the handle, stale ones included, still sees it — from the
/// writing thread and from any thread it tells.
#[test]
fn every_read_sees_the_writes_already_answered() {
    let d = tempfile::tempdir().unwrap();
    let r = Arc::new(open(d.path()));
    let (tx, rx) = std::sync::mpsc::channel::<(String, u32)>();
    let checker = {
        let r = r.clone();
        thread::spawn(move || {
            for (k, i) in rx {
                let got = r.get_with(k.as_bytes(), ReadConsistency::Stale).unwrap();
                // Another writer thread may have moved the key on since; never back.
                let got = u32::from_le_bytes(got.unwrap().try_into().unwrap());
                assert!(got >= i, "{k}: read {got} after {i} was answered");
            }
        })
    };
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (r, tx) = (r.clone(), tx.clone());
            thread::spawn(move || {
                let k = format!("w{t}");
                for i in 0..300u32 {
                    r.put(k.as_bytes(), &i.to_le_bytes()).unwrap();
                    let got = r.get_with(k.as_bytes(), ReadConsistency::Stale).unwrap();
                    assert_eq!(got, Some(i.to_le_bytes().to_vec()), "{k} after put {i}");
                    tx.send((k.clone(), i)).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    for w in writers {
        w.join().unwrap();
    }
    checker.join().unwrap();
}

#[test]
fn misuse_gets_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let r = open(d.path());
    // The same directory cannot host two replicas.
    match Replica::open(Config::new(1, d.path())) {
        Err(Error::Busy(m)) => assert!(m.contains("in use") || m.contains("already open"), "{m}"),
        other => panic!("expected Busy, got {:?}", other.map(|_| ())),
    }
    r.close().unwrap();
    r.close().unwrap();
    assert_eq!(r.put(b"k", b"v"), Err(Error::Closed));
    assert_eq!(r.get(b"k"), Err(Error::Closed));
    assert_eq!(r.delete(b"k"), Err(Error::Closed));
    drop(r);

    // A directory remembers which node and cluster it belongs to.
    match Replica::open(Config::new(2, d.path())) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("holds node 1"), "{m}"),
        other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
    }
    let mut c = Config::new(1, d.path());
    c.cluster_id = 9;
    assert!(matches!(Replica::open(c), Err(Error::InvalidArgument(_))));
    // Invalid configurations are refused before anything is created.
    assert!(matches!(
        Replica::open(Config::new(0, d.path())),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        Replica::open(Config::new(1, "")),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn close_releases_everything_for_reopen_in_process() {
    let d = tempfile::tempdir().unwrap();
    for round in 0..5u8 {
        let r = open(d.path());
        r.put(b"round", &[round]).unwrap();
        assert_eq!(r.get(b"round").unwrap(), Some(vec![round]));
        r.close().unwrap();
    }
}

#[test]
fn restore_refuses_what_is_not_a_backup_and_can_be_retried() {
    let d = tempfile::tempdir().unwrap();
    let r = open(&d.path().join("source"));
    r.put(b"kept", b"yes").unwrap();
    let good = d.path().join("good.mdb");
    r.backup(&good).unwrap();
    r.close().unwrap();

    // An empty file, and an LMDB file that no replica wrote (LMDB accepts both as a database).
    let empty = d.path().join("empty.mdb");
    std::fs::write(&empty, b"").unwrap();
    let foreign_dir = d.path().join("foreign");
    std::fs::create_dir(&foreign_dir).unwrap();
    {
        // SAFETY: the environment is opened once, in this test only.
        let env = unsafe {
            heed::EnvOpenOptions::new()
                .max_dbs(1)
                .open(&foreign_dir)
                .unwrap()
        };
        let mut wtxn = env.write_txn().unwrap();
        let db: heed::Database<heed::types::Bytes, heed::types::Bytes> =
            env.create_database(&mut wtxn, Some("other")).unwrap();
        db.put(&mut wtxn, b"k", b"v").unwrap();
        wtxn.commit().unwrap();
    }
    let foreign = foreign_dir.join("data.mdb");

    let target = d.path().join("restored");
    for bad in [&empty, &foreign] {
        let mut c = Config::new(1, &target);
        c.restore_from = Some(bad.clone());
        match Replica::open(c) {
            Err(Error::Corrupt(m)) => assert!(m.contains("not a kvr backup"), "{m}"),
            other => panic!(
                "{}: expected Corrupt, got {:?}",
                bad.display(),
                other.map(|_| ())
            ),
        }
    }
    // The refused attempts left nothing behind: the same directory takes the real backup.
    let mut c = Config::new(1, &target);
    c.restore_from = Some(good);
    let r = Replica::open(c).unwrap();
    assert_eq!(r.get(b"kept").unwrap(), Some(b"yes".to_vec()));
    r.close().unwrap();
}

#[test]
fn member_addresses_must_be_dialable() {
    let d = tempfile::tempdir().unwrap();
    let r = open(d.path());
    for addr in [
        "127.0.0.1:1,3=127.0.0.1:2",
        "host name:1",
        "a=b:1",
        "127.0.0.1:70000",
        ":1",
        "nohost",
    ] {
        assert!(
            matches!(r.add_node(2, addr), Err(Error::InvalidArgument(_))),
            "add_node({addr:?})"
        );
        assert!(
            matches!(r.add_learner(2, addr), Err(Error::InvalidArgument(_))),
            "add_learner({addr:?})"
        );
    }
    assert!(
        r.members().unwrap().iter().all(|m| m.id == 1),
        "nothing was added"
    );
    r.close().unwrap();
}

/// Writes that keep the raft thread busy far longer than the retry interval (16 values of
/// 4 MiB at once, with 1 ms ticks so the interval is at its 200 ms floor) are still each
/// proposed exactly once: an attempt waiting in the raft thread's queue or sitting in the
/// leader's own log cannot be lost, and sending it again would only add to the backlog.
#[test]
fn a_slow_log_is_not_sent_the_same_write_again() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Config::new(1, d.path());
    c.tick_ms = 1;
    c.request_timeout_ms = 120_000;
    let r = Arc::new(Replica::open(c).unwrap());
    r.put(b"warm", b"up").unwrap();
    let proposals = |r: &Replica| -> u64 {
        let s = r.stats_json();
        let at = s.find("\"proposals_total\":").expect("proposals_total") + 18;
        s[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = proposals(&r);
    let value = vec![b'v'; kvr::config::VALUE_BYTES_MAX];
    let started = std::time::Instant::now();
    thread::scope(|s| {
        for i in 0..16u8 {
            let (r, value) = (&r, &value);
            s.spawn(move || r.put(&[b'k', i], value).unwrap());
        }
    });
    let took = started.elapsed();
    assert_eq!(
        proposals(&r) - before,
        16,
        "each write proposed once (the writes took {took:?})"
    );
    assert_eq!(r.status().duplicates, 0);
    for i in 0..16u8 {
        assert_eq!(
            r.get(&[b'k', i]).unwrap().map(|v| v.len()),
            Some(kvr::config::VALUE_BYTES_MAX)
        );
    }
}

fn stat(r: &Replica, name: &str) -> u64 {
    let j = r.stats_json();
    let at = j.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
    j[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect(name)
}

/// Puts are answered at Raft commit, so the state machine holds what it applies and commits
/// many writes at once (each commit rewrites every page they touched and fsyncs it): a burst
/// of writes costs a commit or two per second, not one per few milliseconds. Nothing is lost
/// by it, a watcher is not kept waiting by it, and every write is there after a restart.
#[test]
fn writes_share_state_machine_commits_without_delaying_watchers() {
    let d = tempfile::tempdir().unwrap();
    let r = Arc::new(open(d.path()));
    r.put(b"warm", b"up").unwrap();
    let before = stat(&r, "apply_batches");
    let started = std::time::Instant::now();
    let value = vec![7u8; 1024];
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (r, value) = (r.clone(), value.clone());
            thread::spawn(move || {
                for i in 0..500 {
                    r.put(format!("b{t}-{i}").as_bytes(), &value).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let secs = started.elapsed().as_secs();
    // The held writes are committed by the time limit, and by the read of the counter (it
    // waits for every answered write to be visible).
    let commits = stat(&r, "apply_batches") - before;
    assert!(
        commits <= secs + 3,
        "2000 writes of 1 KiB in {secs} s took {commits} state machine commits"
    );

    let mut w = r.watch(b"late", 0).unwrap();
    let r2 = r.clone();
    let writer = thread::spawn(move || {
        thread::sleep(std::time::Duration::from_millis(50));
        r2.put(b"late-key", b"v").unwrap();
    });
    let ev = w
        .next(std::time::Duration::from_millis(700))
        .unwrap()
        .expect("the change reaches a waiting watcher well before the 1 s hold ends");
    assert_eq!(ev.key, b"late-key");
    writer.join().unwrap();

    drop(w);
    r.close().unwrap();
    let r = open(d.path());
    for t in 0..4 {
        for i in 0..500 {
            let got = r.get_with(format!("b{t}-{i}").as_bytes(), ReadConsistency::Stale);
            assert_eq!(got.unwrap().as_deref(), Some(&value[..]), "b{t}-{i}");
        }
    }
}
