#!/usr/bin/env python3
"""kvr_host.py: a Python program that hosts one kvr replica, with the same flags and REPL as the
kvr CLI and the C example.

    python3 kvr_host.py --node-id 1 --listen 127.0.0.1:7001 \\
        --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 --dir data/1

Flags: --KEY VALUE for any kvr option key (dashes or underscores), --option KEY=VALUE, --join.
With no flags: a single-node replica on ./kvr-data.
REPL: the commands of examples/c/kvr_host.c (`help` lists them), with byte-identical replies.
Replies go to stdout, one line each; diagnostics go to stderr.
"""

from __future__ import annotations

import re
import sys
from typing import BinaryIO, Callable, Dict, List, Optional

import kvr

# The C host reads lines with fgets into a 64 KiB buffer, so a longer line arrives as several.
LINE_BYTES_MAX = 65536
# The C host's word limit per line.
ARGS_MAX = 1024

HELP = (
    b"commands: put KEY VALUE | putttl KEY TTL_MS VALUE | get KEY | lget KEY | sget KEY | "
    b"delete KEY | append KEY VALUE | cas KEY EXPECTED NEW | casnew KEY NEW | "
    b"batch put K V del K ... | scan START END LIMIT | prefix PREFIX LIMIT | "
    b"watch PREFIX FROM COUNT TIMEOUT_MS | status | stats | members | add ID ADDR | "
    b"learner ID ADDR | remove ID | transfer ID | backup PATH | quit"
)

U64_MAX = (1 << 64) - 1

KIND_NAMES: Dict[int, bytes] = {kvr.EventKind.PUT: b"put", kvr.EventKind.DELETE: b"delete", kvr.EventKind.EXPIRE: b"expire"}


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


def strtoull(word: bytes) -> int:
    """C's strtoull(word, NULL, 10), which the C host uses for numbers: leading digits only
    (0 when none), a leading '-' negates modulo 2**64, overflow saturates."""
    m = re.match(rb"[ \t\n\v\f\r]*([+-]?)([0-9]*)", word)
    assert m is not None
    n = int(m.group(2) or b"0")
    if n > U64_MAX:
        return U64_MAX
    return (-n) & U64_MAX if m.group(1) == b"-" and n else n


def c_string(data: bytes) -> bytes:
    """What C's printf("%.*s") shows of ``data``: the bytes before the first NUL."""
    return data.split(b"\0", 1)[0]


def json_str(s: bytes) -> bytes:
    """``s`` as a JSON string, escaped exactly like the C host's json_str: quote, backslash and
    control bytes only; every other byte, UTF-8 or not, as is."""
    out = bytearray(b'"')
    for c in s:
        if c in (0x22, 0x5C):
            out += b"\\" + bytes([c])
        elif c < 0x20:
            out += b"\\u%04x" % c
        else:
            out.append(c)
    out += b'"'
    return bytes(out)


def error_line(e: kvr.Error) -> bytes:
    return b"ERR %d: " % e.code + e.message.encode("utf-8", "surrogateescape")


def status_line(r: kvr.Replica) -> bytes:
    s = r.status()
    return (
        f"node={s['node_id']} leader={s['leader_id']} term={s['term']} role={s['role']} "
        f"commit={s['commit_index']} applied={s['applied_index']} last={s['last_index']} "
        f"applied_at_open={s['applied_index_at_open']} entries_applied={s['entries_applied']}"
    ).encode()


def done(call: Callable[[], object]) -> bytes:
    """``OK``, ``CAS_FAILED`` for a compare-and-swap that found another value, or the error."""
    try:
        result = call()
    except kvr.Error as e:
        return error_line(e)
    return b"CAS_FAILED" if result is False else b"OK"


def get_line(r: kvr.Replica, key: bytes, consistency: kvr.Consistency) -> bytes:
    try:
        v = r.get(key, consistency)
    except kvr.Error as e:
        return error_line(e)
    return b"NOT_FOUND" if v is None else c_string(v)


def open_end(word: bytes) -> bytes:
    return b"" if word == b"-" else word


def batch_line(r: kvr.Replica, argv: List[bytes]) -> bytes:
    """``batch put K V del K ...``"""
    ops: List[kvr.BatchOp] = []
    i = 1
    while i < len(argv):
        if argv[i] == b"put" and i + 2 < len(argv):
            ops.append(("put", argv[i + 1], argv[i + 2]))
            i += 3
        elif argv[i] == b"del" and i + 1 < len(argv):
            ops.append(("delete", argv[i + 1]))
            i += 2
        else:
            return b"ERR usage: batch put KEY VALUE | del KEY ..."
    return done(lambda: r.batch(ops))


def scan_line(r: kvr.Replica, argv: List[bytes]) -> bytes:
    """``scan START END LIMIT`` (``-`` for an open end) and ``prefix PREFIX LIMIT``: one page."""
    is_scan = argv[0] == b"scan"
    if len(argv) != (4 if is_scan else 3):
        return b"ERR usage: scan START END LIMIT | prefix PREFIX LIMIT"
    limit = strtoull(argv[-1])
    try:
        if is_scan:
            page = r.scan_page(open_end(argv[1]), open_end(argv[2]), limit)
        else:
            page = r.scan_prefix_page(open_end(argv[1]), limit)
    except kvr.Error as e:
        return error_line(e)
    items = b",".join(b"[" + json_str(k) + b"," + json_str(v) + b"]" for k, v in page.items)
    nxt = b"null" if page.next is None else json_str(page.next)
    return b'{"items":[' + items + b'],"next":' + nxt + b"}"


