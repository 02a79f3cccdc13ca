"""The ``log`` binder: adapts the embedded engine to the binder SPI."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from binder.asyncapi import option
from binder.clock import SYSTEM, Clock
from binder.errors import BackendError, ClosedError, ConfigError
from binder.movers import Movers
from binder.spi import (
    Capabilities,
    ConsumerSpec,
    GroupPosition,
    InboundRecord,
    ProducerSpec,
    RebalanceListener,
)
from binders.log.consumer import LogConsumer
from binders.log.engine import Broker, memory_logs
from binders.log.engine.disk import TopicPolicy
from binders.log.engine.durable import DurableStorage, StorageSettings
from binders.log.errors import engine_errors
from binders.log.options import LogOptions, TopicOptions
from binders.log.producer import LogProducer
from binders.log.scheduler import Mover, schedule_topic

__all__ = [
    "CAPABILITIES",
    "DURABLE_CAPABILITIES",
    "LOG_BINDER_TYPE",
    "LogBinder",
    "capabilities_for",
    "durable_broker_name",
    "storage_settings",
]

CAPABILITIES = Capabilities(
    consumer_groups=True,
    native_partitions=True,
    order_per_key=True,
    persistence=False,
    replay_to_new_groups=True,
    redelivery_on_failure=True,
    anonymous_consumers=True,
    offsets=True,
    tombstones=True,
    delayed_delivery=True,
)
"""The log in memory (no ``path``): it keeps a tombstone's ``None`` value as it is."""

DURABLE_CAPABILITIES = dataclasses.replace(CAPABILITIES, persistence=True, tombstones=False)
"""The log with a ``path``: the same, and messages survive a restart; no tombstones (the
segment format has no "no value", so the core refuses to send one rather than write it
as empty bytes)."""


def capabilities_for(options: LogOptions) -> Capabilities:
    """What a ``log`` binder configured with ``options`` can do."""
    return CAPABILITIES if options.path is None else DURABLE_CAPABILITIES


def _policy(options: LogOptions | TopicOptions, default: TopicPolicy) -> TopicPolicy:
    """The binder's roll and retention settings, or a topic's overrides of ``default``."""
    names = [f.name for f in dataclasses.fields(TopicPolicy)]
    if isinstance(options, LogOptions):
        return TopicPolicy(**{name: getattr(options, name) for name in names})
    chosen = {name: getattr(options, name) for name in names}
    return dataclasses.replace(default, **{k: v for k, v in chosen.items() if v is not None})


def storage_settings(options: LogOptions) -> StorageSettings:
    """The durable storage's settings from the binder's options."""
    policy = _policy(options, TopicPolicy())
    return StorageSettings(
        fsync=options.fsync,
        fsync_interval_ms=options.fsync_interval_ms,
        policy=policy,
        topics={name: _policy(topic, policy) for name, topic in options.topics.items()},
    )


def durable_broker_name(path: str | Path) -> str:
    """The registry name of the durable broker of ``path`` (see :meth:`Broker.named`)."""
    return f"log:{Path(path).expanduser().resolve()}"


