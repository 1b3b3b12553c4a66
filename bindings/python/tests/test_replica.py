"""One replica in this process: the API, argument handling, lifecycle and every error path."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

import kvr
from conftest import FAST, free_ports, peers_for, wait_until


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[kvr.Replica]:
    with kvr.open(tmp_path / "r", **FAST) as r:
        yield r


def test_put_get_delete_round_trip(replica: kvr.Replica) -> None:
    replica.put(b"k", b"v")
    assert replica.get(b"k") == b"v"
    replica.put(b"k", b"v2")
    assert replica.get(b"k") == b"v2"
    replica.delete(b"k")
    assert replica.get(b"k") is None
    replica.delete(b"never-there")  # deleting an absent key is not an error


def test_str_and_buffer_types_are_accepted_and_str_is_utf8(replica: kvr.Replica) -> None:
    replica.put("clé", "välue")
    assert replica.get("clé".encode()) == "välue".encode()
    replica.put(bytearray(b"ba"), memoryview(b"mv"))
    assert replica.get(memoryview(b"ba")) == b"mv"
    with pytest.raises(TypeError):
        replica.put(42, b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        replica.put(b"k", None)  # type: ignore[arg-type]


def test_binary_empty_and_largest_values_survive(replica: kvr.Replica) -> None:
    binary = bytes(range(256)) * 3
    replica.put(b"\x00bin\xff", binary)
    assert replica.get(b"\x00bin\xff") == binary
    replica.put(b"empty", b"")
    assert replica.get(b"empty") == b""
    big = b"x" * kvr.VALUE_BYTES_MAX
    longest_key = b"k" * kvr.KEY_BYTES_MAX
    replica.put(longest_key, big)
    assert replica.get(longest_key) == big


def test_stale_read_sees_local_writes(replica: kvr.Replica) -> None:
    replica.put(b"s", b"1")
    assert replica.get(b"s", kvr.STALE) == b"1"
    assert replica.get(b"s", consistency=kvr.Consistency.LINEARIZABLE) == b"1"
    assert replica.get(b"absent", kvr.STALE) is None


@pytest.mark.parametrize("key", [b"", "", None])
def test_empty_or_null_key_is_invalid_argument(replica: kvr.Replica, key: object) -> None:
    for call in (lambda: replica.put(key, b"v"), lambda: replica.get(key), lambda: replica.delete(key)):  # type: ignore[arg-type]
        with pytest.raises(kvr.InvalidArgument) as e:
            call()
        assert e.value.code == -2
        assert "key is" in e.value.message


def test_oversized_key_and_value_are_invalid_argument(replica: kvr.Replica) -> None:
    with pytest.raises(kvr.InvalidArgument, match="exceeds"):
        replica.put(b"k" * (kvr.KEY_BYTES_MAX + 1), b"v")
    with pytest.raises(kvr.InvalidArgument, match="exceeds"):
        replica.get(b"k" * (kvr.KEY_BYTES_MAX + 1))
    with pytest.raises(kvr.InvalidArgument, match="exceeds"):
        replica.put(b"k", b"v" * (kvr.VALUE_BYTES_MAX + 1))
    assert replica.get(b"k") is None


def test_status_reports_every_field(replica: kvr.Replica) -> None:
    replica.put(b"a", b"1")
    s = replica.status()
    assert set(s) == {
        "node_id",
        "leader_id",
        "term",
        "commit_index",
        "applied_index",
        "last_index",
        "applied_index_at_open",
        "entries_applied",
        "role",
    }
    assert s["node_id"] == 1 and s["leader_id"] == 1 and s["role"] == "leader"
    assert s["term"] >= 1
    assert s["applied_index"] <= s["commit_index"] <= s["last_index"]
    assert s["entries_applied"] >= 1
    assert replica.node_id == 1


def test_data_survives_reopen(tmp_path: Path) -> None:
    with kvr.open(tmp_path / "d", **FAST) as r:
        r.put(b"persist", b"yes")
        applied = r.status()["applied_index"]
    with kvr.open(tmp_path / "d", **FAST) as r:
        assert r.get(b"persist") == b"yes"
        assert r.status()["applied_index_at_open"] == applied


def test_close_is_idempotent_and_every_call_after_it_raises_closed(tmp_path: Path) -> None:
    r = kvr.open(tmp_path / "c", **FAST)
    r.put(b"k", b"v")
    assert not r.closed
    r.close()
    r.close()
    assert r.closed
    for call in (
        lambda: r.put(b"k", b"v"),
        lambda: r.get(b"k"),
        lambda: r.get(b"k", kvr.STALE),
        lambda: r.delete(b"k"),
        lambda: r.status(),
    ):
        with pytest.raises(kvr.Closed) as e:
            call()
        assert e.value.code == -5
    assert "closed" in repr(r)


def test_context_manager_closes_and_releases_the_directory(tmp_path: Path) -> None:
    with kvr.open(tmp_path / "cm", **FAST) as r:
        r.put(b"k", b"v")
    assert r.closed
    with kvr.open(tmp_path / "cm", **FAST) as again:
        assert again.get(b"k") == b"v"


def test_garbage_collection_closes_a_forgotten_replica(tmp_path: Path) -> None:
    r = kvr.open(tmp_path / "gc", **FAST)
    with pytest.warns(ResourceWarning, match="unclosed"):
        del r
        gc.collect()
    with kvr.open(tmp_path / "gc", **FAST):
        pass  # not Busy: the finalizer released the directory


def test_directory_open_twice_is_busy(tmp_path: Path) -> None:
    with kvr.open(tmp_path / "b", **FAST):
        with pytest.raises(kvr.Busy) as e:
            kvr.open(tmp_path / "b", **FAST)
        assert e.value.code == -9
        assert "in use" in e.value.message


def test_unknown_option_key_is_invalid_argument_naming_it(tmp_path: Path) -> None:
    with pytest.raises(kvr.InvalidArgument, match="no_such_option") as e:
        kvr.open(tmp_path / "o", no_such_option=1)
    assert e.value.code == -2
    assert not (tmp_path / "o").exists(), "nothing is created when the options are wrong"


@pytest.mark.parametrize(
    "options, text",
    [
        (dict(tick_ms="fast"), "tick_ms"),
        (dict(tick_ms=0), "tick_ms"),
        (dict(join="maybe"), "join"),
        (dict(listen="no-port"), "listen"),
        (dict(node_id=0), "node_id"),
        (dict(election_ticks=2, heartbeat_ticks=2), "election_ticks"),
        (dict(request_timeout_ms="1\x002"), "NUL"),
    ],
)
def test_bad_option_values_are_invalid_argument(tmp_path: Path, options: dict, text: str) -> None:
    with pytest.raises(kvr.InvalidArgument, match=text):
        kvr.open(tmp_path / "o", **options)


@pytest.mark.parametrize(
    "peers",
    ["garbage", "1=", "x=127.0.0.1:1", {1: "127.0.0.1"}, {1: "127.0.0.1:1", 2: ""}, {2: "127.0.0.1:1"}],
)
def test_malformed_peers_are_invalid_argument(tmp_path: Path, peers: object) -> None:
    with pytest.raises(kvr.InvalidArgument):
        kvr.open(tmp_path / "p", node_id=1, peers=peers, **FAST)  # type: ignore[arg-type]


def test_option_values_of_wrong_type_are_type_errors(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        kvr.open(tmp_path / "t", tick_ms=1.5)  # type: ignore[arg-type]


def test_unusable_directory_is_io_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(kvr.IoError) as e:
        kvr.open(blocker / "sub")
    assert e.value.code == -6


def test_damaged_log_is_corrupt(tmp_path: Path) -> None:
    with kvr.open(tmp_path / "x") as r:
        for i in range(10):
            r.put(b"k%d" % i, b"v" * 100)
    # Flip a byte of an early write-ahead log batch: the batches after it are intact, so this
    # is damage, not a torn last append that recovery may drop.
    segment = sorted((tmp_path / "x" / "wal").glob("*.log"))[0]
    with open(segment, "r+b") as f:
        f.seek(300)
        byte = f.read(1)
        f.seek(300)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(kvr.Corrupt) as e:
        kvr.open(tmp_path / "x")
    assert e.value.code == -7


def lonely_member(tmp_path: Path, timeout_ms: int) -> kvr.Replica:
    """Node 1 of a three-node cluster whose other members never start: no quorum, ever."""
    opts = dict(FAST, request_timeout_ms=timeout_ms)
    return kvr.open(tmp_path / "lonely", node_id=1, peers=peers_for(free_ports(3)), **opts)


def test_without_quorum_calls_fail_with_no_leader(tmp_path: Path) -> None:
    with lonely_member(tmp_path, 300) as r:
        for call in (lambda: r.put(b"k", b"v"), lambda: r.get(b"k"), lambda: r.delete(b"k")):
            with pytest.raises(kvr.NoLeader) as e:
                call()
            assert e.value.code == -4
        assert r.get(b"k", kvr.STALE) is None, "a stale read needs no quorum"
        assert r.status()["leader_id"] == 0


def test_close_wakes_a_call_blocked_in_another_thread(tmp_path: Path) -> None:
    r = lonely_member(tmp_path, 60_000)
    caught = []

    def blocked_put() -> None:
        try:
            r.put(b"k", b"v")
        except kvr.Error as e:
            caught.append(e)

    t = threading.Thread(target=blocked_put)
    t.start()
    time.sleep(0.3)
    assert t.is_alive(), "the put should block while there is no leader"
    started = time.monotonic()
    r.close()
    t.join(10)
    assert not t.is_alive()
    assert time.monotonic() - started < 10
    assert len(caught) == 1 and isinstance(caught[0], kvr.Closed), caught


def test_leader_that_lost_its_quorum_times_out(tmp_path: Path) -> None:
    # Slow ticks keep the leader in office (check_quorum steps it down only after an election
    # timeout) for longer than the request timeout, so the write times out rather than finds
    # no leader.
    opts = dict(tick_ms=50, election_ticks=10, heartbeat_ticks=2, request_timeout_ms=150)
    peers = peers_for(free_ports(2))
    a = kvr.open(tmp_path / "a", node_id=1, peers=peers, **opts)
    b = kvr.open(tmp_path / "b", node_id=2, peers=peers, **opts)
    try:
        wait_until(
            lambda: a.status()["leader_id"] != 0 and a.status()["leader_id"] == b.status()["leader_id"],
            what="a leader",
        )
        leader, follower = (a, b) if a.status()["role"] == "leader" else (b, a)
        follower.close()
        with pytest.raises(kvr.Timeout) as e:
            leader.put(b"k", b"v")
        assert e.value.code == -3
    finally:
        a.close()
        b.close()


def test_concurrent_writers_on_one_handle(replica: kvr.Replica) -> None:
    def writer(n: int) -> None:
        for i in range(20):
            replica.put(f"t{n}-{i}", f"{n}:{i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n in range(4):
        for i in range(20):
            assert replica.get(f"t{n}-{i}") == f"{n}:{i}".encode()
