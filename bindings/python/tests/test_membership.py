"""Membership and replication through the binding, in a cluster of real processes: this test
process hosts some replicas through the binding, examples/python/kvr_host.py hosts another.
A joiner catches up by snapshot, an old node is removed, leadership moves, a learner is
promoted; CAS contention, TTL expiry and the change feed across replicas."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

import kvr
from conftest import FAST, Host, free_ports, peers_for, wait_until

# Frequent snapshots and a short log, so that a joiner must catch up by snapshot.
SNAPPY: Dict[str, int] = dict(FAST, snapshot_entries=200, compaction_margin=50)


def agreed_leader(replicas: List[kvr.Replica], hosts: List[Host]) -> int:
    """The leader id every replica and host agrees on, or 0."""
    ids = {r.status()["leader_id"] for r in replicas} | {int(h.status()["leader"]) for h in hosts}
    return ids.pop() if len(ids) == 1 else 0


def write_keys(replicas: List[kvr.Replica], n: int) -> None:
    """Writes k-0000..k-{n-1} from 16 threads spread over the replicas."""

    def writer(t: int) -> None:
        r = replicas[t % len(replicas)]
        for i in range(t, n, 16):
            r.put(b"k-%04d" % i, b"v%d" % i)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Tuple[Dict[int, kvr.Replica], Host, Dict[int, str]]]:
    """Nodes 1 and 2 in this process, node 3 in a host process; yields them and the peers."""
    peers = peers_for(free_ports(3))
    host = Host(3, tmp_path / "n3", peers, SNAPPY).start()
    replicas: Dict[int, kvr.Replica] = {}
    try:
        for i in (1, 2):
            replicas[i] = kvr.open(tmp_path / f"n{i}", node_id=i, peers=peers, **SNAPPY)
        wait_until(lambda: agreed_leader(list(replicas.values()), [host]) != 0, what="a leader")
        yield replicas, host, peers
    finally:
        for r in replicas.values():
            r.close()
        host.kill9()


def test_joiner_catches_up_by_snapshot_then_an_old_node_is_removed_and_leadership_moves(
    tmp_path: Path, cluster: Tuple[Dict[int, kvr.Replica], Host, Dict[int, str]]
) -> None:
    replicas, host, peers = cluster
    n1, n2 = replicas[1], replicas[2]
    write_keys([n1, n2], 3000)
    assert n1.stats()["first_index"] > 250, "the log was compacted past what a joiner needs"

    addr4 = f"127.0.0.1:{free_ports(1)[0]}"
    n4 = replicas[4] = kvr.open(tmp_path / "n4", node_id=4, listen=addr4, join=True, **SNAPPY)
    assert n4.status()["applied_index"] == 0
    n1.add_node(4, addr4)
    commit = n1.status()["commit_index"]
    wait_until(lambda: n4.status()["applied_index"] >= commit, what="node 4 catching up")
    assert n4.stats()["snapshots_installed"] >= 1, n4.stats()
    assert n4.get(b"k-0000", kvr.STALE) == b"v0"
    assert n4.get(b"k-2999", kvr.STALE) == b"v2999"
    assert len(list(n4.scan_prefix(b"k-", consistency=kvr.STALE))) == 3000
    n4.put(b"from-4", b"joined")
    assert n2.get(b"from-4") == b"joined"

    members = n4.members()
    assert [(m["id"], m["role"]) for m in members] == [(i, "voter") for i in (1, 2, 3, 4)]
    assert {m["id"]: m["addr"] for m in members} == {**peers, 4: addr4}
    assert host.cmd("members") == n1.members_json(), "the host prints the library's JSON as is"
    assert json.loads(host.cmd("members")) == members

    # Remove node 2: the others go on, node 2 learns it was removed, its id is gone for good.
    n4.remove_node(2)
    assert [m["id"] for m in n1.members()] == [1, 3, 4]
    n1.put(b"after-remove", b"1")
    assert host.cmd("get after-remove") == "1"

    def removed() -> bool:
        try:
            n2.put(b"x", b"y")
        except kvr.Removed:
            return True
        except kvr.Error:
            pass
        return False

    wait_until(removed, what="node 2 refusing work")
    with pytest.raises(kvr.Removed) as e:
        n2.add_node(9, "127.0.0.1:1")
    assert e.value.code == -12
    with pytest.raises(kvr.InvalidArgument):
        n1.add_node(2, peers[2])

    # Leadership moves where it is asked to, from any replica. kvr_transfer_leader returns as
    # soon as this replica believes the target leads, and a stale belief counts: node 3 is
    # asked only once it follows node 4.
    n1.transfer_leader(4)
    assert n1.status()["leader_id"] == 4
    wait_until(lambda: host.status()["leader"] == "4", what="node 3 following node 4")
    assert host.cmd("transfer 1") == "OK"
    wait_until(lambda: n4.status()["leader_id"] == 1, what="node 4 following node 1")
    n4.put(b"after-transfer", b"2")
    assert n1.get(b"after-transfer", kvr.LEASE) == b"2"

    # A learner receives the log without voting, then is promoted.
    addr5 = f"127.0.0.1:{free_ports(1)[0]}"
    n5 = replicas[5] = kvr.open(tmp_path / "n5", node_id=5, listen=addr5, join=True, **SNAPPY)
    n4.add_learner(5, addr5)
    assert {m["id"]: m["role"] for m in n1.members()}[5] == "learner"
    wait_until(lambda: n5.get(b"after-transfer", kvr.STALE) == b"2", what="the learner's copy")
    wait_until(lambda: n5.status()["role"] == "learner", what="node 5 reporting its role")
    n1.add_node(5, addr5)
    assert {m["id"]: m["role"] for m in n5.members()}[5] == "voter"
    wait_until(lambda: n5.status()["role"] == "follower", what="node 5 voting")


def test_replicas_agree_on_cas_ttl_reads_and_the_change_feed(
    tmp_path: Path, cluster: Tuple[Dict[int, kvr.Replica], Host, Dict[int, str]]
) -> None:
    replicas, host, peers = cluster
    n1, n2 = replicas[1], replicas[2]

    # CAS contention from two replicas: exactly one wins each key.
    for round in range(10):
        key = b"lock-%d" % round
        start = threading.Barrier(2)
        wins: Dict[int, bool] = {}

        def contend(node: int) -> None:
            start.wait()
            wins[node] = replicas[node].cas(key, None, b"owner-%d" % node)

        threads = [threading.Thread(target=contend, args=(i,)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(wins.values()) == [False, True], wins
        winner = [i for i, won in wins.items() if won][0]
        assert host.cmd(f"get lock-{round}") == f"owner-{winner}"

    # Increments through read-then-CAS from two replicas lose no update.
    n1.put(b"counter", b"0")

    def increment(r: kvr.Replica, times: int) -> None:
        for _ in range(times):
            while True:
                old = r.get(b"counter")
                assert old is not None
                if r.cas(b"counter", old, b"%d" % (int(old) + 1)):
                    break

    threads = [threading.Thread(target=increment, args=(r, 15)) for r in (n1, n2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert host.cmd("get counter") == "30"

    # Append and batches from different replicas compose.
    n1.append(b"log", b"a")
    n2.append(b"log", b"b")
    assert host.cmd("append log c") == "OK"
    assert n1.get(b"log") == b"abc"
    with pytest.raises(kvr.InvalidArgument):
        n2.batch([("put", b"half", b"1"), ("put", b"", b"bad")])
    assert host.cmd("get half") == "NOT_FOUND"

    # A write through one replica is read through the others with every consistency.
    n1.put(b"fresh", b"1")
    assert n2.get(b"fresh", kvr.LEASE) == b"1"
    assert n2.get(b"fresh") == b"1"
    wait_until(lambda: n2.get(b"fresh", kvr.STALE) == b"1", what="the stale copy")
    assert list(n2.scan_prefix(b"lock-", page_size=3)) == list(n1.scan_prefix(b"lock-"))
    assert host.cmd("lget fresh") == "1"

    # A TTL expires on every replica, at the same log index.
    n2.put(b"session", b"token", ttl_ms=500)
    assert host.cmd("get session") == "token"
    wait_until(lambda: n1.get(b"session") is None, timeout_s=10, what="expiry")
    assert n2.get(b"session") is None and host.cmd("get session") == "NOT_FOUND"
    feeds = [list(itertools.islice(r.watch(b"session", from_index=1, timeout=10), 2)) for r in (n1, n2)]
    for feed in feeds:
        assert [(e.kind, e.value) for e in feed] == [(kvr.EventKind.PUT, b"token"), (kvr.EventKind.EXPIRE, b"")]
    assert feeds[0] == feeds[1]
    host_feed = json.loads(host.cmd("watch session 1 2 2000"))
    assert [(e["index"], e["kind"]) for e in host_feed] == [(e.index, e.kind.name.lower()) for e in feeds[0]]


def test_change_feed_resumes_on_a_reopened_replica_without_gaps_or_duplicates(
    tmp_path: Path, cluster: Tuple[Dict[int, kvr.Replica], Host, Dict[int, str]]
) -> None:
    replicas, host, peers = cluster
    for i in range(20):
        replicas[1].put(b"w%02d" % i, b"%d" % i)
    seen: List[kvr.Event] = []
    with replicas[2].watch(b"w", from_index=1, timeout=5) as w:
        for ev in w:
            seen.append(ev)
            if len(seen) == 15:
                break
    replicas.pop(2).close()
    for i in range(20, 35):
        assert host.cmd(f"put w{i:02d} {i}") == "OK"
    replicas[1].delete(b"w00")
    n2 = replicas[2] = kvr.open(tmp_path / "n2", node_id=2, peers=peers, **SNAPPY)
    with n2.watch(b"w", from_index=seen[-1].index + 1, timeout=10) as w:
        rest = list(itertools.islice(w, 21))
        assert w.poll(0.3) is None, "nothing more"
    events = seen + rest
    assert [e.key for e in events] == [b"w%02d" % i for i in range(35)] + [b"w00"]
    assert [e.kind for e in events[-2:]] == [kvr.EventKind.PUT, kvr.EventKind.DELETE]
    indexes = [e.index for e in events]
    assert indexes == sorted(set(indexes))
