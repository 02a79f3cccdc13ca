"""The public conformance suite on the ``kafka`` binder, against a real Kafka-protocol broker.

The broker is ``$KAFKA_BOOTSTRAP_SERVERS``, else Tansu started for the session
(``binders.kafka.testing``); an unreachable broker fails these tests, naming it.
"""

from __future__ import annotations

from typing import Any

import pytest

from binder.testing.conformance import *  # noqa: F403
from binders.kafka.testing import FAST_GROUPS


@pytest.fixture
def binder_config(kafka_bootstrap_servers: str) -> dict[str, Any]:
    """Group timings shortened so that joins and rebalances take about a second."""
    return {"type": "kafka", "bootstrap-servers": kafka_bootstrap_servers, **FAST_GROUPS}
