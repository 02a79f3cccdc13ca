"""The operator's commands of ``binder``: one module per command group, each adding its
parsers with ``add(commands)`` (an ``argparse`` sub-parsers object); their handlers return
the exit code (0 done, 1 found a problem or failed, 2 bad usage)."""

from __future__ import annotations

from typing import Any

__all__ = ["add"]


def add(commands: Any) -> None:
    """Add every operator command group to ``commands``."""
    from binder.commands import dlq, docs, groups, messages

    messages.add(commands)
    groups.add(commands)
    dlq.add(commands)
    docs.add(commands)
