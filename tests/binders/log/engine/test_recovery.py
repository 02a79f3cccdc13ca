"""Start-up recovery: torn tails are cut and logged, damage in the middle is reported loudly."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binders.log.engine import Broker
from binders.log.engine.disk import DiskPartitionLog, TopicPolicy
from binders.log.engine.recovery import recover
from binders.log.engine.segment import CorruptLogError
from binders.log.engine.storage import Entry

Open = Callable[..., DiskPartitionLog]


def batch(start: int, count: int) -> list[Entry]:
    now = time.time()
    return [(None, f"v-{i}".encode(), {"i": str(i)}, now) for i in range(start, start + count)]


def write(log: DiskPartitionLog, sizes: list[int]) -> list[int]:
    """Append batches of ``sizes``; the file size after each (the batch boundaries)."""
    bounds, offset = [], 0
    for size in sizes:
        log.append(batch(offset, size))
        offset += size
        bounds.append(log.segments[-1].size)
    return bounds


def values(log: DiskPartitionLog) -> list[bytes]:
    out, offset = [], log.start_offset
    while offset < log.end_offset:
        records = log.read(offset, 100)
        out += [r.value for r in records]
        offset += len(records)
    return out


def expected(count: int) -> list[bytes]:
    return [f"v-{i}".encode() for i in range(count)]


def segment_file(directory: Path, index: int = -1) -> Path:
    return sorted(directory.glob("*.log"))[index]


def test_a_torn_last_batch_is_cut_and_logged(
    tmp_path: Path, partition_log: Open, caplog: pytest.LogCaptureFixture
) -> None:
    log = partition_log(tmp_path / "p")
    bounds = write(log, [3, 3, 3])
    log.close()
    os.truncate(segment_file(tmp_path / "p"), bounds[-1] - 5)  # the last write, half done
    with caplog.at_level(logging.WARNING, "binder.log"):
        again = partition_log(tmp_path / "p")
    assert values(again) == expected(6)
    assert segment_file(tmp_path / "p").stat().st_size == bounds[1]
    assert "torn tail" in caplog.text and f"from byte {bounds[1]}" in caplog.text
    assert "records from offset 6 on" in caplog.text
    assert again.append(batch(6, 1)) == 6


def test_garbage_after_the_last_batch_is_cut(
    tmp_path: Path, partition_log: Open, caplog: pytest.LogCaptureFixture
) -> None:
    log = partition_log(tmp_path / "p")
    write(log, [5])
    with segment_file(tmp_path / "p").open("ab") as file:
        file.write(os.urandom(300))
    with caplog.at_level(logging.WARNING, "binder.log"):
        again = partition_log(tmp_path / "p")  # no close: an unclean stop
    assert values(again) == expected(5)
    assert "300 byte(s)" in caplog.text


def test_an_unclean_stop_rebuilds_the_active_index_from_the_log(
    tmp_path: Path, partition_log: Open
) -> None:
    log = partition_log(tmp_path / "p")
    write(log, [1] * 2_000)  # never closed: the active segment's index exists only in memory
    assert not log.segments[-1].index_path.exists()
    again = partition_log(tmp_path / "p")
    assert again.end_offset == 2_000
    assert list(again.segments[-1].offsets) == list(log.segments[-1].offsets)
    assert again.read(1_500, 1)[0].value == b"v-1500"


def test_a_stale_or_missing_index_is_rebuilt(tmp_path: Path, partition_log: Open) -> None:
    log = partition_log(tmp_path / "p", TopicPolicy(segment_bytes=3_000))
    write(log, [10] * 30)
    log.close()
    indexes = sorted((tmp_path / "p").glob("*.index"))
    indexes[0].unlink()
    indexes[1].write_bytes(b"garbage")
    again = partition_log(tmp_path / "p")
    assert values(again) == expected(300)
    assert indexes[0].exists() and indexes[1].read_bytes() != b"garbage"


def test_a_corrupt_batch_in_the_middle_is_reported_and_never_skipped(
    tmp_path: Path, partition_log: Open, caplog: pytest.LogCaptureFixture
) -> None:
    log = partition_log(tmp_path / "p")
    bounds = write(log, [4, 4, 4])
    log.close()
    with segment_file(tmp_path / "p").open("r+b") as file:
        file.seek(bounds[0] + 40)  # inside the second batch
        file.write(b"\xff\xff")
    with caplog.at_level(logging.ERROR, "binder.log"):
        again = partition_log(tmp_path / "p")
    assert "offsets 4..7 cannot be read" in caplog.text
    assert again.end_offset == 12  # nothing was cut: the batches after it are intact
    assert [r.value for r in again.read(0, 100)] == expected(4)
    with pytest.raises(CorruptLogError, match=r"offsets 4\.\.7"):
        again.read(4, 100)
    assert [r.value for r in again.read(8, 100)] == expected(12)[8:]
    assert again.append(batch(12, 1)) == 12


def _flip_a_byte_in_the_middle(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


async def _poll_until_stopped(member: Any, healthy: int) -> list[tuple[int, int]]:
    """Poll until ``healthy`` records of the healthy partitions came and one partition stopped."""
    got: list[tuple[int, int]] = []
    while sum(p != 1 for p, _ in got) < healthy or not member.damaged:
        got += [(r.partition, r.offset) for r in await member.poll(100)]
    return got


@pytest.mark.parametrize("found_by", ["start-up", "read"])
def test_a_damaged_partition_stops_alone_at_the_damage(
    tmp_path: Path,
    durable: Callable[..., Broker],
    caplog: pytest.LogCaptureFixture,
    found_by: str,
) -> None:
    # "read": several sealed segments with trusted indexes, so only the read meets the damage
    policy = TopicPolicy(segment_bytes=10_000 if found_by == "start-up" else 200)
    broker = durable(policy=policy)
    broker.create_topic("t", 3)
    for i in range(3):
        for p in range(3):
            broker.append("t", p, batch(4 * i, 4))
    broker.close()
    directory = tmp_path / "log" / "topics" / "t" / "1"
    damaged = segment_file(directory, 1 if found_by == "read" else -1)
    _flip_a_byte_in_the_middle(damaged)
    if found_by == "start-up":
        damaged.with_suffix(".index").unlink()  # so that the start-up scan sees it

    async def scenario() -> Any:
        member = durable(policy=policy).join("t", "g")
        got = await asyncio.wait_for(_poll_until_stopped(member, 24), 10)
        healthy = [(p, o) for p in (0, 2) for o in range(12)]
        assert sorted(x for x in got if x[0] != 1) == healthy  # every record of the others
        stopped = [o for p, o in got if p == 1]
        assert stopped and stopped == list(range(len(stopped)))  # from 0 up to the damage
        assert member.position(1) == len(stopped) < 12  # not one offset past it
        assert set(member.damaged) == {1}
        assert isinstance(member.damaged[1], CorruptLogError)
        broker = member._broker
        broker.append("t", 0, batch(12, 1))  # the member goes on with the healthy partitions
        assert [(r.partition, r.offset) for r in await member.poll(100)] == [(0, 12)]
        return member.damaged[1]

    with caplog.at_level(logging.ERROR, "binder.log"):
        error = asyncio.run(scenario())
    assert error.topic == "t" and error.partition == 1
    stops = [r for r in caplog.records if "stopped at offset" in r.getMessage()]
    assert len(stops) == 1  # once per damage, naming topic, partition and offsets
    assert f"t/1 stopped at offset {error.first}" in stops[0].getMessage()
    if found_by == "start-up":
        assert f"offsets {error.first}..{error.end - 1} cannot be read" in stops[0].getMessage()


def test_a_missing_segment_is_a_gap_that_reads_refuse(
    tmp_path: Path, partition_log: Open, caplog: pytest.LogCaptureFixture
) -> None:
    log = partition_log(tmp_path / "p", TopicPolicy(segment_bytes=500))
    write(log, [5] * 20)
    log.close()
    segment_file(tmp_path / "p", 1).unlink()
    with caplog.at_level(logging.ERROR, "binder.log"):
        again = partition_log(tmp_path / "p")
    assert "are missing between" in caplog.text
    gap = again.damage[0]
    with pytest.raises(CorruptLogError):
        again.read(gap.first, 10)
    assert again.read(gap.end, 1)[0].offset == gap.end


def test_recover_without_repair_changes_nothing(tmp_path: Path, partition_log: Open) -> None:
    log = partition_log(tmp_path / "p")
    write(log, [5])
    path = segment_file(tmp_path / "p")
    with path.open("ab") as file:
        file.write(b"junk")
    before = path.read_bytes()
    found = recover(tmp_path / "p", "t/0", repair=False)
    assert found.problems and "torn tail" in found.problems[0]
    assert path.read_bytes() == before


sizes = st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(sizes, st.data(), st.booleans(), st.binary(max_size=200))
def test_recovery_after_any_cut_keeps_exactly_the_whole_batches(
    batches: list[int], data: st.DataObject, closed: bool, garbage: bytes
) -> None:
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        log = DiskPartitionLog(directory, "t", 0, TopicPolicy(), None, lambda: None)
        bounds = write(log, batches)
        if closed:
            log.close()
        cut = data.draw(st.integers(min_value=0, max_value=bounds[-1]))
        path = segment_file(directory)
        os.truncate(path, cut)
        with path.open("ab") as file:
            file.write(garbage)
        again = DiskPartitionLog(directory, "t", 0, TopicPolicy(), None, lambda: None)
        whole = sum(1 for bound in bounds if bound <= cut)
        count = sum(batches[:whole])
        assert values(again) == expected(count)
        assert path.stat().st_size == (bounds[whole - 1] if whole else 0)
        assert again.append(batch(count, 1)) == count
        again.close()
