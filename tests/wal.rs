//! The write-ahead log under crashes and damage: a torn last append is dropped, damage before
//! intact data is reported, segments roll and are deleted by compaction, and a log restarted
//! after a snapshot never brings old entries back.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use raft::eraftpb::{Entry, HardState};
use raft::{GetEntriesContext, Storage};

use kvr::storage::log_store::LogStore;
use kvr::storage::wal::SEGMENT_BYTES;

fn entry(index: u64, term: u64, bytes: usize) -> Entry {
    Entry {
        index,
        term,
        data: vec![index as u8; bytes].into(),
        ..Entry::default()
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// A log truncated at (5, 5) holding entries 6..=6+n-1 of term 5, each written by its own append.
fn log_with(dir: &Path, n: u64, bytes: usize) -> LogStore {
    let mut s = LogStore::open(dir).unwrap();
    s.reset_to(5, 5, HardState::default()).unwrap();
    for i in 6..6 + n {
        s.append(&[entry(i, 5, bytes)], None).unwrap();
    }
    s
}

/// Offset just past the last non-zero byte of the file.
fn end_of_data(path: &Path) -> u64 {
    let data = fs::read(path).unwrap();
    data.iter()
        .rposition(|&b| b != 0)
        .map_or(0, |p| p as u64 + 1)
}

#[test]
fn a_torn_last_append_is_dropped_and_writing_resumes() {
    let d = tempfile::tempdir().unwrap();
    drop(log_with(d.path(), 10, 100));
    let seg = segments(d.path()).pop().unwrap();
    let end = end_of_data(&seg);
    // Tear the last append in half.
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&[0u8; 60], end - 60).unwrap();
    let mut s = LogStore::open(d.path()).unwrap();
    assert_eq!(
        s.last_index().unwrap(),
        14,
        "the torn entry 15 is gone, the rest intact"
    );
    s.append(&[entry(15, 5, 10), entry(16, 5, 10)], None)
        .unwrap();
    drop(s);
    let s = LogStore::open(d.path()).unwrap();
    assert_eq!(s.last_index().unwrap(), 16);
    let ents = s
        .entries(6, 17, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(
        ents.iter().map(|e| e.index).collect::<Vec<_>>(),
        (6..17).collect::<Vec<_>>()
    );
    assert_eq!(ents[9].data.len(), 10, "entry 15 is the rewritten one");
}

#[test]
fn damage_before_intact_data_is_reported_not_hidden() {
    let d = tempfile::tempdir().unwrap();
    drop(log_with(d.path(), 10, 100));
    let seg = segments(d.path()).pop().unwrap();
    // Flip a byte inside an early entry: later appends are intact, so this is not a torn tail.
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 300).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], 300).unwrap();
    match LogStore::open(d.path()) {
        Err(kvr::Error::Corrupt(m)) => assert!(m.contains("bad batch"), "{m}"),
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn segments_roll_and_compaction_deletes_the_dead_ones() {
    let d = tempfile::tempdir().unwrap();
    // Entries of 1 MiB: a 64 MiB segment holds about 63 of them.
    let per = (1 << 20) as usize;
    let n = SEGMENT_BYTES / per as u64 + 10;
    let mut s = log_with(d.path(), n, per);
    assert!(
        segments(d.path()).len() >= 2,
        "rolled: {:?}",
        segments(d.path())
    );
    let last = s.last_index().unwrap();
    s.compact(last - 5).unwrap();
    assert_eq!(
        segments(d.path()).len(),
        1,
        "only the segment holding live entries stays"
    );
    drop(s);
    let s = LogStore::open(d.path()).unwrap();
    assert_eq!(s.first_index().unwrap(), last - 4);
    assert_eq!(s.last_index().unwrap(), last);
    let e = s
        .entries(last, last + 1, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(e[0].data.len(), per, "read back from disk after reopen");
}

#[test]
fn a_restarted_log_never_brings_old_entries_back() {
    let d = tempfile::tempdir().unwrap();
    let mut s = log_with(d.path(), 20, 10);
    let hs = HardState {
        term: 9,
        vote: 2,
        commit: 50,
        ..HardState::default()
    };
    s.reset_to(50, 9, hs).unwrap();
    drop(s);
    let s = LogStore::open(d.path()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (51, 50)
    );
    assert_eq!(s.term(50).unwrap(), 9);
    let st = s.initial_state().unwrap();
    assert_eq!(
        (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
        (9, 2, 50)
    );
    assert_eq!(segments(d.path()).len(), 1);
}

#[test]
fn a_crash_between_restart_steps_keeps_a_consistent_log() {
    let d = tempfile::tempdir().unwrap();
    let mut s = log_with(d.path(), 20, 10);
    let saved: Vec<(PathBuf, Vec<u8>)> = segments(d.path())
        .into_iter()
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect();
    s.reset_to(50, 9, HardState::default()).unwrap();
    drop(s);
    // Put the old segments back, as if the crash came right after META was replaced.
    for (p, data) in &saved {
        fs::write(p, data).unwrap();
    }
    let s = LogStore::open(d.path()).unwrap();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (51, 50),
        "segments below the floor are dead"
    );
    assert!(
        saved.iter().all(|(p, _)| !p.exists()),
        "and deleted at open"
    );
}

#[test]
fn votes_are_durable_without_entries() {
    let d = tempfile::tempdir().unwrap();
    let mut s = log_with(d.path(), 3, 10);
    s.append(
        &[],
        Some(&HardState {
            term: 7,
            vote: 3,
            commit: 6,
            ..HardState::default()
        }),
    )
    .unwrap();
    drop(s);
    let s = LogStore::open(d.path()).unwrap();
    let hs = s.initial_state().unwrap().hard_state;
    assert_eq!((hs.term, hs.vote), (7, 3));
}
