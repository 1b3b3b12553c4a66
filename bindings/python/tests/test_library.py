"""Loading libkvr: where it is found, the version check, and the result-code table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kvr
from kvr import _ffi, errors

PKG_DIR = Path(kvr.__file__).resolve().parent


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


def test_loaded_library_has_a_compatible_version() -> None:
    assert kvr.library_version().startswith(f"{_ffi.ABI_MAJOR}.")
    assert _ffi.lib.kvr_version() >= _ffi.ABI_VERSION_MIN
    assert _ffi.unpack_version(1_002_003) == "1.2.3"


def test_version_check_rejects_other_majors_and_older_releases() -> None:
    _ffi.check_version(_ffi.ABI_VERSION_MIN)
    _ffi.check_version(_ffi.ABI_VERSION_MIN + 1000)  # newer minor: functions are only added
    with pytest.raises(ImportError, match="does not fit"):
        _ffi.check_version((_ffi.ABI_MAJOR + 1) * 1_000_000)
    with pytest.raises(ImportError, match="0.0.9"):
        _ffi.check_version(9)


def test_kvr_library_env_var_is_used_and_never_silently_bypassed(tmp_path: Path) -> None:
    env = dict(os.environ, KVR_LIBRARY=str(tmp_path / "missing" / "libkvr.so"))
    env["PYTHONPATH"] = str(PKG_DIR.parent)
    r = run_python("import kvr", env)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "KVR_LIBRARY" in r.stderr, r.stderr


def test_library_next_to_the_package_is_found_without_env_var(tmp_path: Path) -> None:
    copy = tmp_path / "kvr"
    shutil.copytree(PKG_DIR, copy, ignore=shutil.ignore_patterns("__pycache__", "libkvr.*"))
    os.symlink(kvr.library_path, copy / "libkvr.so")
    env = {k: v for k, v in os.environ.items() if k != "KVR_LIBRARY"}
    env["PYTHONPATH"] = str(tmp_path)
    r = run_python("import kvr; print(kvr.library_path)", env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(copy.resolve() / "libkvr.so")


def test_every_code_the_library_names_has_its_own_exception_class() -> None:
    unknown = kvr.result_str(-1000)
    named = [c for c in range(-1, -100, -1) if kvr.result_str(c) != unknown]
    assert named, "the library names no result code"
    for code in named:
        cls = errors.BY_CODE.get(code)
        assert cls is not None, f"code {code} ({kvr.result_str(code)}) has no exception class"
        e = errors.from_code(code, "text")
        assert type(e) is cls and e.code == code and e.message == "text"
        assert isinstance(e, kvr.Error)
    assert len(set(errors.BY_CODE.values())) == len(errors.BY_CODE)


def test_named_classes_match_the_header_codes() -> None:
    expected = {
        kvr.NotFound: -1,
        kvr.InvalidArgument: -2,
        kvr.Timeout: -3,
        kvr.NoLeader: -4,
        kvr.Closed: -5,
        kvr.IoError: -6,
        kvr.Corrupt: -7,
        kvr.Panic: -8,
        kvr.Busy: -9,
        kvr.CasFailed: -10,
        kvr.Compacted: -11,
        kvr.Removed: -12,
        kvr.Refused: -13,
    }
    assert {cls: cls.code_value for cls in expected} == expected
    assert kvr.result_str(-9) == "busy"


def test_unknown_codes_still_raise_the_base_error_with_the_code() -> None:
    e = errors.from_code(-999, "from the future")
    assert type(e) is kvr.Error and e.code == -999 and str(e) == "from the future"


def test_builtin_bases_let_callers_catch_broadly() -> None:
    assert issubclass(kvr.InvalidArgument, ValueError)
    assert issubclass(kvr.Timeout, TimeoutError)
    assert issubclass(kvr.NotFound, LookupError)
    assert "hint:" in str(kvr.Busy("dir in use", -9))
