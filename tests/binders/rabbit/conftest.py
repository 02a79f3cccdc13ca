"""Fixtures of the RabbitMQ binder's own tests: its configuration, names, and what the broker
says about a queue (through a plain aio-pika client or ``rabbitmqctl``, never the binder).

Every destination starts with the test's ``rabbit_prefix`` (``binders.rabbit.testing``), so
every exchange and queue a test made (group, partition, dead-letter and partition-count
queues included) is deleted after it, whatever the test did.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from binder.testing.conformance.support import Conformance, unique_group


@pytest.fixture
def rabbit_config(rabbit_url: str) -> dict[str, Any]:
    """The binder's options as under ``binder.binders.<name>``, ``type`` included."""
    return {"type": "rabbit", "url": rabbit_url}


@pytest.fixture
def rabbit(rabbit_config: dict[str, Any]) -> Conformance:
    """Apps and raw binders on RabbitMQ (their names are deleted by ``rabbit_prefix``)."""
    return Conformance(rabbit_config)


@pytest.fixture
def destination(request: pytest.FixtureRequest, rabbit_prefix: str) -> str:
    """A destination name no other test uses, under the test's prefix."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    return f"{rabbit_prefix}{name.strip('-')[:40]}"


@pytest.fixture
def group() -> str:
    return unique_group()
