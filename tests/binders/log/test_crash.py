"""Real processes, really killed: nothing acknowledged is lost, nothing committed is redone.

Also several processes on one path: shared appends, a group spread over processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from binder.cli import main
from binder.testing.processes import LineProcess
from binders.log.engine import Broker
from binders.log.engine.durable import DurableStorage, StorageSettings

PROCS = Path(__file__).with_name("procs.py")
TIMEOUT = 30.0


class Proc(LineProcess):
    """A ``procs.py`` process; :attr:`ids` is the ids it printed."""

    def __init__(self, *args: str) -> None:
        super().__init__([sys.executable, str(PROCS), *args], timeout=TIMEOUT)

    @property
    def ids(self) -> list[int]:
        return [int(line) for line in self.lines if line.isdigit()]


def _stored_ids(path: Path) -> list[int]:
    broker = Broker("check", storage=DurableStorage(path, StorageSettings()))
    try:
        ids = []
        for partition, end in broker.end_offsets("orders").items():
            offset = 0
            while offset < end:
                records = broker.read("orders", partition, offset, 1_000)
                ids += [orjson.loads(r.value)["id"] for r in records]
                offset += len(records)
        return ids
    finally:
        broker.close()


@pytest.mark.parametrize("fsync", ["never", "batch"])
def test_a_producer_killed_mid_stream_loses_nothing_it_was_told_was_sent(
    tmp_path: Path, fsync: str
) -> None:
    producer = Proc("produce", str(tmp_path / "log"), fsync)
    producer.wait_lines(2_000)
    assert producer.stop(signal.SIGKILL) == -signal.SIGKILL
    acknowledged = set(producer.ids)
    stored = _stored_ids(tmp_path / "log")
    assert len(stored) == len(set(stored))
    assert acknowledged <= set(stored), sorted(acknowledged - set(stored))[:10]


def test_garbage_on_a_segment_tail_is_cut_at_the_next_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    producer = Proc("produce", str(tmp_path / "log"), "never")
    producer.wait_lines(500)
    producer.stop(signal.SIGKILL)
    tail = sorted((tmp_path / "log" / "topics" / "orders" / "0").glob("*.log"))[-1]
    with tail.open("ab") as file:
        file.write(os.urandom(1_000))
    assert main(["log", "verify", str(tmp_path / "log")]) == 1
    assert set(producer.ids) <= set(_stored_ids(tmp_path / "log"))  # the open cut the garbage
    assert main(["log", "verify", str(tmp_path / "log")]) == 0
    assert "torn tail" in capsys.readouterr().out


def _fill(path: Path, count: int) -> None:
    broker = Broker("fill", storage=DurableStorage(path, StorageSettings()))
    broker.create_topic("orders", 2)
    for i in range(count):
        broker.append("orders", i % 2, [(None, orjson.dumps({"id": i}), {}, time.time())])
    broker.close()


def test_a_consumer_restarted_cleanly_gets_no_message_twice(tmp_path: Path) -> None:
    _fill(tmp_path / "log", 3_000)
    first = Proc("consume", str(tmp_path / "log"))
    first.wait_lines(1_000)
    assert first.stop(signal.SIGTERM) == 0
    second = Proc("consume", str(tmp_path / "log"))
    second.wait_lines(1 + 3_000 - len(first.ids))
    second.stop(signal.SIGTERM)
    handled = first.ids + second.ids
    assert len(handled) == len(set(handled)) == 3_000


def test_a_consumer_killed_mid_stream_loses_nothing(tmp_path: Path) -> None:
    _fill(tmp_path / "log", 3_000)
    first = Proc("consume", str(tmp_path / "log"))
    first.wait_lines(1_000)
    first.stop(signal.SIGKILL)
    second = Proc("consume", str(tmp_path / "log"))
    second.wait_until(lambda: set(first.ids) | set(second.ids) >= set(range(3_000)), "every id")
    second.stop(signal.SIGTERM)
    assert set(first.ids) | set(second.ids) == set(range(3_000))  # at least once


def test_the_killed_producers_directory_reopens_for_an_app(tmp_path: Path) -> None:
    producer = Proc("produce", str(tmp_path / "log"), "batch")
    producer.wait_lines(200)
    producer.stop(signal.SIGKILL)

    async def more() -> None:
        from binder import App

        binder = {"type": "log", "path": str(tmp_path / "log")}
        async with App(config={"binder": {"binders": {"b": binder}}}, environ={}) as app:
            await app.send("orders", {"id": -1})

    asyncio.run(more())
    assert -1 in _stored_ids(tmp_path / "log")


# -- several processes on one path ------------------------------------------------------------


def _eventually(done: Callable[[], bool], what: str) -> None:
    """Wait for ``done`` across several processes' output (each has its own condition)."""
    deadline = time.monotonic() + TIMEOUT
    while not done():
        assert time.monotonic() < deadline, f"waited for {what}"
        time.sleep(0.02)


def _shared_broker(path: Path) -> Broker:
    return Broker("test", storage=DurableStorage(path, StorageSettings(fsync="never")))


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.process.poll() is None:
            proc.stop(signal.SIGKILL)


