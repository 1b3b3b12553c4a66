"""A three-process cluster: this test process hosts node 1 through the binding, two
examples/python/kvr_host.py processes host nodes 2 and 3."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvr
from conftest import FAST, HOST_SCRIPT, Host, free_ports, peers_for, wait_until


def test_three_processes_replicate_survive_kill9_and_catch_up(tmp_path: Path) -> None:
    assert HOST_SCRIPT.exists(), f"missing {HOST_SCRIPT}"
    peers = peers_for(free_ports(3))
    hosts = {i: Host(i, tmp_path / f"n{i}", peers, FAST).start() for i in (2, 3)}
    try:
        with kvr.open(tmp_path / "n1", node_id=1, peers=peers, **FAST) as me:

            def agreed_leader() -> bool:
                ids = {me.status()["leader_id"]} | {int(h.status()["leader"]) for h in hosts.values()}
                return len(ids) == 1 and 0 not in ids

            wait_until(agreed_leader, what="an agreed leader")

            # A write through each process is read linearizably through the others.
            me.put(b"from-1", b"in-process")
            assert hosts[2].put_reply("from-2", "host two") == "OK"
            assert hosts[3].put_reply("from-3", "host three") == "OK"
            assert me.get(b"from-2") == b"host two"
            assert me.get(b"from-3") == b"host three"
            for h in hosts.values():
                assert h.cmd("get from-1") == "in-process"
                assert h.cmd("get from-2") == "host two"
                assert h.cmd("get from-3") == "host three"
                assert h.cmd("get nothing-here") == "NOT_FOUND"

            # Errors cross the process boundary as code and text.
            assert hosts[2].cmd("put " + "k" * 600 + " v").startswith("ERR -2: ")

            # Another process holds node 2's directory.
            with pytest.raises(kvr.Busy):
                kvr.open(tmp_path / "n2", node_id=2, peers=peers, **FAST)

            # kill -9 one host; the two left keep a quorum; the restarted host catches up.
            hosts[3].kill9()
            me.put(b"while-down", b"written without node 3")
            me.delete(b"from-2")
            hosts[3].start()
            assert hosts[3].cmd("get while-down") == "written without node 3"
            assert hosts[3].cmd("get from-2") == "NOT_FOUND"
            status = hosts[3].status()
            assert int(status["applied_at_open"]) > 5, status
            wait_until(
                lambda: hosts[3].cmd("sget while-down") == "written without node 3",
                what="stale read on node 3",
            )
            assert me.get(b"from-2", kvr.STALE) is None

        for h in hosts.values():
            assert h.stop() == 0
    finally:
        for h in hosts.values():
            h.kill9()
