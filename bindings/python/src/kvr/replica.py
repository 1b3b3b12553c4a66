"""The Replica handle and ``open``."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import threading
import time
import warnings
from typing import (
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    TypedDict,
    Union,
)

from . import _ffi, errors

Key = Union[bytes, bytearray, memoryview, str]
Value = Union[bytes, bytearray, memoryview, str]
OptionValue = Union[str, int, bool, "os.PathLike[str]"]


class Consistency(enum.IntEnum):
    """Read consistency for :meth:`Replica.get`."""

    #: Through Raft ReadIndex: sees every write acknowledged anywhere before the call.
    LINEARIZABLE = _ffi.READ_LINEARIZABLE
    #: Like LINEARIZABLE, but a leader holding its lease answers without a quorum round trip
    #: (assumes bounded clock drift between replicas).
    LEASE = _ffi.READ_LEASE
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


class EventKind(enum.IntEnum):
    """What a change-feed :class:`Event` did to its key (``KVR_EVENT_*``)."""

    PUT = _ffi.EVENT_PUT
    DELETE = _ffi.EVENT_DELETE
    EXPIRE = _ffi.EVENT_EXPIRE

    @classmethod
    def _missing_(cls, value: object) -> "EventKind":
        # A newer library may report kinds this binding does not name; keep the number
        # rather than break the feed.
        if not isinstance(value, int):
            return None  # type: ignore[return-value]
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


@dataclasses.dataclass(frozen=True)
class Event:
    """One change of the feed. Resume a feed after it with ``from_index=event.index + 1``."""

    #: Raft index of the entry that made the change.
    index: int
    kind: EventKind
    key: bytes
    #: The value after the change (``b""`` unless ``kind`` is ``PUT``).
    value: bytes


class Member(TypedDict):
    """One entry of :meth:`Replica.members`."""

    id: int
    addr: str
    #: ``"voter"`` or ``"learner"``.
    role: str


class ScanPage(NamedTuple):
    """One page of a scan: the pairs in key order, and the key to resume from (None when the
    page reached the end of the range)."""

    items: List[Tuple[bytes, bytes]]
    next: Optional[bytes]


#: A write of :meth:`Replica.batch`: ``("put", key, value)`` or ``("delete", key)``.
BatchOp = Union[Tuple[str, Key], Tuple[str, Key, Value]]

#: Pairs read per call by the scan generators unless told otherwise.
SCAN_PAGE_SIZE = 1000
#: Longest single wait of a watcher inside the library: bounds how long :meth:`Watcher.close`
#: from another thread waits for a poll in progress.
WATCH_SLICE_MS = 100


def _as_bytes(what: str, data: Optional[Key]) -> Optional[bytes]:
    if data is None:
        return None
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{what} must be bytes or str, not {type(data).__name__}")


def _value(value: Optional[Value], what: str = "value") -> bytes:
    v = _as_bytes(what, value)
    if v is None:
        raise TypeError(f"{what} must be bytes or str, not None")
    return v


def _range_bytes(what: str, data: Optional[Key]) -> bytes:
    """A scan or watch bound, where ``None`` and empty both mean "unbounded"."""
    return _as_bytes(what, data) or b""


def _text_arg(
    what: str, text: Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]", None]
) -> Optional[bytes]:
    """A NUL-terminated string argument; None stays NULL, for the library to reject."""
    if text is None:
        return None
    raw = os.fsencode(text) if isinstance(text, os.PathLike) else text
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if not isinstance(raw, bytes):
        raise TypeError(f"{what} must be str, bytes or a path, not {type(text).__name__}")
    if b"\0" in raw:
        # C would stop at the NUL and act on something other than asked.
        raise errors.InvalidArgument(f"{what} contains a NUL character", _ffi.KVR_INVALID_ARG)
    return raw


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with ``prefix`` (``b""``, meaning no
    upper bound, when there is none): the ``end`` of a :meth:`Replica.scan` over that prefix."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b""
    return stripped[:-1] + bytes([stripped[-1] + 1])


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

    def put(self, key: Key, value: Value, ttl_ms: Optional[int] = None) -> None:
        """Sets ``key`` to ``value``; returns once a majority has it on disk (every later read or
        watch on this replica sees it).

        With ``ttl_ms`` (> 0) the key expires that many milliseconds later: no read returns it
        afterwards, and the leader deletes it through the log, so every replica deletes it at
        the same index (watchers see an ``EXPIRE`` event). A later plain ``put`` clears the TTL.
        A key with a TTL is at most 503 bytes.
        """
        v = _value(value)
        if ttl_ms is None:
            _ffi.put(self._h(), _as_bytes("key", key), v)
        else:
            _ffi.put_ttl(self._h(), _as_bytes("key", key), v, ttl_ms)

    def get(self, key: Key, consistency: Consistency = Consistency.LINEARIZABLE) -> Optional[bytes]:
        """The value of ``key``, or ``None`` when it is absent."""
        return _ffi.get(self._h(), _as_bytes("key", key), int(consistency))

    def delete(self, key: Key) -> None:
        """Removes ``key`` (absent keys are not an error). Blocks like :meth:`put`."""
        _ffi.delete(self._h(), _as_bytes("key", key))

    def batch(self, ops: Iterable[BatchOp]) -> None:
        """Applies the writes ``("put", key, value)`` and ``("delete", key)`` in order, all or
        none: one Raft entry, one LMDB transaction. Blocks like :meth:`put`. Raises
        :class:`kvr.InvalidArgument`, with nothing written, when any write is invalid
        (unknown op, bad key or value, more than 10000 writes or 16 MiB in all)."""
        encoded: List[Tuple[int, Optional[bytes], Optional[bytes]]] = []
        for i, op in enumerate(ops):
            encoded.append(_batch_op(i, op))
        _ffi.batch(self._h(), encoded)

    def cas(self, key: Key, expected: Optional[Value], new: Value) -> bool:
        """Compare-and-swap: sets ``key`` to ``new`` only if it holds ``expected`` now — or,
        when ``expected`` is None, only if it is absent. Returns True when it wrote, False when
        the key held something else (nothing written). Linearizable; blocks like :meth:`put`."""
        return _ffi.cas(self._h(), _as_bytes("key", key), _as_bytes("expected", expected), _value(new, "new"))

    def append(self, key: Key, value: Value) -> None:
        """Appends ``value`` to the value of ``key`` (an absent key counts as empty), atomically.
        Raises :class:`kvr.InvalidArgument` if the result would exceed ``VALUE_BYTES_MAX``."""
        _ffi.append(self._h(), _as_bytes("key", key), _value(value))

    def scan_page(
        self,
        start: Optional[Key] = b"",
        end: Optional[Key] = b"",
        limit: int = SCAN_PAGE_SIZE,
        consistency: Consistency = Consistency.LINEARIZABLE,
    ) -> ScanPage:
        """One read of up to ``limit`` (1..10000) pairs with keys in ``[start, end)``, in key
        order; an empty ``start`` or ``end`` leaves that side open. ``page.next`` is the key to
        pass as ``start`` of the next page, or None when the range is done."""
        items, nxt = _ffi.scan(
            self._h(), _range_bytes("start", start), _range_bytes("end", end), limit, int(consistency)
        )
        return ScanPage(items, nxt)

    def scan_prefix_page(
        self,
        prefix: Optional[Key] = b"",
        limit: int = SCAN_PAGE_SIZE,
        consistency: Consistency = Consistency.LINEARIZABLE,
    ) -> ScanPage:
        """Like :meth:`scan_page` over the keys starting with ``prefix`` (all keys when empty).
        Resume with ``scan_page(page.next, prefix_end(prefix))``."""
        items, nxt = _ffi.scan_prefix(self._h(), _range_bytes("prefix", prefix), limit, int(consistency))
        return ScanPage(items, nxt)

    def scan(
        self,
        start: Optional[Key] = b"",
        end: Optional[Key] = b"",
        *,
        limit: Optional[int] = None,
        page_size: int = SCAN_PAGE_SIZE,
        consistency: Consistency = Consistency.LINEARIZABLE,
    ) -> Iterator[Tuple[bytes, bytes]]:
        """Yields the ``(key, value)`` pairs with keys in ``[start, end)`` in key order, at most
        ``limit`` of them (all when None), reading ``page_size`` pairs per call and following
        continuations. Each page is read with ``consistency`` on its own: writes made while
        the generator runs may show in later pages. Nothing is read before the first ``next``."""
        lo, hi = _range_bytes("start", start), _range_bytes("end", end)
        return self._pages(lo, hi, limit, page_size, consistency, first=None)

    def scan_prefix(
        self,
        prefix: Optional[Key] = b"",
        *,
        limit: Optional[int] = None,
        page_size: int = SCAN_PAGE_SIZE,
        consistency: Consistency = Consistency.LINEARIZABLE,
    ) -> Iterator[Tuple[bytes, bytes]]:
        """Like :meth:`scan` over the keys starting with ``prefix`` (all keys when empty)."""
        p = _range_bytes("prefix", prefix)
        return self._pages(p, prefix_end(p), limit, page_size, consistency, first=p)

    def _pages(
        self,
        start: bytes,
        end: bytes,
        limit: Optional[int],
        page_size: int,
        consistency: Consistency,
        first: Optional[bytes],
    ) -> Iterator[Tuple[bytes, bytes]]:
        left = limit
        # A prefix scan reads its first page with kvr_scan_prefix (which also validates the
        # prefix); later pages resume with kvr_scan from the continuation key.
        page = self.scan_prefix_page if first is not None else None
        nxt: Optional[bytes] = start
        while nxt is not None and (left is None or left > 0):
            n = page_size if left is None else min(page_size, left)
            if page is not None:
                items, nxt = page(first, n, consistency)
                page = None
            else:
                items, nxt = self.scan_page(nxt, end, n, consistency)
            if left is not None:
                left -= len(items)
            yield from items

    def watch(
        self,
        prefix: Optional[Key] = b"",
        from_index: int = 0,
        timeout: Optional[float] = None,
    ) -> "Watcher":
        """A cursor on the change feed of the keys starting with ``prefix`` (all keys when
        empty), iterable as ``Event`` values in log order.

        ``from_index`` 0 starts with the next change; otherwise the changes of entries at or
        after ``from_index`` come first (resume with ``last_event.index + 1``, even after a
        restart). Raises :class:`kvr.Compacted` when those changes left the retained window
        (options ``watch_retain_entries`` and ``watch_retain_bytes``).

        Iteration waits for changes; with ``timeout`` (seconds) it ends once no change came
        for that long. To stop it otherwise: ``break`` out of the loop and call
        :meth:`Watcher.close` (or use the watcher in a ``with`` block), or call ``close()`` from
        another thread, which ends the iteration within ~0.1 s. Closing the replica makes the
        iteration raise :class:`kvr.Closed`. The library's cursor is freed on ``close()``, at the
        end of the iteration, or when the watcher is garbage-collected.
        """
        handle = _ffi.watch(self._h(), _range_bytes("prefix", prefix), from_index)
        return Watcher(handle, timeout)

    def add_node(self, node_id: int, addr: Union[str, bytes]) -> None:
        """Adds node ``node_id``, listening on ``addr`` (``host:port``), as a voter, or promotes a
        learner. The new replica is opened with ``join=True`` on an empty directory and catches
        up from the leader. Blocks until the change is applied here; callable on any replica.
        Raises :class:`kvr.InvalidArgument` for id 0, a bad address or an id removed before."""
        _ffi.add_node(self._h(), node_id, _text_arg("addr", addr), learner=False)

    def add_learner(self, node_id: int, addr: Union[str, bytes]) -> None:
        """Adds node ``node_id`` as a learner: it receives the log but does not vote. Promote it
        later with :meth:`add_node`."""
        _ffi.add_node(self._h(), node_id, _text_arg("addr", addr), learner=True)

    def remove_node(self, node_id: int) -> None:
        """Removes node ``node_id`` for good (its id can never be reused); removing the leader
        hands leadership to another voter first. The removed replica's calls then raise
        :class:`kvr.Removed`."""
        _ffi.remove_node(self._h(), node_id)

    def transfer_leader(self, node_id: int) -> None:
        """Makes node ``node_id`` the leader; returns once this replica sees it lead."""
        _ffi.transfer_leader(self._h(), node_id)

    def members(self) -> List[Member]:
        """The members, read linearizably, sorted by id."""
        raw = json.loads(self.members_json())
        return [Member(id=int(m["id"]), addr=str(m["addr"]), role=str(m["role"])) for m in raw]

    def members_json(self) -> str:
        """:meth:`members` as the library's JSON text, unchanged."""
        return _ffi.members_json(self._h()).decode("utf-8")

    def stats(self) -> Dict[str, Any]:
        """Statistics of this replica (see ``kvr_stats`` in kvr.h for the fields): indexes, log
        and data sizes, snapshots, proposal and apply rates, per-peer progress (on the leader)
        and transport counters. Never blocks on the network."""
        out: Dict[str, Any] = json.loads(self.stats_json())
        return out

    def stats_json(self) -> str:
        """:meth:`stats` as the library's JSON text, unchanged (to log or pass on as is)."""
        return _ffi.stats_json(self._h()).decode("utf-8")

    def backup(self, path: Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]) -> None:
        """Writes a consistent copy of the state machine to the new file ``path`` while writes
        go on. Seed a new cluster from it: open its founding replicas on empty directories with
        ``restore_from=path``. Raises :class:`kvr.InvalidArgument` if the file exists."""
        _ffi.backup(self._h(), _text_arg("path", path))

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


