"""``binder docs asyncapi|topology``: documents of an app (placeholder until written)."""

from __future__ import annotations

from typing import Any

__all__ = ["add"]


def add(commands: Any) -> None:
    """Nothing yet."""