def test_two_processes_appending_to_one_partition_never_collide(
    tmp_path: Path, procs: list[Proc]
) -> None:
    path = tmp_path / "log"
    _shared_broker(path).close()
    procs += [Proc("append", str(path), tag, "400") for tag in ("a", "b")]
    for proc in procs:
        assert proc.process.wait(TIMEOUT) == 0
    broker = _shared_broker(path)
    try:
        records = broker.read("orders", 0, 0, 10_000)
    finally:
        broker.close()
    assert [r.offset for r in records] == list(range(2_400))
    values = [r.value.decode() for r in records]
    assert len(set(values)) == 2_400
    for i in range(0, 2_400, 3):  # each batch whole and in order
        tag, n, _ = values[i].split(":")
        assert values[i : i + 3] == [f"{tag}:{n}:{j}" for j in range(3)]


def _fill_four(path: Path, ids: range) -> None:
    broker = _shared_broker(path)
    broker.create_topic("orders", 4)
    for i in ids:
        broker.append("orders", i % 4, [(None, orjson.dumps({"id": i}), {}, time.time())])
    broker.close()


def _member(path: Path, procs: list[Proc]) -> Proc:
    procs.append(Proc("member", str(path)))
    return procs[-1]


def _ids(proc: Proc) -> list[int]:
    return [orjson.loads(line)["id"] for line in proc.lines if line.startswith("{")]


def _holds(proc: Proc, partitions: str) -> bool:
    """Whether ``proc``'s last assignment change left it with ``partitions``."""
    held: set[str] = set()
    for line in list(proc.lines):
        if line.startswith("assigned "):
            held |= set(line.split()[1].split(","))
        elif line.startswith("revoked "):
            held -= set(line.split()[1].split(","))
    return held == set(partitions.split(","))


def _settled(path: Path, procs: list[Proc]) -> tuple[Proc, Proc]:
    _fill_four(path, range(0))
    first = _member(path, procs)
    first.wait_until(lambda: _holds(first, "0,1,2,3"), "every partition")
    second = _member(path, procs)
    _eventually(lambda: _holds(first, "0,2") and _holds(second, "1,3"), "a split")
    return first, second


def test_a_group_splits_its_partitions_over_two_processes(
    tmp_path: Path, procs: list[Proc]
) -> None:
    path = tmp_path / "log"
    first, second = _settled(path, procs)
    _fill_four(path, range(2_000))
    _eventually(lambda: len(_ids(first)) + len(_ids(second)) >= 2_000, "every id")
    assert sorted(_ids(first) + _ids(second)) == list(range(2_000))  # exactly once
    assert {i % 4 for i in _ids(first)} == {0, 2} and {i % 4 for i in _ids(second)} == {1, 3}


def test_a_killed_member_s_partitions_go_to_the_survivor(tmp_path: Path, procs: list[Proc]) -> None:
    path = tmp_path / "log"
    first, second = _settled(path, procs)
    _fill_four(path, range(2_000))
    _eventually(lambda: len(_ids(second)) >= 200, "the second member at work")
    second.stop(signal.SIGKILL)
    _fill_four(path, range(2_000, 3_000))
    _eventually(lambda: set(_ids(first)) | set(_ids(second)) >= set(range(3_000)), "every id")
    assert _holds(first, "0,1,2,3")
    handled = _ids(first) + _ids(second)
    assert set(handled) == set(range(3_000))
    assert len(handled) - 3_000 <= 1  # only the one record handled, not committed, comes again


def test_a_member_joining_later_triggers_a_rebalance_without_loss(
    tmp_path: Path, procs: list[Proc]
) -> None:
    path = tmp_path / "log"
    _fill_four(path, range(2_000))
    first = _member(path, procs)
    first.wait_until(lambda: len(_ids(first)) >= 200, "the first member at work")
    second = _member(path, procs)
    _fill_four(path, range(2_000, 4_000))
    _eventually(lambda: _holds(first, "0,2") and _holds(second, "1,3"), "a split")
    _eventually(lambda: set(_ids(first)) | set(_ids(second)) >= set(range(4_000)), "every id")
    handled = _ids(first) + _ids(second)
    assert sorted(handled) == list(range(4_000))  # committed before handing over: no repeats


def test_delayed_messages_of_a_killed_mover_are_delivered_by_another_process(
    tmp_path: Path, procs: list[Proc]
) -> None:
    """A consumer process holds the destination's schedule (the sender has exited) and is
    killed with SIGKILL before anything is due; a consumer started after it takes the
    schedule over and delivers every delayed message, once."""
    path = tmp_path / "log"
    first = Proc("consume", str(path))
    procs.append(first)
    first.wait_until(lambda: "ready" in first.lines, "the first consumer")
    sender = Proc("schedule", str(path), "50", "3")
    procs.append(sender)
    assert sender.process.wait(TIMEOUT) == 0 and "scheduled" in sender.lines
    time.sleep(0.5)  # the consumer's mover holds the schedule alone now
    first.stop(signal.SIGKILL)
    assert first.ids == [], "killed before anything was due"
    second = Proc("consume", str(path))
    procs.append(second)
    second.wait_until(lambda: len(second.ids) >= 50, "every delayed message")
    time.sleep(1.0)  # nothing more comes
    assert sorted(second.ids) == list(range(50))
