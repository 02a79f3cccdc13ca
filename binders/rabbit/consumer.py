"""Consuming one destination's queues on a channel of its own, with manual acks.

- A group on an unpartitioned destination: the queue ``d.g`` (shared by every member; no
  per-key order across members).
- A group on a partitioned destination: every partition queue ``d.g-p`` (declared with single
  active consumer, so the broker delivers each to one member at a time and fails over), or with
  ``instance-index``/``instance-count`` only the queues ``p % count == index``.
- Anonymous: an exclusive auto-deleted queue bound with ``#``.

Deliveries are buffered as they arrive (at most ``prefetch`` per queue are unacknowledged) and
handed out by :meth:`RabbitConsumer.fetch`. :meth:`RabbitConsumer.commit` acknowledges: the
longest run of finished deliveries at the front with one ``multiple`` ack, any finished later
one on its own, so a message retried in place never holds back the acks of the others. Acks
for a channel that has closed are not sent (the broker redelivers those messages). Closing
cancels the subscriptions and closes the channel: what was not acknowledged is requeued.

The delivery count: a quorum queue's ``x-delivery-count`` (+1), else 2 for a message the broker
flags as redelivered, else 1; the core dead-letters a message delivered more than
``max-attempts`` times without handing it to the function.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from binder.errors import BackendError
from binder.message import DELIVER_AT
from binder.spi import ConsumerSpec, InboundRecord, RebalanceListener
from binders.rabbit.binder import Names, merged
from binders.rabbit.delays import strip_ladder
from binders.rabbit.errors import CLIENT_ERRORS, backend_error, backend_errors
from binders.rabbit.producer import KEY, KEY_ENCODING

if TYPE_CHECKING:
    from binders.rabbit.binder import RabbitBinder

__all__ = ["RabbitConsumer", "key_of", "text_of"]

log = logging.getLogger("binder.rabbit.consumer")

DELIVERY_COUNT = "x-delivery-count"
PREFETCH_LIMIT = 65_535
"""The largest ``basic.qos`` prefetch count AMQP can carry."""
CONTENT_TYPE = "contentType"


def text_of(value: Any) -> str:
    """An AMQP table value as the core's header string: text as it is, bytes as UTF-8 (or
    their base64 when not UTF-8), a table or array as JSON, anything else as ``str``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return base64.b64encode(bytes(value)).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list | tuple):
        return orjson.dumps(value, default=str).decode()
    return str(value)


