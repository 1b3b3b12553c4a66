"""Exceptions: one class per kvr result code, all under :class:`kvr.Error`."""

from __future__ import annotations

from typing import Dict, Optional, Type


class Error(Exception):
    """A kvr call failed. ``code`` is the C result code, ``message`` the library's text."""

    #: The ``KVR_*`` result code this class stands for (``None`` on the base class).
    code_value: Optional[int] = None
    #: What to check first when this error shows up.
    hint: str = ""

    def __init__(self, message: str = "", code: Optional[int] = None) -> None:
        self.code: int = code if code is not None else (self.code_value or 0)
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        text = self.message or type(self).__name__
        return f"{text} (hint: {self.hint})" if self.hint else text


class NotFound(Error, LookupError):
    """KVR_NOT_FOUND: the key does not exist (``get`` returns ``None`` instead of raising)."""

    code_value = -1


class InvalidArgument(Error, ValueError):
    """KVR_INVALID_ARG: empty or oversized key or value, unknown option, bad option value."""

    code_value = -2


class Timeout(Error, TimeoutError):
    """KVR_TIMEOUT: the request took longer than ``request_timeout_ms``."""

    code_value = -3
    hint = "a timed-out write may still be applied later; retrying it is safe"


class NoLeader(Error):
    """KVR_NO_LEADER: no leader is known (election in progress, or no quorum reachable)."""

    code_value = -4
    hint = "is a majority of the replicas in `peers` running and reachable?"


class Closed(Error):
    """KVR_CLOSED: the replica was closed."""

    code_value = -5


class IoError(Error):
    """KVR_IO: operating-system or LMDB I/O error."""

    code_value = -6


class Corrupt(Error):
    """KVR_CORRUPT: stored or received data failed validation."""

    code_value = -7


class Panic(Error):
    """KVR_PANIC: kvr caught an internal panic; the replica only accepts ``close()`` now."""

    code_value = -8
    hint = "close this replica and reopen it"


class Busy(Error):
    """KVR_BUSY: the data directory is in use by another replica."""

    code_value = -9
    hint = "another replica, in this process or another one, has this directory open"


class CasFailed(Error):
    """KVR_CAS_FAILED: compare-and-swap found a different value."""

    code_value = -10


class Compacted(Error):
    """KVR_COMPACTED: the requested history was compacted."""

    code_value = -11


class Removed(Error):
    """KVR_REMOVED: this replica was removed from the cluster."""

    code_value = -12


class Refused(Error):
    """KVR_REFUSED: refused by the cluster or a peer."""

    code_value = -13
    hint = "check cluster_id and that this node id is a member"


BY_CODE: Dict[int, Type[Error]] = {
    cls.code_value: cls
    for cls in (
        NotFound,
        InvalidArgument,
        Timeout,
        NoLeader,
        Closed,
        IoError,
        Corrupt,
        Panic,
        Busy,
        CasFailed,
        Compacted,
        Removed,
        Refused,
    )
    if cls.code_value is not None
}


def from_code(code: int, message: str) -> Error:
    """The exception for a result code; codes newer than this binding give a plain Error."""
    return BY_CODE.get(code, Error)(message, code)
