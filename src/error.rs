//! Errors of every layer, and the one place that maps them to C result codes.

use std::fmt;
use std::io;

/// Result alias used across kvr.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong in a kvr call.
///
/// Each variant maps to exactly one stable C result code (see [`Error::code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist.
    NotFound,
    /// A caller passed something kvr cannot accept (the text says what).
    InvalidArgument(String),
    /// The request did not complete within `request_timeout_ms`. A write that timed out may
    /// still be applied later; retrying it through the same handle never applies it twice.
    Timeout,
    /// No leader is known right now (election in progress, or no quorum reachable).
    NoLeader,
    /// The replica has been closed (or failed and was shut down).
    Closed,
    /// An operating-system or LMDB I/O error.
    Io(String),
    /// Stored or received data failed validation.
    Corrupt(String),
    /// A panic was caught inside kvr; the handle is no longer usable.
    Panic(String),
    /// The data directory is already in use by another replica.
    Busy(String),
    /// A compare-and-swap found a value other than the expected one.
    CasFailed,
    /// The requested history has been compacted away.
    Compacted,
    /// This replica has been removed from the cluster.
    Removed,
    /// The peer or cluster refused us (wrong cluster, unknown node, stale identity).
    Refused(String),
}

impl Error {
    /// The stable C result code of this error (a negative `KVR_*` constant).
    pub fn code(&self) -> i32 {
        match self {
            Error::NotFound => codes::NOT_FOUND,
            Error::InvalidArgument(_) => codes::INVALID_ARG,
            Error::Timeout => codes::TIMEOUT,
            Error::NoLeader => codes::NO_LEADER,
            Error::Closed => codes::CLOSED,
            Error::Io(_) => codes::IO,
            Error::Corrupt(_) => codes::CORRUPT,
            Error::Panic(_) => codes::PANIC,
            Error::Busy(_) => codes::BUSY,
            Error::CasFailed => codes::CAS_FAILED,
            Error::Compacted => codes::COMPACTED,
            Error::Removed => codes::REMOVED,
            Error::Refused(_) => codes::REFUSED,
        }
    }

    /// Shorthand for an [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::InvalidArgument(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound => f.write_str("key not found"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::Timeout => f.write_str("request timed out (it may still be applied later)"),
            Error::NoLeader => f.write_str("no leader: election in progress or no quorum"),
            Error::Closed => f.write_str("replica is closed"),
            Error::Io(m) => write!(f, "I/O error: {m}"),
            Error::Corrupt(m) => write!(f, "corrupt data: {m}"),
            Error::Panic(m) => write!(f, "internal panic: {m}"),
            Error::Busy(m) => write!(f, "busy: {m}"),
            Error::CasFailed => f.write_str("compare-and-swap failed: value differs"),
            Error::Compacted => f.write_str("requested history was compacted"),
            Error::Removed => f.write_str("this replica was removed from the cluster"),
            Error::Refused(m) => write!(f, "refused: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

impl From<heed::Error> for Error {
    fn from(e: heed::Error) -> Self {
        match e {
            heed::Error::Io(io) => Error::Io(io.to_string()),
            heed::Error::Mdb(heed::MdbError::Corrupted) => {
                Error::Corrupt("LMDB page corrupted".into())
            }
            heed::Error::Mdb(heed::MdbError::Invalid) => Error::Corrupt("not an LMDB file".into()),
            heed::Error::Mdb(heed::MdbError::VersionMismatch) => {
                Error::Corrupt("LMDB version mismatch".into())
            }
            heed::Error::Mdb(m) => Error::Io(format!("LMDB: {m}")),
            heed::Error::Encoding(m) | heed::Error::Decoding(m) => Error::Corrupt(m.to_string()),
            heed::Error::EnvAlreadyOpened => {
                Error::Busy("the data directory is already open in this process".into())
            }
        }
    }
}

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        match e {
            raft::Error::ProposalDropped => Error::NoLeader,
            raft::Error::Io(io) => Error::Io(io.to_string()),
            raft::Error::Store(s) => Error::Io(format!("raft storage: {s}")),
            raft::Error::CodecError(c) => Error::Corrupt(c.to_string()),
            raft::Error::ConfigInvalid(c) => Error::InvalidArgument(c),
            other => Error::Io(format!("raft: {other}")),
        }
    }
}

/// Stable C result codes. Numbers are never reused.
pub mod codes {
    /// Success.
    pub const OK: i32 = 0;
    /// The key does not exist.
    pub const NOT_FOUND: i32 = -1;
    /// Bad argument: NULL pointer, empty or oversized key/value, unknown option, bad value.
    pub const INVALID_ARG: i32 = -2;
    /// The request timed out.
    pub const TIMEOUT: i32 = -3;
    /// No leader is known.
    pub const NO_LEADER: i32 = -4;
    /// The handle is closed.
    pub const CLOSED: i32 = -5;
    /// I/O error.
    pub const IO: i32 = -6;
    /// Corrupt data.
    pub const CORRUPT: i32 = -7;
    /// A panic was caught; the handle is poisoned.
    pub const PANIC: i32 = -8;
    /// The data directory is in use.
    pub const BUSY: i32 = -9;
    /// Compare-and-swap failed.
    pub const CAS_FAILED: i32 = -10;
    /// History compacted.
    pub const COMPACTED: i32 = -11;
    /// Replica removed from the cluster.
    pub const REMOVED: i32 = -12;
    /// Refused by peer or cluster.
    pub const REFUSED: i32 = -13;

    /// Static description of a code.
    pub fn describe(code: i32) -> &'static str {
        match code {
            OK => "ok",
            NOT_FOUND => "not found",
            INVALID_ARG => "invalid argument",
            TIMEOUT => "timed out",
            NO_LEADER => "no leader",
            CLOSED => "closed",
            IO => "I/O error",
            CORRUPT => "corrupt data",
            PANIC => "internal panic",
            BUSY => "busy",
            CAS_FAILED => "compare-and-swap failed",
            COMPACTED => "compacted",
            REMOVED => "removed from cluster",
            REFUSED => "refused",
            _ => "unknown result code",
        }
    }
}
