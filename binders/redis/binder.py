"""The ``redis`` binder: Redis Streams behind the binder SPI, its keys, capabilities and type.

Keys, each behind ``key-prefix`` (``P``):

- ``P<d>``: the stream of destination ``d`` with one partition; ``P<d>:<p>`` partition
  ``p`` of a partitioned one (``partition-count`` > 1).
- ``P<d>:partition-count``: the destination's partition count, set by whoever provisions
  it first, so a consumer finds every partition without being told.
- ``{<stream>}:lease:<group>``: which member of ``group`` reads the partition stream
  ``<stream>`` (with an expiry); ``P<d>:members:<group>``: the group's live members. The
  hash tag puts a partition's lease in the slot of its stream on a Redis Cluster.

One connection pool serves the binder: the producer's pipelines, and each consumer's
blocking reads (a blocked read holds one connection).

This module imports no client at load time (``import binders.redis`` loads it, also
without the ``redis`` extra, so ``binder check`` validates Redis options): redis-py and
the modules built on it are imported when a binder is created and started.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from binder.clock import SYSTEM, Clock
from binder.errors import ClosedError, ConfigError
from binder.message import DELIVER_AT
from binder.movers import Movers
from binder.spi import (
    Capabilities,
    ConsumerSpec,
    GroupPosition,
    InboundRecord,
    OutboundRecord,
    ProducerSpec,
    RebalanceListener,
)
from binders.redis.options import RedisOptions
from binders.redis.scheduler import Mover, delayed_key, member_of

if TYPE_CHECKING:
    from binders.redis.consumer import RedisConsumer
    from binders.redis.producer import RedisProducer, SendQueue

__all__ = ["CAPABILITIES", "REDIS_BINDER_TYPE", "Keys", "RedisBinder"]

CAPABILITIES = Capabilities(
    consumer_groups=True,
    native_partitions=True,
    order_per_key=True,
    persistence=True,
    replay_to_new_groups=True,
    redelivery_on_failure=True,
    anonymous_consumers=True,
    offsets=False,
    delayed_delivery=True,
    max_payload_bytes=512 * 1024 * 1024,
)
"""``native_partitions``: a partitioned destination is one stream per partition, each read
by one member of a group at a time. ``persistence``: as the server is configured (RDB,
AOF). ``offsets``: entry ids are not integer offsets (``Message.offset`` is ``None``).
``max_payload_bytes``: Redis's ``proto-max-bulk-len`` default."""