def key_of(value: Any, encoding: Any) -> bytes:
    """The key bytes from the ``x-key`` header (base64 when ``x-key-encoding`` says so)."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
    elif isinstance(value, str):
        raw = value.encode()
    else:
        raw = text_of(value).encode()
    if encoding is not None and text_of(encoding) == "base64":
        try:
            return base64.b64decode(raw, validate=True)
        except ValueError:
            return raw
    return raw


class RabbitConsumer:
    """One consumer of one destination; see the module docstring."""

    def __init__(
        self,
        binder: RabbitBinder,
        spec: ConsumerSpec,
        listener: RebalanceListener,
        partition_count: int,
    ) -> None:
        self._binder = binder
        self._server = binder.server
        self._spec = spec
        self._destination = spec.destination
        self._exchange = binder.exchange_of(spec.destination)
        self._group = spec.group
        self._listener = listener
        self._count = partition_count
        self._options = merged(binder.options, spec.options)
        self._prefetch = min(
            self._options.prefetch or 2 * spec.max_records * spec.concurrency, PREFETCH_LIMIT
        )
        self._channel: Any = None  # the aio-pika channel
        self._underlay: Any = None  # its aiormq channel
        self._partition_of: dict[str, int] = {}  # consumer tag -> partition
        self._queue_of: dict[str, str] = {}  # consumer tag -> queue
        self._active: set[str] = set()  # consumer tags not cancelled
        self._careful: set[str] = set()  # consumer tags still at prefetch 1
        self._in_hand: dict[str, int] = {}  # queue -> delivered, not acknowledged
        self._widened = False  # basic.qos set to the full prefetch
        self._single_active = False  # partition queues (x-single-active-consumer)
        self._buffer: deque[Any] = deque()
        self._pending: deque[int] = deque()  # delivery tags not yet acknowledged, in order
        self._unacked: set[int] = set()  # the same tags, to look up
        self._acking = asyncio.Lock()
        self._finished: set[int] = set()  # committed, not at the front of _pending
        self._alone: set[int] = set()  # acked on their own, still in _pending
        self._seen: set[int] = set()  # partitions delivered so far (on_assigned)
        self._paused = False
        self._closed = False
        self._wake = asyncio.Event()
        self._failure: BackendError | None = None
        self._dropped = 0

    @property
    def closed(self) -> bool:
        return self._closed

    # -- opening ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Declare the queues and subscribe: once this returns, every message published
        later reaches this consumer (anonymous) or its group.

        A group's queues are first consumed one message at a time (``basic.qos`` 1), so that
        what a dead member left unacknowledged is redelivered and handled one by one: RabbitMQ
        counts a delivery (``x-delivery-count``) for every unacknowledged message returned
        when a consumer dies, so a message that kills its consumer must not be held with
        others. Once a message that was not redelivered has been handled, its queue is consumed
        again with the full prefetch (:meth:`_widen`). Not partition queues: RabbitMQ 3.10
        crashes a single-active-consumer classic queue whose consumer is cancelled and made
        again, so those are consumed with the full prefetch from the start; nor a browsing
        consumer (``ConsumerSpec.browse``), which acknowledges nothing."""
        binder, spec = self._binder, self._spec
        queues = await self._queues()
        self._channel = await binder.channel()
        careful = self._group is not None and not self._single_active and not spec.browse
        with backend_errors(self._server, f"subscribe to {self._destination!r}"):
            channel = self._underlay = await self._channel.get_underlay_channel()
            async with asyncio.timeout(binder.options.connect_timeout):
                await channel.basic_qos(prefetch_count=1 if careful else self._prefetch)
                self._widened = not careful
                for queue, partition in queues:
                    ok = await channel.basic_consume(queue, self._on_message, no_ack=False)
                    self._subscribed(ok.consumer_tag, queue, partition)
                    if careful:
                        self._careful.add(ok.consumer_tag)
        channel.closing.add_done_callback(self._on_channel_closed)
        if spec.instance_count > 1:
            await self._listener.on_assigned({p for _, p in queues})

    def _subscribed(self, tag: str, queue: str, partition: int) -> None:
        self._partition_of[tag] = partition
        self._queue_of[tag] = queue
        self._active.add(tag)

    async def _widen(self, tag: str) -> None:
        """Consume the queue of subscription ``tag`` with the full prefetch: cancel ``tag`` and
        subscribe again (``basic.qos`` applies to subscriptions made after it). Called
        while the message that ends the careful start is handled but not yet acknowledged, so
        nothing more was delivered to ``tag``."""
        if tag not in self._careful:  # widened by a commit made meanwhile
            return
        channel = self._underlay
        self._careful.discard(tag)
        if not self._widened:
            await channel.basic_qos(prefetch_count=self._prefetch)
            self._widened = True
        queue, partition = self._queue_of[tag], self._partition_of[tag]
        self._active.discard(tag)
        await channel.basic_cancel(tag)
        ok = await channel.basic_consume(queue, self._on_message, no_ack=False)
        self._subscribed(ok.consumer_tag, queue, partition)

    async def _queues(self) -> list[tuple[str, int]]:
        """The queues to consume, each with its partition (-1: taken from the routing key)."""
        binder, spec = self._binder, self._spec
        destination, count = self._exchange, self._count
        if self._group is None:
            await binder.declare_exchange(destination)
            queue = Names.anonymous_queue(destination)
            await binder.declare(
                f"declare the queue {queue!r}",
                lambda ch: ch.queue_declare(queue, exclusive=True, auto_delete=True),
            )
            await binder.declare(
                f"bind the queue {queue!r}",
                lambda ch: ch.queue_bind(queue, destination, routing_key="#"),
            )
            return [(queue, -1 if count > 1 else 0)]
        if await binder.queue_exists(destination):  # a dead-letter destination's own queue
            await binder.declare_exchange(destination)
            await binder.declare_letters_queue(destination, self._options)
            return [(destination, 0)]
        queues = await binder.declare_group(destination, self._group, count, self._options)
        self._single_active = count > 1
        return [
            (queue, p)
            for p, queue in enumerate(queues)
            if p % spec.instance_count == spec.instance_index
        ]

    def _on_channel_closed(self, closing: asyncio.Future[Any]) -> None:
        if self._closed:
            return
        reason = None if closing.cancelled() else closing.exception()
        self._failure = backend_error(
            self._server,
            f"consume {self._destination!r}",
            reason or ConnectionError("the channel was closed"),
        )
        self._wake.set()

    async def _on_message(self, message: Any) -> None:
        self._buffer.append(message)
        tag = message.delivery.delivery_tag
        self._pending.append(tag)
        self._unacked.add(tag)
        queue = self._queue_of.get(message.delivery.consumer_tag)
        if queue is not None:
            self._in_hand[queue] = self._in_hand.get(queue, 0) + 1
        self._wake.set()

    # -- the SPI ----------------------------------------------------------------------------

    async def fetch(self) -> list[InboundRecord]:
        while True:
            if self._closed:
                return []
            if self._failure is not None:
                raise self._failure
            if self._buffer and not self._paused:
                return await self._take()
            self._wake.clear()
            await self._wake.wait()

    async def _take(self) -> list[InboundRecord]:
        buffer, record = self._buffer, self._record
        n = min(len(buffer), self._spec.max_records)
        records = [record(buffer.popleft()) for _ in range(n)]
        fresh = {r.partition for r in records} - self._seen
        if fresh:
            self._seen |= fresh
            await self._listener.on_assigned(fresh)
        return records

    def _record(self, message: Any) -> InboundRecord:
        delivery = message.delivery
        properties = message.header.properties
        table = properties.headers
        headers: dict[str, str] = {}
        key: bytes | None = None
        deliveries = 2 if delivery.redelivered else 1
        if table:
            for name, value in table.items():
                if type(value) is str:
                    headers[name] = value
                else:
                    headers[name] = text_of(value)
            if KEY in headers:
                key = key_of(table[KEY], table.get(KEY_ENCODING))
                del headers[KEY]
                headers.pop(KEY_ENCODING, None)
            count = table.get(DELIVERY_COUNT)
            if count is not None:
                with contextlib.suppress(TypeError, ValueError):
                    deliveries = int(count) + 1
        if CONTENT_TYPE not in headers and properties.content_type:
            headers[CONTENT_TYPE] = properties.content_type
        if DELIVER_AT in headers:  # came down the delay ladder: its headers are the binder's
            strip_ladder(headers)
        partition = self._partition_of.get(delivery.consumer_tag, 0)
        if partition < 0:
            partition = _partition_from(delivery.routing_key, self._exchange)
        stamp = properties.timestamp
        return InboundRecord(
            self._destination,
            partition,
            None,
            message.body,
            key,
            headers,
            stamp.timestamp() if stamp is not None else None,
            (message.channel, delivery.delivery_tag, delivery.consumer_tag, deliveries == 1),
            deliveries=deliveries,
            message_id=properties.message_id,
        )

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        channel = self._underlay
        tags: list[int] = []
        stale = 0
        widen: set[str] = set()
        for record in records:
            owner, tag, subscription, fresh = record.token
            if owner is channel:
                tags.append(tag)
                if fresh and subscription in self._careful:
                    widen.add(subscription)
            else:
                stale += 1
        if channel is None or channel.is_closed:
            stale += len(tags)
            tags = []
        if stale:
            self._dropped += stale
            log.info(
                "rabbitmq: %d acknowledgement(s) of a closed channel of %r not sent: the "
                "broker redelivers those messages",
                stale,
                self._destination,
            )
        if not tags:
            return
        async with self._acking:  # one commit at a time: acks are computed against the sent ones
            unacked = self._unacked
            fresh = [tag for tag in tags if tag in unacked]  # a record committed again: done
            if not fresh:
                return
            unacked.difference_update(fresh)
            fresh_set = set(fresh)
            for record in records:
                owner, tag, subscription, _ = record.token
                if owner is channel and tag in fresh_set:
                    queue = self._queue_of.get(subscription)
                    if queue is not None:
                        self._in_hand[queue] = self._in_hand.get(queue, 1) - 1
            finished, pending, alone = self._finished, self._pending, self._alone
            finished.update(fresh)
            last = None
            while pending and pending[0] in finished:
                tag = pending.popleft()
                finished.discard(tag)
                if tag in alone:
                    alone.discard(tag)
                else:
                    last = tag
            acks: list[tuple[int, bool]] = []
            if last is not None:
                acks.append((last, True))
            for tag in fresh:
                if tag in finished:  # behind one still in work: acknowledged on its own
                    acks.append((tag, False))
                    alone.add(tag)
            try:
                for subscription in widen:  # before the ack: nothing more is delivered to it
                    await self._widen(subscription)
                for tag, multiple in acks:
                    await channel.basic_ack(tag, multiple=multiple)
            except CLIENT_ERRORS as exc:
                if channel.is_closed:  # the broker redelivers what was not acknowledged
                    log.info(
                        "rabbitmq: acknowledgements of %r lost with their channel: %s",
                        self._destination,
                        exc,
                    )
                    return
                raise backend_error(
                    self._server, f"acknowledge on {self._destination!r}", exc
                ) from exc

    async def lag(self) -> dict[int, int]:
        """Partition → messages of its queue not yet acknowledged: ready in the queue, plus
        delivered to this consumer and not acknowledged."""
        lag = {}
        for tag in list(self._active):
            queue, partition = self._queue_of[tag], self._partition_of[tag]
            declared = await self._binder.declare(
                f"read the lag of {queue!r}", lambda ch, q=queue: ch.queue_declare(q, passive=True)
            )
            ready = declared.message_count or 0
            lag[max(partition, 0)] = ready + self._in_hand.get(queue, 0)
        return lag

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._wake.set()

    async def close(self) -> None:
        """Cancel the subscriptions and close the channel: the broker requeues every message
        not acknowledged. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._buffer.clear()
        channel, self._channel = self._channel, None
        underlay = self._underlay
        if channel is None or channel.is_closed:
            return
        try:
            async with asyncio.timeout(self._binder.options.connect_timeout):
                for tag in list(self._active):
                    await underlay.basic_cancel(tag)
                await channel.close()
        except (TimeoutError, *CLIENT_ERRORS) as exc:
            log.debug("rabbitmq: closing the consumer of %r: %r", self._destination, exc)


def _partition_from(routing_key: str, destination: str) -> int:
    """The partition of a message routed with ``<destination>-<p>`` (0 for any other key)."""
    prefix = destination + "-"
    if routing_key.startswith(prefix):
        tail = routing_key[len(prefix) :]
        if tail.isdigit():
            return int(tail)
    return 0
