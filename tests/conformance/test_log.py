"""The public conformance suite on the embedded ``log`` binder, in memory."""

from __future__ import annotations

import pytest

from binder.testing.conformance import *  # noqa: F403


@pytest.fixture
def binder_config(log_broker: str) -> dict[str, str]:
    """A private in-memory broker per test (``log_broker`` forgets it afterwards)."""
    return {"type": "log", "broker": log_broker}