class Keys:
    """The names of the keys the binder makes, behind ``key-prefix``; all ``bytes``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def streams(self, destination: str, partition_count: int) -> list[bytes]:
        """The stream of each partition, in partition order."""
        base = f"{self.prefix}{destination}"
        if partition_count == 1:
            return [base.encode()]
        return [f"{base}:{p}".encode() for p in range(partition_count)]

    def partition_count(self, destination: str) -> bytes:
        return f"{self.prefix}{destination}:partition-count".encode()

    def lease(self, stream: bytes, group: str) -> bytes:
        return b"{" + stream + b"}:lease:" + group.encode()

    def members(self, destination: str, group: str) -> bytes:
        return f"{self.prefix}{destination}:members:{group}".encode()


class RedisBinder:
    """One Redis server (or cluster), as configured by :class:`RedisOptions`."""

    messaging_system = "redis"

    def __init__(self, name: str, options: RedisOptions, capabilities: Capabilities) -> None:
        from binders.redis.errors import masked_url

        self.name = name
        self.options = options
        self.capabilities = capabilities
        self.keys = Keys(options.key_prefix)
        self.server = masked_url(options.url)
        self.consumer_name = options.consumer_name or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        """This binder's consumer name in every group (a second consumer of one stream and
        group in this binder gets ``<name>-2``, ...)."""
        self._client: Any = None
        self._sends: SendQueue | None = None
        self._consumers: set[RedisConsumer] = set()
        self._counts: dict[str, int] = {}
        self.clock: Clock = SYSTEM
        """When delayed records are due (the app sets its own)."""
        self._movers = Movers(lambda destination: Mover(self, destination, self.clock))

    async def start(self) -> None:
        """Connect and ``PING``: BackendError naming the server when it does not answer."""
        if self._client is not None:
            return
        from binders.redis.errors import backend_errors

        client = self._make_client()
        try:
            with backend_errors(self.server, "connect"):
                await client.ping()
        except BaseException:
            await client.aclose()
            raise
        self._client = client

    def _make_client(self) -> Any:
        options = self.options
        settings: dict[str, Any] = {
            "socket_timeout": options.socket_timeout,
            "socket_connect_timeout": options.socket_connect_timeout,
            "max_connections": options.max_connections,
            "health_check_interval": 30,
        }
        try:
            if options.cluster:
                from redis.asyncio.cluster import RedisCluster

                settings.pop("health_check_interval")
                return RedisCluster.from_url(options.url, **settings)
            from redis.asyncio import Redis

            return Redis.from_url(options.url, **settings)
        except ValueError as exc:  # a URL redis-py cannot read
            raise ConfigError(str(exc), path=f"binder.binders.{self.name}.url") from None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise ClosedError(f"redis binder {self.name!r} is not started (or closed)")
        return self._client

    # -- provisioning -----------------------------------------------------------------------

    async def partition_count(self, destination: str) -> int | None:
        """The destination's stored partition count, ``None`` when nobody provisioned it."""
        from binders.redis.errors import backend_errors

        with backend_errors(self.server, f"read the partition count of {destination!r}"):
            stored = await self.client.get(self.keys.partition_count(destination))
        return int(stored) if stored is not None else None

    async def provision(
        self,
        destination: str,
        partition_count: int,
        required_groups: Sequence[str] = (),
        *,
        dead_letters_of: str | None = None,
        options: Any = None,
    ) -> int:
        """Store the destination's partition count (at least ``partition_count``; a
        dead-letter destination gets as many as the one whose letters it receives) and
        create ``required_groups`` on each stream at ``0``; return the count."""
        from binders.redis.errors import backend_errors

        asked = partition_count
        if dead_letters_of is not None:
            asked = max(asked, await self.partition_count(dead_letters_of) or 1)
        count = await self._ensure_count(destination, asked)
        if required_groups:
            streams = self.keys.streams(destination, count)
            with backend_errors(self.server, f"create groups on {destination!r}"):
                for group in required_groups:
                    await create_groups(self.client, streams, group, b"0")
        return count

    async def _ensure_count(self, destination: str, asked: int) -> int:
        from binders.redis.errors import backend_errors

        known = self._counts.get(destination)
        if known is not None and known >= asked:
            return known
        key = self.keys.partition_count(destination)
        client = self.client
        with backend_errors(self.server, f"provision {destination!r}"):
            stored = await client.get(key)
            if stored is None:
                making = max(asked, self.options.default_partition_count)
                if making > 1 and await client.exists(self.keys.streams(destination, 1)[0]):
                    raise ConfigError(
                        f"destination {destination!r} asks for {making} partitions, but its "
                        f"unpartitioned stream {self.keys.streams(destination, 1)[0].decode()!r} "
                        "already exists (its entries would be left behind): delete it, or "
                        "use partition-count 1",
                        path="producer.partition-count",
                        value=making,
                    )
                await client.set(key, making, nx=True)
                stored = await client.get(key)
            count = int(stored)
            if count < asked:
                if count == 1 or not self.options.auto_add_partitions:
                    raise ConfigError(
                        f"destination {destination!r} has {count} partition(s), a binding asks "
                        f"for {asked}"
                        + (
                            ": set auto-add-partitions: true to add streams"
                            if count > 1
                            else " (one stream never becomes several)"
                        ),
                        path=f"binder.binders.{self.name}.auto-add-partitions",
                        value=asked,
                    )
                await client.set(key, asked)
                count = asked
        self._counts[destination] = count
        return count

    async def _count_for_use(self, destination: str) -> int:
        """The partition count of a destination about to be read or written."""
        return await self._ensure_count(destination, 1)

    # -- clients ----------------------------------------------------------------------------

    async def producer(self, spec: ProducerSpec) -> RedisProducer:
        from binders.redis.producer import RedisProducer, SendQueue

        count = await self._ensure_count(spec.destination, spec.partition_count)
        if self._sends is None:
            self._sends = SendQueue(
                self.client,
                self.server,
                self.options.max_length,
                timeout=self.options.socket_timeout,
                cluster=self.options.cluster,
            )
        destination = spec.destination
        streams = self.keys.streams(destination, count)
        self._movers.acquire(destination)
        return RedisProducer(
            self._sends,
            destination,
            streams,
            lambda records, streams: self._schedule(destination, records, streams),
            lambda: self._movers.release(destination),
        )

    async def _schedule(
        self, destination: str, records: Sequence[OutboundRecord], streams: Sequence[bytes]
    ) -> None:
        """``ZADD`` each delayed record to its partition's sorted set, by its due time."""
        from binders.redis.errors import backend_errors
        from binders.redis.producer import PIPELINE_RECORDS

        with backend_errors(self.server, f"schedule on {destination!r}"):
            for start in range(0, len(records), PIPELINE_RECORDS):
                pipe = self.client.pipeline(transaction=False)
                for record in records[start : start + PIPELINE_RECORDS]:
                    due = float(record.headers[DELIVER_AT])
                    pipe.zadd(delayed_key(streams[record.partition]), {member_of(record): due})
                await pipe.execute()
        mover = self._movers.get(destination)
        if isinstance(mover, Mover):
            mover.poke()

    async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> RedisConsumer:
        from binders.redis.consumer import RedisConsumer

        count = await self._count_for_use(spec.destination)
        name = self._consumer_name(spec)
        consumer = RedisConsumer(self, spec, listener, name, count)
        self._consumers = {c for c in self._consumers if not c.closed}
        self._consumers.add(consumer)  # before opening: a consumer opened meanwhile sees its name
        try:
            await consumer.open()
        except BaseException:
            self._consumers.discard(consumer)
            await consumer.close()
            raise
        destination = spec.destination
        self._movers.acquire(destination)
        consumer.on_close = lambda: self._movers.release(destination)
        return consumer

    def _consumer_name(self, spec: ConsumerSpec) -> str:
        """This binder's name, or ``<name>-<n>`` while a consumer of this binder already
        reads the same destination in the same group under it."""
        if spec.group is None:
            return self.consumer_name
        live = {c.name for c in self._consumers if not c.closed and c.reads(spec)}
        name, n = self.consumer_name, 1
        while name in live:
            n += 1
            name = f"{self.consumer_name}-{n}"
        return name

    # -- the operator's tools ---------------------------------------------------------------

    async def _streams_of(self, destination: str) -> list[bytes]:
        return self.keys.streams(destination, await self.partition_count(destination) or 1)

    async def groups(self, destination: str) -> list[str]:
        names: set[str] = set()
        for stream in await self._streams_of(destination):
            names |= await group_names(self.client, stream)
        return sorted(names)

    async def positions(self, destination: str, group: str) -> dict[int, GroupPosition]:
        """Per partition: the group's last delivered id, the first and last entry ids, and
        its pending + unread entries (``XINFO GROUPS``, ``XINFO STREAM``)."""
        from binders.redis.errors import backend_errors

        found: dict[int, GroupPosition] = {}
        with backend_errors(self.server, f"read the positions of {group!r}"):
            for partition, stream in enumerate(await self._streams_of(destination)):
                if not await self.client.exists(stream):
                    found[partition] = GroupPosition(None, None, None, 0)
                    continue
                info = await self.client.xinfo_stream(stream)
                first, last = info.get("first-entry"), info.get("last-generated-id")
                mine = {}
                for entry in await self.client.xinfo_groups(stream):
                    if _text(entry.get("name")) == group:
                        mine = entry
                lag = int(mine.get("pending") or 0) + int(mine.get("lag") or 0) if mine else None
                found[partition] = GroupPosition(
                    _text(mine["last-delivered-id"]) if mine else None,
                    _text(first[0]) if first else None,
                    _text(last) if last else None,
                    lag,
                )
        return found

    async def read(
        self, destination: str, partition: int, since: str | None, limit: int = 500
    ) -> tuple[list[InboundRecord], str | None]:
        """Up to ``limit`` entries of a partition after the entry id ``since`` (``None``: from
        the first kept), with the id to read on from (``XRANGE``); acknowledges nothing."""
        from binders.redis.consumer import entry_record
        from binders.redis.errors import backend_errors

        streams = await self._streams_of(destination)
        if partition >= len(streams):
            return [], since
        low = "-" if since is None else f"({since}"
        with backend_errors(self.server, f"read {destination!r}"):
            entries = await self.client.xrange(streams[partition], min=low, count=limit)
        decoded: dict[bytes, dict[str, str]] = {}
        found = [entry_record(destination, partition, i, f, 1, decoded) for i, f in entries]
        return found, (found[-1].message_id if found else since)

    async def members(self, destination: str, group: str) -> list[str]:
        """The members holding a lease in the group, and the group's consumers that read
        within the last ``lease-ms``."""
        from binders.redis.errors import backend_errors

        now = int(time.time() * 1000)
        live: set[str] = set()
        with backend_errors(self.server, f"list the members of {group!r}"):
            leased = await self.client.zrangebyscore(
                self.keys.members(destination, group), now, "+inf"
            )
            live |= {_text(name) for name in leased}
            for stream in await self._streams_of(destination):
                if group not in await group_names(self.client, stream):
                    continue
                for consumer in await self.client.xinfo_consumers(stream, group):
                    if int(consumer.get("idle") or 0) < self.options.lease_ms:
                        live.add(_text(consumer.get("name")))
        return sorted(live)

    async def reset(
        self, destination: str, group: str, to: Any, *, dry_run: bool = False
    ) -> dict[int, str]:
        """``XGROUP SETID`` on each partition: ``0`` (earliest), ``$`` (latest), an entry id
        (read from the entry after it), or the entry before the first at a time."""
        from binders.redis.errors import backend_errors

        target: dict[int, str] = {}
        with backend_errors(self.server, f"reset {group!r} on {destination!r}"):
            for partition, stream in enumerate(await self._streams_of(destination)):
                if to == "earliest":
                    target[partition] = "0-0"
                elif to == "latest":
                    target[partition] = "$"
                elif isinstance(to, datetime):
                    millis = int(to.timestamp() * 1000)
                    first = await self.client.xrange(stream, min=f"{millis}-0", count=1)
                    target[partition] = _before(_text(first[0][0])) if first else "$"
                else:
                    target[partition] = str(to)
                if not dry_run:
                    await self.client.xgroup_setid(stream, group, target[partition])
        return target

    async def delete(self, destination: str, groups: Sequence[str] = ()) -> None:
        """Remove the destination's streams, partition count, leases and member lists."""
        from binders.redis.errors import backend_errors

        client = self.client
        with backend_errors(self.server, f"delete {destination!r}"):
            count = await self.partition_count(destination) or 1
            streams = self.keys.streams(destination, count)
            if count > 1:
                streams += self.keys.streams(destination, 1)
            named = set(groups)
            for stream in streams:
                named |= await group_names(client, stream)
            keys = [*streams, *map(delayed_key, streams), self.keys.partition_count(destination)]
            for group in sorted(named):
                keys.append(self.keys.members(destination, group))
                keys += [self.keys.lease(stream, group) for stream in streams]
            for key in keys:  # one by one: on a cluster they live in different slots
                await client.unlink(key)
        self._counts.pop(destination, None)

    async def close(self) -> None:
        """Close the consumers, flush the producer, close the connections. Idempotent."""
        consumers, self._consumers = self._consumers, set()
        for consumer in consumers:
            await consumer.close()
        await self._movers.close()
        sends, self._sends = self._sends, None
        if sends is not None:
            await sends.close()
        client, self._client = self._client, None
        self._counts.clear()
        if client is not None:
            await client.aclose()


