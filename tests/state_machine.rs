//! The state machine on real LMDB files: exactly-once bookkeeping, TTL, the change feed, and
//! what each command does, applied as the apply thread applies them.

use kvr::command::{BatchOp, Op};
use kvr::node::execute::execute;
use kvr::storage::state_machine::{change, Dedup, StateMachine, TtlChange};
use kvr::Error;

fn sm() -> (tempfile::TempDir, StateMachine) {
    let d = tempfile::tempdir().unwrap();
    let sm = StateMachine::open(&d.path().join("data"), 64).unwrap();
    (d, sm)
}

/// Applies `op` as entry `index` of client 1 with sequence `seq`; returns the recorded code,
/// or `None` when the dedup table skipped it.
fn apply(sm: &StateMachine, index: u64, seq: u64, watermark: u64, op: Op<'_>) -> Option<i32> {
    let mut txn = sm.begin().unwrap();
    txn.begin_entry(index, true);
    let code = match txn.check_session(1, seq, watermark, index).unwrap() {
        Dedup::Duplicate(_) => None,
        Dedup::New => {
            let code = execute(&mut txn, &op).unwrap();
            txn.record_result(1, seq, code).unwrap();
            Some(code)
        }
    };
    txn.set_applied(index, 1);
    txn.commit().unwrap();
    code
}

#[test]
fn a_request_applies_once_whatever_the_retries() {
    let (_d, sm) = sm();
    let app = |v: &'static [u8]| Op::Append {
        now_ms: 0,
        key: b"k",
        value: v,
    };
    assert_eq!(apply(&sm, 1, 1, 1, app(b"a")), Some(0));
    assert_eq!(
        apply(&sm, 2, 1, 1, app(b"a")),
        None,
        "retry of seq 1 while it is outstanding"
    );
    assert_eq!(apply(&sm, 3, 2, 1, app(b"b")), Some(0));
    // Seq 1 settled: the watermark moves past it and its row is dropped, but a late copy of it
    // is still recognised (below the watermark).
    assert_eq!(apply(&sm, 4, 3, 3, app(b"c")), Some(0));
    assert_eq!(apply(&sm, 5, 1, 3, app(b"a")), None);
    assert_eq!(apply(&sm, 6, 2, 3, app(b"b")), None);
    assert_eq!(sm.get(b"k", 0).unwrap(), Some(b"abc".to_vec()));
    // Seq 0 opts out of dedup (used for internally generated entries).
    assert_eq!(apply(&sm, 7, 0, 0, app(b"x")), Some(0));
    assert_eq!(apply(&sm, 8, 0, 0, app(b"x")), Some(0));
    assert_eq!(sm.get(b"k", 0).unwrap(), Some(b"abcxx".to_vec()));
}

#[test]
fn state_survives_reopen_with_its_applied_index() {
    let d = tempfile::tempdir().unwrap();
    {
        let sm = StateMachine::open(&d.path().join("data"), 64).unwrap();
        apply(
            &sm,
            10,
            1,
            1,
            Op::Put {
                key: b"a",
                value: b"1",
                expires_at_ms: 0,
            },
        );
    }
    let sm = StateMachine::open(&d.path().join("data"), 64).unwrap();
    assert_eq!(sm.applied().unwrap(), (10, 1));
    assert_eq!(sm.get(b"a", 0).unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        apply(
            &sm,
            11,
            1,
            1,
            Op::Put {
                key: b"a",
                value: b"2",
                expires_at_ms: 0
            }
        ),
        None
    );
    assert_eq!(
        sm.get(b"a", 0).unwrap(),
        Some(b"1".to_vec()),
        "the dedup table survives too"
    );
}

