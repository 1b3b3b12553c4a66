"""libkvr through ctypes: finding the library, checking its version, and declaring every C
function used. This is the only module that touches ctypes."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import errors

KVR_OK = 0
KVR_NOT_FOUND = -1
KVR_INVALID_ARG = -2
KVR_TIMEOUT = -3
KVR_CAS_FAILED = -10

READ_LINEARIZABLE = 0
READ_LEASE = 1
READ_STALE = 2

OP_PUT = 1
OP_DELETE = 2

EVENT_PUT = 1
EVENT_DELETE = 2
EVENT_EXPIRE = 3

U64_MAX = (1 << 64) - 1
U32_MAX = (1 << 32) - 1

KEY_BYTES_MAX = 511
VALUE_BYTES_MAX = 4 << 20

ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader", 3: "learner"}

# The library keeps old functions and codes when it adds new ones, so a newer minor or patch
# release is accepted; 0.2.0 is the first with membership, the data model, the change feed,
# stats and backup.
ABI_MAJOR = 0
ABI_VERSION_MIN = 2000


class Buf(ctypes.Structure):
    """``struct kvr_buf``."""

    _fields_ = [("ptr", ctypes.POINTER(ctypes.c_uint8)), ("len", ctypes.c_size_t)]


class StatusInfo(ctypes.Structure):
    """``struct kvr_status_info``."""

    _fields_ = [
        ("node_id", ctypes.c_uint64),
        ("leader_id", ctypes.c_uint64),
        ("term", ctypes.c_uint64),
        ("commit_index", ctypes.c_uint64),
        ("applied_index", ctypes.c_uint64),
        ("last_index", ctypes.c_uint64),
        ("applied_index_at_open", ctypes.c_uint64),
        ("entries_applied", ctypes.c_uint64),
        ("role", ctypes.c_int),
    ]


class BatchOp(ctypes.Structure):
    """``struct kvr_batch_op``. Assigning bytes to ``key``/``val`` keeps them alive with the
    struct (ctypes records them in ``_objects``)."""

    _fields_ = [
        ("op", ctypes.c_int),
        ("key", ctypes.c_char_p),
        ("key_len", ctypes.c_size_t),
        ("val", ctypes.c_char_p),
        ("val_len", ctypes.c_size_t),
    ]


class Event(ctypes.Structure):
    """``struct kvr_event``."""

    _fields_ = [
        ("index", ctypes.c_uint64),
        ("kind", ctypes.c_int),
        ("key", Buf),
        ("value", Buf),
    ]


def _file_names() -> List[str]:
    if sys.platform == "darwin":
        return ["libkvr.dylib"]
    if sys.platform == "win32":
        return ["kvr.dll"]
    return ["libkvr.so"]


def library_candidates() -> List[Tuple[str, str]]:
    """Where the library is looked for, in order, as ``(how, path or name)``."""
    env = os.environ.get("KVR_LIBRARY")
    if env:
        # An explicit choice must not fall back silently to some other copy.
        return [("KVR_LIBRARY", env)]
    here = Path(__file__).resolve().parent
    found: List[Tuple[str, str]] = [("next to the package", str(here / n)) for n in _file_names()]
    found += [("system", n) for n in _file_names()]
    name = ctypes.util.find_library("kvr")
    if name:
        found.append(("system", name))
    return found


def _load() -> Tuple[ctypes.CDLL, str]:
    tried = []
    for how, where in library_candidates():
        if how == "next to the package" and not os.path.exists(where):
            tried.append(f"{how}: {where} (absent)")
            continue
        try:
            return ctypes.CDLL(where), where
        except OSError as e:
            tried.append(f"{how}: {e}")
    raise ImportError(
        "kvr: cannot load libkvr. Build it (cargo build) and set KVR_LIBRARY to the path of "
        "libkvr.so, copy it next to the kvr package, or install it where the system linker "
        "finds it. Tried:\n  " + "\n  ".join(tried)
    )


def check_version(found: int) -> None:
    """Raises ImportError unless a library of packed version ``found`` fits this binding."""
    major = found // 1_000_000
    if major != ABI_MAJOR or found < ABI_VERSION_MIN:
        raise ImportError(
            f"kvr: libkvr version {unpack_version(found)} does not fit this binding "
            f"(needs {ABI_MAJOR}.x, at least {unpack_version(ABI_VERSION_MIN)})"
        )


def unpack_version(n: int) -> str:
    return f"{n // 1_000_000}.{n // 1000 % 1000}.{n % 1000}"


lib, library_path = _load()

lib.kvr_version.argtypes = []
lib.kvr_version.restype = ctypes.c_uint32
check_version(lib.kvr_version())


def _text(p: Optional[bytes]) -> str:
    return (p or b"").decode("utf-8", errors="replace")


def _check_options(rc: int, func: Any, args: Tuple[Any, ...]) -> int:
    if rc != KVR_OK:
        raise errors.from_code(rc, _text(lib.kvr_options_errmsg(args[0])))
    return rc


def _check_handle(rc: int, func: Any, args: Tuple[Any, ...]) -> int:
    if rc != KVR_OK:
        # Read the text right away: the handle keeps only its most recent messages.
        raise errors.from_code(rc, _text(lib.kvr_errmsg(args[0])))
    return rc


def _check_read(rc: int, func: Any, args: Tuple[Any, ...]) -> int:
    if rc == KVR_NOT_FOUND:
        return rc
    return _check_handle(rc, func, args)


def _check_cas(rc: int, func: Any, args: Tuple[Any, ...]) -> int:
    if rc == KVR_CAS_FAILED:
        return rc
    return _check_handle(rc, func, args)


def _check_cursor(rc: int, func: Any, args: Tuple[Any, ...]) -> int:
    # Iterators and watchers have no error text of their own: the code's text says it all.
    if rc in (KVR_OK, KVR_NOT_FOUND, KVR_TIMEOUT):
        return rc
    raise errors.from_code(rc, f"{func.__name__}: {_text(lib.kvr_result_str(rc))}")


def _declare(
    name: str,
    argtypes: List[Any],
    restype: Any,
    errcheck: Optional[Callable[[int, Any, Tuple[Any, ...]], int]] = None,
) -> None:
    try:
        f = getattr(lib, name)
    except AttributeError:
        # A library of the accepted version that lacks a function is a build of an older
        # source tree: say so instead of failing later with a bare AttributeError.
        raise ImportError(f"kvr: {library_path} has no {name}; it is older than this binding") from None
    f.argtypes = argtypes
    f.restype = restype
    if errcheck is not None:
        f.errcheck = errcheck


_p = ctypes.c_void_p
_bytes = ctypes.c_char_p
_size = ctypes.c_size_t
_int = ctypes.c_int

_declare("kvr_result_str", [_int], ctypes.c_char_p)
_declare("kvr_options_new", [], _p)
_declare("kvr_options_set", [_p, _bytes, _bytes], _int, _check_options)
_declare("kvr_options_errmsg", [_p], ctypes.c_char_p)
_declare("kvr_options_free", [_p], None)
_declare("kvr_open", [_p, ctypes.POINTER(_p)], _int, _check_options)
_declare("kvr_put", [_p, _bytes, _size, _bytes, _size], _int, _check_handle)
_declare("kvr_get_ex", [_p, _bytes, _size, _int, ctypes.POINTER(Buf)], _int, _check_read)
_declare("kvr_delete", [_p, _bytes, _size], _int, _check_handle)
_declare("kvr_buf_free", [ctypes.POINTER(Buf)], None)
_declare("kvr_status", [_p, ctypes.POINTER(StatusInfo)], _int, _check_handle)
_declare("kvr_errmsg", [_p], ctypes.c_char_p)
_declare("kvr_close", [_p], _int, _check_handle)

_u64 = ctypes.c_uint64
_bufp = ctypes.POINTER(Buf)
_pp = ctypes.POINTER(_p)

_declare("kvr_add_node", [_p, _u64, _bytes], _int, _check_handle)
_declare("kvr_add_learner", [_p, _u64, _bytes], _int, _check_handle)
_declare("kvr_remove_node", [_p, _u64], _int, _check_handle)
_declare("kvr_transfer_leader", [_p, _u64], _int, _check_handle)
_declare("kvr_members", [_p, _bufp], _int, _check_handle)
_declare("kvr_stats", [_p, _bufp], _int, _check_handle)
_declare("kvr_backup", [_p, _bytes], _int, _check_handle)
_declare("kvr_put_ttl", [_p, _bytes, _size, _bytes, _size, _u64], _int, _check_handle)
_declare("kvr_batch", [_p, ctypes.POINTER(BatchOp), _size], _int, _check_handle)
_declare("kvr_cas", [_p, _bytes, _size, _bytes, _size, _int, _bytes, _size], _int, _check_cas)
_declare("kvr_append", [_p, _bytes, _size, _bytes, _size], _int, _check_handle)
_declare("kvr_scan", [_p, _bytes, _size, _bytes, _size, _size, _int, _pp], _int, _check_handle)
_declare("kvr_scan_prefix", [_p, _bytes, _size, _size, _int, _pp], _int, _check_handle)
_declare("kvr_iter_next", [_p, _bufp, _bufp], _int, _check_cursor)
_declare("kvr_iter_continuation", [_p, _bufp], _int, _check_cursor)
_declare("kvr_iter_free", [_p], None)
_declare("kvr_watch", [_p, _bytes, _size, _u64, _pp], _int, _check_handle)
_declare("kvr_watch_next", [_p, ctypes.c_uint32, ctypes.POINTER(Event)], _int, _check_cursor)
_declare("kvr_event_free", [ctypes.POINTER(Event)], None)
_declare("kvr_watch_free", [_p], None)


def library_version() -> str:
    """Version of the loaded libkvr, as ``MAJOR.MINOR.PATCH``."""
    return unpack_version(lib.kvr_version())


def result_str(code: int) -> str:
    """Static text for a result code."""
    return _text(lib.kvr_result_str(code))


def open_replica(options: List[Tuple[bytes, bytes]]) -> int:
    """Opens a replica with the given option keys and values; returns its handle."""
    o = lib.kvr_options_new()
    if not o:
        raise MemoryError("kvr_options_new")
    try:
        for key, value in options:
            lib.kvr_options_set(o, key, value)
        handle = ctypes.c_void_p()
        lib.kvr_open(o, ctypes.byref(handle))
    finally:
        lib.kvr_options_free(o)
    assert handle.value, "kvr_open returned OK without a handle"
    return handle.value


def put(handle: int, key: Optional[bytes], value: bytes) -> None:
    lib.kvr_put(handle, key, len(key or b""), value, len(value))


def get(handle: int, key: Optional[bytes], consistency: int) -> Optional[bytes]:
    buf = Buf()
    if lib.kvr_get_ex(handle, key, len(key or b""), consistency, ctypes.byref(buf)) == KVR_NOT_FOUND:
        return None
    try:
        # Copy before freeing: the buffer belongs to kvr's allocator.
        return ctypes.string_at(buf.ptr, buf.len)
    finally:
        lib.kvr_buf_free(ctypes.byref(buf))


def delete(handle: int, key: Optional[bytes]) -> None:
    lib.kvr_delete(handle, key, len(key or b""))


def status(handle: int) -> Dict[str, Any]:
    info = StatusInfo()
    lib.kvr_status(handle, ctypes.byref(info))
    out: Dict[str, Any] = {f[0]: getattr(info, f[0]) for f in StatusInfo._fields_}
    out["role"] = ROLE_NAMES.get(info.role, f"unknown({info.role})")
    return out


def close(handle: int) -> None:
    lib.kvr_close(handle)


def _take(buf: Buf) -> bytes:
    """Copies a buffer returned by kvr, then frees it: it belongs to kvr's allocator."""
    try:
        return ctypes.string_at(buf.ptr, buf.len)
    finally:
        lib.kvr_buf_free(ctypes.byref(buf))


