//! What each command does to the state machine, inside the apply txn. Deterministic: it
//! depends only on the txn's state and the command (clocks come from the command itself).

use crate::command::{BatchOp, Op};
use crate::config::VALUE_BYTES_MAX;
use crate::error::{codes, Result};
use crate::storage::state_machine::{ApplyTxn, TtlChange};

/// Applies `op`; returns the result code recorded for the request (`codes::OK`,
/// `codes::CAS_FAILED`, or `codes::INVALID_ARG` when an append would exceed the value limit).
pub fn execute(txn: &mut ApplyTxn<'_>, op: &Op<'_>) -> Result<i32> {
    match op {
        Op::Noop => {}
        Op::Put {
            key,
            value,
            expires_at_ms,
        } => {
            let ttl = if *expires_at_ms == 0 {
                TtlChange::Clear
            } else {
                TtlChange::Set(*expires_at_ms)
            };
            txn.put(key, value, ttl)?;
        }
        Op::Delete { key } => {
            txn.delete(key)?;
        }
        Op::Batch(ops) => {
            for o in ops {
                match o {
                    BatchOp::Put { key, value } => txn.put(key, value, TtlChange::Clear)?,
                    BatchOp::Delete { key } => {
                        txn.delete(key)?;
                    }
                }
            }
        }
        Op::Cas {
            now_ms,
            key,
            expected,
            new,
        } => return cas(txn, *now_ms, key, *expected, *new),
        Op::Append { now_ms, key, value } => return append(txn, *now_ms, key, value),
        Op::Expire(keys) => {
            for (k, at) in keys {
                txn.expire(k, *at)?;
            }
        }
    }
    Ok(codes::OK)
}

fn cas(
    txn: &mut ApplyTxn<'_>,
    now_ms: u64,
    key: &[u8],
    expected: Option<&[u8]>,
    new: Option<&[u8]>,
) -> Result<i32> {
    let current = txn.get_live(key, now_ms)?;
    let matches = match expected {
        None => current.is_none(),
        Some(e) => current == Some(e),
    };
    if !matches {
        return Ok(codes::CAS_FAILED);
    }
    match new {
        Some(v) => txn.put(key, v, TtlChange::Clear)?,
        None => {
            txn.delete(key)?;
        }
    }
    Ok(codes::OK)
}

fn append(txn: &mut ApplyTxn<'_>, now_ms: u64, key: &[u8], value: &[u8]) -> Result<i32> {
    let current = txn.get_live(key, now_ms)?;
    let live = current.is_some();
    let mut v = current.unwrap_or_default().to_vec();
    if v.len() + value.len() > VALUE_BYTES_MAX {
        return Ok(codes::INVALID_ARG);
    }
    v.extend_from_slice(value);
    // Appending to a live key keeps its deadline; an expired one starts afresh.
    txn.put(
        key,
        &v,
        if live {
            TtlChange::Keep
        } else {
            TtlChange::Clear
        },
    )?;
    Ok(codes::OK)
}
