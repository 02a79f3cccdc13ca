"""Fixtures of the Kafka binder's own tests: its configuration and a cleaning-up helper."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from binder.testing.conformance.support import Conformance, run
from binders.kafka.testing import FAST_GROUPS


@pytest.fixture
def kafka_config(kafka_bootstrap_servers: str) -> dict[str, Any]:
    """The binder's options as under ``binder.binders.<name>``, ``type`` included."""
    return {"type": "kafka", "bootstrap-servers": kafka_bootstrap_servers, **FAST_GROUPS}


@pytest.fixture
def kafka(kafka_config: dict[str, Any]) -> Iterator[Conformance]:
    """Apps and raw binders on Kafka; every topic a test declared is deleted afterwards."""
    suite = Conformance(kafka_config)
    yield suite
    run(suite.cleanup())


@pytest.fixture
def topic(request: pytest.FixtureRequest) -> str:
    """A topic name no other test uses."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    return f"kt-{name.strip('-')[:40]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def group() -> str:
    return f"g{uuid.uuid4().hex[:10]}"
