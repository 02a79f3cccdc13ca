"""The ``kafka`` binder: aiokafka clients behind the binder SPI, its capabilities and type.

One admin connection provisions topics; one producer client, shared by every
destination, sends; each input binding has its own consumer client. While a destination
has a producer or consumer here, its :class:`~binders.kafka.forwarder.Forwarder` moves
its delayed records (one consumer client more, once the destination has a delay topic).

This module imports no client at load time (``import binders.kafka`` loads it, also
without the ``kafka`` extra, so ``binder check`` validates Kafka options): aiokafka and
the modules built on it (``admin``, ``producer``, ``consumer``, ``scheduler``, ``forwarder``,
``errors``) are imported when a binder is created and its clients are made.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    OutboundRecord,
    ProducerSpec,
    RebalanceListener,
)
from binders.kafka.options import KafkaOptions

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from binders.kafka.admin import Provisioner
    from binders.kafka.consumer import KafkaConsumer
    from binders.kafka.forwarder import Forwarder
    from binders.kafka.producer import KafkaProducer, SendQueue

__all__ = ["CAPABILITIES", "KAFKA_BINDER_TYPE", "KafkaBinder", "client_settings"]

CAPABILITIES = Capabilities(
    consumer_groups=True,
    native_partitions=True,
    order_per_key=True,
    persistence=True,
    replay_to_new_groups=True,
    redelivery_on_failure=True,
    anonymous_consumers=True,
    offsets=True,
    max_payload_bytes=1_000_000,
    tombstones=True,
    delayed_delivery=True,
)
"""``max_payload_bytes``: a broker's default ``message.max.bytes`` (1 MiB + 12) bounds a
record batch, so payload, key, headers and framing together stay under 1 MiB.
``delayed_delivery``: a delay topic per destination (:mod:`binders.kafka.scheduler`)."""


class KafkaBinder:
    """One Kafka cluster, as configured by :class:`KafkaOptions`."""

    messaging_system = "kafka"

    def __init__(self, name: str, options: KafkaOptions, capabilities: Capabilities) -> None:
        self.name = name
        self.options = options
        self.capabilities = capabilities
        self._servers = options.bootstrap_servers
        self._connection: Mapping[str, Any] = {}
        self._admin: Provisioner | None = None
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()
        self._sends: SendQueue | None = None
        self._consumers: set[KafkaConsumer] = set()
        self._creating = asyncio.Lock()  # delay topics: one creation at a time, in call order
        self._forwarders = Movers(self._forwarder)
        self.clock: Clock = SYSTEM
        """When delayed records are due (the app sets its own)."""

    async def start(self) -> None:
        """Connect the admin client: BackendError naming the broker when unreachable."""
        if self._admin is not None:
            return
        from binders.kafka.admin import Provisioner

        self._connection = client_settings(self.name, self.options)
        admin = Provisioner(self.name, self.options, self._connection)
        try:
            await admin.start()
        except BaseException:
            await admin.close()
            raise
        self._admin = admin

    @property
    def admin(self) -> Provisioner:
        if self._admin is None:
            raise ClosedError(f"kafka binder {self.name!r} is not started (or closed)")
        return self._admin

    @property
    def connection(self) -> Mapping[str, Any]:
        """The keyword arguments every client of this binder is made with."""
        return self._connection

    async def provision(
        self,
        destination: str,
        partition_count: int,
        required_groups: Sequence[str] = (),
        *,
        dead_letters_of: str | None = None,
        options: Any = None,
    ) -> int:
        """The topic with at least ``partition_count`` partitions, made with at least
        ``default-partition-count`` (a dead-letter topic: ``dlq-partition-count``); its
        partition count."""
        creating = self.options.default_partition_count
        if dead_letters_of is not None:
            creating = await self._dead_letter_partitions(dead_letters_of)
        count = await self.admin.ensure_topic(destination, partition_count, creating)
        if required_groups:
            await self.admin.ensure_groups(destination, required_groups, count)
        return count

    async def _dead_letter_partitions(self, source: str) -> int:
        """Partitions a dead-letter topic of ``source`` is made with: ``dlq-partition-count``,
        or with ``same`` as many as ``source`` has (one when it does not exist yet)."""
        if self.options.dlq_partition_count != "same":
            return self.options.dlq_partition_count
        admin = self.admin
        return admin.known().get(source) or await admin.partition_count(source) or 1

    async def producer(self, spec: ProducerSpec) -> KafkaProducer:
        from binders.kafka.producer import KafkaProducer

        destination = spec.destination
        await self.provision(destination, spec.partition_count)
        producer = KafkaProducer(
            await self.send_queue(),
            destination,
            self._servers,
            schedule=lambda records: self._schedule(destination, records),
            on_close=lambda: self._release(destination),
        )
        self._acquire(destination)
        return producer

    async def send_queue(self) -> SendQueue:
        """The queue of the binder's one producer client (started on first use)."""
        from aiokafka import AIOKafkaProducer

        from binders.kafka.errors import backend_errors
        from binders.kafka.producer import SendQueue

        async with self._producer_lock:
            if self._sends is None:
                action = "start producer"
                if self.options.enable_idempotence:
                    action += " (enable-idempotence needs InitProducerId; Tansu refuses it)"
                with backend_errors(self._servers, action):
                    client = AIOKafkaProducer(**self._connection, **self.options.producer())
                    await _started(client)
                self._producer = client
                self._sends = SendQueue(client, self.options.max_request_size)
            return self._sends

    async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> KafkaConsumer:
        from aiokafka import AIOKafkaConsumer

        from binders.kafka.consumer import KafkaConsumer, assignors

        creating = self.options.default_partition_count
        count = await self.admin.ensure_topic(spec.destination, 1, creating)
        settings = self._consumer_settings(spec)
        settings["partition_assignment_strategy"] = assignors(
            self.options.partition_assignment_strategy
        )
        client = AIOKafkaConsumer(**self._connection, **settings)
        flush_timeout = self.options.request_timeout_ms / 1000
        consumer = KafkaConsumer(client, spec, listener, self._servers, flush_timeout)
        try:
            await asyncio.wait_for(consumer.open(count), self._join_timeout())
        except TimeoutError:
            await consumer.close()
            raise BackendError(
                f"kafka at {self._servers}: group {spec.group!r} gave {spec.destination!r} "
                f"no assignment within {self._join_timeout():.0f}s"
            ) from None
        except BaseException:
            await consumer.close()
            raise
        self._consumers = {c for c in self._consumers if not c.closed}
        self._consumers.add(consumer)
        consumer.on_close = lambda: self._release(spec.destination)
        self._acquire(spec.destination)
        return consumer

    def _consumer_settings(self, spec: ConsumerSpec) -> dict[str, Any]:
        settings = dict(self.options.consumer())
        settings["auto_offset_reset"] = spec.start or ("earliest" if spec.group else "latest")
        settings["max_poll_records"] = spec.max_records
        settings["group_id"] = spec.group
        if spec.group is not None and self.options.group_instance_id and spec.instance_count == 1:
            settings["group_instance_id"] = f"{self.options.group_instance_id}-{spec.destination}"
        return settings

    def _join_timeout(self) -> float:
        """A join may wait for every other member to finish its in-flight work."""
        return (self.options.max_poll_interval_ms + self.options.session_timeout_ms) / 1000 + 10

    # -- delayed records ---------------------------------------------------------------------

    async def _schedule(self, destination: str, records: Sequence[OutboundRecord]) -> None:
        """Write delayed records to the destination's delay topic (made on first use)."""
        from binders.kafka.errors import CLIENT_ERRORS, backend_error
        from binders.kafka.scheduler import PARTITIONS, TOPIC_CONFIG, delay_topic, scheduled

        topic = delay_topic(destination)
        if self.admin.known().get(topic, 0) < PARTITIONS:
            async with self._creating:
                await self.admin.ensure_topic(topic, PARTITIONS, PARTITIONS, TOPIC_CONFIG)
        sends = self._sends or await self.send_queue()
        try:  # nothing awaited since the topic was known: concurrent calls keep their order
            await sends.send(topic, scheduled(records, int(self.clock.time() * 1000)))
        except CLIENT_ERRORS as exc:
            raise backend_error(self._servers, f"schedule on {destination!r}", exc) from exc
        forwarder = self._forwarders.get(destination)
        if forwarder is not None:
            forwarder.poke()  # type: ignore[attr-defined]

    def _forwarder(self, destination: str) -> Forwarder:
        """The forwarder of ``destination`` (run while it has a producer or consumer here)."""
        from binders.kafka.forwarder import Forwarder

        return Forwarder(self, destination, self.clock)

    def _acquire(self, destination: str) -> None:
        self._forwarders.acquire(destination)

    async def _release(self, destination: str) -> None:
        await self._forwarders.release(destination)

    # -- the operator's tools (binders.kafka.tools) ------------------------------------------

    async def groups(self, destination: str) -> list[str]:
        from binders.kafka import tools

        return [g for g in await tools.groups(self, destination) if not g.endswith(".__forwarder")]

    async def positions(self, destination: str, group: str) -> dict[int, GroupPosition]:
        from binders.kafka import tools

        return await tools.positions(self, destination, group)

    async def read(
        self, destination: str, partition: int, since: int | None, limit: int = 500
    ) -> tuple[list[InboundRecord], int | None]:
        from binders.kafka import tools

        return await tools.read(self, destination, partition, since, limit)

    async def members(self, destination: str, group: str) -> list[str]:
        from binders.kafka import tools

        return await tools.members(self, destination, group)

    async def reset(
        self, destination: str, group: str, to: Any, *, dry_run: bool = False
    ) -> dict[int, int]:
        from binders.kafka import tools

        return await tools.reset(self, destination, group, to, dry_run=dry_run)

    async def delete(self, destination: str, groups: Sequence[str] = ()) -> None:
        """Delete the topic and ``groups``, and its delay topic with its forwarders' group."""
        from binders.kafka.scheduler import delay_topic, forwarder_group

        await self.admin.delete(destination, groups)
        await self.admin.delete(delay_topic(destination), [forwarder_group(destination)])

    async def close(self) -> None:
        """Close the consumers, the forwarders, the producer and the admin client.
        Idempotent."""
        consumers, self._consumers = self._consumers, set()
        for consumer in consumers:
            await consumer.close()
        await self._forwarders.close()
        sends, self._sends = self._sends, None
        if sends is not None:
            await sends.close()
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()


