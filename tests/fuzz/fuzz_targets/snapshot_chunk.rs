//! Snapshot chunks on arbitrary bytes, as a peer streams them: a fresh `Stage` per input, each
//! chunk through `Stage::chunk`, then maybe `Stage::finish`. Nothing may panic; errors are
//! expected, and chunks keep coming after one (the receiver stops there, but a stage must stay
//! safe to use). When every chunk was accepted, `finish` must accept exactly the totals of what
//! was sent (unless the records lack the announced applied index), and stage that snapshot.
//!
//! Input: `mode u8 | index u8 | term u8 | claimed_records u8 | claimed_bytes u16 | chunks`,
//! each chunk `len u16 | bytes` (little-endian; the last one may be cut short).
//! `mode % 3`: 0 = no finish, 1 = finish with the claimed totals, 2 = with the counted ones.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use kvr::error::Error;
use kvr::storage::snapshot::{Stage, Totals};
use libfuzzer_sys::fuzz_target;

/// Small map: a chunk of a fuzz input never needs more, and a full map is a fine error.
const MAP_SIZE_MB: u64 = 8;

/// One staging directory per fuzzing process; `Stage` deletes it when dropped.
fn stage_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("kvr-fuzz-stage-{}", std::process::id())))
}

/// Totals of the records in `chunk` by an independent reading of the record format
/// (`db u8 | key_len u32 | key | value_len u32 | value`), or None if it is malformed.
fn count(chunk: &[u8]) -> Option<Totals> {
    let mut t = Totals::default();
    let mut r = chunk;
    while let Some((_db, rest)) = r.split_first() {
        r = rest;
        for _ in 0..2 {
            let (len, rest) = r.split_first_chunk::<4>()?;
            let len = u32::from_le_bytes(*len) as usize;
            r = rest.get(len..)?;
            t.bytes += len as u64;
        }
        t.records += 1;
    }
    Some(t)
}

fuzz_target!(|data: &[u8]| {
    let Some((head, mut rest)) = data.split_first_chunk::<6>() else {
        return;
    };
    let [mode, index, term, claimed_records, b0, b1] = *head;
    let (index, term) = (u64::from(index), u64::from(term));
    let mut stage = match Stage::create(stage_path(), MAP_SIZE_MB, index, term) {
        Ok(s) => s,
        Err(e) => panic!("cannot create a staging environment: {e}"),
    };
    let mut counted = Totals::default();
    let mut all_accepted = true;
    while let Some((len, after)) = rest.split_first_chunk::<2>() {
        let len = usize::from(u16::from_le_bytes(*len)).min(after.len());
        let (chunk, after) = after.split_at(len);
        rest = after;
        match stage.chunk(chunk) {
            Ok(()) => {
                let t = count(chunk).expect("an accepted chunk is well formed");
                counted.records += t.records;
                counted.bytes += t.bytes;
            }
            Err(Error::Panic(m)) => panic!("chunk reported a panic: {m}"),
            Err(_) => all_accepted = false,
        }
    }
    let expected = match mode % 3 {
        0 => return,
        1 => Totals {
            records: u64::from(claimed_records),
            bytes: u64::from(u16::from_le_bytes([b0, b1])),
        },
        _ => counted,
    };
    let result = stage.finish(expected);
    if !all_accepted {
        return;
    }
    match result {
        Ok(staged) => {
            assert_eq!((staged.index, staged.term), (index, term));
            assert_eq!(
                expected, counted,
                "finish accepted totals that were not sent"
            );
        }
        Err(Error::Corrupt(m)) => assert!(
            expected != counted || !m.contains("incomplete"),
            "every record was accepted and counted, yet: {m}"
        ),
        Err(e) => panic!("finish failed with {e:?}"),
    }
});
