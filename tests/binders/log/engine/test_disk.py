"""A durable partition log: appends, reads from cache and disk, segment roll and retention."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from binders.log.engine.disk import TAIL_CACHE_BYTES, DiskPartitionLog, TopicPolicy
from binders.log.engine.segment import INDEX_INTERVAL
from binders.log.engine.storage import Entry, MemoryPartitionLog

Open = Callable[..., DiskPartitionLog]


def entries(*values: bytes, key: bytes | None = None, ts: float = 1_000.0) -> list[Entry]:
    return [(key, value, {"n": str(i)} if i % 2 else {}, ts) for i, value in enumerate(values)]


def values(count: int) -> list[bytes]:
    return [f"v-{i}".encode() for i in range(count)]


def _fill(log: DiskPartitionLog, count: int, batch: int = 10, ts: float = 1_000.0) -> list[bytes]:
    written = values(count)
    for start in range(0, count, batch):
        log.append(entries(*written[start : start + batch], ts=ts))
    return written


def _all(log: DiskPartitionLog, offset: int = 0, step: int = 7) -> list[tuple]:
    """Every record from ``offset`` as ``(offset, value, headers)``, read ``step`` at a time."""
    out: list[tuple] = []
    while offset < log.end_offset:
        records = log.read(offset, step)
        assert records and len(records) <= step
        assert [r.offset for r in records] == list(range(offset, offset + len(records)))
        out += [(r.offset, r.value, r.headers) for r in records]
        offset += len(records)
    return out


def _values(log: DiskPartitionLog, offset: int = 0) -> list[bytes]:
    return [value for _, value, _ in _all(log, offset)]


def test_appends_get_consecutive_offsets_and_read_back(tmp_path: Path, partition_log: Open) -> None:
    log = partition_log(tmp_path / "p")
    assert log.append(entries(b"a", b"b")) == 0
    assert log.append(entries(b"c", key=b"k")) == 2
    assert (log.start_offset, log.end_offset) == (0, 3)
    records = log.read(1, 10)
    assert [(r.offset, r.value, r.key) for r in records] == [(1, b"b", None), (2, b"c", b"k")]
    assert records[0].headers == {"n": "1"} and records[0].timestamp == 1_000.0
    assert log.read(3, 10) == []


def test_a_reopened_log_reads_from_disk_what_the_tail_cache_served(
    tmp_path: Path, partition_log: Open
) -> None:
    log = partition_log(tmp_path / "p", TopicPolicy(segment_bytes=2_000))
    written = _fill(log, 500)
    hot = _all(log, step=1_000)
    log.close()
    again = partition_log(tmp_path / "p")
    assert len(again.segments) > 5
    assert _all(again, step=1_000) == hot
    assert _values(again) == written
    assert _values(again, offset=313) == written[313:]


def test_segments_roll_by_size_and_are_named_by_their_base_offset(
    tmp_path: Path, partition_log: Open
) -> None:
    log = partition_log(tmp_path / "p", TopicPolicy(segment_bytes=1_000))
    _fill(log, 200)
    segments = log.segments
    assert all(s.size <= 1_000 for s in segments)
    assert [s.base for s in segments[1:]] == [s.end for s in segments[:-1]]
    names = sorted(p.name for p in (tmp_path / "p").glob("*.log"))
    assert names == [f"{s.base:020d}.log" for s in segments]
    assert all(s.index_path.exists() for s in segments[:-1])  # sealed segments have an index


def test_segments_roll_by_age_on_maintenance(tmp_path: Path, partition_log: Open) -> None:
    log = partition_log(tmp_path / "p", TopicPolicy(segment_ms=1_000))
    log.append(entries(b"old", ts=time.time() - 5))
    log.maintain()
    log.append(entries(b"new", ts=time.time()))
    assert [s.base for s in log.segments] == [0, 1]
    log.maintain()
    assert len(log.segments) == 2  # the new segment is young


def test_a_sparse_index_locates_offsets_deep_in_a_segment(
    tmp_path: Path, partition_log: Open
) -> None:
    log = partition_log(tmp_path / "p")
    written = _fill(log, 3_000, batch=1)
    segment = log.segments[-1]
    assert len(segment.offsets) >= segment.size // INDEX_INTERVAL - 1
    log.close()
    again = partition_log(tmp_path / "p")
    for offset in (0, 1, 1_234, 2_999):
        assert again.read(offset, 1)[0].value == written[offset]


def test_the_tail_cache_stays_bounded_and_older_reads_go_to_disk(
    tmp_path: Path, partition_log: Open
) -> None:
    log = partition_log(tmp_path / "p")
    big = b"x" * 100_000
    for i in range(200):  # 20 MB through a cache of a few MB
        log.append([(None, big + str(i).encode(), {}, 1.0)])
    assert log.cached_bytes <= TAIL_CACHE_BYTES
    assert log.read(0, 1)[0].value.endswith(b"0")
    assert log.read(199, 1)[0].value.endswith(b"199")


def test_retention_by_age_deletes_whole_old_segments(tmp_path: Path, partition_log: Open) -> None:
    log = partition_log(tmp_path / "p", TopicPolicy(segment_bytes=1_000, retention_ms=60_000))
    _fill(log, 100, ts=time.time() - 3_600)
    _fill(log, 10, ts=time.time())
    log.maintain()
    assert log.start_offset >= 100 - 10 and log.end_offset == 110
    assert _values(log, log.start_offset)[-10:] == values(10)


def test_retention_by_size_keeps_the_newest_segments(tmp_path: Path, partition_log: Open) -> None:
    log = partition_log(tmp_path / "p", TopicPolicy(segment_bytes=1_000, retention_bytes=3_000))
    _fill(log, 300)
    assert sum(s.size for s in log.segments) <= 3_000 + 1_000
    assert log.start_offset > 0 and log.end_offset == 300
    assert log.read(0, 1)[0].offset == log.start_offset  # readers skip what is gone


def test_retention_keeps_what_a_required_group_has_not_consumed(
    tmp_path: Path, partition_log: Open
) -> None:
    policy = TopicPolicy(segment_bytes=1_000, retention_bytes=2_000)
    log = partition_log(tmp_path / "p", policy, floor=(40, ["billing"]))
    _fill(log, 300)
    assert log.start_offset <= 40


def test_the_hard_limit_deletes_unconsumed_records_and_says_so(
    tmp_path: Path, partition_log: Open, caplog: pytest.LogCaptureFixture
) -> None:
    policy = TopicPolicy(segment_bytes=1_000, retention_bytes=2_000, retention_hard_bytes=4_000)
    log = partition_log(tmp_path / "p", policy, floor=(0, ["billing"]))
    with caplog.at_level(logging.WARNING, "binder.log"):
        _fill(log, 300)
    assert log.start_offset > 0
    assert sum(s.size for s in log.segments) <= 4_000 + 1_000
    assert "not yet consumed by required group(s) billing" in caplog.text


def test_the_active_segment_is_never_deleted(tmp_path: Path, partition_log: Open) -> None:
    log = partition_log(tmp_path / "p", TopicPolicy(retention_bytes=1))
    log.append(entries(b"a", ts=time.time()))
    log.maintain()
    assert (log.start_offset, log.end_offset) == (0, 1)
    aged = partition_log(tmp_path / "q", TopicPolicy(segment_ms=1, retention_ms=1))
    aged.append(entries(b"a", ts=0.0))
    aged.maintain()  # rolls the old segment, then deletes it: an empty active one remains
    assert (aged.start_offset, aged.end_offset) == (1, 1)
    aged.close()
    again = partition_log(tmp_path / "q")
    assert again.end_offset == 1 and again.append(entries(b"b")) == 1  # offsets never repeat


def test_delete_removes_the_partition_directory(tmp_path: Path, partition_log: Open) -> None:
    log = partition_log(tmp_path / "p")
    log.append(entries(b"a"))
    log.delete()
    assert not (tmp_path / "p").exists()


def test_records_held_are_nothing_the_garbage_collector_walks(
    tmp_path: Path, partition_log: Open
) -> None:
    """The in-memory log and the tail cache hold columns, not record objects: a full
    collection walks every tracked object, so 10^5 held records would stall every reader."""
    disk, memory = partition_log(tmp_path), MemoryPartitionLog()
    batch = [(b"k", b"v" * 50, {"h": "1"}, 1_000.0) for _ in range(1_000)]
    gc.collect()
    before = len(gc.get_objects())
    for _ in range(20):
        disk.append(batch)
        memory.append(batch)
    del batch
    gc.collect()
    assert len(gc.get_objects()) - before < 2_000, "40,000 records held as tracked objects"
    assert [r.offset for r in memory.read(19_998, 5)] == [19_998, 19_999]
    assert [r.value for r in disk.read(19_999, 5)] == [b"v" * 50]
