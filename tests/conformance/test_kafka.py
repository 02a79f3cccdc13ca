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


_PHANTOM = pytest.mark.xfail(
    reason="Tansu 0.6 keeps a member without client id or host (DescribeGroups shows '@') in a "
    "group after its last consumer left, so the group never reads as empty and a commit from "
    "outside it is refused (UnknownMemberId); Kafka removes a member that sent LeaveGroup",
    strict=True,
)
test_positions_and_members_of_a_group = _PHANTOM(test_positions_and_members_of_a_group)  # noqa: F405
test_a_group_reset_to_earliest_reads_everything_again = _PHANTOM(
    test_a_group_reset_to_earliest_reads_everything_again  # noqa: F405
)