class _DurableBrokers:
    """Durable brokers by resolved path, open while some binder uses them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}

    def acquire(self, root: Path, settings: StorageSettings, key: str) -> Broker:
        name = durable_broker_name(root)
        with self._lock:
            broker = Broker.named(name, lambda: _open_durable(name, root, settings, key))
            storage = broker.storage
            if isinstance(storage, DurableStorage) and storage.settings != settings:
                raise ConfigError(
                    "another binder in this process opened the same path with other settings",
                    path=key,
                    value=str(root),
                )
            self._users[name] = self._users.get(name, 0) + 1
            return broker

    def release(self, broker: Broker) -> None:
        with self._lock:
            left = self._users.get(broker.name, 0) - 1
            if left > 0:
                self._users[broker.name] = left
                return
            self._users.pop(broker.name, None)
        Broker.forget(broker.name)


def _open_durable(name: str, root: Path, settings: StorageSettings, key: str) -> Broker:
    with engine_errors(f"open {root} ({key})"):
        return Broker(name, storage=DurableStorage(root, settings))


_durable = _DurableBrokers()


class LogBinder:
    """Topics and groups in a process-wide :class:`Broker`.

    In memory, the broker is the one named by ``options.broker``. With
    ``options.path`` it is the durable broker of that directory (named after
    its resolved path), opened by the first binder that starts on it and
    closed — cleanly, so the next start needs no recovery — by the last one
    to close.
    """

    messaging_system = "streambinder"

    capabilities = CAPABILITIES

    def __init__(self, name: str, options: LogOptions) -> None:
        self.name = name
        self.options = options
        if options.path is not None:  # a path adds persistence to what the class declares
            self.capabilities = dataclasses.replace(
                type(self).capabilities, persistence=True, tombstones=False
            )
        self._broker: Broker | None = None
        self._durable = False
        self._closed = False
        self._clients: weakref.WeakSet[LogProducer | LogConsumer] = weakref.WeakSet()
        self.clock: Clock = SYSTEM
        """When delayed records are due (the app sets its own)."""
        self._movers = Movers(lambda destination: Mover(self.broker, destination, self.clock))

    @property
    def broker(self) -> Broker:
        """The broker this binder works on; ClosedError once closed (until started again)."""
        if self._closed:
            raise ClosedError(f"log binder {self.name!r} is closed")
        if self.options.path is not None:
            if self._broker is None:
                raise BackendError(f"log binder {self.name!r} is not started")
            return self._broker
        if self._broker is None or self._broker.closed:
            limit = self.options.max_records_per_partition
            self._broker = Broker.named(
                self.options.broker,
                lambda: Broker(self.options.broker, open_log=memory_logs(limit)),
            )
        return self._broker

    async def start(self) -> None:
        options = self.options
        self._closed = False
        if options.path is None:
            _ = self.broker
            return
        if self._durable:
            return
        key = f"binder.binders.{self.name}"
        if options.max_records_per_partition is not None:
            raise ConfigError(
                "applies in memory only; with path use retention-bytes or retention-ms",
                path=f"{key}.max-records-per-partition",
                value=options.max_records_per_partition,
            )
        root = Path(options.path).expanduser().resolve()
        settings = storage_settings(options)
        self._broker = await asyncio.to_thread(_durable.acquire, root, settings, f"{key}.path")
        self._durable = True

    async def provision(
        self,
        destination: str,
        partition_count: int,
        required_groups: Sequence[str] = (),
        *,
        dead_letters_of: str | None = None,
        options: Any = None,
    ) -> int:
        """The topic with at least ``partition_count`` (and ``default-partition-count``)
        partitions; a dead-letter topic is created with as many as the topic it serves, so
        each letter keeps its partition. Returns its partition count."""
        broker = self.broker
        wanted = max(partition_count, self.options.default_partition_count)
        if dead_letters_of is not None and broker.topic(destination) is None:
            source = broker.topic(dead_letters_of)
            wanted = max(wanted, source.partition_count if source is not None else 1)
        with engine_errors(f"provision {destination!r}"):
            topic = broker.create_topic(destination, wanted)
            for group in required_groups:
                broker.register_group(destination, group)
        return topic.partition_count

    async def producer(self, spec: ProducerSpec) -> LogProducer:
        await self.provision(spec.destination, spec.partition_count)
        destination = spec.destination
        producer = LogProducer(self.broker, destination, lambda: self._movers.release(destination))
        self._movers.acquire(destination)
        self._clients.add(producer)
        return producer

    async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> LogConsumer:
        broker = self.broker
        static = (spec.instance_index, spec.instance_count) if spec.instance_count > 1 else None
        with engine_errors(f"subscribe to {spec.destination!r}"):
            broker.create_topic(spec.destination, self.options.default_partition_count)
            member = broker.join(
                spec.destination,
                spec.group,
                start=spec.start,
                static=static,
                on_revoke=listener.on_revoked,
                on_assign=listener.on_assigned,
            )
        destination = spec.destination
        consumer = LogConsumer(member, spec, lambda: self._movers.release(destination))
        self._movers.acquire(destination)
        self._clients.add(consumer)
        return consumer

    # -- the operator's tools ---------------------------------------------------------------

    async def groups(self, destination: str) -> list[str]:
        return [g for g in self.broker.groups(destination) if not g.startswith("__")]

    async def positions(self, destination: str, group: str) -> dict[int, GroupPosition]:
        broker = self.broker
        committed = broker.committed(group, destination)
        starts, ends = broker.start_offsets(destination), broker.end_offsets(destination)
        return {
            p: GroupPosition(
                committed.get(p),
                starts[p],
                end,
                end - committed.get(p, starts[p]),
            )
            for p, end in ends.items()
        }

    async def read(
        self, destination: str, partition: int, since: int | None, limit: int = 500
    ) -> tuple[list[InboundRecord], int | None]:
        """Up to ``limit`` records of a partition from offset ``since`` (``None``: from the
        first kept), with the offset to read on from; commits nothing."""
        broker = self.broker
        first = broker.start_offsets(destination).get(partition, 0)
        offset = first if since is None else max(int(since), first)
        with engine_errors(f"read {destination!r}"):
            found = broker.read(destination, partition, offset, limit)
        last = found[-1].offset if found else None
        return found, (last + 1 if last is not None else offset)

    async def members(self, destination: str, group: str) -> list[str]:
        return self.broker.members(destination, group)

    async def reset(
        self, destination: str, group: str, to: Any, *, dry_run: bool = False
    ) -> dict[int, int]:
        """Move ``group``'s committed offsets (see the SPI's ``reset``)."""
        broker = self.broker
        if to == "earliest":
            target = broker.start_offsets(destination)
        elif to == "latest":
            target = broker.end_offsets(destination)
        elif isinstance(to, datetime):
            target = broker.offsets_at(destination, to.timestamp())
        else:
            target = dict.fromkeys(broker.end_offsets(destination), int(to))
        if not dry_run:
            with engine_errors(f"reset {group!r} on {destination!r}"):
                broker.set_committed(group, destination, target)
        return target

    async def delete(self, destination: str, groups: Sequence[str] = ()) -> None:
        with engine_errors(f"delete {destination!r}"):
            self.broker.delete_topic(destination)
            if self.broker.topic(schedule_topic(destination)) is not None:
                self.broker.delete_topic(schedule_topic(destination))

    async def close(self) -> None:
        """Close the producers and consumers it made, and release the broker. Idempotent."""
        self._closed = True
        clients = list(self._clients)
        self._clients.clear()
        for client in clients:
            await client.close()
        await self._movers.close()
        broker, self._broker = self._broker, None
        if self._durable and broker is not None:
            self._durable = False
            await asyncio.to_thread(_durable.release, broker)


@dataclass(frozen=True)
class _LogBinderType:
    name: str = "log"
    capabilities: Capabilities = CAPABILITIES
    options: type[BaseModel] = LogOptions
    variants: Mapping[str, Capabilities] = field(
        default_factory=lambda: {"path": DURABLE_CAPABILITIES}
    )
    """Capabilities of other configurations, by the option that makes them (README table)."""

    def create(self, name: str, options: BaseModel) -> LogBinder:
        assert isinstance(options, LogOptions)
        return LogBinder(name, options)

    def asyncapi_server(self, options: Any) -> dict[str, Any]:
        """AsyncAPI server of a binder: the embedded log, in memory or in its directory."""
        path = option(options, "path")
        server: dict[str, Any] = {"host": "localhost", "protocol": "streambinder-log"}
        if path is None:
            server["description"] = "The embedded log, in memory (one process)."
        else:
            server["pathname"] = path
            server["description"] = f"The embedded durable log in the directory {path}."
        return server


LOG_BINDER_TYPE = _LogBinderType()
