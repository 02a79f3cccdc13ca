"""The public conformance suite on the ``redis`` binder against a Redis Cluster.

Three masters on loopback (``redis_cluster_url``: one cluster for the session, or
``$REDIS_CLUSTER_URL``), with the binder option ``cluster: true``, so the partition streams
of one destination live in different slots and on different nodes. Each test has a key
prefix of its own (``cluster_key_prefix``), every key under it deleted afterwards on every
master.
"""

from __future__ import annotations

from typing import Any

import pytest

from binder.testing.conformance import *  # noqa: F403
from binders.redis.testing import FAST_CLAIMS


@pytest.fixture
def binder_config(redis_cluster_url: str, cluster_key_prefix: str) -> dict[str, Any]:
    """Claims and lease hand-overs shortened to about a second."""
    return {
        "type": "redis",
        "url": redis_cluster_url,
        "cluster": True,
        "key-prefix": cluster_key_prefix,
        **FAST_CLAIMS,
    }
