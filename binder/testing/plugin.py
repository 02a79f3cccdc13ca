"""pytest plugin (entry point ``pytest11``): fixtures for testing streambinder apps.

- ``binder_test``: ``t = binder_test(app)`` runs ``app`` under ``app.test()`` until the
  test ends (blocking client; honours ``BINDER_TEST_BINDER``); keyword arguments go to
  ``app.test``.
- ``log_broker``: a fresh in-memory broker name, forgotten after the test:
  ``binder_test(app, broker=log_broker)`` for several apps sharing groups.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from binder.testing.harness import TestClient


@pytest.fixture
def binder_test() -> Iterator[Callable[..., TestClient]]:
    """Open ``app.test(**kwargs)`` for one or more apps; all are closed when the test ends."""
    with contextlib.ExitStack() as stack:
        yield lambda app, **kwargs: stack.enter_context(app.test(**kwargs))


@pytest.fixture
def log_broker() -> Iterator[str]:
    """A unique in-memory broker name, removed after the test (through the plugin hook
    ``binder_drop_test_broker``)."""
    from binder import plugins

    name = f"pytest-{uuid.uuid4().hex}"
    yield name
    plugins.drop_test_broker(name)