def watch_line(r: kvr.Replica, argv: List[bytes]) -> bytes:
    """``watch PREFIX FROM_INDEX COUNT TIMEOUT_MS`` (``-`` for all keys): up to COUNT events,
    waiting at most TIMEOUT_MS for each; stops at the first wait that ends without one."""
    if len(argv) != 5:
        return b"ERR usage: watch PREFIX FROM_INDEX COUNT TIMEOUT_MS"
    try:
        w = r.watch(open_end(argv[1]), strtoull(argv[2]))
    except kvr.Error as e:
        return error_line(e)
    count = strtoull(argv[3])
    # The C host passes the number on as a uint32_t.
    timeout_s = (strtoull(argv[4]) & 0xFFFFFFFF) / 1000
    events: List[bytes] = []
    with w:
        while len(events) < count:
            try:
                ev = w.poll(timeout_s)
            except kvr.Error:
                break  # the C host ends the list at the first failure, too
            if ev is None:
                break
            kind = KIND_NAMES.get(int(ev.kind), b"?")
            events.append(
                b'{"index":%d,"kind":"%s","key":%s,"value":%s}'
                % (ev.index, kind, json_str(ev.key), json_str(ev.value))
            )
    return b"[" + b",".join(events) + b"]"


def json_line(call: Callable[[], bytes]) -> bytes:
    try:
        return c_string(call())
    except kvr.Error as e:
        return error_line(e)


def words_reply(r: kvr.Replica, argv: List[bytes]) -> Optional[bytes]:
    """The commands with a fixed number of words; None for a command it does not know."""
    c, n = argv[0], len(argv)
    if c == b"putttl" and n == 4:
        return done(lambda: r.put(argv[1], argv[3], ttl_ms=strtoull(argv[2])))
    if c == b"append" and n == 3:
        return done(lambda: r.append(argv[1], argv[2]))
    if c == b"cas" and n == 4:
        return done(lambda: r.cas(argv[1], argv[2], argv[3]))
    if c == b"casnew" and n == 3:
        return done(lambda: r.cas(argv[1], None, argv[2]))
    if c == b"lget" and n == 2:
        return get_line(r, argv[1], kvr.LEASE)
    if c == b"batch":
        return batch_line(r, argv)
    if c in (b"scan", b"prefix"):
        return scan_line(r, argv)
    if c == b"watch":
        return watch_line(r, argv)
    # The library's JSON text as is, like the C host: re-encoding a parsed value could
    # change key order or number formats.
    if c == b"stats":
        return json_line(lambda: r.stats_json().encode("utf-8"))
    if c == b"members":
        return json_line(lambda: r.members_json().encode("utf-8"))
    if c == b"backup" and n == 2:
        return done(lambda: r.backup(argv[1]))
    if c == b"add" and n == 3:
        return done(lambda: r.add_node(strtoull(argv[1]), argv[2]))
    if c == b"learner" and n == 3:
        return done(lambda: r.add_learner(strtoull(argv[1]), argv[2]))
    if c == b"remove" and n == 2:
        return done(lambda: r.remove_node(strtoull(argv[1])))
    if c == b"transfer" and n == 2:
        return done(lambda: r.transfer_leader(strtoull(argv[1])))
    return None


def execute(r: kvr.Replica, line: bytes) -> Optional[bytes]:
    """The reply line to one command line (b"" for a blank line), or None to quit."""
    # Like the C host: the line ends at the first CR, LF or NUL, and words are split on blanks.
    line = re.split(rb"[\r\n\0]", line, maxsplit=1)[0]
    argv = [w for w in re.split(rb"[ \t]+", line) if w]
    if not argv:
        return b""
    if len(argv) > ARGS_MAX:
        return b"ERR more than %d words on one line\n" % ARGS_MAX
    if argv[0] in (b"quit", b"exit"):
        return None
    return reply(r, line, argv) + b"\n"


def reply(r: kvr.Replica, line: bytes, argv: List[bytes]) -> bytes:
    cmd = argv[0]
    key = argv[1] if len(argv) > 1 else b""
    if cmd == b"put":
        if len(argv) < 2:
            return b"ERR usage: put KEY VALUE"
        # The value is the rest of the line after the key, inner and trailing blanks kept.
        value = line.lstrip(b" \t")[len(cmd) :].lstrip(b" \t")[len(key) :].lstrip(b" \t")
        return done(lambda: r.put(key, value))
    if cmd == b"get":
        return get_line(r, key, kvr.LINEARIZABLE)
    if cmd == b"sget":
        return get_line(r, key, kvr.STALE)
    if cmd in (b"delete", b"del"):
        return done(lambda: r.delete(key))
    if cmd == b"status":
        try:
            return status_line(r)
        except kvr.Error as e:
            return error_line(e)
    if cmd == b"help":
        return HELP
    answer = words_reply(r, argv)
    if answer is None:
        return b'ERR unknown command "' + cmd + b'" (try help)'
    return answer


def repl(r: kvr.Replica, inp: BinaryIO, out: BinaryIO) -> None:
    while True:
        # fgets reads at most one byte less than its buffer.
        line = inp.readline(LINE_BYTES_MAX - 1)
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
