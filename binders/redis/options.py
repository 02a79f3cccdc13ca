"""Options of the ``redis`` binder (the keys under ``binder.binders.<name>`` with ``type: redis``).

Pydantic only: redis-py is not imported here, so configuration can be validated
(``binder check``) without the ``redis`` extra installed.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from binder.config import Duration as CoreDuration
from binder.spi import BinderOptions

__all__ = ["DEFAULT_URL", "Duration", "RedisOptions"]

DEFAULT_URL = "redis://localhost:6379/0"

Duration = Annotated[CoreDuration, Field(gt=0)]
"""Seconds, written as ``500ms``, ``30s``, ``2m``, ``1h`` or a number of seconds (the core's
duration syntax, as for the back-off intervals)."""


def _url_default() -> str:
    return os.environ.get("REDIS_URL") or DEFAULT_URL


class RedisOptions(BinderOptions):
    """One Redis server (or cluster): connection, keys, claiming, leases and trimming."""

    # -- connection -------------------------------------------------------------------------
    url: str = Field(default_factory=_url_default)
    """``redis://[user:password@]host:port/db`` (``rediss://`` for TLS); default
    ``$REDIS_URL``, else ``redis://localhost:6379/0``. The password is never logged."""
    cluster: bool = False
    """``url`` names a node of a Redis Cluster (redis-py's ``RedisCluster``)."""
    socket_timeout: Duration = 10.0
    """Longest wait for a reply; a blocking read waits ``block-ms`` less than this."""
    socket_connect_timeout: Duration = 5.0
    max_connections: int = Field(64, ge=2)
    """Connections the binder's pool may open (each blocked read holds one)."""

    # -- keys and partitions ----------------------------------------------------------------
    key_prefix: str = ""
    """Put in front of every key the binder makes (streams, partition counts, leases)."""
    default_partition_count: int = Field(1, ge=1)
    """Partitions of a destination made without a count (a consumer or ``app.send`` first)."""
    auto_add_partitions: bool = False
    """Let a binding asking for more partitions than a destination has add streams (keys then
    move to other partitions, as when Kafka grows a topic); off, that is a start-up error.
    One stream never becomes several: its entries would be left behind."""

    # -- consuming --------------------------------------------------------------------------
    consumer_name: str | None = Field(None, min_length=1)
    """This process's consumer name in every group (default: host, pid and a random part,
    unique per process). Set a stable one (``worker-1``) so that a restarted process first
    re-reads the entries it left pending, without waiting for ``min-idle``."""
    block_ms: int = Field(1000, ge=1)
    """Longest one blocking ``XREADGROUP``/``XREAD`` waits (it loops; below ``socket-timeout``)."""
    min_idle: Duration = 30.0
    """How long an entry stays pending with another member before a live one claims it."""
    claim_interval: Duration = 5.0
    """How often each member looks for entries to claim (and for idle consumers to remove)."""
    lease_ms: int = Field(10_000, ge=100)
    """A partition stream of a group is read by the member holding its lease; a member that
    dies loses its partitions this long after its last renewal (renewed every third)."""

    # -- trimming ---------------------------------------------------------------------------
    max_length: int | None = Field(None, ge=1)
    """Trim each stream to about this many entries on every send (``XADD MAXLEN ~``): the
    oldest go, read or not, acknowledged or not."""
    trim: Literal["none", "safe"] = "none"
    """``safe``: every ``claim-interval``, drop a stream's entries below the oldest one that
    some group of it has not read or not acknowledged (``XTRIM MINID``); an entry no group
    needs goes, a group created later does not see it. ``none`` keeps everything."""

    @model_validator(mode="after")
    def _check_timing(self) -> Self:
        if self.block_ms / 1000 >= self.socket_timeout:
            raise ValueError(
                f"block-ms ({self.block_ms}) must be below socket-timeout "
                f"({self.socket_timeout:g}s): a blocked read would time out"
            )
        return self
