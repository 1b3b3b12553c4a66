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

READ_LINEARIZABLE = 0
READ_STALE = 2

KEY_BYTES_MAX = 511
VALUE_BYTES_MAX = 4 << 20

ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader", 3: "learner"}

# The library keeps old functions and codes when it adds new ones, so a newer minor or patch
# release is accepted; 0.1.0 is the first with kvr_get_ex and kvr_status.
ABI_MAJOR = 0
ABI_VERSION_MIN = 1000


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


def _declare(
    name: str,
    argtypes: List[Any],
    restype: Any,
    errcheck: Optional[Callable[[int, Any, Tuple[Any, ...]], int]] = None,
) -> None:
    f = getattr(lib, name)
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