async def create_groups(client: Any, streams: Sequence[bytes], group: str, start: bytes) -> None:
    """``XGROUP CREATE <stream> <group> <start> MKSTREAM`` on each stream; one that exists is
    left as it is (never moved)."""
    from redis.exceptions import ResponseError

    for stream in streams:
        try:
            await client.xgroup_create(stream, group, start, mkstream=True)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise


async def group_names(client: Any, stream: bytes) -> set[str]:
    """The consumer groups of ``stream`` (none when it does not exist)."""
    from redis.exceptions import ResponseError

    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError:  # no such key
        return set()
    return {_text(g["name"]) for g in groups}


def _before(entry: str) -> str:
    """The entry id just before ``entry`` (the last delivered id that makes it the next)."""
    millis, _, sequence = entry.partition("-")
    if int(sequence or 0) > 0:
        return f"{millis}-{int(sequence) - 1}"
    return f"{int(millis) - 1}-18446744073709551615" if int(millis) > 0 else "0-0"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class _RedisBinderType:
    name: str = "redis"
    capabilities: Capabilities = CAPABILITIES
    options: type[BaseModel] = RedisOptions

    def create(self, name: str, options: BaseModel) -> RedisBinder:
        assert isinstance(options, RedisOptions)
        try:
            import redis.asyncio  # noqa: F401  (the client is made at start)
        except ImportError as exc:
            raise ConfigError(
                f"the redis binder needs redis-py ({exc}): pip install 'streambinder[redis]'",
                path=f"binder.binders.{name}.type",
                value="redis",
            ) from None
        return RedisBinder(name, options, self.capabilities)


REDIS_BINDER_TYPE = _RedisBinderType()
"""Redis Streams through redis-py's asyncio client."""