def _in_u64(what: str, n: int) -> int:
    # ctypes would wrap a negative or oversized int silently into some other id or duration.
    if not 0 <= n <= U64_MAX:
        raise errors.InvalidArgument(f"{what} {n} is out of range 0..2**64-1", KVR_INVALID_ARG)
    return n


def add_node(handle: int, node_id: int, addr: Optional[bytes], learner: bool) -> None:
    f = lib.kvr_add_learner if learner else lib.kvr_add_node
    f(handle, _in_u64("node id", node_id), addr)


def remove_node(handle: int, node_id: int) -> None:
    lib.kvr_remove_node(handle, _in_u64("node id", node_id))


def transfer_leader(handle: int, node_id: int) -> None:
    lib.kvr_transfer_leader(handle, _in_u64("node id", node_id))


def members_json(handle: int) -> bytes:
    buf = Buf()
    lib.kvr_members(handle, ctypes.byref(buf))
    return _take(buf)


def stats_json(handle: int) -> bytes:
    buf = Buf()
    lib.kvr_stats(handle, ctypes.byref(buf))
    return _take(buf)


def backup(handle: int, path: Optional[bytes]) -> None:
    lib.kvr_backup(handle, path)


def put_ttl(handle: int, key: Optional[bytes], value: bytes, ttl_ms: int) -> None:
    lib.kvr_put_ttl(handle, key, len(key or b""), value, len(value), _in_u64("ttl_ms", ttl_ms))