async def _started(client: AIOKafkaProducer) -> None:
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


def client_settings(name: str, options: KafkaOptions) -> dict[str, Any]:
    """Connection keyword arguments of every client, the SSL context built from the options.

    The key's password goes to OpenSSL as a callable, which is asked only for an encrypted
    ``ssl-keyfile``: so a wrong ``ssl-password`` is told apart from an unreadable file, and
    a missing one is a ConfigError rather than OpenSSL prompting on the terminal.
    """
    settings = dict(options.connection())
    if options.security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        path = f"binder.binders.{name}"
        secret = f"{path}.ssl-password"
        asked = False

        def password() -> str:
            nonlocal asked
            asked = True
            if options.ssl_password is None:
                raise ConfigError("ssl-keyfile is encrypted: set ssl-password", path=secret)
            return options.ssl_password.get_secret_value()

        for key, file in (
            ("ssl-cafile", options.ssl_cafile),
            ("ssl-certfile", options.ssl_certfile),
            ("ssl-keyfile", options.ssl_keyfile),
        ):
            if file is not None and not os.path.isfile(file):
                raise ConfigError(f"no such file: {file}", path=f"{path}.{key}")
        try:
            context = create_ssl_context(
                cafile=options.ssl_cafile,
                certfile=options.ssl_certfile,
                keyfile=options.ssl_keyfile,
                password=password,
            )
        except OSError as exc:
            if asked:
                raise ConfigError(
                    f"ssl-password does not decrypt ssl-keyfile (or the key does not match "
                    f"ssl-certfile): {exc}",
                    path=secret,
                ) from None
            raise ConfigError(
                f"cannot load ssl-cafile, ssl-certfile or ssl-keyfile: {exc}", path=path
            ) from None
        context.check_hostname = options.ssl_check_hostname
        settings["ssl_context"] = context
    return settings


