"""kvr: host a replica of an embedded, Raft-replicated key-value store in this process.

    import kvr

    with kvr.open("data/1", node_id=1,
                  peers={1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}) as r:
        r.put(b"k", b"v")          # returns once a majority has it on disk
        assert r.get(b"k") == b"v"  # linearizable, on any replica
        r.cas(b"k", b"v", b"w")     # True: compare-and-swap
        for key, value in r.scan_prefix(b"k"):
            ...
        for event in r.watch(b"k", timeout=1.0):   # changes, in log order
            ...

The shared library is found through ``KVR_LIBRARY`` (a path), then next to this package, then
wherever the system's dynamic linker looks. Importing fails if it is missing or of an
incompatible version.
"""

from ._ffi import KEY_BYTES_MAX, VALUE_BYTES_MAX, library_path, library_version, result_str
from .errors import (
    Busy,
    CasFailed,
    Closed,
    Compacted,
    Corrupt,
    Error,
    InvalidArgument,
    IoError,
    NoLeader,
    NotFound,
    Panic,
    Refused,
    Removed,
    Timeout,
)
from .replica import (
    BatchOp,
    Consistency,
    Event,
    EventKind,
    Member,
    Replica,
    ScanPage,
    Status,
    Watcher,
    open,
    prefix_end,
)

__version__ = "0.1.0"

LINEARIZABLE = Consistency.LINEARIZABLE
LEASE = Consistency.LEASE
STALE = Consistency.STALE

__all__ = [
    "KEY_BYTES_MAX",
    "VALUE_BYTES_MAX",
    "LEASE",
    "LINEARIZABLE",
    "STALE",
    "BatchOp",
    "Busy",
    "CasFailed",
    "Closed",
    "Compacted",
    "Consistency",
    "Corrupt",
    "Error",
    "Event",
    "EventKind",
    "InvalidArgument",
    "IoError",
    "Member",
    "NoLeader",
    "NotFound",
    "Panic",
    "Refused",
    "Removed",
    "Replica",
    "ScanPage",
    "Status",
    "Timeout",
    "Watcher",
    "library_path",
    "library_version",
    "open",
    "prefix_end",
    "result_str",
]
