"""Fixtures of the Kafka binder's own tests: its configuration and a cleaning-up helper."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from binder.testing.conformance.support import Conformance, run, unique_group, unique_name
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
    return unique_name(request, "kt")


@pytest.fixture
def group() -> str:
    return unique_group()