@dataclass(frozen=True)
class _KafkaBinderType:
    name: str = "kafka"
    capabilities: Capabilities = CAPABILITIES
    options: type[BaseModel] = KafkaOptions

    def create(self, name: str, options: BaseModel) -> KafkaBinder:
        assert isinstance(options, KafkaOptions)
        try:
            import aiokafka  # noqa: F401  (the clients are imported when first made)
        except ImportError as exc:
            raise ConfigError(
                f"the kafka binder needs aiokafka ({exc}): pip install 'streambinder[kafka]'",
                path=f"binder.binders.{name}.type",
                value="kafka",
            ) from None
        return KafkaBinder(name, options, self.capabilities)

    def asyncapi_server(self, options: Any) -> dict[str, Any]:
        """AsyncAPI server of a binder: its first bootstrap server, ``kafka-secure`` over TLS."""
        servers = option(options, "bootstrap_servers") or ""
        hosts = [host.strip() for host in servers.split(",") if host.strip()] or ["unknown"]
        secure = (option(options, "security_protocol") or "").upper() in ("SSL", "SASL_SSL")
        server: dict[str, Any] = {
            "host": hosts[0],
            "protocol": "kafka-secure" if secure else "kafka",
        }
        if len(hosts) > 1:
            server["x-bootstrap-servers"] = hosts
        return server

    def asyncapi_channel(
        self, options: Any, destination: str, partitions: int | None
    ) -> dict[str, Any]:
        """The Kafka channel binding: the topic's partitions, when a producer sets them."""
        if partitions is None:
            return {}
        return {"kafka": {"partitions": partitions, "bindingVersion": ASYNCAPI_BINDING}}

    def asyncapi_receive(self, options: Any, group: str) -> dict[str, Any]:
        """The Kafka operation binding of a receive: its consumer group."""
        group_id = {"type": "string", "enum": [group]}
        return {"kafka": {"groupId": group_id, "bindingVersion": ASYNCAPI_BINDING}}


ASYNCAPI_BINDING = "0.5.0"
"""The version of AsyncAPI's Kafka bindings the document's bindings follow."""

KAFKA_BINDER_TYPE = _KafkaBinderType()
"""Apache Kafka (and Kafka-compatible brokers) through aiokafka."""
