"""Options of the ``log`` binder (the keys under ``binder.binders.<name>`` with ``type: log``)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from binder.spi import BinderOptions

__all__ = ["LogOptions", "TopicOptions"]

MAX_SEGMENT_BYTES = 1 << 31
"""Index positions are 32-bit: a segment stays below 2 GiB."""


class _Retention(BinderOptions):
    @model_validator(mode="after")
    def _hard_above_soft(self) -> Self:
        hard = getattr(self, "retention_hard_bytes", None)
        soft = getattr(self, "retention_bytes", None)
        if hard is not None and soft is not None and hard < soft:
            raise ValueError(
                f"retention-hard-bytes ({hard}) must not be below retention-bytes ({soft})"
            )
        return self


class TopicOptions(_Retention):
    """Per-topic overrides of segment roll and retention (unset keys: the binder's values)."""

    segment_bytes: int | None = Field(None, ge=1, le=MAX_SEGMENT_BYTES)
    segment_ms: int | None = Field(None, ge=1)
    retention_ms: int | None = Field(None, ge=1)
    retention_bytes: int | None = Field(None, ge=1)
    retention_hard_bytes: int | None = Field(None, ge=1)


class LogOptions(_Retention):
    """The embedded log: in memory, shared in-process by ``broker`` name; durable with ``path``."""

    broker: str = "default"
    """Apps in one process naming the same broker share its topics and groups (in memory)."""
    default_partition_count: int = Field(1, ge=1)
    """Partitions of a topic made implicitly (a consumer or ``app.send`` before provisioning)."""
    max_records_per_partition: int | None = Field(None, ge=1)
    """Retention in memory: the oldest records beyond this are dropped (not with ``path``)."""
    path: str | None = Field(None, min_length=1)
    """Durable storage directory; apps in one process with the same path share one broker."""
    fsync: Literal["always", "batch", "never"] = "batch"
    """When appends reach the disk: every send (always), group commit (batch), or left to
    the OS (never). A send always completes only after its bytes were written to the OS."""
    fsync_interval_ms: float = Field(0, ge=0, le=10_000)
    """``fsync: batch``: how long a group commit waits for more sends to share its fsync."""
    segment_bytes: int = Field(64 * 1024 * 1024, ge=1, le=MAX_SEGMENT_BYTES)
    """A partition's active segment file rolls before growing past this size."""
    segment_ms: int | None = Field(7 * 24 * 3600 * 1000, ge=1)
    """...or once its first record is this old (milliseconds), so retention by age can act."""
    retention_ms: int | None = Field(None, ge=1)
    """Delete whole segments whose newest record is older than this (default: keep)."""
    retention_bytes: int | None = Field(None, ge=1)
    """Delete the oldest segments while a partition is larger than this (default: keep)."""
    retention_hard_bytes: int | None = Field(None, ge=1)
    """Like retention-bytes, but also deletes what a required group has not consumed yet."""
    topics: dict[str, TopicOptions] = Field(default_factory=dict)
    """Per-topic segment and retention settings, by topic name."""
