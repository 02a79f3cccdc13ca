"""The log binder's part in testing apps: the in-memory binders ``app.test()`` runs on.

Implements the hooks :meth:`binder.spi.BinderSpec.binder_make_test_binder` and
:meth:`~binder.spi.BinderSpec.binder_drop_test_broker`, registered from
:mod:`binders.log`, so the harness (``binder.testing``) reaches the in-memory broker
without importing a backend.
"""

from __future__ import annotations

from typing import Any

from binder.spi import hookimpl
from binders.log.binder import LogBinder
from binders.log.engine import Broker
from binders.log.options import LogOptions

__all__ = ["binder_drop_test_broker", "binder_make_test_binder"]


@hookimpl
def binder_make_test_binder(name: str, entry: Any, broker: str) -> LogBinder:
    """An in-memory log binder on ``broker``; an app's own log binder keeps its settings
    (partition counts, retention), only in memory."""
    if entry.type == "log":
        options = entry.options.model_copy(update={"broker": broker, "path": None})
    else:
        options = LogOptions(broker=broker)
    return LogBinder(name, options)


@hookimpl
def binder_drop_test_broker(broker: str) -> None:
    Broker.forget(broker)
