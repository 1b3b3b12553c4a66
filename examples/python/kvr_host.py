#!/usr/bin/env python3
"""kvr_host.py: a Python program that hosts one kvr replica, with the same flags and REPL as the
kvr CLI and the C example.

    python3 kvr_host.py --node-id 1 --listen 127.0.0.1:7001 \\
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --dir data/1

Flags: --KEY VALUE for any kvr option key (dashes or underscores), --option KEY=VALUE, --join.
With no flags: a single-node replica on ./kvr-data.
REPL: put KEY VALUE | get KEY | sget KEY | delete KEY | status | quit.
Replies go to stdout, one line each; diagnostics go to stderr.
"""

from __future__ import annotations

import re
import sys
from typing import BinaryIO, Dict, List, Optional, Tuple

import kvr

# The C host reads lines with fgets into a 64 KiB buffer; anything that fits there fits here.
LINE_BYTES_MAX = 65536


def parse_args(argv: List[str]) -> Dict[str, str]:
    """Flags to option keys and values, as the C host does; raises ValueError on bad input."""
    options = {"dir": "kvr-data"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--join":
            options["join"] = "true"
            i += 1
            continue
        if not arg.startswith("--") or i + 1 >= len(argv):
            raise ValueError(f"bad argument {arg}")
        value = argv[i + 1]
        if arg == "--option":
            key, eq, value = value.partition("=")
            if not eq:
                raise ValueError("--option needs KEY=VALUE")
        else:
            key = arg[2:]
        options[key.replace("-", "_")] = value
        i += 2
    return options


def split_command(line: bytes) -> Tuple[bytes, Optional[bytes], Optional[bytes]]:
    """``cmd``, ``key``, ``value`` of one REPL line, tokenised like the C host's strtok calls:
    the value is everything after the key, leading blanks removed, inner blanks kept."""
    text = re.split(rb"[\r\n]", line.lstrip(b" \t\r\n"), maxsplit=1)[0]
    m = re.match(rb"([^ \t]*)(?:[ \t](.*))?$", text, re.S)
    assert m is not None
    cmd, rest = m.group(1), m.group(2)
    if rest is None:
        return cmd, None, None
    m = re.match(rb"[ \t]*([^ \t]+)(?:[ \t](.*))?$", rest, re.S)
    if m is None:
        return cmd, None, None
    key, value = m.group(1), m.group(2)
    if value is not None:
        value = value.lstrip(b" \t") or None
    return cmd, key, value


def error_line(e: kvr.Error) -> bytes:
    return f"ERR {e.code}: {e.message}".encode()


def status_line(r: kvr.Replica) -> bytes:
    s = r.status()
    return (
        f"node={s['node_id']} leader={s['leader_id']} term={s['term']} role={s['role']} "
        f"commit={s['commit_index']} applied={s['applied_index']} last={s['last_index']} "
        f"applied_at_open={s['applied_index_at_open']} entries_applied={s['entries_applied']}"
    ).encode()


def execute(r: kvr.Replica, line: bytes) -> Optional[bytes]:
    """The reply line to one command line (b"" for a blank line), or None to quit."""
    cmd, key, value = split_command(line)
    if not cmd:
        return b""
    if cmd in (b"quit", b"exit"):
        return None
    return reply(r, cmd, key, value) + b"\n"


def reply(r: kvr.Replica, cmd: bytes, key: Optional[bytes], value: Optional[bytes]) -> bytes:
    try:
        if cmd == b"put":
            if key is None:
                return b"ERR usage: put KEY VALUE"
            r.put(key, value or b"")
            return b"OK"
        if cmd in (b"get", b"sget"):
            consistency = kvr.STALE if cmd == b"sget" else kvr.LINEARIZABLE
            v = r.get(key or b"", consistency)
            return b"NOT_FOUND" if v is None else v
        if cmd in (b"delete", b"del"):
            r.delete(key or b"")
            return b"OK"
        if cmd == b"status":
            return status_line(r)
    except kvr.Error as e:
        return error_line(e)
    if cmd == b"help":
        return b"commands: put KEY VALUE | get KEY | sget KEY | delete KEY | status | quit"
    return b'ERR unknown command "' + cmd + b'" (try help)'


def repl(r: kvr.Replica, inp: BinaryIO, out: BinaryIO) -> None:
    while True:
        line = inp.readline(LINE_BYTES_MAX)
        if not line:
            return
        answer = execute(r, line)
        if answer is None:
            return
        out.write(answer)
        out.flush()


def main(argv: List[str]) -> int:
    try:
        options = parse_args(argv)
    except ValueError as e:
        print(f"kvr_host.py: {e}", file=sys.stderr)
        return 2
    try:
        replica = kvr.open(**options)
    except kvr.Error as e:
        print(f"kvr_host.py: cannot open replica: {e.message} ({kvr.result_str(e.code)})", file=sys.stderr)
        return 1
    with replica:
        repl(replica, sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
