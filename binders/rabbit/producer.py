"""Sending: each record published to its destination's exchange on the binder's channel
with publisher confirms, persistent and ``mandatory``.

Every send, from any task, is queued; one flusher task takes what is queued, in order, and
hands each record's ``basic.publish`` to the channel without waiting for the confirms of the
previous ones (the channel writes frames in the order they were handed over), so a burst of
sends is pipelined and the order of the calls is the order on the wire. A send completes
when the broker confirmed every record of it; it fails when one was refused, returned
(unroutable: no queue is bound for its routing key) or not confirmed within
``publish-timeout``.

Wire form: the payload is the body; headers go in the AMQP headers table as strings, the
content type also as the ``content_type`` property; the key is the header ``x-key`` (UTF-8
text), or its base64 with ``x-key-encoding: base64`` when it is not UTF-8.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import logging
import uuid
from collections import deque
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from aiormq.abc import ChannelFrame
from aiormq.exceptions import ChannelInvalidStateError, DeliveryError, PublishError
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from binder.errors import BackendError, ClosedError
from binder.spi import OutboundRecord
from binders.rabbit.binder import Names
from binders.rabbit.delays import level_name
from binders.rabbit.errors import CLIENT_ERRORS, backend_error

if TYPE_CHECKING:
    from binders.rabbit.binder import RabbitBinder

__all__ = ["KEY", "KEY_ENCODING", "Publisher", "RabbitProducer", "key_headers"]

log = logging.getLogger("binder.rabbit.producer")

KEY = "x-key"
KEY_ENCODING = "x-key-encoding"
PERSISTENT = 2
WINDOW = 2_000
"""Most records handed to the channel and not yet confirmed; later sends wait in the queue."""

_Queued = tuple[str, Sequence[str], Sequence[OutboundRecord], "asyncio.Future[None]"]


def key_headers(key: bytes) -> dict[str, str]:
    """The headers that carry ``key``."""
    try:
        return {KEY: key.decode()}
    except UnicodeDecodeError:
        return {KEY: base64.b64encode(key).decode(), KEY_ENCODING: "base64"}


class Publisher:
    """The binder's publishing channel and the queue of sends; one per binder."""

    def __init__(self, binder: RabbitBinder) -> None:
        self._binder = binder
        self._server = binder.server
        self._timeout = binder.options.publish_timeout
        self._mandatory = binder.options.unroutable == "fail"
        self._channel: Any = None  # the aio-pika channel
        self._queue: deque[_Queued] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._waiting: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # records handed to the channel, not yet confirmed
        self._ids = uuid.uuid4().hex[:12]  # message ids: <this publisher>-<n>
        self._published = 0
        self._room = asyncio.Event()
        self._closed = False

    async def send(
        self, exchange: str, routing_keys: Sequence[str], records: Sequence[OutboundRecord]
    ) -> None:
        """Publish ``records`` to ``exchange`` (``routing_keys[partition]`` each); return once
        the broker confirmed them all. Queued before the first await, so calls keep order."""
        if self._closed:
            raise ClosedError("the rabbit publisher is closed")
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[None]] = []
        for start in range(0, len(records), WINDOW):
            done: asyncio.Future[None] = loop.create_future()
            self._queue.append((exchange, routing_keys, records[start : start + WINDOW], done))
            waits.append(done)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="rabbit-publisher")
        if len(waits) == 1:
            await waits[0]
        else:
            await asyncio.gather(*waits)

    async def _open(self) -> Any:
        channel = self._channel
        if channel is None or channel.is_closed:
            channel = self._channel = await self._binder.channel(confirms=True)
        return await channel.get_underlay_channel()

    async def _flush(self) -> None:
        queue = self._queue
        try:
            while queue:
                try:
                    channel = await self._open()
                except (BackendError, *CLIENT_ERRORS) as exc:
                    error = (
                        exc
                        if isinstance(exc, BackendError)
                        else backend_error(self._server, "open the publishing channel", exc)
                    )
                    while queue:
                        _, _, _, done = queue.popleft()
                        if not done.done():
                            done.set_exception(error)
                    return
                while queue:
                    while self._in_flight >= WINDOW:  # the timeout counts from the hand-over
                        self._room.clear()
                        await self._room.wait()
                    exchange, keys, records, done = queue.popleft()
                    self._in_flight += len(records)
                    try:
                        publishes = await self._hand_over(channel, exchange, keys, records)
                    except CLIENT_ERRORS as exc:  # the channel closed: this send fails
                        publishes = [_failed(exc)]
                    task = asyncio.ensure_future(self._confirm(exchange, publishes, done))
                    self._waiting.add(task)
                    task.add_done_callback(self._waiting.discard)
        finally:
            self._flusher = None

    def _properties(self, r: OutboundRecord, now: datetime.datetime) -> Basic.Properties:
        headers: dict[str, Any] = dict(r.headers)
        if r.key is not None:
            headers.update(key_headers(r.key))
        self._published += 1
        return Basic.Properties(
            content_type=headers.get("contentType"),
            delivery_mode=PERSISTENT,
            headers=headers or None,
            timestamp=now,
            message_id=f"{self._ids}-{self._published}",
        )

    async def _hand_over(
        self, channel: Any, exchange: str, keys: Sequence[str], records: Sequence[OutboundRecord]
    ) -> list[Any]:
        """Write ``records``' publishes to the channel as one frame write; their confirms.

        aiormq's ``basic_publish`` writes each message on its own (a lock, a timer and a
        socket write per message); here every publish of the window is marshalled into one
        write, with the channel's own bookkeeping (delivery tags, confirm futures, message ids
        for returns) done as ``basic_publish`` does it. Without that bookkeeping (another
        aiormq), each record goes through ``basic_publish``."""
        now = datetime.datetime.now(datetime.UTC)
        mandatory = self._mandatory
        if not _batchable(channel):
            return [
                channel.basic_publish(
                    r.value or b"",
                    exchange=exchange,
                    routing_key=keys[r.partition],
                    properties=self._properties(r, now),
                    mandatory=mandatory,
                )
                for r in records
            ]
        confirms = channel.confirmations
        ids = channel.message_id_delivery_tag
        frames: list[Any] = []
        waits: list[Any] = []
        async with channel.lock:
            if channel.is_closed:
                raise ChannelInvalidStateError(f"{channel!r} closed")
            for r in records:
                properties = self._properties(r, now)
                body = r.value or b""
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirm = channel.create_future()
                confirms[tag] = confirm
                ids[properties.message_id] = tag
                confirm.add_done_callback(partial(_forget, ids, properties.message_id, tag))
                waits.append(confirm)
                frames.append(
                    Basic.Publish(
                        exchange=exchange, routing_key=keys[r.partition], mandatory=mandatory
                    )
                )
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                frames.extend(channel._split_body(body))
            await channel.write_queue.put(
                ChannelFrame.marshall(channel_number=channel.number, frames=frames)
            )
        return waits

    async def _confirm(
        self, exchange: str, publishes: list[Any], done: asyncio.Future[None]
    ) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                results = await asyncio.gather(*publishes, return_exceptions=True)
        except TimeoutError as exc:
            results = [exc]
        finally:
            self._in_flight -= len(publishes)
            self._room.set()
        error: BaseException | None = None
        for result in results:
            if isinstance(result, BaseException):
                error = self._error(exchange, result)
                break
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def _error(self, exchange: str, exc: BaseException) -> BaseException:
        if isinstance(exc, PublishError):
            frame = exc.frame
            return BackendError(
                f"rabbitmq at {self._server}: unroutable: no queue is bound to exchange "
                f"{getattr(frame, 'exchange', exchange)!r} for routing key "
                f"{getattr(frame, 'routing_key', '?')!r} ({getattr(frame, 'reply_text', '')}): "
                "declare a group first (producer.required-groups), or set unroutable: drop"
            )
        if isinstance(exc, DeliveryError):
            return BackendError(
                f"rabbitmq at {self._server}: the broker refused a message to {exchange!r} "
                f"(basic.nack)"
            )
        if isinstance(exc, TimeoutError):
            return BackendError(
                f"rabbitmq at {self._server}: a message to {exchange!r} was not confirmed "
                f"within publish-timeout ({self._timeout:g}s)"
            )
        if isinstance(exc, CLIENT_ERRORS):
            return backend_error(self._server, f"publish to {exchange!r}", exc)
        if isinstance(exc, asyncio.CancelledError):
            return BackendError(f"rabbitmq at {self._server}: the publishing channel closed")
        return BackendError(f"rabbitmq at {self._server}: publish to {exchange!r} refused: {exc}")

    async def close(self) -> None:
        """Wait for what is queued and unconfirmed, then refuse more. Idempotent."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(flusher)
        if self._waiting:
            await asyncio.gather(*self._waiting, return_exceptions=True)
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()


def _forget(ids: dict[str, int], message_id: str, tag: int, _: Any) -> None:
    """Drop a confirmed message's id from the channel's map of returns (as aiormq does)."""
    if ids.get(message_id) == tag:
        del ids[message_id]


def _batchable(channel: Any) -> bool:
    """Whether ``channel`` has the bookkeeping :meth:`Publisher._hand_over` uses."""
    return all(
        hasattr(channel, name)
        for name in (
            "confirmations",
            "message_id_delivery_tag",
            "delivery_tag",
            "write_queue",
            "lock",
            "_split_body",
        )
    ) and bool(getattr(channel, "publisher_confirms", False))


async def _failed(exc: BaseException) -> None:
    raise exc


class RabbitProducer:
    """Sends to one destination's exchange through the binder's :class:`Publisher`."""

    def __init__(
        self,
        publisher: Publisher,
        destination: str,
        partition_count: int,
        binder: RabbitBinder | None = None,
    ) -> None:
        self._publisher = publisher
        self._binder = binder
        self.destination = destination
        self._keys = tuple(
            Names.routing_key(destination, p, partition_count) for p in range(partition_count)
        )
        self._closed = False

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        if self._closed:
            raise ClosedError(f"the rabbit producer of {self.destination!r} is closed")
        if records:
            await self._publisher.send(self.destination, self._keys, records)

    async def schedule(self, records: Sequence[OutboundRecord]) -> None:
        """Publish delayed records into the destination's delay ladder (see
        :mod:`binders.rabbit.delays`), each at the level of its delay's highest bit; returns
        once the broker confirmed them. One already due is sent as usual."""
        if self._closed:
            raise ClosedError(f"the rabbit producer of {self.destination!r} is closed")
        binder = self._binder
        assert binder is not None, "a producer made by the binder schedules"
        now, levels = binder.ladder.plan(records, int(binder.clock.time() * 1000))
        if levels:
            await binder.ladder.declare(self.destination, max(levels))
        sends = [
            self._publisher.send(level_name(self.destination, top), self._keys, later)
            for top, later in sorted(levels.items())
        ]
        if now:
            sends.append(self._publisher.send(self.destination, self._keys, now))
        await asyncio.gather(*sends)

    async def close(self) -> None:
        self._closed = True