def batch(handle: int, ops: List[Tuple[int, Optional[bytes], Optional[bytes]]]) -> None:
    arr = (BatchOp * len(ops))()
    for slot, (op, key, val) in zip(arr, ops):
        slot.op = op
        slot.key = key
        slot.key_len = len(key or b"")
        slot.val = val
        slot.val_len = len(val or b"")
    lib.kvr_batch(handle, arr, len(ops))


def cas(handle: int, key: Optional[bytes], expected: Optional[bytes], new: bytes) -> bool:
    rc = lib.kvr_cas(
        handle,
        key,
        len(key or b""),
        expected,
        len(expected or b""),
        1 if expected is None else 0,
        new,
        len(new),
    )
    return bool(rc == KVR_OK)


def append(handle: int, key: Optional[bytes], value: bytes) -> None:
    lib.kvr_append(handle, key, len(key or b""), value, len(value))


Page = Tuple[List[Tuple[bytes, bytes]], Optional[bytes]]


def _drain(it: int) -> Page:
    try:
        items = []
        k, v = Buf(), Buf()
        while lib.kvr_iter_next(it, ctypes.byref(k), ctypes.byref(v)) == KVR_OK:
            items.append((_take(k), _take(v)))
        nxt = Buf()
        more = lib.kvr_iter_continuation(it, ctypes.byref(nxt)) == KVR_OK
        return items, _take(nxt) if more else None
    finally:
        lib.kvr_iter_free(it)


