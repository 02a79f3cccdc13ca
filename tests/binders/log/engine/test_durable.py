"""A broker on a log directory: what a restart brings back, and what the directory refuses."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from binder.errors import BackendError
from binders.log.engine import Broker
from binders.log.engine.disk import TopicPolicy
from binders.log.engine.durable import DurableStorage, StorageSettings

Durable = Callable[..., Broker]


def _entries(*values: bytes) -> list:
    return [(None, value, {"h": "v"}, time.time()) for value in values]


def test_a_restart_knows_the_topics_their_partitions_and_records(durable: Durable) -> None:
    broker = durable()
    broker.create_topic("orders", 3)
    broker.create_topic("odd/name..é", 1)
    broker.append("orders", 2, _entries(b"a", b"b"))
    broker.close()
    again = durable()
    assert again.topic("orders") is not None and again.topic("orders").partition_count == 3
    assert again.topic("odd/name..é") is not None
    assert again.end_offsets("orders") == {0: 0, 1: 0, 2: 2}
    assert [r.value for r in again.read("orders", 2, 0, 10)] == [b"a", b"b"]
    assert again.read("orders", 2, 0, 10)[0].headers == {"h": "v"}


def test_a_group_resumes_after_its_last_commit(durable: Durable) -> None:
    broker = durable()
    broker.append("t", 0, _entries(*[str(i).encode() for i in range(10)]))

    async def first() -> None:
        member = broker.join("t", "g")
        await member.poll(4)
        member.commit(0, 4)

    asyncio.run(first())
    broker.close()

    async def second() -> list[bytes]:
        member = durable().join("t", "g")
        return [r.value for r in await member.poll(100)]

    assert asyncio.run(second()) == [str(i).encode() for i in range(4, 10)]


def test_required_groups_hold_retention_back_across_restarts(durable: Durable) -> None:
    settings = {"policy": TopicPolicy(segment_bytes=200, retention_bytes=400)}
    broker = durable(**settings)
    broker.register_group("t", "billing")
    broker.close()
    again = durable(**settings)
    for i in range(50):
        again.append("t", 0, _entries(str(i).encode()))
    assert again.start_offsets("t") == {0: 0}  # billing has read nothing yet


def test_deleting_a_topic_removes_its_files_and_offsets(durable: Durable, tmp_path: Path) -> None:
    broker = durable()
    broker.append("t", 0, _entries(b"a"))
    broker.register_group("t", "g")
    broker.delete_topic("t")
    assert not list((tmp_path / "log" / "topics").iterdir())
    broker.close()
    again = durable()
    assert again.topic("t") is None and again.committed("g", "t") == {}


def test_per_topic_policies_apply_to_their_topic_only(durable: Durable, tmp_path: Path) -> None:
    broker = durable(topics={"small": TopicPolicy(segment_bytes=100)})
    for topic in ("small", "big"):
        for i in range(20):
            broker.append(topic, 0, _entries(str(i).encode()))
    segments = {
        t: list((tmp_path / "log/topics" / t / "0").glob("*.log")) for t in ("small", "big")
    }
    assert len(segments["small"]) > 5 and len(segments["big"]) == 1


def test_a_second_open_of_the_same_directory_shares_it(durable: Durable, tmp_path: Path) -> None:
    first = durable()
    first.append("t", 0, _entries(b"a"))
    second = durable()
    assert second.read("t", 0, 0, 10)[0].value == b"a"
    second.append("t", 0, _entries(b"b"))
    first.watch()
    assert [r.value for r in first.read("t", 0, 0, 10)] == [b"a", b"b"]


def test_a_directory_of_another_format_is_refused(tmp_path: Path) -> None:
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "format.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(BackendError, match="format 99"):
        DurableStorage(tmp_path / "log", StorageSettings())


def test_housekeeping_applies_retention_by_age_on_a_timer(durable: Durable) -> None:
    broker = durable(policy=TopicPolicy(segment_ms=50, retention_ms=50))
    broker.append("t", 0, _entries(b"old"))
    deadline = time.monotonic() + 5
    while broker.start_offsets("t") != {0: 1} and time.monotonic() < deadline:
        time.sleep(0.02)
    assert broker.start_offsets("t") == {0: 1} and broker.end_offsets("t") == {0: 1}


def test_a_writer_follows_the_rolls_and_retention_of_another(durable: Durable) -> None:
    policy = TopicPolicy(segment_bytes=200, retention_bytes=600)
    first, second = durable(policy=policy), durable(policy=policy)
    for i in range(30):
        (first if i % 2 else second).append("t", 0, _entries(str(i).encode()))
    for broker in (first, second):
        broker.watch()
        start = broker.start_offsets("t")[0]
        assert start > 0 and broker.end_offsets("t") == {0: 30}
        values, offset = [], start
        while offset < 30:
            records = broker.read("t", 0, offset, 100)
            values += [r.value for r in records]
            offset = records[-1].offset + 1
        assert values == [str(i).encode() for i in range(start, 30)]


def test_topics_another_broker_creates_or_grows_are_adopted(durable: Durable) -> None:
    first, second = durable(), durable()
    second.create_topic("t", 3)
    second.append("t", 2, _entries(b"x"))
    first.watch()
    assert first.end_offsets("t") == {0: 0, 1: 0, 2: 1}
    assert first.read("t", 2, 0, 10)[0].value == b"x"
