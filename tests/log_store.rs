//! Conformance of the LMDB log store with the `raft::Storage` contract (the cases raft-rs
//! checks for its MemStorage), plus durability across reopen.

use std::panic::{self, AssertUnwindSafe};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState};
use raft::{GetEntriesContext, Storage, StorageError};

use kvr::storage::log_store::{Identity, LogStore, INIT_INDEX, INIT_TERM};

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("data-{index}").into_bytes().into(),
        ..Entry::default()
    }
}

/// A store truncated at (3, 3) holding entries 4, 5, 6 with terms 4, 5, 6.
fn store_3_456(dir: &std::path::Path) -> LogStore {
    let mut s = LogStore::open(dir).unwrap();
    s.reset_to(3, 3, HardState::default()).unwrap();
    s.append(&[entry(4, 4), entry(5, 5), entry(6, 6)], None)
        .unwrap();
    s
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn compacted<T: std::fmt::Debug>(r: raft::Result<T>) -> bool {
    matches!(r, Err(raft::Error::Store(StorageError::Compacted)))
}

#[test]
fn term_contract() {
    let d = tempfile::tempdir().unwrap();
    let s = store_3_456(d.path());
    assert!(compacted(s.term(2)));
    assert_eq!(
        s.term(3).unwrap(),
        3,
        "term of the truncation point is retained"
    );
    assert_eq!(s.term(4).unwrap(), 4);
    assert_eq!(s.term(6).unwrap(), 6);
    assert!(matches!(
        s.term(7),
        Err(raft::Error::Store(StorageError::Unavailable))
    ));
}

#[test]
fn entries_contract() {
    let d = tempfile::tempdir().unwrap();
    let s = store_3_456(d.path());
    assert!(compacted(s.entries(3, 6, None, ctx())));
    assert!(compacted(s.entries(2, 6, None, ctx())));
    assert_eq!(s.entries(4, 5, None, ctx()).unwrap(), vec![entry(4, 4)]);
    assert_eq!(
        s.entries(4, 7, None, ctx()).unwrap(),
        vec![entry(4, 4), entry(5, 5), entry(6, 6)]
    );
    assert_eq!(s.entries(5, 5, None, ctx()).unwrap(), vec![]);
    // max_size 0 still returns one entry.
    assert_eq!(s.entries(4, 7, Some(0), ctx()).unwrap(), vec![entry(4, 4)]);
    let size = |i: u64| u64::from(entry(i, i).compute_size());
    assert_eq!(
        s.entries(4, 7, Some(size(4) + size(5)), ctx())
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.entries(4, 7, Some(size(4) + size(5) + size(6) - 1), ctx())
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.entries(4, 7, Some(size(4) + size(5) + size(6)), ctx())
            .unwrap()
            .len(),
        3
    );
    // Asking beyond last index + 1 is a caller bug: raft-rs documents a panic.
    let r = panic::catch_unwind(AssertUnwindSafe(|| s.entries(4, 8, None, ctx())));
    assert!(r.is_err());
}

#[test]
fn entries_from_disk_match_entries_from_cache() {
    let d = tempfile::tempdir().unwrap();
    let from_cache = store_3_456(d.path()).entries(4, 7, None, ctx()).unwrap();
    let reopened = LogStore::open(d.path()).unwrap();
    assert_eq!(reopened.entries(4, 7, None, ctx()).unwrap(), from_cache);
    assert_eq!(reopened.entries(4, 7, Some(0), ctx()).unwrap().len(), 1);
    assert_eq!(reopened.term(5).unwrap(), 5);
}

#[test]
fn first_and_last_index() {
    let d = tempfile::tempdir().unwrap();
    let mut s = store_3_456(d.path());
    assert_eq!(s.first_index().unwrap(), 4);
    assert_eq!(s.last_index().unwrap(), 6);
    s.append(&[entry(7, 6)], None).unwrap();
    assert_eq!(s.last_index().unwrap(), 7);
    s.compact(5).unwrap();
    assert_eq!(s.first_index().unwrap(), 6);
    assert_eq!(s.last_index().unwrap(), 7);
}

#[test]
fn compact() {
    for (to, want_first, want_len) in [
        (2u64, 4u64, 3usize),
        (3, 4, 3),
        (4, 5, 2),
        (5, 6, 1),
        (6, 7, 0),
    ] {
        let d = tempfile::tempdir().unwrap();
        let mut s = store_3_456(d.path());
        s.compact(to).unwrap();
        assert_eq!(s.first_index().unwrap(), want_first, "compact({to})");
        let last = s.last_index().unwrap();
        assert_eq!(last, 6, "compaction never moves the last index");
        assert_eq!(
            s.entries(want_first, last + 1, None, ctx()).unwrap().len(),
            want_len
        );
        assert_eq!(s.term(want_first - 1).unwrap(), (want_first - 1).max(3));
        assert!(compacted(s.term(want_first - 2)) || want_first - 2 < 3);
        drop(s);
        let s = LogStore::open(d.path()).unwrap();
        assert_eq!(
            s.first_index().unwrap(),
            want_first,
            "compaction survives reopen"
        );
    }
}

#[test]
fn append_overwrites_conflicts_and_rejects_holes() {
    type Case = (Vec<Entry>, Option<Vec<(u64, u64)>>);
    let cases: Vec<Case> = vec![
        (
            vec![entry(4, 4), entry(5, 5), entry(6, 6)],
            Some(vec![(4, 4), (5, 5), (6, 6)]),
        ),
        (
            vec![entry(4, 4), entry(5, 7), entry(6, 7)],
            Some(vec![(4, 4), (5, 7), (6, 7)]),
        ),
        (
            vec![entry(4, 4), entry(5, 5), entry(6, 6), entry(7, 6)],
            Some(vec![(4, 4), (5, 5), (6, 6), (7, 6)]),
        ),
        // Overwriting the truncated part of the log is refused.
        (vec![entry(3, 3), entry(4, 4), entry(5, 6)], None),
        // A conflict truncates the suffix.
        (vec![entry(5, 9)], Some(vec![(4, 4), (5, 9)])),
        (
            vec![entry(7, 6)],
            Some(vec![(4, 4), (5, 5), (6, 6), (7, 6)]),
        ),
        // A gap is refused.
        (vec![entry(9, 9)], None),
    ];
    for (i, (ents, want)) in cases.into_iter().enumerate() {
        let d = tempfile::tempdir().unwrap();
        let mut s = store_3_456(d.path());
        let r = panic::catch_unwind(AssertUnwindSafe(|| s.append(&ents, None)));
        match want {
            Some(want) => {
                r.unwrap().unwrap();
                let got: Vec<(u64, u64)> = s
                    .entries(4, s.last_index().unwrap() + 1, None, ctx())
                    .unwrap()
                    .iter()
                    .map(|e| (e.index, e.term))
                    .collect();
                assert_eq!(got, want, "case {i}");
                drop(s);
                let s = LogStore::open(d.path()).unwrap();
                let reread: Vec<(u64, u64)> = s
                    .entries(4, s.last_index().unwrap() + 1, None, ctx())
                    .unwrap()
                    .iter()
                    .map(|e| (e.index, e.term))
                    .collect();
                assert_eq!(reread, want, "case {i} after reopen");
            }
            None => assert!(r.is_err(), "case {i} must be refused"),
        }
    }
}

#[test]
fn hard_state_and_identity_persist() {
    let d = tempfile::tempdir().unwrap();
    {
        let mut s = store_3_456(d.path());
        let hs = HardState {
            term: 6,
            vote: 2,
            commit: 5,
            ..HardState::default()
        };
        s.append(&[], Some(&hs)).unwrap();
        s.set_identity(Identity {
            cluster_id: 7,
            node_id: 2,
            incarnation: 99,
        })
        .unwrap();
    }
    let s = LogStore::open(d.path()).unwrap();
    let st = s.initial_state().unwrap();
    assert_eq!(
        (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
        (6, 2, 5)
    );
    assert_eq!(
        s.identity().unwrap(),
        Some(Identity {
            cluster_id: 7,
            node_id: 2,
            incarnation: 99
        })
    );
}

#[test]
fn bootstrap_starts_after_init_index() {
    let d = tempfile::tempdir().unwrap();
    let mut s = LogStore::open(d.path()).unwrap();
    assert!(s.is_empty());
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..ConfState::default()
    };
    s.bootstrap(cs.clone()).unwrap();
    assert_eq!(s.first_index().unwrap(), INIT_INDEX + 1);
    assert_eq!(s.last_index().unwrap(), INIT_INDEX);
    assert_eq!(s.term(INIT_INDEX).unwrap(), INIT_TERM);
    let st = s.initial_state().unwrap();
    assert_eq!(st.conf_state, cs);
    assert_eq!(st.hard_state.commit, INIT_INDEX);
    // A replica with an empty log can never get entry 1..=INIT_INDEX: it needs a snapshot.
    assert!(compacted(s.entries(1, 2, None, ctx())));
}

#[test]
fn reconcile_raises_commit_and_recovers_from_snapshot_ahead_of_log() {
    let d = tempfile::tempdir().unwrap();
    let mut s = store_3_456(d.path());
    // Applied 5 but commit persisted lazily at 0: commit is raised.
    s.reconcile(5, 5).unwrap();
    assert_eq!(s.hard_state().commit, 5);
    assert_eq!(s.last_index().unwrap(), 6, "log kept");
    // State machine came from a snapshot at 10 that the log never recorded.
    s.reconcile(10, 8).unwrap();
    assert_eq!(s.first_index().unwrap(), 11);
    assert_eq!(s.last_index().unwrap(), 10);
    assert_eq!(s.term(10).unwrap(), 8);
    assert_eq!(s.hard_state().commit, 10);
    // A state machine behind the truncation point is unrecoverable: refuse.
    assert!(s.reconcile(4, 4).is_err());
}