def scan(handle: int, start: bytes, end: bytes, limit: int, consistency: int) -> Page:
    """One page of ``[start, end)``: its pairs and the key to resume from (None when done)."""
    it = ctypes.c_void_p()
    lib.kvr_scan(handle, start, len(start), end, len(end), limit, consistency, ctypes.byref(it))
    assert it.value, "kvr_scan returned OK without an iterator"
    return _drain(it.value)


def scan_prefix(handle: int, prefix: bytes, limit: int, consistency: int) -> Page:
    it = ctypes.c_void_p()
    lib.kvr_scan_prefix(handle, prefix, len(prefix), limit, consistency, ctypes.byref(it))
    assert it.value, "kvr_scan_prefix returned OK without an iterator"
    return _drain(it.value)


def watch(handle: int, prefix: bytes, from_index: int) -> int:
    """Opens a watcher; returns its handle (free it with ``watch_free``)."""
    w = ctypes.c_void_p()
    lib.kvr_watch(handle, prefix, len(prefix), _in_u64("from_index", from_index), ctypes.byref(w))
    assert w.value, "kvr_watch returned OK without a watcher"
    return w.value


def watch_next(watcher: int, timeout_ms: int) -> Optional[Tuple[int, int, bytes, bytes]]:
    """The next change as ``(index, kind, key, value)``, or None when ``timeout_ms`` passed."""
    ev = Event()
    if lib.kvr_watch_next(watcher, min(max(timeout_ms, 0), U32_MAX), ctypes.byref(ev)) != KVR_OK:
        return None
    try:
        return (
            ev.index,
            ev.kind,
            ctypes.string_at(ev.key.ptr, ev.key.len),
            ctypes.string_at(ev.value.ptr, ev.value.len),
        )
    finally:
        lib.kvr_event_free(ctypes.byref(ev))


def watch_free(watcher: int) -> None:
    lib.kvr_watch_free(watcher)