#[test]
fn cas_batch_and_append_semantics() {
    let (_d, sm) = sm();
    let cas = |expected: Option<&'static [u8]>, new: Option<&'static [u8]>| Op::Cas {
        now_ms: 0,
        key: b"k",
        expected,
        new,
    };
    assert_eq!(
        apply(&sm, 1, 1, 1, cas(Some(b"x"), Some(b"1"))),
        Some(kvr::error::codes::CAS_FAILED)
    );
    assert_eq!(apply(&sm, 2, 2, 2, cas(None, Some(b"1"))), Some(0));
    assert_eq!(
        apply(&sm, 3, 3, 3, cas(None, Some(b"2"))),
        Some(kvr::error::codes::CAS_FAILED)
    );
    assert_eq!(apply(&sm, 4, 4, 4, cas(Some(b"1"), None)), Some(0));
    assert_eq!(sm.get(b"k", 0).unwrap(), None);
    let batch = Op::Batch(vec![
        BatchOp::Put {
            key: b"a",
            value: b"1",
        },
        BatchOp::Put {
            key: b"b",
            value: b"2",
        },
        BatchOp::Delete { key: b"a" },
    ]);
    assert_eq!(apply(&sm, 5, 5, 5, batch), Some(0));
    assert_eq!(sm.get(b"a", 0).unwrap(), None);
    assert_eq!(sm.get(b"b", 0).unwrap(), Some(b"2".to_vec()));
    let big = vec![0u8; kvr::config::VALUE_BYTES_MAX];
    assert_eq!(
        apply(
            &sm,
            6,
            6,
            6,
            Op::Put {
                key: b"big",
                value: &big,
                expires_at_ms: 0
            }
        ),
        Some(0)
    );
    let grow = Op::Append {
        now_ms: 0,
        key: b"big",
        value: b"1",
    };
    assert_eq!(
        apply(&sm, 7, 7, 7, grow),
        Some(kvr::error::codes::INVALID_ARG)
    );
    assert_eq!(
        sm.get(b"big", 0).unwrap().unwrap().len(),
        big.len(),
        "a refused append changes nothing"
    );
}

#[test]
fn ttl_is_decided_by_the_log_and_hidden_by_the_clock() {
    let (_d, sm) = sm();
    apply(
        &sm,
        1,
        1,
        1,
        Op::Put {
            key: b"t",
            value: b"v",
            expires_at_ms: 1_000,
        },
    );
    assert_eq!(sm.get(b"t", 999).unwrap(), Some(b"v".to_vec()));
    assert_eq!(
        sm.get(b"t", 1_000).unwrap(),
        None,
        "a read at the deadline hides the key"
    );
    assert_eq!(sm.due_keys(999, 10).unwrap(), vec![]);
    assert_eq!(
        sm.due_keys(1_000, 10).unwrap(),
        vec![(b"t".to_vec(), 1_000)]
    );
    // CAS and append judge liveness by the proposer's clock carried in the entry.
    let cas = Op::Cas {
        now_ms: 1_500,
        key: b"t",
        expected: None,
        new: Some(b"n"),
    };
    assert_eq!(
        apply(&sm, 2, 2, 2, cas),
        Some(0),
        "an expired key counts as absent"
    );
    assert_eq!(
        sm.get(b"t", u64::MAX).unwrap(),
        Some(b"n".to_vec()),
        "the new value has no deadline"
    );
    assert_eq!(sm.due_keys(u64::MAX, 10).unwrap(), vec![]);
    // An expiry decided for an old deadline does not remove a rewritten key.
    apply(
        &sm,
        3,
        3,
        3,
        Op::Put {
            key: b"u",
            value: b"1",
            expires_at_ms: 2_000,
        },
    );
    apply(
        &sm,
        4,
        4,
        4,
        Op::Put {
            key: b"u",
            value: b"2",
            expires_at_ms: 9_000,
        },
    );
    apply(&sm, 5, 0, 0, Op::Expire(vec![(b"u", 2_000)]));
    assert_eq!(sm.get(b"u", 0).unwrap(), Some(b"2".to_vec()));
    apply(&sm, 6, 0, 0, Op::Expire(vec![(b"u", 9_000)]));
    assert_eq!(sm.get(b"u", 0).unwrap(), None);
}

