"""examples/python/kvr_host.py answers a scripted REPL session (bindings/testdata/
repl_session.txt: every command, good and bad) with the same bytes as the reference C host,
examples/c/kvr_host.c, each on a fresh single-node replica."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

import kvr
from conftest import HOST_SCRIPT, ROOT, child_env

SESSION = ROOT / "bindings" / "testdata" / "repl_session.txt"
C_HOST_SOURCE = ROOT / "examples" / "c" / "kvr_host.c"

# Replies that depend on timing or on-disk sizes, compared for shape only.
VARIABLE = (b"stats", b"status")


def commands(session: bytes) -> List[bytes]:
    """The first word of each line that gets a reply, as the C host tokenises them."""
    out = []
    for raw in session.split(b"\n"):
        words = re.split(rb"[ \t]+", re.split(rb"[\r\0]", raw, maxsplit=1)[0].strip(b" \t"))
        if words == [b""]:
            continue
        if words[0] in (b"quit", b"exit"):
            break
        out.append(words[0])
    return out


def run_host(argv: List[str], cwd: Path, session: bytes) -> List[bytes]:
    cwd.mkdir()
    argv = argv + ["--dir", "data", "--tick-ms", "30", "--election-ticks", "10", "--heartbeat-ticks", "2"]
    done = subprocess.run(argv, input=session, cwd=cwd, capture_output=True, env=child_env(), timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.split(b"\n")[:-1]


def compare(session: bytes, expected: List[bytes], got: List[bytes]) -> List[Tuple[bytes, bytes, bytes]]:
    """The (command, reference reply, reply) triples that differ."""
    cmds = commands(session)
    assert len(expected) == len(cmds) == len(got), (len(expected), len(cmds), len(got))
    return [(c, e, g) for c, e, g in zip(cmds, expected, got) if e != g and c not in VARIABLE]


@pytest.fixture(scope="module")
def c_host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None or not C_HOST_SOURCE.exists():
        pytest.skip("no C compiler or no examples/c to compare with")
    out = tmp_path_factory.mktemp("c") / "kvr_host"
    libdir = str(Path(kvr.library_path).resolve().parent)
    subprocess.run(
        [cc, "-std=c11", "-I", str(ROOT / "include"), "-o", str(out), str(C_HOST_SOURCE)]
        + ["-L", libdir, "-lkvr", f"-Wl,-rpath,{libdir}"],
        check=True,
        timeout=120,
    )
    return out


def test_python_host_replies_like_the_c_host(tmp_path: Path, c_host: Path) -> None:
    session = SESSION.read_bytes()
    reference = run_host([str(c_host)], tmp_path / "c", session)
    python = run_host([sys.executable, str(HOST_SCRIPT)], tmp_path / "py", session)
    assert compare(session, reference, python) == []
    stats = [r for c, r in zip(commands(session), python) if c == b"stats"]
    assert stats and json.loads(stats[0])["node_id"] == 1
    assert (tmp_path / "py" / "b.mdb").exists(), "the backup command wrote its file"


def test_python_host_replies(tmp_path: Path) -> None:
    # What the session must show whatever the C host says, so that two equally wrong hosts fail.
    session = SESSION.read_bytes()
    replies = run_host([sys.executable, str(HOST_SCRIPT)], tmp_path / "py", session)
    assert len(replies) == len(commands(session))
    assert replies[0].startswith(b"commands: put KEY VALUE | putttl KEY TTL_MS VALUE")
    text = b"\n".join(replies)
    for expected in [
        b"CAS_FAILED",
        b'{"items":[["ap","xy"],["b","two  words  "]],"next":"b1"}',
        b'["ctl","a\\u0009b\\u0001c"]',
        b'["q","quote\\"back\\\\slash"]',
        b'["hi","\xff\xfe raw"]',
        b'"kind":"put","key":"a","value":"1"},{"index":',
        b'"kind":"delete","key":"a","value":""}',
        b'"kind":"expire","key":"short","value":""}]',
        b'[{"id":1,"addr":"","role":"voter"},{"id":2,"addr":"127.0.0.1:1","role":"learner"}]',
        b"ERR -2: invalid argument: b.mdb already exists",
        b"ERR more than 1024 words on one line",
        b'ERR unknown command "lget" (try help)',
        b"ERR usage: batch put KEY VALUE | del KEY ...",
    ]:
        assert expected in text, expected
