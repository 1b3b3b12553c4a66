"""Shared helpers: free ports, fast Raft options, and replica host processes driven over their REPL."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import kvr

ROOT = Path(__file__).resolve().parents[3]
HOST_SCRIPT = ROOT / "examples" / "python" / "kvr_host.py"

# Fast elections, yet robust on a loaded 2-core machine.
FAST: Dict[str, int] = dict(tick_ms=30, election_ticks=10, heartbeat_ticks=2, request_timeout_ms=10000)

REPLY_TIMEOUT_S = 30.0


def free_ports(n: int) -> List[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def peers_for(ports: List[int]) -> Dict[int, str]:
    return {i + 1: f"127.0.0.1:{p}" for i, p in enumerate(ports)}


def wait_until(pred, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def child_env() -> Dict[str, str]:
    """Environment in which a child process imports this very kvr package and library."""
    env = dict(os.environ)
    pkg_parent = str(Path(kvr.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    env["KVR_LIBRARY"] = kvr.library_path
    return env


class Host:
    """One replica hosted by examples/python/kvr_host.py in its own process."""

    def __init__(self, node_id: int, dir: Path, peers: Dict[int, str], options: Dict[str, int]) -> None:
        self.node_id = node_id
        self.log = dir.with_suffix(".log")
        peers_arg = ",".join(f"{k}={v}" for k, v in sorted(peers.items()))
        self.argv = [sys.executable, str(HOST_SCRIPT), "--node-id", str(node_id), "--dir", str(dir)]
        self.argv += ["--peers", peers_arg]
        for k, v in options.items():
            self.argv += ["--option", f"{k}={v}"]
        self.proc: Optional[subprocess.Popen] = None
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def start(self) -> "Host":
        assert self.proc is None
        self.lines = queue.Queue()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=child_env(),
            )
        threading.Thread(target=self._read, args=(self.proc, self.lines), daemon=True).start()
        return self

    @staticmethod
    def _read(proc: subprocess.Popen, lines: "queue.Queue[Optional[str]]") -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        lines.put(None)

    def cmd(self, line: str) -> str:
        assert self.proc is not None and self.proc.stdin is not None, f"node {self.node_id} not running"
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        try:
            reply = self.lines.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"node {self.node_id}: no reply to {line!r}; log:\n{self.tail_log()}")
        assert reply is not None, f"node {self.node_id} exited on {line!r}; log:\n{self.tail_log()}"
        return reply

    def put_reply(self, key: str, value: str) -> str:
        return self.cmd(f"put {key} {value}")

    def status(self) -> Dict[str, str]:
        return dict(kv.split("=", 1) for kv in self.cmd("status").split())

    def tail_log(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> int:
        """Sends quit; returns the exit code."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"quit\n")
        self.proc.stdin.close()
        rc = self.proc.wait(timeout=20)
        self.proc = None
        return rc