#[test]
fn the_change_feed_records_every_change_in_order_and_prunes_its_window() {
    let (_d, sm) = sm();
    apply(
        &sm,
        1,
        1,
        1,
        Op::Put {
            key: b"p/a",
            value: b"1",
            expires_at_ms: 0,
        },
    );
    apply(
        &sm,
        2,
        2,
        2,
        Op::Batch(vec![
            BatchOp::Put {
                key: b"p/b",
                value: b"2",
            },
            BatchOp::Delete { key: b"p/a" },
        ]),
    );
    apply(
        &sm,
        3,
        3,
        3,
        Op::Put {
            key: b"q",
            value: b"3",
            expires_at_ms: 0,
        },
    );
    apply(&sm, 4, 4, 4, Op::Delete { key: b"absent" });
    let page = sm.changes_after((0, u32::MAX), b"p/", 10).unwrap();
    let seen: Vec<(u64, u8, &[u8])> = page
        .changes
        .iter()
        .map(|c| (c.index, c.op, c.key.as_slice()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, change::PUT, &b"p/a"[..]),
            (2, change::PUT, &b"p/b"[..]),
            (2, change::DELETE, &b"p/a"[..])
        ]
    );
    assert_eq!(page.applied, 4);
    let all = sm.changes_after((0, u32::MAX), b"", 10).unwrap();
    assert_eq!(
        all.changes.len(),
        4,
        "deleting an absent key is not a change"
    );
    prune(&sm, 3, 0);
    assert_eq!(
        sm.changes_after((0, u32::MAX), b"", 10).err(),
        Some(Error::Compacted)
    );
    assert_eq!(
        sm.changes_after((2, u32::MAX), b"", 10)
            .unwrap()
            .changes
            .len(),
        1
    );
}

/// Prunes the change feed in a txn of its own.
fn prune(sm: &StateMachine, floor: u64, max_bytes: u64) {
    let mut txn = sm.begin().unwrap();
    txn.prune_changes(floor, max_bytes).unwrap();
    txn.commit().unwrap();
}

/// Puts `n` values of `len` bytes as entry `index` (one session sequence per entry).
fn put_entry(sm: &StateMachine, index: u64, n: usize, len: usize) {
    let mut txn = sm.begin().unwrap();
    txn.begin_entry(index, true);
    for i in 0..n {
        let key = format!("k{index:03}/{i}");
        txn.put(key.as_bytes(), &vec![b'v'; len], TtlChange::Keep)
            .unwrap();
    }
    txn.set_applied(index, 1);
    txn.commit().unwrap();
}

