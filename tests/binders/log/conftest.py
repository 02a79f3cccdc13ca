"""Fixtures for the durable log's tests: a broker on a directory, a lone partition log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from binders.log.engine import Broker
from binders.log.engine.disk import DiskPartitionLog, TopicPolicy
from binders.log.engine.durable import DurableStorage, StorageSettings


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """``durable(path=None, **settings)``: a broker on a log directory (default ``tmp_path/log``).

    Every broker made is closed after the test.
    """
    made: list[Broker] = []

    def make(path: Path | None = None, **settings: Any) -> Broker:
        storage = DurableStorage(path or tmp_path / "log", StorageSettings(**settings))
        made.append(Broker("test", storage=storage))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


@pytest.fixture
def partition_log() -> Callable[..., DiskPartitionLog]:
    """``partition_log(directory, policy=None, floor=None)``: one partition, no broker, no fsync.

    ``floor`` is what retention is told the required groups still need: ``(offset, groups)``.
    """

    def make(
        directory: Path, policy: TopicPolicy | None = None, floor: Any = None
    ) -> DiskPartitionLog:
        directory.mkdir(parents=True, exist_ok=True)
        return DiskPartitionLog(directory, "t", 0, policy or TopicPolicy(), None, lambda: floor)

    return make
