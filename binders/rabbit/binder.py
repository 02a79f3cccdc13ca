"""The ``rabbit`` binder: RabbitMQ behind the binder SPI, its topology, capabilities and type.

Topology, for destination ``d`` with ``N`` partitions (every name behind the binder's
``prefix``, empty by default):

- ``d``: a durable topic exchange. A message for partition ``p`` is published with the
  routing key ``d-p`` when ``N`` > 1, else ``d``.
- group ``g``: the durable queue ``d.g`` bound with ``#`` (every message), or, when ``N`` > 1,
  the queues ``d.g-0`` … ``d.g-<N-1>``, ``d.g-p`` bound with ``d-p`` and declared with single
  active consumer (``x-single-active-consumer``): the broker delivers a partition queue to one
  consumer at a time, and to the next when that one goes.
- anonymous: an exclusive, auto-deleted queue ``d.anonymous.<random>`` bound with ``#``.
- a dead-letter destination ``d.g.dlq`` also gets the durable queue ``d.g.dlq`` (its own
  name) bound with ``#``, so no letter is lost before anyone consumes it; a group consuming a
  destination that has a queue of its own name reads that queue (every group shares it).
- ``d.delay.<k>`` (k = 0..32, declared on first use): the delay ladder, a headers exchange
  and a queue whose messages live 2^k ms each (:mod:`binders.rabbit.delays`).
- ``d:partition-count``: a queue holding one message, the partition count, written by whoever
  provisions a partitioned destination first, so a consumer finds every partition without
  being told (read with ``basic.get`` and put back at once).

One connection serves the binder: a channel with publisher confirms for sending, one for
declarations, and a channel per consumer. A lost connection is re-opened by the next call
that needs it; consumers fail (their binding shows it) and the core opens new ones.

This module imports no client at load time (``import binders.rabbit`` loads it, also without
the ``rabbit`` extra, so ``binder check`` validates RabbitMQ options): aio-pika and the
modules built on it are imported when a binder is created and started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from binder.asyncapi import option, url_server
from binder.clock import SYSTEM, Clock
from binder.errors import ClosedError, ConfigError
from binder.spi import (
    Capabilities,
    ConsumerSpec,
    GroupPosition,
    ProducerSpec,
    RebalanceListener,
)
from binders.rabbit.delays import Ladder
from binders.rabbit.options import QueueOptions, RabbitOptions

if TYPE_CHECKING:
    from binders.rabbit.consumer import RabbitConsumer
    from binders.rabbit.producer import Publisher, RabbitProducer

__all__ = ["CAPABILITIES", "RABBIT_BINDER_TYPE", "Names", "RabbitBinder", "queue_arguments"]

log = logging.getLogger("binder.rabbit.binder")

CAPABILITIES = Capabilities(
    consumer_groups=True,
    native_partitions=False,
    order_per_key=True,
    persistence=True,
    replay_to_new_groups=False,
    redelivery_on_failure=True,
    anonymous_consumers=True,
    offsets=False,
    delayed_delivery=True,
    max_payload_bytes=128 * 1024 * 1024,
)
"""``native_partitions``: partitions are queues the binder makes, each consumed by one member
at a time (fail-over, not load spreading). ``replay_to_new_groups``: a group's queue holds what
was sent after it was declared (``required-groups`` declares it up front). ``offsets``: AMQP
has none. ``max_payload_bytes``: RabbitMQ's default ``max_message_size`` (128 MiB).
``delayed_delivery``: a ladder of TTL queues (:mod:`binders.rabbit.delays`)."""

GET_ATTEMPTS = 40
"""``basic.get`` tries on the partition-count queue while another process holds its message."""


def _alive(connection: Any) -> bool:
    """Whether ``connection`` is open: aio-pika's plain connection, closed by the broker, only
    clears its ``connected`` event (``is_closed`` stays false)."""
    return connection is not None and not connection.is_closed and connection.connected.is_set()


class Names:
    """The names of the exchanges and queues the binder declares."""

    @staticmethod
    def routing_key(destination: str, partition: int, partition_count: int) -> str:
        return f"{destination}-{partition}" if partition_count > 1 else destination

    @staticmethod
    def group_queues(destination: str, group: str, partition_count: int) -> list[str]:
        """The queue of each partition of ``group``, in partition order."""
        if partition_count == 1:
            return [f"{destination}.{group}"]
        return [f"{destination}.{group}-{p}" for p in range(partition_count)]

    @staticmethod
    def anonymous_queue(destination: str) -> str:
        return f"{destination}.anonymous.{uuid.uuid4().hex[:12]}"

    @staticmethod
    def partition_count(destination: str) -> str:
        return f"{destination}:partition-count"


def queue_arguments(options: QueueOptions, *, single_active: bool) -> dict[str, Any]:
    """The ``x-`` arguments of a group queue declared with ``options``."""
    arguments: dict[str, Any] = {}
    if options.queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    if options.message_ttl is not None:
        arguments["x-message-ttl"] = int(options.message_ttl * 1000)
    if options.max_length is not None:
        arguments["x-max-length"] = options.max_length
    if single_active:
        arguments["x-single-active-consumer"] = True
    return arguments


def merged(base: QueueOptions, override: Any) -> QueueOptions:
    """``base`` with the values ``override`` (a binding's :class:`QueueOptions`, or ``None``)
    sets."""
    if not isinstance(override, QueueOptions):
        return base
    values = override.model_dump(exclude_none=True, include=set(QueueOptions.model_fields))
    return QueueOptions.model_validate(
        {**base.model_dump(include=set(QueueOptions.model_fields)), **values}
    )


class RabbitBinder:
    """One RabbitMQ server (one virtual host), as configured by :class:`RabbitOptions`."""

    messaging_system = "rabbitmq"

    def __init__(self, name: str, options: RabbitOptions, capabilities: Capabilities) -> None:
        from binders.rabbit.errors import masked_url

        self.name = name
        self.options = options
        self.capabilities = capabilities
        self.server = masked_url(options.url)
        self._connection: Any = None
        self._connecting = asyncio.Lock()
        self._topology: Any = None  # the aio-pika channel for declarations
        self._topology_lock = asyncio.Lock()
        self._publisher: Publisher | None = None
        self._consumers: set[RabbitConsumer] = set()
        self._counts: dict[str, int] = {}
        self._started = False
        self.clock: Clock = SYSTEM
        """The time delays are counted from (the app sets its own)."""
        self.ladder = Ladder(self)
        """The delay levels of this binder's destinations (see :mod:`binders.rabbit.delays`)."""

    # -- connection and channels ------------------------------------------------------------

    async def start(self) -> None:
        """Connect: BackendError naming the server when it does not answer."""
        if self._started:
            return
        await self.connection()
        self._started = True

    async def connection(self) -> Any:
        """The open connection, connecting (again) when there is none or it was lost."""
        if _alive(self._connection):
            return self._connection
        async with self._connecting:
            if _alive(self._connection):
                return self._connection
            import aio_pika

            lost, self._connection = self._connection, None
            if lost is not None:  # closed by the broker or the network: let its tasks go
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(lost.close(), self.options.connect_timeout)

            from binders.rabbit.errors import backend_errors

            timeout = self.options.connect_timeout
            with backend_errors(self.server, "connect"):
                try:
                    connection = await aio_pika.connect(
                        self.options.url,
                        timeout=timeout,
                        heartbeat=self.options.heartbeat,
                        client_properties={"connection_name": f"streambinder {self.name}"},
                    )
                except ValueError as exc:  # a URL aio-pika cannot read
                    raise ConfigError(
                        f"cannot read the url: {exc}", path=f"binder.binders.{self.name}.url"
                    ) from None
            if lost is not None:
                log.warning("rabbitmq at %s: reconnected", self.server)
            self._connection = connection
            self._topology = None
            return connection

    def exchange_of(self, destination: str) -> str:
        """The exchange of ``destination``: its name behind the binder's ``prefix``; every
        queue of it is named after the exchange."""
        return self.options.prefix + destination

    def _check_open(self) -> None:
        if not self._started:
            raise ClosedError(f"rabbit binder {self.name!r} is not started (or closed)")

    async def channel(self, *, confirms: bool = False) -> Any:
        """A new aio-pika channel on the connection (with publisher confirms and returned
        messages raised when ``confirms``)."""
        from binders.rabbit.errors import backend_error, backend_errors

        connection = await self.connection()
        with backend_errors(self.server, "open a channel"):
            channel = connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
            try:
                async with asyncio.timeout(self.options.connect_timeout):
                    await channel.initialize()
            except RuntimeError as exc:  # the connection closed meanwhile ("... closed")
                raise backend_error(self.server, "open a channel", exc) from exc
        return channel

    async def _declarer(self) -> Any:
        """The aiormq channel for declarations (re-opened after the broker closed it)."""
        channel = self._topology
        if channel is None or channel.is_closed:
            channel = self._topology = await self.channel(confirms=True)
        return await channel.get_underlay_channel()

    async def declare(self, action: str, call: Any) -> Any:
        """``await call(channel)`` on the declaration channel, one at a time, under the
        connect timeout; a client error becomes a BackendError naming ``action``."""
        from binders.rabbit.errors import backend_errors

        self._check_open()
        async with self._topology_lock:
            with backend_errors(self.server, action):
                channel = await self._declarer()
                async with asyncio.timeout(self.options.connect_timeout):
                    return await call(channel)

    async def publisher(self) -> Publisher:
        from binders.rabbit.producer import Publisher

        if self._publisher is None:
            self._publisher = Publisher(self)
        return self._publisher

    # -- topology ---------------------------------------------------------------------------

    async def declare_exchange(self, destination: str) -> None:
        await self.declare(
            f"declare the exchange {destination!r}",
            lambda ch: ch.exchange_declare(destination, exchange_type="topic", durable=True),
        )

    async def declare_queue(
        self, queue: str, destination: str, routing_key: str, arguments: dict[str, Any]
    ) -> None:
        """A durable queue bound to ``destination`` with ``routing_key``. One that exists with
        other arguments is used as it is, with a warning (RabbitMQ cannot change them), except
        that a partition queue must have single active consumer."""
        from aiormq.exceptions import ChannelPreconditionFailed

        try:
            await self.declare(
                f"declare the queue {queue!r}",
                lambda ch: ch.queue_declare(queue, durable=True, arguments=arguments),
            )
        except Exception as exc:
            cause = exc.__cause__
            if not isinstance(cause, ChannelPreconditionFailed):
                raise
            if arguments.get("x-single-active-consumer") and "single-active" in str(cause):
                raise ConfigError(
                    f"queue {queue!r} exists without single active consumer, which a partition "
                    "queue needs for per-key order: delete it (it is re-declared)",
                    path=f"binder.binders.{self.name}",
                ) from None
            log.warning(
                "rabbitmq: queue %r exists with other arguments, used as it is: %s", queue, cause
            )
            await self.declare(
                f"declare the queue {queue!r}",
                lambda ch: ch.queue_declare(queue, passive=True),
            )
        await self.declare(
            f"bind the queue {queue!r}",
            lambda ch: ch.queue_bind(queue, destination, routing_key=routing_key),
        )

    async def queue_exists(self, queue: str) -> bool:
        from aiormq.exceptions import ChannelNotFoundEntity

        try:
            await self.declare(
                f"look up the queue {queue!r}", lambda ch: ch.queue_declare(queue, passive=True)
            )
        except Exception as exc:
            if isinstance(exc.__cause__, ChannelNotFoundEntity):
                return False
            raise
        return True

    async def declare_group(
        self, destination: str, group: str, count: int, options: QueueOptions
    ) -> list[str]:
        """The exchange and the queues of ``group`` (see the module docstring); returns them."""
        await self.declare_exchange(destination)
        queues = Names.group_queues(destination, group, count)
        arguments = queue_arguments(options, single_active=count > 1)
        for p, queue in enumerate(queues):
            key = Names.routing_key(destination, p, count) if count > 1 else "#"
            await self.declare_queue(queue, destination, key, arguments)
        return queues

    async def declare_letters_queue(self, destination: str, options: QueueOptions) -> None:
        """The durable queue of a dead-letter destination's own name, bound with ``#``: of
        the queue settings only ``queue-type`` applies (letters never expire, nor are they
        dropped for length)."""
        arguments = queue_arguments(
            QueueOptions(queue_type=options.queue_type), single_active=False
        )
        await self.declare_queue(destination, destination, "#", arguments)

    # -- partition counts -------------------------------------------------------------------

    async def stored_count(self, destination: str) -> int | None:
        """The destination's stored partition count, ``None`` when none was stored."""
        queue = Names.partition_count(destination)
        if not await self.queue_exists(queue):
            return None
        for _ in range(GET_ATTEMPTS):
            message = await self.declare(
                f"read {queue!r}", lambda ch: ch.basic_get(queue, no_ack=False)
            )
            tag = getattr(message.delivery, "delivery_tag", None)
            if tag is not None:
                await self.declare(
                    f"put back {queue!r}", lambda ch, t=tag: ch.basic_reject(t, requeue=True)
                )
                try:
                    return int(message.body)
                except ValueError:
                    log.warning("rabbitmq: %r holds %r, not a partition count", queue, message.body)
                    return None
            await asyncio.sleep(0.05)  # another process holds it for a moment
        return None

    async def _store_count(self, destination: str, count: int) -> None:
        from pamqp.commands import Basic

        queue = Names.partition_count(destination)
        arguments = {"x-max-length": 1, "x-overflow": "drop-head"}
        await self.declare(
            f"declare {queue!r}",
            lambda ch: ch.queue_declare(queue, durable=True, arguments=arguments),
        )
        properties = Basic.Properties(delivery_mode=2, content_type="text/plain")
        await self.declare(
            f"store the partition count of {destination!r}",
            lambda ch: ch.basic_publish(
                str(count).encode(), exchange="", routing_key=queue, properties=properties
            ),
        )

    async def _ensure_count(self, destination: str, asked: int) -> int:
        known = self._counts.get(destination)
        if known is not None and known >= asked:
            return known
        stored = await self.stored_count(destination)
        if stored is None:
            count = max(asked, self.options.default_partition_count)
            if count > 1:
                await self._store_count(destination, count)
        elif stored < asked:
            if not self.options.auto_add_partitions:
                raise ConfigError(
                    f"destination {destination!r} has {stored} partition(s), a binding asks for "
                    f"{asked}: set auto-add-partitions: true to add partition queues",
                    path=f"binder.binders.{self.name}.auto-add-partitions",
                    value=asked,
                )
            await self._store_count(destination, asked)
            count = asked
        else:
            count = stored
        self._counts[destination] = count
        return count

    async def partitions_of(self, destination: str) -> int:
        """The partition count of a destination about to be read or written."""
        return await self._ensure_count(destination, 1)

    # -- the SPI ----------------------------------------------------------------------------

    async def provision(
        self,
        destination: str,
        partition_count: int,
        required_groups: Sequence[str] = (),
        *,
        dead_letters_of: str | None = None,
        options: Any = None,
    ) -> int:
        """Declare the exchange, store the partition count, declare ``required_groups``'
        queues (with the binding's queue ``options``), and for a dead-letter destination its
        queue of its own name; return the count."""
        self._check_open()
        exchange = self.exchange_of(destination)
        count = await self._ensure_count(exchange, partition_count)
        await self.declare_exchange(exchange)
        queue_options = merged(self.options, options)
        for group in required_groups:
            await self.declare_group(exchange, group, count, queue_options)
        if dead_letters_of is not None:
            await self.declare_letters_queue(exchange, queue_options)
        return count

    async def producer(self, spec: ProducerSpec) -> RabbitProducer:
        from binders.rabbit.producer import RabbitProducer

        self._check_open()
        exchange = self.exchange_of(spec.destination)
        count = await self._ensure_count(exchange, spec.partition_count)
        await self.declare_exchange(exchange)
        return RabbitProducer(await self.publisher(), exchange, count, self)

    async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> RabbitConsumer:
        from binders.rabbit.consumer import RabbitConsumer

        self._check_open()
        count = await self.partitions_of(self.exchange_of(spec.destination))
        consumer = RabbitConsumer(self, spec, listener, count)
        self._consumers = {c for c in self._consumers if not c.closed}
        self._consumers.add(consumer)
        try:
            await consumer.open()
        except BaseException:
            self._consumers.discard(consumer)
            await consumer.close()
            raise
        return consumer

    # -- the operator's tools ---------------------------------------------------------------

    async def positions(self, destination: str, group: str) -> dict[int, GroupPosition]:
        """Per partition queue of ``group``: the messages ready in it (AMQP has no positions;
        those delivered and not acknowledged are not counted)."""
        exchange = self.exchange_of(destination)
        count = await self.partitions_of(exchange)
        found: dict[int, GroupPosition] = {}
        for partition, queue in enumerate(Names.group_queues(exchange, group, count)):
            if not await self.queue_exists(queue):
                continue
            declared = await self.declare(
                f"look up the queue {queue!r}",
                lambda ch, q=queue: ch.queue_declare(q, passive=True),
            )
            found[partition] = GroupPosition(None, None, None, declared.message_count or 0)
        return found

    async def members(self, destination: str, group: str) -> list[str]:
        """A name per consumer of the group's queues, ``<queue>#<n>`` (AMQP tells how many
        consume a queue, not who)."""
        exchange = self.exchange_of(destination)
        count = await self.partitions_of(exchange)
        names = []
        for queue in Names.group_queues(exchange, group, count):
            if await self.queue_exists(queue):
                consumers = (await self._look_up(queue)).consumer_count or 0
                names += [f"{queue}#{n}" for n in range(1, consumers + 1)]
        return names

    async def _look_up(self, queue: str) -> Any:
        return await self.declare(
            f"look up the queue {queue!r}", lambda ch: ch.queue_declare(queue, passive=True)
        )

    async def delete(self, destination: str, groups: Sequence[str] = ()) -> None:
        """Remove the exchange, the queues of ``groups``, the destination's own queue and its
        partition count. Idempotent."""
        self._check_open()
        exchange = self.exchange_of(destination)
        count = await self.stored_count(exchange) or 1
        queues = [exchange, Names.partition_count(exchange)]
        for group in groups:
            queues += Names.group_queues(exchange, group, 1)
            if count > 1:
                queues += Names.group_queues(exchange, group, count)
        for queue in queues:
            await self.declare(
                f"delete the queue {queue!r}", lambda ch, q=queue: ch.queue_delete(q)
            )
        await self.ladder.delete(exchange)
        await self.declare(
            f"delete the exchange {exchange!r}", lambda ch: ch.exchange_delete(exchange)
        )
        self._counts.pop(exchange, None)

    async def close(self) -> None:
        """Close the consumers, flush the publisher, close the connection. Idempotent."""
        consumers, self._consumers = self._consumers, set()
        for consumer in consumers:
            await consumer.close()
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            await publisher.close()
        connection, self._connection = self._connection, None
        self._topology = None
        self._counts.clear()
        self._started = False
        if connection is not None and not connection.is_closed:
            try:
                await asyncio.wait_for(connection.close(), self.options.connect_timeout)
            except Exception as exc:  # closing a dead connection: nothing left to lose
                log.debug("rabbitmq at %s: close: %r", self.server, exc)


@dataclass(frozen=True)
class _RabbitBinderType:
    name: str = "rabbit"
    capabilities: Capabilities = CAPABILITIES
    options: type[BaseModel] = RabbitOptions
    binding_options: type[BaseModel] = QueueOptions
    """The queue settings a binding may set under its ``consumer:`` or ``producer:``."""

    def create(self, name: str, options: BaseModel) -> RabbitBinder:
        assert isinstance(options, RabbitOptions)
        try:
            import aio_pika  # noqa: F401  (the connection is made at start)
        except ImportError as exc:
            raise ConfigError(
                f"the rabbit binder needs aio-pika ({exc}): pip install 'streambinder[rabbit]'",
                path=f"binder.binders.{name}.type",
                value="rabbit",
            ) from None
        return RabbitBinder(name, options, self.capabilities)

    def asyncapi_server(self, options: Any) -> dict[str, Any]:
        """AsyncAPI server of a binder: the host of its ``url``, AMQP 0.9.1."""
        server = url_server(option(options, "url") or "amqp://unknown", "amqp")
        server["protocolVersion"] = "0.9.1"
        return server

    def asyncapi_channel(
        self, options: Any, destination: str, partitions: int | None
    ) -> dict[str, Any]:
        """The AMQP channel binding: the destination's durable topic exchange."""
        name = f"{option(options, 'prefix') or ''}{destination}"
        if len(name) > 255:  # the binding's limit on an exchange name
            return {}
        exchange = {"name": name, "type": "topic", "durable": True, "autoDelete": False}
        return {"amqp": {"is": "routingKey", "exchange": exchange, "bindingVersion": "0.3.0"}}


RABBIT_BINDER_TYPE = _RabbitBinderType()
"""RabbitMQ through aio-pika."""
