//! The apply thread, driven directly with what the raft thread hands it.

use raft::eraftpb::Entry;

use super::*;

/// Puts are answered at Raft commit, so a writer can read while the apply thread is many
/// batches behind. The read asks the state machine to reach the last answered write; that
/// takes one commit (one fsync) once the backlog is applied, not one per queued batch.
#[test]
fn a_read_behind_a_backlog_of_answered_writes_costs_one_state_machine_commit() {
    let d = tempfile::tempdir().unwrap();
    let cfg = Config::new(1, d.path());
    let open::OnDisk {
        lock: _lock,
        log,
        sm,
        applied,
        ..
    } = open::open_dir(&cfg).unwrap();
    let (tx, rx) = flume::unbounded();
    let stats = Arc::new(TransportStats::default());
    let shared = Arc::new(new_shared(&cfg, &log, sm, applied, stats, tx.downgrade()).unwrap());
    let applier = Applier::new(shared.clone(), rx, applied, apply_settings(&cfg));

    // The reader waits for the first 50; 20 more are queued behind them.
    const BATCHES: u64 = 50;
    const BEHIND: u64 = 20;
    let value = vec![7u8; 1024];
    for i in 1..=BATCHES + BEHIND {
        let key = format!("k{i}");
        let cmd = Command {
            client_id: 7,
            seq: 0,
            watermark: 0,
            op: Op::Put {
                key: key.as_bytes(),
                value: &value,
                expires_at_ms: 0,
            },
        };
        let e = Entry {
            index: applied + i,
            term: 1,
            data: cmd.encode().into(),
            ..Default::default()
        };
        tx.send(ApplyTask::Entries {
            entries: vec![e],
            confs: Vec::new(),
        })
        .unwrap();
    }
    let last = applied + BATCHES;
    shared.want_visible(last);

    let apply = thread::spawn(move || applier.run());
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.applied_index.load(Ordering::Acquire) < last {
        assert!(Instant::now() < deadline, "the backlog was not applied");
        shared.wait_applied(
            shared.applied_index.load(Ordering::Acquire),
            Duration::from_millis(100),
        );
    }
    // Committed at the requested index: neither batch by batch, nor only once the queue ran
    // dry (the rest is held, as nobody waits for it).
    let commits = shared.apply_batches.load(Ordering::Relaxed);
    let visible = shared.applied_index.load(Ordering::Acquire);
    tx.send(ApplyTask::Shutdown).unwrap();
    apply.join().unwrap();
    assert_eq!(
        (commits, visible),
        (1, last),
        "{BATCHES} queued batches reached the requested index in {commits} commits"
    );
    assert_eq!(
        shared.applied_index.load(Ordering::Acquire),
        last + BEHIND,
        "the rest is committed at shutdown"
    );
    let sm = shared.state_machine().unwrap();
    assert_eq!(
        sm.get(b"k70", now_ms()).unwrap().as_deref(),
        Some(&value[..])
    );
}
