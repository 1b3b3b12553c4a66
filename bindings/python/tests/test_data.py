"""The data model on one replica: TTL, batches, compare-and-swap, append, scans, read
consistencies, stats, backup and restore, and the error paths of each call."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

import kvr
from conftest import FAST, wait_until


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[kvr.Replica]:
    with kvr.open(tmp_path / "r", **FAST) as r:
        yield r


def test_put_with_ttl_expires_and_a_plain_put_clears_the_ttl(replica: kvr.Replica) -> None:
    replica.put(b"session", b"token", ttl_ms=300)
    replica.put(b"renewed", b"a", ttl_ms=300)
    replica.put(b"renewed", b"b")
    replica.put(b"long", b"lived", ttl_ms=3_600_000)
    assert replica.get(b"session") == b"token"
    wait_until(lambda: replica.get(b"session") is None, timeout_s=10, what="expiry")
    assert replica.get(b"session", kvr.STALE) is None
    assert replica.get(b"renewed") == b"b"
    assert replica.get(b"long") == b"lived"


@pytest.mark.parametrize("ttl", [0, -1, 2**64])
def test_ttl_out_of_range_is_invalid_argument(replica: kvr.Replica, ttl: int) -> None:
    with pytest.raises(kvr.InvalidArgument):
        replica.put(b"k", b"v", ttl_ms=ttl)
    assert replica.get(b"k") is None


def test_batch_applies_every_write_in_order(replica: kvr.Replica) -> None:
    replica.put(b"gone", b"x")
    replica.batch([("put", b"a", b"1"), ("put", "b", "2"), ("delete", b"gone"), ("put", b"a", b"3")])
    assert replica.get(b"a") == b"3"
    assert replica.get(b"b") == b"2"
    assert replica.get(b"gone") is None
    replica.batch([])  # an empty batch is valid and writes nothing
    replica.batch(iter([("delete", b"never-there")]))


@pytest.mark.parametrize(
    "bad",
    [
        ("put", b"", b"empty key"),
        ("put", b"k" * (kvr.KEY_BYTES_MAX + 1), b"v"),
        ("put", b"big", b"v" * (kvr.VALUE_BYTES_MAX + 1)),
        ("delete", None),
    ],
)
def test_batch_with_an_invalid_write_writes_nothing(replica: kvr.Replica, bad: Any) -> None:
    replica.put(b"a", b"before")
    with pytest.raises(kvr.InvalidArgument, match="op 2|exceeds"):
        replica.batch([("put", b"a", b"after"), ("put", b"new", b"1"), bad, ("delete", b"a")])
    assert replica.get(b"a") == b"before"
    assert replica.get(b"new") is None


@pytest.mark.parametrize("bad", [("upsert", b"k", b"v"), ("put", b"k"), ("delete", b"k", b"v"), ()])
def test_batch_with_a_malformed_op_is_rejected_before_any_write(replica: kvr.Replica, bad: Any) -> None:
    with pytest.raises((kvr.InvalidArgument, TypeError)):
        replica.batch([("put", b"first", b"1"), bad])
    assert replica.get(b"first") is None


def test_batch_over_the_write_limit_is_invalid_argument(replica: kvr.Replica) -> None:
    with pytest.raises(kvr.InvalidArgument):
        replica.batch([("put", f"k{i}", b"v") for i in range(10_001)])
    assert replica.get(b"k0") is None


def test_cas_swaps_only_on_a_match(replica: kvr.Replica) -> None:
    assert replica.cas(b"c", None, b"1") is True, "absent, as expected"
    assert replica.cas(b"c", None, b"x") is False, "no longer absent"
    assert replica.cas(b"c", b"0", b"x") is False, "holds 1, not 0"
    assert replica.get(b"c") == b"1"
    assert replica.cas(b"c", b"1", b"2") is True
    assert replica.get(b"c") == b"2"
    assert replica.cas(b"absent", b"", b"v") is False, "an absent key does not hold the empty value"
    replica.put(b"e", b"")
    assert replica.cas(b"e", b"", b"filled") is True, "an empty value is a value"
    assert replica.cas("str", None, "välue") is True
    assert replica.get("str") == "välue".encode()


def test_append_creates_and_extends(replica: kvr.Replica) -> None:
    replica.append(b"log", b"a")
    replica.append(b"log", b"bc")
    replica.append(b"log", b"")
    assert replica.get(b"log") == b"abc"
    replica.put(b"big", b"x" * (kvr.VALUE_BYTES_MAX - 1))
    replica.append(b"big", b"y")
    with pytest.raises(kvr.InvalidArgument):
        replica.append(b"big", b"z")
    assert replica.get(b"big") == b"x" * (kvr.VALUE_BYTES_MAX - 1) + b"y"


def fill(r: kvr.Replica, keys: List[bytes]) -> None:
    for i in range(0, len(keys), 100):
        r.batch([("put", k, b"v-" + k) for k in keys[i : i + 100]])


def test_scan_pages_follow_continuations(replica: kvr.Replica) -> None:
    keys = [b"k%03d" % i for i in range(250)]
    fill(replica, keys + [b"a", b"z"])
    page = replica.scan_page(b"k", b"l", limit=100)
    assert [k for k, _ in page.items] == keys[:100]
    assert page.items[0] == (b"k000", b"v-k000")
    assert page.next == b"k100"
    page = replica.scan_page(page.next, b"l", limit=100)
    assert [k for k, _ in page.items] == keys[100:200]
    page = replica.scan_page(page.next, b"l", limit=100)
    assert [k for k, _ in page.items] == keys[200:] and page.next is None
    assert replica.scan_page(b"k100", b"k102").items == [(b"k100", b"v-k100"), (b"k101", b"v-k101")]
    everything = replica.scan_page(limit=10_000)
    assert [k for k, _ in everything.items] == [b"a"] + keys + [b"z"] and everything.next is None


def test_scan_generators_read_everything_page_by_page(replica: kvr.Replica) -> None:
    keys = [b"p/%03d" % i for i in range(120)]
    fill(replica, keys + [b"p", b"p0", b"q/1", b"o\xff"])
    assert [k for k, _ in replica.scan(page_size=7)] == sorted(keys + [b"p", b"p0", b"q/1", b"o\xff"])
    assert [k for k, _ in replica.scan_prefix(b"p/", page_size=7)] == keys
    assert [k for k, _ in replica.scan_prefix("p/", limit=10, page_size=3)] == keys[:10]
    assert [k for k, _ in replica.scan(b"p/050", b"p/060", page_size=4)] == keys[50:60]
    assert list(replica.scan_prefix(b"nothing")) == []
    page = replica.scan_prefix_page(b"p/", limit=50)
    assert len(page.items) == 50 and page.next == b"p/050"
    rest = replica.scan_page(page.next, kvr.prefix_end(b"p/"), limit=1000)
    assert [k for k, _ in rest.items] == keys[50:]


def test_scan_prefix_of_ff_bytes_reaches_the_end_of_the_key_space(replica: kvr.Replica) -> None:
    keys = [b"\xff\xff%02d" % i for i in range(30)]
    fill(replica, keys + [b"\xfe\xff"])
    assert [k for k, _ in replica.scan_prefix(b"\xff\xff", page_size=4)] == keys


def test_prefix_end() -> None:
    assert kvr.prefix_end(b"abc") == b"abd"
    assert kvr.prefix_end(b"a\xff\xff") == b"b"
    assert kvr.prefix_end(b"\xff") == b""
    assert kvr.prefix_end(b"") == b""


@pytest.mark.parametrize("consistency", list(kvr.Consistency))
def test_every_consistency_reads_this_replicas_writes(replica: kvr.Replica, consistency: kvr.Consistency) -> None:
    replica.put(b"r", b"1")
    assert replica.get(b"r", consistency) == b"1"
    assert replica.get(b"absent", consistency) is None
    assert list(replica.scan_prefix(b"r", consistency=consistency)) == [(b"r", b"1")]
    assert replica.scan_page(b"r", consistency=consistency).items == [(b"r", b"1")]


@pytest.mark.parametrize(
    "call, text",
    [
        (lambda r: r.scan_page(limit=0), "limit"),
        (lambda r: r.scan_page(limit=10_001), "limit"),
        (lambda r: r.scan_page(b"b", b"a"), "end"),
        (lambda r: r.scan_prefix_page(limit=0), "limit"),
        (lambda r: list(r.scan(page_size=0)), "limit"),
        (lambda r: r.scan_page(consistency=7), "consistency"),
        (lambda r: r.get(b"k", 7), "consistency"),
    ],
)
def test_bad_scan_arguments_are_invalid_argument(
    replica: kvr.Replica, call: Callable[[kvr.Replica], Any], text: str
) -> None:
    with pytest.raises(kvr.InvalidArgument, match=text):
        call(replica)


def test_lease_read_and_get_accept_the_lease_constant(replica: kvr.Replica) -> None:
    assert kvr.LEASE is kvr.Consistency.LEASE and int(kvr.LEASE) == 1
    replica.put(b"l", b"x")
    assert replica.get(b"l", consistency=kvr.LEASE) == b"x"


def test_stats_report_the_documented_fields(replica: kvr.Replica) -> None:
    for i in range(5):
        replica.put(f"s{i}", b"v")
    s = replica.stats()
    expected = {
        "node_id", "role", "leader_id", "term", "commit_index", "applied_index", "first_index",
        "last_index", "log_entries", "log_bytes", "data_bytes", "snapshot_index", "snapshots_taken",
        "snapshots_installed", "snapshots_sent", "proposals_total", "proposals_per_s",
        "apply_batches", "apply_batch_avg", "apply_batch_max", "entries_applied", "duplicates",
        "log_writes", "log_write_us", "apply_commit_us", "lease_reads_local", "read_rounds", "votes_held",
        "peers", "transport",
    }  # fmt: skip
    assert expected <= set(s), expected - set(s)
    assert s["node_id"] == 1 and s["role"] == "leader" and s["leader_id"] == 1
    assert s["proposals_total"] >= 5
    assert s["first_index"] <= s["applied_index"] <= s["commit_index"] <= s["last_index"]
    assert s["log_bytes"] > 0 and s["data_bytes"] > 0
    assert s["peers"] == []
    assert {"sent", "received", "dropped", "refused"} <= set(s["transport"])
    assert isinstance(s["proposals_per_s"], (int, float))
    assert replica.stats_json().startswith('{"node_id":1,')


def test_members_of_a_single_node_replica(replica: kvr.Replica) -> None:
    assert replica.members() == [{"id": 1, "addr": "", "role": "voter"}]
    assert replica.members_json() == '[{"id":1,"addr":"","role":"voter"}]'


def test_backup_seeds_a_new_replica(tmp_path: Path) -> None:
    backup = tmp_path / "backup.mdb"
    with kvr.open(tmp_path / "src", **FAST) as r:
        fill(r, [b"b%04d" % i for i in range(500)])
        r.put(b"binary\x00", bytes(range(256)))
        r.backup(backup)
        r.put(b"after-backup", b"not in it")
        with pytest.raises(kvr.InvalidArgument, match="exists"):
            r.backup(str(backup))
        with pytest.raises(kvr.IoError):
            r.backup(tmp_path / "no" / "such" / "dir.mdb")
    assert backup.stat().st_size > 0
    with kvr.open(tmp_path / "restored", restore_from=backup, cluster_id=7, **FAST) as seeded:
        assert seeded.get(b"b0499") == b"v-b0499"
        assert seeded.get(b"binary\x00") == bytes(range(256))
        assert seeded.get(b"after-backup") is None
        assert len(list(seeded.scan_prefix(b"b0"))) == 500
        seeded.put(b"new", b"write")
        assert seeded.get(b"new") == b"write"


def test_restore_from_a_missing_file_fails_to_open(tmp_path: Path) -> None:
    with pytest.raises(kvr.Error):
        kvr.open(tmp_path / "r", restore_from=tmp_path / "missing.mdb", **FAST)


def test_new_calls_validate_their_arguments(replica: kvr.Replica) -> None:
    invalid: List[Callable[[], Any]] = [
        lambda: replica.put(None, b"v", ttl_ms=10),  # type: ignore[arg-type]
        lambda: replica.put(b"", b"v", ttl_ms=10),
        lambda: replica.cas(None, None, b"v"),  # type: ignore[arg-type]
        lambda: replica.cas(b"", b"a", b"v"),
        lambda: replica.cas(b"k" * 600, None, b"v"),
        lambda: replica.append(None, b"v"),  # type: ignore[arg-type]
        lambda: replica.append(b"", b"v"),
        lambda: replica.batch([("put", None, b"v")]),  # type: ignore[list-item]
        lambda: replica.add_node(0, "127.0.0.1:1"),
        lambda: replica.add_node(2, "not-an-address"),
        lambda: replica.add_node(2, None),  # type: ignore[arg-type]
        lambda: replica.add_node(-1, "127.0.0.1:1"),
        lambda: replica.add_node(2**64, "127.0.0.1:1"),
        lambda: replica.add_learner(2, "127.0.0.1:1\x00:2"),
        lambda: replica.remove_node(9),
        lambda: replica.remove_node(1),  # the only voter
        lambda: replica.backup(None),  # type: ignore[arg-type]
        lambda: replica.backup("with\x00nul"),
        lambda: replica.watch(from_index=-1),
    ]
    for call in invalid:
        with pytest.raises(kvr.InvalidArgument) as e:
            call()
        assert e.value.code == -2 and e.value.message
    with pytest.raises(TypeError):
        replica.cas(b"k", None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        replica.append(b"k", 5)  # type: ignore[arg-type]
    assert replica.scan_page().items == [], "nothing was written"


def test_every_new_call_on_a_closed_replica_raises_closed(tmp_path: Path) -> None:
    r = kvr.open(tmp_path / "c", **FAST)
    r.close()
    calls: List[Callable[[], Any]] = [
        lambda: r.put(b"k", b"v", ttl_ms=100),
        lambda: r.batch([("put", b"k", b"v")]),
        lambda: r.cas(b"k", None, b"v"),
        lambda: r.append(b"k", b"v"),
        lambda: r.get(b"k", kvr.LEASE),
        lambda: r.scan_page(),
        lambda: r.scan_prefix_page(b"k"),
        lambda: list(r.scan()),
        lambda: list(r.scan_prefix(b"k")),
        lambda: r.watch(),
        lambda: r.add_node(2, "127.0.0.1:1"),
        lambda: r.add_learner(2, "127.0.0.1:1"),
        lambda: r.remove_node(2),
        lambda: r.transfer_leader(1),
        lambda: r.members(),
        lambda: r.stats(),
        lambda: r.stats_json(),
        lambda: r.backup(tmp_path / "b.mdb"),
    ]
    for call in calls:
        with pytest.raises(kvr.Closed) as e:
            call()
        assert e.value.code == -5
    assert not (tmp_path / "b.mdb").exists()


def test_transfer_to_itself_on_a_single_node_is_a_no_op(replica: kvr.Replica) -> None:
    replica.transfer_leader(1)
    assert replica.status()["role"] == "leader"

