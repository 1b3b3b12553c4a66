//! The change feed: every change to keys under a prefix, in apply order, resumable from a
//! Raft index within the retained window.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Replica;
use crate::error::{Error, Result};
use crate::node::Shared;
use crate::storage::state_machine::{change, Change};

/// Changes fetched per read of the feed.
const WATCH_PAGE: usize = 256;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was set (value in the event).
    Put,
    /// The key was deleted.
    Delete,
    /// The key expired (its TTL passed).
    Expire,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Raft index of the entry that made the change; resume after it with `index + 1`.
    pub index: u64,
    /// What happened.
    pub kind: EventKind,
    /// The key.
    pub key: Vec<u8>,
    /// The new value (empty unless `kind` is `Put`).
    pub value: Vec<u8>,
}

/// A cursor on the change feed of one replica. The changes of one entry (a batch makes several)
/// come one after the other; to resume later without gaps or duplicates, watch again from the
/// index after the last entry whose changes you finished. It fails with `Closed` once the
/// replica is closed.
pub struct Watch {
    shared: Arc<Shared>,
    prefix: Vec<u8>,
    cursor: (u64, u32),
    buf: VecDeque<Change>,
}

impl Replica {
    /// Watches changes to keys starting with `prefix`. `from_index` 0 starts with the next
    /// change; otherwise changes of entries at or after `from_index` are delivered first
    /// (`Err(Compacted)` if they left the retained window, `watch_retain_entries` and
    /// `watch_retain_bytes`).
    pub fn watch(&self, prefix: &[u8], from_index: u64) -> Result<Watch> {
        self.check_open()?;
        if self.cfg.watch_retain_entries == 0 {
            return Err(Error::invalid(
                "the change feed is disabled (watch_retain_entries=0)",
            ));
        }
        // "From now" starts after every write already answered here.
        self.settle()?;
        let sm = self.shared.state_machine()?;
        let cursor = match from_index {
            0 => (sm.applied()?.0, u32::MAX),
            i => (i - 1, u32::MAX),
        };
        // Fails now, rather than on the first `next`, when the window no longer reaches back.
        sm.changes_after(cursor, prefix, 1)?;
        Ok(Watch {
            shared: self.shared.clone(),
            prefix: prefix.to_vec(),
            cursor,
            buf: VecDeque::new(),
        })
    }
}

impl Watch {
    /// The next change, waiting up to `timeout` for one; `Ok(None)` when none came.
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Event>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.buf.pop_front() {
                return Ok(Some(event(c)));
            }
            if self.shared.stopping.load(Ordering::Acquire) {
                return Err(self.shared.stopped_error());
            }
            let page = self.shared.state_machine()?.changes_after(
                self.cursor,
                &self.prefix,
                WATCH_PAGE,
            )?;
            self.cursor = page.scanned_to;
            if !page.changes.is_empty() {
                self.buf.extend(page.changes);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Nothing past the cursor: wait for the applied index to move. While a watcher
            // waits, the apply thread holds applied entries 10 ms at most, not a second.
            let seen = page.applied.max(self.cursor.0);
            let _waiting = self.shared.watcher_waits();
            self.shared.wait_applied(seen, deadline - now);
        }
    }
}

fn event(c: Change) -> Event {
    let kind = match c.op {
        change::PUT => EventKind::Put,
        change::EXPIRE => EventKind::Expire,
        _ => EventKind::Delete,
    };
    Event {
        index: c.index,
        kind,
        key: c.key,
        value: c.value,
    }
}
