"""Options of the ``log`` binder (the keys under ``binder.binders.<name>`` with ``type: log``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_snake

__all__ = ["LogOptions"]


def _kebab(name: str) -> str:
    return to_snake(name).replace("_", "-")


class LogOptions(BaseModel):
    """The embedded log: in memory, shared in-process by ``broker`` name."""

    model_config = ConfigDict(extra="forbid", alias_generator=_kebab, populate_by_name=True)

    broker: str = "default"
    """Apps in one process naming the same broker share its topics and groups."""
    default_partition_count: int = Field(1, ge=1)
    """Partitions of a topic made implicitly (a consumer or ``app.send`` before provisioning)."""
    max_records_per_partition: int | None = Field(None, ge=1)
    """Retention in memory: the oldest records beyond this are dropped."""
    path: str | None = None
    """Durable storage directory (the durable engine; not available in this release)."""
    fsync: Literal["always", "batch", "never"] = "batch"
    """When appends reach the disk (durable mode only)."""
