"""The public conformance suite on the ``redis`` binder, against the real Redis server.

The server is ``$REDIS_URL``, else 127.0.0.1:6379 (``binders.redis.testing``); an
unreachable one fails these tests, naming it. Each test has a key prefix of its own, and
every key under it is deleted afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest

from binder.testing.conformance import *  # noqa: F403
from binders.redis.testing import FAST_CLAIMS


@pytest.fixture
def binder_config(redis_url: str, key_prefix: str) -> dict[str, Any]:
    """Claims and lease hand-overs shortened to about a second."""
    return {"type": "redis", "url": redis_url, "key-prefix": key_prefix, **FAST_CLAIMS}
