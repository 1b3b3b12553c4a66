"""The change feed: order, filtering, expiry events, resuming across restarts, stopping, and
compacted history."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest

import kvr
from conftest import FAST


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[kvr.Replica]:
    with kvr.open(tmp_path / "r", **FAST) as r:
        yield r


def kinds(events: List[kvr.Event]) -> List[str]:
    return [e.kind.name.lower() for e in events]


def test_puts_deletes_and_expiry_arrive_in_log_order(replica: kvr.Replica) -> None:
    with replica.watch(b"w/", timeout=5) as w:
        replica.put(b"w/a", b"1")
        replica.put(b"other", b"not watched")
        replica.batch([("put", b"w/b", b"2"), ("delete", b"w/a")])
        replica.append(b"w/b", b"+")
        assert replica.cas(b"w/c", None, b"3")
        replica.put(b"w/t", b"short", ttl_ms=200)
        events = [next(w) for _ in range(7)]
    assert [(e.kind, e.key, e.value) for e in events] == [
        (kvr.EventKind.PUT, b"w/a", b"1"),
        (kvr.EventKind.PUT, b"w/b", b"2"),
        (kvr.EventKind.DELETE, b"w/a", b""),
        (kvr.EventKind.PUT, b"w/b", b"2+"),
        (kvr.EventKind.PUT, b"w/c", b"3"),
        (kvr.EventKind.PUT, b"w/t", b"short"),
        (kvr.EventKind.EXPIRE, b"w/t", b""),
    ]
    indexes = [e.index for e in events]
    assert indexes == sorted(indexes)
    assert events[1].index == events[2].index, "one batch is one entry"
    assert w.closed


def test_watch_without_timeout_waits_and_timeout_ends_the_iteration(replica: kvr.Replica) -> None:
    started = time.monotonic()
    assert list(replica.watch(timeout=0.3)) == []
    assert time.monotonic() - started >= 0.25
    w = replica.watch()
    assert w.poll(0) is None and w.poll(0.05) is None
    replica.put(b"k", b"v")
    ev = w.poll(5)
    assert ev is not None and ev.key == b"k"
    w.close()
    assert w.poll(1) is None, "a closed watcher has nothing more"


def test_close_from_another_thread_stops_a_waiting_iteration(replica: kvr.Replica) -> None:
    w = replica.watch()
    got: List[kvr.Event] = []
    t = threading.Thread(target=lambda: got.extend(w))
    t.start()
    replica.put(b"seen", b"1")
    time.sleep(0.3)
    w.close()
    t.join(5)
    assert not t.is_alive(), "close() did not end the iteration"
    assert [e.key for e in got] == [b"seen"]
    w.close()  # idempotent


def test_breaking_out_and_garbage_collection_free_the_watcher(replica: kvr.Replica) -> None:
    replica.put(b"first", b"change")
    for _ in range(50):
        for ev in replica.watch(from_index=1):
            assert ev.key == b"first"
            break
        gen = replica.watch()
        del gen
    replica.put(b"still", b"works")
    assert replica.get(b"still") == b"works"


def test_resume_from_index_plus_one_after_reopen_has_no_gap_or_duplicate(tmp_path: Path) -> None:
    written: List[bytes] = []
    with kvr.open(tmp_path / "d", **FAST) as r:
        for i in range(20):
            key = b"r%02d" % i
            r.put(key, b"%d" % i)
            written.append(key)
        seen = []
        with r.watch(b"r", from_index=1, timeout=2) as w:
            for ev in w:
                seen.append(ev)
                if len(seen) == 12:
                    break
    last = seen[-1].index
    with kvr.open(tmp_path / "d", **FAST) as r:
        for i in range(20, 30):
            key = b"r%02d" % i
            r.put(key, b"%d" % i)
            written.append(key)
        r.delete(b"r00")
        rest = list(r.watch(b"r", from_index=last + 1, timeout=0.5))
    events = seen + rest
    assert [e.key for e in events] == written + [b"r00"]
    assert events[-1].kind == kvr.EventKind.DELETE
    indexes = [e.index for e in events]
    assert indexes == sorted(set(indexes)), "each change once, in order"


def test_closing_the_replica_ends_the_feed_with_closed(tmp_path: Path) -> None:
    r = kvr.open(tmp_path / "c", **FAST)
    w = r.watch()
    caught: List[BaseException] = []

    def consume() -> None:
        try:
            for _ in w:
                pass
        except kvr.Error as e:
            caught.append(e)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.2)
    r.close()
    t.join(10)
    assert not t.is_alive()
    assert len(caught) == 1 and isinstance(caught[0], kvr.Closed), caught
    assert w.closed


def test_history_beyond_the_retained_window_is_compacted(tmp_path: Path) -> None:
    with kvr.open(tmp_path / "x", watch_retain_entries=20, **FAST) as r:
        # The library prunes the retained window every 1024 entries, so write more entries than
        # that, one by one: concurrent writes would share entries.
        for i in range(1050):
            r.put(b"z%04d" % i, b"v")
        with pytest.raises(kvr.Compacted) as e:
            r.watch(from_index=1)
        assert e.value.code == -11
        applied = r.status()["applied_index"]
        recent = list(r.watch(from_index=applied - 5, timeout=0.3))
        assert [ev.key for ev in recent] == [b"z%04d" % i for i in range(1044, 1050)]


def test_unknown_event_kinds_keep_their_number() -> None:
    k = kvr.EventKind(9)
    assert int(k) == 9 and k.name == "UNKNOWN_9"
    assert kvr.EventKind(1) is kvr.EventKind.PUT
    with pytest.raises(ValueError):
        kvr.EventKind("put")  # type: ignore[arg-type]
