"""Start-up recovery: torn tails are cut and logged, damage in the middle is reported loudly."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

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
    with caplog.at_level(logging.WARNING, "binders.log"):
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
    with caplog.at_level(logging.WARNING, "binders.log"):
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
    with caplog.at_level(logging.ERROR, "binders.log"):
        again = partition_log(tmp_path / "p")
    assert "offsets 4..7 cannot be read" in caplog.text
    assert again.end_offset == 12  # nothing was cut: the batches after it are intact
    assert [r.value for r in again.read(0, 100)] == expected(4)
    with pytest.raises(CorruptLogError, match=r"offsets 4\.\.7"):
        again.read(4, 100)
    assert [r.value for r in again.read(8, 100)] == expected(12)[8:]
    assert again.append(batch(12, 1)) == 12


def test_a_member_gets_the_records_before_damage_then_the_error(
    tmp_path: Path, durable: Callable[..., Broker]
) -> None:
    broker = durable()
    broker.create_topic("t", 1)
    for i in range(3):
        broker.append("t", 0, batch(4 * i, 4))
    broker.close()
    path = segment_file(tmp_path / "log" / "topics" / "t" / "0")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the second of three batches
    path.write_bytes(bytes(raw))
    path.with_suffix(".index").unlink()  # so that the start-up scan sees it

    async def scenario() -> None:
        member = durable().join("t", "g")
        assert [r.offset for r in await member.poll(100)] == list(range(4))
        with pytest.raises(CorruptLogError):
            await member.poll(100)

    asyncio.run(scenario())


def test_a_missing_segment_is_a_gap_that_reads_refuse(
    tmp_path: Path, partition_log: Open, caplog: pytest.LogCaptureFixture
) -> None:
    log = partition_log(tmp_path / "p", TopicPolicy(segment_bytes=500))
    write(log, [5] * 20)
    log.close()
    segment_file(tmp_path / "p", 1).unlink()
    with caplog.at_level(logging.ERROR, "binders.log"):
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
