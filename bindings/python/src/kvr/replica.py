"""The Replica handle and ``open``."""

from __future__ import annotations

import enum
import os
import threading
import warnings
from typing import Any, List, Mapping, Optional, Tuple, TypedDict, Union

from . import _ffi, errors

Key = Union[bytes, bytearray, memoryview, str]
Value = Union[bytes, bytearray, memoryview, str]
OptionValue = Union[str, int, bool, "os.PathLike[str]"]


class Consistency(enum.IntEnum):
    """Read consistency for :meth:`Replica.get`."""

    #: Through Raft ReadIndex: sees every write acknowledged anywhere before the call.
    LINEARIZABLE = _ffi.READ_LINEARIZABLE
    #: Local state machine only: no network round trip, may miss recent writes made elsewhere.
    STALE = _ffi.READ_STALE


class Status(TypedDict):
    """What :meth:`Replica.status` returns (the fields of ``kvr_status_info``)."""

    node_id: int
    leader_id: int
    term: int
    commit_index: int
    applied_index: int
    last_index: int
    applied_index_at_open: int
    entries_applied: int
    role: str


def _as_bytes(what: str, data: Optional[Key]) -> Optional[bytes]:
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def _option_text(key: str, value: OptionValue) -> bytes:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
    else:
        raise TypeError(f"option {key}: expected str, int, bool or path, not {type(value).__name__}")
    if "\0" in key or "\0" in text:
        # C would silently stop at the NUL and set something else than asked.
        raise errors.InvalidArgument(f"option {key!r} contains a NUL character", -2)
    return text.encode("utf-8")


def _peers_text(peers: Union[Mapping[int, str], str]) -> str:
    if isinstance(peers, str):
        return peers
    return ",".join(f"{node}={addr}" for node, addr in sorted(peers.items()))


class Replica:
    """One kvr replica hosted by this process. Thread-safe; create it with :func:`kvr.open`.

    Every call may block (a write waits for a majority, a linearizable read for the leader), at
    most ``request_timeout_ms``; the GIL is released meanwhile.
    """

    def __init__(self, handle: int, dir: str) -> None:
        self._handle: Optional[int] = handle
        self._lock = threading.Lock()
        #: This replica's node id.
        self.node_id: int = _ffi.status(handle)["node_id"]
        #: Its data directory, as given to :func:`open`.
        self.dir = dir

    def _h(self) -> int:
        h = self._handle
        if h is None:
            raise errors.Closed("replica is closed", -5)
        return h

    def put(self, key: Key, value: Value) -> None:
        """Sets ``key`` to ``value``; returns once a majority has it on disk and it is applied here."""
        v = _as_bytes("value", value)
        if v is None:
            raise TypeError("value must be bytes or str, not None")
        _ffi.put(self._h(), _as_bytes("key", key), v)

    def get(self, key: Key, consistency: Consistency = Consistency.LINEARIZABLE) -> Optional[bytes]:
        """The value of ``key``, or ``None`` when it is absent."""
        return _ffi.get(self._h(), _as_bytes("key", key), int(consistency))

    def delete(self, key: Key) -> None:
        """Removes ``key`` (absent keys are not an error). Blocks like :meth:`put`."""
        _ffi.delete(self._h(), _as_bytes("key", key))

    def status(self) -> Status:
        """This replica's view of the cluster; never blocks."""
        s = _ffi.status(self._h())
        return Status(
            node_id=s["node_id"],
            leader_id=s["leader_id"],
            term=s["term"],
            commit_index=s["commit_index"],
            applied_index=s["applied_index"],
            last_index=s["last_index"],
            applied_index_at_open=s["applied_index_at_open"],
            entries_applied=s["entries_applied"],
            role=s["role"],
        )

    def close(self) -> None:
        """Stops the replica and releases its directory. Calling it again does nothing."""
        with self._lock:
            h, self._handle = self._handle, None
        if h is not None:
            _ffi.close(h)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Replica":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_handle", None) is None:
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self)
        try:
            self.close()
        except Exception:
            pass  # Nothing useful can be done with an error from a finalizer.

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else "open"
        return f"<kvr.Replica node_id={self.node_id} dir={self.dir!r} {state}>"


def open(
    dir: Union[str, "os.PathLike[str]"],
    *,
    node_id: Union[int, str] = 1,
    listen: Optional[str] = None,
    peers: Union[Mapping[int, str], str, None] = None,
    **options: OptionValue,
) -> Replica:
    """Opens (creating or recovering) the replica stored in ``dir`` and starts it.

    ``peers`` maps every node id of the cluster, this one included, to its ``host:port``;
    without it the replica is a single-node cluster. Other keyword arguments are kvr option
    keys (``tick_ms=50``, ``request_timeout_ms=2000``, ``cluster_id=7``, ``join=True``...).
    Raises :class:`kvr.InvalidArgument` for unknown keys and bad values, :class:`kvr.Busy`
    when another replica has ``dir`` open.
    """
    items: List[Tuple[str, OptionValue]] = [("node_id", node_id), ("dir", dir)]
    if listen is not None:
        items.append(("listen", listen))
    if peers is not None:
        items.append(("peers", _peers_text(peers)))
    items += [(k, v) for k, v in options.items() if v is not None]
    encoded = [(k.encode("utf-8"), _option_text(k, v)) for k, v in items]
    handle = _ffi.open_replica(encoded)
    return Replica(handle, os.fspath(dir))
