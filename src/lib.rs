//! kvr — an embedded, in-process, Raft-replicated key-value store.
//!
//! A host program opens a [`Replica`] (Rust) or calls `kvr_open` (C) and from then on *is* a
//! member of the cluster: kvr's threads run inside the process, replicate every write with
//! raft-rs over plain TCP, and keep it in LMDB.
//!
//! # The path of a write
//!
//! 1. The caller's thread ([`Replica::put`]) encodes a [`command::Command`] tagged with this
//!    handle's session id and a sequence number, registers a waiter, and puts the proposal in
//!    the raft thread's bounded inbox.
//! 2. The raft thread ([`node::raft_loop`]) proposes it. A follower forwards it to the leader.
//!    Every proposal that arrived meanwhile joins the same `Ready`: the leader sends appends to
//!    the followers and, in parallel, writes the entries and hard state in one LMDB txn with a
//!    full sync ([`storage::log_store`]).
//! 3. Followers persist the entries (synced) before acknowledging. Once a majority has them on
//!    disk the entry is committed, and the raft thread hands it to the apply thread.
//! 4. The apply thread ([`node::apply`]) applies a whole batch of committed entries in one LMDB
//!    txn of the state machine ([`storage::state_machine`]) that also stores the applied index
//!    and the dedup table. Then it completes the waiters of entries proposed by this replica.
//! 5. The caller returns. A retry after a lost proposal reuses the sequence number, and the
//!    dedup table makes sure it applies once.
//!
//! # The path of a read
//!
//! A linearizable [`Replica::get`] asks the raft thread for a read index (ReadIndex; reads
//! arriving together share one request, and followers ask the leader), waits until the apply
//! thread has applied up to it, then reads LMDB in a read txn on the caller's thread.
//! [`ReadConsistency::Stale`] skips Raft and reads the local state machine directly.
//!
//! # Threads
//!
//! Per replica: `kvr-raft-N` (which also reads the peers' connections of Raft messages),
//! `kvr-apply-N`, `kvr-listen-N`, a `kvr-reader-N` per inbound connection while it hands over
//! its handshake (and for a snapshot stream), one `kvr-peer-N-M` writer per peer
//! ([`transport`]), and `kvr-wal-fill`
//! while the next log segment is filled ([`storage::wal`]). No async runtime.
//!
//! The C ABI ([`ffi`]) wraps this API; see `include/kvr.h`.

#![deny(missing_docs)]

pub mod command;
pub mod config;
pub mod error;
pub mod ffi;
pub mod json;
pub mod node;
pub mod replica;
pub mod storage;
pub mod transport;

pub use config::Config;
pub use error::{Error, Result};
pub use node::Role;
pub use replica::{
    BatchWrite, Event, EventKind, MemberInfo, MemberRole, ReadConsistency, Replica, ScanRange,
    Status, Watch,
};

/// Major version.
pub const VERSION_MAJOR: u32 = 0;
/// Minor version.
pub const VERSION_MINOR: u32 = 2;
/// Patch version.
pub const VERSION_PATCH: u32 = 0;
/// `major * 1_000_000 + minor * 1_000 + patch`.
pub const VERSION_NUMBER: u32 = VERSION_MAJOR * 1_000_000 + VERSION_MINOR * 1_000 + VERSION_PATCH;
