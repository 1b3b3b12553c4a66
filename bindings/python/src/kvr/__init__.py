"""kvr: host a replica of an embedded, Raft-replicated key-value store in this process.

    import kvr

    with kvr.open("data/1", node_id=1,
                  peers={1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}) as r:
        r.put(b"k", b"v")          # returns once a majority has it on disk
        assert r.get(b"k") == b"v"  # linearizable, on any replica

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
from .replica import Consistency, Replica, Status, open

__version__ = "0.1.0"

LINEARIZABLE = Consistency.LINEARIZABLE
STALE = Consistency.STALE

__all__ = [
    "KEY_BYTES_MAX",
    "VALUE_BYTES_MAX",
    "LINEARIZABLE",
    "STALE",
    "Busy",
    "CasFailed",
    "Closed",
    "Compacted",
    "Consistency",
    "Corrupt",
    "Error",
    "InvalidArgument",
    "IoError",
    "NoLeader",
    "NotFound",
    "Panic",
    "Refused",
    "Removed",
    "Replica",
    "Status",
    "Timeout",
    "library_path",
    "library_version",
    "open",
    "result_str",
]
