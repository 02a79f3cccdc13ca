"""The public conformance suite on the ``rabbit`` binder, against the real RabbitMQ server.

The server is ``$RABBITMQ_URL``, else 127.0.0.1:5672 as guest (``binders.rabbit.testing``);
an unreachable one fails these tests, naming it. Each test's destinations and groups have
names of their own, behind a ``prefix`` of the test's own (so the prefix is exercised by every
scenario), and are deleted afterwards (``Binder.delete``).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from binder.testing.conformance import *  # noqa: F403

SENDS_BEFORE_ANY_QUEUE = {"test_anonymous_consumers_get_only_what_was_sent_while_subscribed"}
"""Scenarios that send while no queue is bound, which fails a send by design on RabbitMQ
(``unroutable: fail``, the default): they run with ``unroutable: drop``."""


@pytest.fixture
def binder_config(rabbit_url: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    config = {"type": "rabbit", "url": rabbit_url, "prefix": f"p{uuid.uuid4().hex[:6]}."}
    if request.node.originalname in SENDS_BEFORE_ANY_QUEUE:
        config["unroutable"] = "drop"
    return config
