"""Fixtures of the Redis binder's own tests: its configuration, a cleaning-up helper, names,
and a plain redis-py client (the second program of the interop tests).

Every test has a key prefix of its own (``key_prefix``): every key under it is deleted
afterwards, whatever the test made (streams, leases, the lists the member processes fill).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from binder.testing.conformance.support import Conformance, run, unique_group, unique_name
from binders.redis.testing import FAST_CLAIMS


@pytest.fixture
def redis_config(redis_url: str, key_prefix: str) -> dict[str, Any]:
    """The binder's options as under ``binder.binders.<name>``, ``type`` included."""
    return {"type": "redis", "url": redis_url, "key-prefix": key_prefix, **FAST_CLAIMS}


@pytest.fixture
def redis(redis_config: dict[str, Any]) -> Iterator[Conformance]:
    """Apps and raw binders on Redis; every destination a test declared is deleted after."""
    suite = Conformance(redis_config)
    yield suite
    run(suite.cleanup())


@pytest.fixture
def stream(request: pytest.FixtureRequest) -> str:
    """A destination name no other test uses (its stream is ``<key_prefix><stream>``)."""
    return unique_name(request, "rs")


@pytest.fixture
def group() -> str:
    return unique_group()


@pytest.fixture
def plain(redis_url: str) -> Iterator[Redis]:
    """A plain synchronous redis-py client on the server under test (replies as bytes)."""
    with Redis.from_url(redis_url) as client:
        yield client