#[test]
fn the_change_feed_drops_whole_oldest_entries_past_its_byte_bound() {
    let (_d, sm) = sm();
    for index in 1..=10 {
        put_entry(&sm, index, 1, 1000);
    }
    put_entry(&sm, 11, 2, 1000);
    let mut txn = sm.begin().unwrap();
    let total = txn.changes_bytes().unwrap();
    let per_change = total / 12;
    assert_eq!(total % 12, 0, "twelve changes of the same size");
    assert!(
        (1000..1100).contains(&per_change),
        "one change of a 1000-byte value counts {per_change} bytes"
    );
    // Room for four changes: entry 11 (two), 10 and 9; entry 8 and older go.
    txn.prune_changes(0, per_change * 4 + per_change / 2)
        .unwrap();
    assert_eq!(txn.changes_bytes().unwrap(), per_change * 4);
    txn.commit().unwrap();
    assert_eq!(
        sm.changes_after((7, u32::MAX), b"", 100).err(),
        Some(Error::Compacted)
    );
    let kept = sm.changes_after((8, u32::MAX), b"", 100).unwrap();
    let indexes: Vec<u64> = kept.changes.iter().map(|c| c.index).collect();
    assert_eq!(indexes, vec![9, 10, 11, 11]);

    // A bound that falls inside entry 11 drops all of it, never half an entry.
    put_entry(&sm, 12, 1, 1000);
    let mut txn = sm.begin().unwrap();
    assert_eq!(
        txn.changes_bytes().unwrap(),
        per_change * 5,
        "the count is kept across txns"
    );
    txn.prune_changes(0, per_change + per_change / 2).unwrap();
    assert_eq!(txn.changes_bytes().unwrap(), per_change);
    txn.commit().unwrap();
    let last = sm.changes_after((11, u32::MAX), b"", 100).unwrap();
    let indexes: Vec<u64> = last.changes.iter().map(|c| c.index).collect();
    assert_eq!(indexes, vec![12]);
    assert_eq!(
        sm.changes_after((10, u32::MAX), b"", 100).err(),
        Some(Error::Compacted),
        "entry 11 went whole, so the window starts after it"
    );
    assert_eq!(
        sm.changes_after((11, 0), b"", 100).err(),
        Some(Error::Compacted),
        "a watcher halfway through entry 11 lost the rest of it"
    );

    // The newest applied entry stays, even alone over the bound.
    prune(&sm, 0, 1);
    assert_eq!(
        sm.changes_after((11, u32::MAX), b"", 100)
            .unwrap()
            .changes
            .len(),
        1
    );

    // An entry floor below the byte floor does not move the window back.
    prune(&sm, 3, 0);
    assert_eq!(
        sm.changes_after((10, u32::MAX), b"", 100).err(),
        Some(Error::Compacted)
    );
    put_entry(&sm, 13, 1, 10);
    let fresh = sm.changes_after((12, u32::MAX), b"", 100).unwrap();
    assert_eq!(fresh.changes.len(), 1);
    assert_eq!(fresh.changes[0].index, 13);
}

#[test]
fn ttl_change_keep_preserves_the_deadline() {
    let (_d, sm) = sm();
    let mut txn = sm.begin().unwrap();
    txn.put(b"k", b"1", TtlChange::Set(50)).unwrap();
    txn.put(b"k", b"2", TtlChange::Keep).unwrap();
    txn.set_applied(1, 1);
    txn.commit().unwrap();
    assert_eq!(sm.due_keys(50, 10).unwrap(), vec![(b"k".to_vec(), 50)]);
}

/// The apply thread commits once its txn may have dirtied too much memory. A txn that rewrites
/// the same keys over and over dirties no more pages than those keys sit on, so the estimate
/// stops at the pages the tables held when it began (rather than one page per write, which
/// made a busy replica commit, and rewrite its whole table, several times a second).
#[test]
fn the_dirty_page_estimate_stops_at_the_pages_the_tables_hold() {
    let (_d, sm) = sm();
    let key = |i: u32| format!("key-{i:05}").into_bytes();
    let mut txn = sm.begin().unwrap();
    for i in 0..2000 {
        txn.put(&key(i), &[1u8; 100], TtlChange::Keep).unwrap();
    }
    // New data is counted by its bytes, not here: an empty table has no pages to dirty.
    assert_eq!(txn.pages_touched_max(), 0);
    txn.set_applied(1, 1);
    txn.commit().unwrap();

    let mut txn = sm.begin().unwrap();
    for i in 0..30 {
        txn.put(&key(i), &[2u8; 100], TtlChange::Keep).unwrap();
    }
    assert_eq!(
        txn.pages_touched_max(),
        30,
        "one page per key while that is fewer"
    );
    for round in 0..25u8 {
        for i in 0..2000 {
            txn.put(&key(i), &[round; 100], TtlChange::Keep).unwrap();
        }
    }
    // 2000 entries of ~120 bytes fill 60 to 120 pages of 4 KiB (and a branch page or two).
    let touched = txn.pages_touched_max();
    assert!(
        (55..=130).contains(&touched),
        "50 030 writes over 2000 keys estimated at {touched} pages"
    );
}
