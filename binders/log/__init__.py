"""The embedded log binder: topics, partitions, offsets and consumer groups in process.

In memory, or durable with a ``path``: segment files with checksummed batches and
sparse indexes, group commit, crash recovery and retention (:mod:`binders.log.durable`).
Registered through the ``binder`` entry-point group like any third-party binder.
"""

from __future__ import annotations

from collections.abc import Sequence

from binder.spi import BinderType, hookimpl
from binders.log.binder import LOG_BINDER_TYPE, LogBinder
from binders.log.options import LogOptions

__all__ = ["LOG_BINDER_TYPE", "LogBinder", "LogOptions", "binder_add_binder_types"]


@hookimpl
def binder_add_binder_types() -> Sequence[BinderType]:
    return [LOG_BINDER_TYPE]