def _batch_op(i: int, op: Sequence[Any]) -> Tuple[int, Optional[bytes], Optional[bytes]]:
    if not isinstance(op, (tuple, list)) or not op:
        raise TypeError(f"batch op {i}: expected a tuple (\"put\", key, value) or (\"delete\", key)")
    name = op[0]
    if name == "put" and len(op) == 3:
        return _ffi.OP_PUT, _as_bytes("key", op[1]), _value(op[2])
    if name == "delete" and len(op) == 2:
        return _ffi.OP_DELETE, _as_bytes("key", op[1]), None
    raise errors.InvalidArgument(
        f"batch op {i}: {op!r:.80} is neither (\"put\", key, value) nor (\"delete\", key)",
        _ffi.KVR_INVALID_ARG,
    )


class Watcher:
    """A cursor on the change feed, from :meth:`Replica.watch`; an iterator of :class:`Event`.

    Use it from one thread; only :meth:`close` may be called from another one.
    """

    def __init__(self, handle: int, timeout: Optional[float]) -> None:
        self._w: Optional[int] = handle
        # Held around every library call on the cursor, so that close() never frees it under
        # a kvr_watch_next running in another thread.
        self._lock = threading.Lock()
        self._closing = False
        self._timeout = timeout

    def poll(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next change, waiting up to ``timeout`` seconds for it (forever when None); None
        when none came in time or the watcher is closed. Raises :class:`kvr.Compacted` when the
        cursor fell behind the retained window, :class:`kvr.Closed` when the replica closed."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while not self._closing:
            wait_ms = WATCH_SLICE_MS
            if deadline is not None:
                wait_ms = min(wait_ms, max(0, int((deadline - time.monotonic()) * 1000)))
            with self._lock:
                if self._w is None:
                    return None
                raw = _ffi.watch_next(self._w, wait_ms)
            if raw is not None:
                index, kind, key, value = raw
                return Event(index, EventKind(kind), key, value)
            if deadline is not None and time.monotonic() >= deadline:
                return None
        return None

    def __iter__(self) -> "Watcher":
        return self

    def __next__(self) -> Event:
        try:
            ev = self.poll(self._timeout)
        except BaseException:
            self.close()
            raise
        if ev is None:
            self.close()
            raise StopIteration
        return ev

    def close(self) -> None:
        """Frees the cursor; iteration then ends. Idempotent; callable from any thread."""
        self._closing = True
        with self._lock:
            w, self._w = self._w, None
        if w is not None:
            _ffi.watch_free(w)

    @property
    def closed(self) -> bool:
        return self._w is None

    def __enter__(self) -> "Watcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_w", None) is not None:
            self.close()


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
