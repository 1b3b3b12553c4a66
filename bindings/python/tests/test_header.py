"""The ctypes declarations agree with include/kvr.h: a struct or signature that drifts would
corrupt memory silently rather than fail to build, as it would in C or Go."""

from __future__ import annotations

import ctypes
import re
from typing import Any, Dict, List, Tuple

import pytest

from conftest import ROOT
from kvr import _ffi

HEADER = ROOT / "include" / "kvr.h"

C_TYPES: Dict[str, Any] = {
    "uint64_t": ctypes.c_uint64,
    "uint32_t": ctypes.c_uint32,
    "int": ctypes.c_int,
    "size_t": ctypes.c_size_t,
    "uint8_t *": ctypes.POINTER(ctypes.c_uint8),
    "const uint8_t *": ctypes.c_char_p,
    "const char *": ctypes.c_char_p,
    "void": None,
    "struct kvr_buf": _ffi.Buf,
}


@pytest.fixture(scope="module")
def header() -> str:
    if not HEADER.exists():
        pytest.skip(f"{HEADER} not present (binding installed outside the repository)")
    return HEADER.read_text()


def canonical(c_type: str) -> str:
    c_type = re.sub(r"\s+", " ", c_type.strip())
    return re.sub(r"\s*\*", " *", c_type)


def struct_fields(header: str, name: str) -> List[Tuple[str, str]]:
    m = re.search(r"typedef struct %s \{(.*?)\} %s;" % (name, name), header, re.S)
    assert m, f"struct {name} not in the header"
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return [(f, canonical(t)) for t, f in re.findall(r"([\w ]+?\**)\s*(\w+);", body)]


@pytest.mark.parametrize(
    "struct, cls",
    [
        ("kvr_status_info", _ffi.StatusInfo),
        ("kvr_buf", _ffi.Buf),
        ("kvr_batch_op", _ffi.BatchOp),
        ("kvr_event", _ffi.Event),
    ],
)
def test_structs_match(header: str, struct: str, cls: Any) -> None:
    fields = struct_fields(header, struct)
    assert [f for f, _ in fields] == [f for f, _ in cls._fields_]
    for (name, c_type), (_, py_type) in zip(fields, cls._fields_):
        assert C_TYPES[c_type] == py_type, f"{struct}.{name}: {c_type} vs {py_type}"


def prototypes(header: str) -> Dict[str, Tuple[str, List[str]]]:
    body = re.sub(r"/\*.*?\*/", "", header, flags=re.S)
    out = {}
    for ret, name, params in re.findall(r"^([\w \*]+?)\s*\b(kvr_\w+)\(([^)]*)\);", body, re.M | re.S):
        args = [] if params.strip() == "void" else [p.strip() for p in params.split(",")]
        out[name] = (canonical(ret), args)
    return out


def test_every_function_of_the_header_is_declared(header: str) -> None:
    declared = {n for n in dir(_ffi.lib) if n.startswith("kvr_")}
    # kvr_get is kvr_get_ex with KVR_READ_LINEARIZABLE; the binding needs only the latter.
    assert set(prototypes(header)) - declared == {"kvr_get"}


def test_every_declared_function_matches_its_prototype(header: str) -> None:
    protos = prototypes(header)
    declared = [n for n in dir(_ffi.lib) if n.startswith("kvr_")]
    assert len(declared) >= 33
    for name in declared:
        assert name in protos, f"{name} is not in the header"
        ret, params = protos[name]
        f = getattr(_ffi.lib, name)
        assert len(f.argtypes) == len(params), f"{name}: {len(params)} parameters in the header"
        if ret.startswith("struct "):
            assert f.restype is ctypes.c_void_p, name
        elif ret in C_TYPES:
            assert f.restype == C_TYPES[ret], f"{name} returns {ret}"
        for c_param, py_type in zip(params, f.argtypes):
            c_type = canonical(re.sub(r"\w+$", "", c_param))
            if "struct" in c_type or c_type.endswith("**"):
                assert py_type is ctypes.c_void_p or issubclass(py_type, ctypes._Pointer), (name, c_param)
            else:
                assert C_TYPES[c_type] == py_type, f"{name}: parameter {c_param!r} declared as {py_type}"
