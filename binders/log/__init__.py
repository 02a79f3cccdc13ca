"""The embedded log binder: topics, partitions, offsets and consumer groups in process.

In memory, or durable with a ``path``: segment files with checksummed batches and
sparse indexes, group commit, crash recovery and retention (:mod:`binders.log.engine.durable`).
Registered through the ``binder`` entry-point group like any third-party binder; the
in-memory binders of ``app.test()`` come from :mod:`binders.log.testing`, whose hooks
this module re-exports (so the entry point registers them too).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from binder.spi import BinderType, hookimpl
from binders.log.binder import LOG_BINDER_TYPE, LogBinder
from binders.log.options import LogOptions
from binders.log.testing import binder_drop_test_broker, binder_make_test_binder

__all__ = [
    "LOG_BINDER_TYPE",
    "LogBinder",
    "LogOptions",
    "binder_add_binder_types",
    "binder_add_commands",
    "binder_drop_test_broker",
    "binder_make_test_binder",
]


@hookimpl
def binder_add_binder_types() -> Sequence[BinderType]:
    return [LOG_BINDER_TYPE]


@hookimpl
def binder_add_commands(commands: Any) -> None:
    """``binder log inspect|verify PATH``, ``binder log repair PATH [--skip-damaged]``."""
    log_tool = commands.add_parser("log", help="inspect, verify or repair a durable log directory")
    log_tool.add_argument("action", choices=["inspect", "verify", "repair"])
    log_tool.add_argument("path", help="the log binder's path")
    log_tool.add_argument(
        "--skip-damaged",
        action="store_true",
        help="repair: give up the offsets that cannot be read (without it, a dry run)",
    )
    log_tool.set_defaults(handler=_log_tool)


def _log_tool(args: argparse.Namespace) -> int:
    from binders.log.engine import tools  # only for this command

    return int(tools.main(args.action, args.path, args.skip_damaged))
