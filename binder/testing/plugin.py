"""pytest plugin (entry point ``pytest11``): fixtures for testing streambinder apps.

- ``binder_test``: ``t = binder_test(app)`` runs ``app`` under ``app.test()`` until the
  test ends (blocking client; honours ``BINDER_TEST_BINDER``).
- ``log_broker``: a fresh in-memory broker name, forgotten after the test; put it in a
  ``type: log`` binder's ``broker`` option to let several apps share it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from binder.app import App
    from binder.testing.harness import TestClient


@pytest.fixture
def binder_test() -> Iterator[Callable[[App], TestClient]]:
    """Open ``app.test()`` for one or more apps; all are closed when the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(app.test())


@pytest.fixture
def log_broker() -> Iterator[str]:
    """A unique in-memory broker name, removed after the test."""
    from binders.log.engine import Broker

    name = f"pytest-{uuid.uuid4().hex}"
    yield name
    Broker.forget(name)
