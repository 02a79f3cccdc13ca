"""Output bindings: encode, choose the partition, send, and tell observers.

An :class:`OutputBinding` sends to one destination on one binder. It encodes
payloads with the binding's content type (``bytes`` go as they are), sets the
``contentType`` header unless the caller set one, and chooses every record's
partition, once for every binder (binders write it as given):

- over the destination's real partition count, which :meth:`Binder.provision`
  returns at start (a destination made elsewhere may have more than asked for);
- a record with a key (the key expression's value when the binding has one, else
  the message key) goes where the Kafka-compatible murmur2 selector puts it;
- keyless records are sticky per batch, as Kafka's producer does: every keyless
  record of one batch (the sends submitted in one loop iteration, or one
  :meth:`OutputBinding.send_records` call) goes to one partition, and the next
  batch moves on to the next partition;
- the dead-letter output of an input binding (``dead_letters_of``) keeps each
  letter on its original partition when the destination has that many, and
  places the others like any record.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from binder.clock import SYSTEM, Clock
from binder.converters import ConverterRegistry
from binder.errors import CapabilityError, ClosedError, ConversionError
from binder.message import (
    CONTENT_TYPE,
    DELAY,
    DELIVER_AT,
    EXPIRES_AT,
    TOMBSTONE,
    decode_key,
    key_bytes,
    normalize_headers,
)
from binder.metrics import OutputStats
from binder.outgoing import Outgoing
from binder.partitioning import KeyExpression, partition_key, select_partition
from binder.spi import Binder, InboundRecord, OutboundRecord, Producer, ProducerSpec
from binder.tracing import Tracing, end_sent

__all__ = ["Observer", "OutputBinding"]

Observer = Callable[[str, OutboundRecord], None]
"""Called with (destination, record) after each accepted send (the test harness records)."""


class OutputBinding:
    """Sends to one destination; created by the app, started before any input binding."""

    def __init__(
        self,
        name: str,
        destination: str,
        binder: Binder,
        converters: ConverterRegistry,
        *,
        content_type: str = "application/json",
        partition_count: int = 1,
        key_expression: KeyExpression | None = None,
        required_groups: Sequence[str] = (),
        observers: list[Observer] | None = None,
        dead_letters_of: str | None = None,
        binder_options: Any = None,
        tracing: Tracing | None = None,
        clock: Clock = SYSTEM,
        ttl: float | None = None,
    ) -> None:
        self.name = name
        self.destination = destination
        self.binder = binder
        self.content_type = content_type
        self.partition_count = partition_count
        self.key_expression = key_expression
        self.required_groups = tuple(required_groups)
        self.dead_letters_of = dead_letters_of
        """The destination whose dead letters this output sends, if it is a dead-letter one."""
        self.binder_options = binder_options
        """The binding's binder-specific ``producer:`` keys, given to provisioning."""
        self.stats = OutputStats()
        """Records sent and failed (``streambinder_messages_sent_total``, ...)."""
        self._converters = converters
        self._observers = observers if observers is not None else []
        self._count = partition_count  # the destination's real partition count once started
        self._sticky = 0  # the partition of this batch's keyless records
        self._producer: Producer | None = None
        self._batch: tuple[list[OutboundRecord], list[asyncio.Future[None]]] | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._encode = converters.get(content_type).encode
        self._partitioned = partition_count > 1 or key_expression is not None
        self._tracing = tracing
        self._system = getattr(binder, "messaging_system", None) or binder.name
        self._traced = False  # some record made here has a publish span to end
        self._clock = clock
        self._ttl_ms = None if ttl is None else int(ttl * 1000)
        self._holding = False  # some record made here is delayed

    @property
    def started(self) -> bool:
        return self._producer is not None

    @property
    def partitions(self) -> int:
        """The destination's real partition count once started, else the count asked for."""
        return self._count

    async def start(self) -> None:
        """Provision the destination (and its required groups), then open the producer.

        Records are placed over the partition count provisioning returned."""
        if self._producer is not None:
            return
        binder, destination = self.binder, self.destination
        extra: dict[str, Any] = {}
        if self.dead_letters_of is not None:
            extra["dead_letters_of"] = self.dead_letters_of
        if self.binder_options is not None:
            extra["options"] = self.binder_options
        count = await binder.provision(
            destination, self.partition_count, self.required_groups, **extra
        )
        self._count = max(count, 1)
        self._sticky %= self._count
        self._partitioned = self._count > 1 or self.key_expression is not None
        self._producer = await binder.producer(ProducerSpec(destination, self._count))

    async def close(self) -> None:
        """Finish the sends submitted so far, then close the producer. Idempotent."""
        self._flush()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.close()

    def record(
        self, payload: Any, key: Any = None, headers: dict[str, str] | None = None
    ) -> OutboundRecord:
        """Encode one message. Raises ConversionError for an unencodable payload or bad key,
        and for a :data:`~binder.message.TOMBSTONE` to a binder without tombstones."""
        if payload is TOMBSTONE:
            return self._tombstone(key, headers)
        if headers and CONTENT_TYPE in headers:
            headers = dict(headers)
            value = self._converters.encode(payload, headers[CONTENT_TYPE])
        else:
            headers = (
                {**headers, CONTENT_TYPE: self.content_type}
                if headers
                else {CONTENT_TYPE: self.content_type}
            )
            value = payload if type(payload) is bytes else self._encode(payload)
        raw_key = key if type(key) is bytes else key_bytes(key)
        partition = self._sticky
        if self._partitioned:
            partition = self._partition(payload, headers, key, raw_key)
        if self._tracing is None and DELAY not in headers and self._ttl_ms is None:
            return OutboundRecord(value, raw_key, headers, partition)
        return self._made(value, raw_key, headers, partition)

    def _made(
        self, value: bytes | None, key: bytes | None, headers: dict[str, str], partition: int
    ) -> OutboundRecord:
        """A new record; with ``x-delay`` in its headers, delayed (``x-deliver-at`` in their
        place); with a ``ttl``, expiring; when tracing, with its publish span started under
        the current context and ``traceparent`` in its headers."""
        due = None
        if DELAY in headers or self._ttl_ms is not None:
            now = int(self._clock.time() * 1000)
            if self._ttl_ms is not None and EXPIRES_AT not in headers:
                headers[EXPIRES_AT] = str(now + self._ttl_ms)
            if DELAY in headers:
                due = self._due(now, headers)
        tracing = self._tracing
        if tracing is None and due is None:
            return OutboundRecord(value, key, headers, partition)
        record = Outgoing(value, key, headers, partition, due=due)
        if tracing is not None:
            tracing.publish(self._system, self.destination, record)
            self._traced = True
        return record

    def _due(self, now: int, headers: dict[str, str]) -> int | None:
        """``x-delay`` (milliseconds) becomes ``x-deliver-at`` (epoch ms); the due time when
        it is in the future, else ``None`` (sent at once)."""
        text = headers.pop(DELAY)
        try:
            delay = float(text)
        except ValueError:
            delay = float("nan")
        if not delay >= 0 or delay == float("inf"):
            raise ConversionError(
                f"header {DELAY!r} must be a number of milliseconds (0 or more), got {text!r}"
            )
        due = now + math.ceil(delay)
        headers[DELIVER_AT] = str(due)
        if due <= now:
            return None
        if not self.binder.capabilities.delayed_delivery:
            raise CapabilityError(
                f"binder {self.binder.name!r} cannot delay a message (to {self.destination!r}): "
                "it does not declare the capability 'delayed_delivery'"
            )
        self._holding = True
        return due

    def _tombstone(self, key: Any, headers: dict[str, str] | None) -> OutboundRecord:
        """A record without a value (no ``contentType`` is added: there is no content); a key
        expression sees the payload ``None``."""
        if not self.binder.capabilities.tombstones:
            raise ConversionError(
                f"binder {self.binder.name!r} cannot send a tombstone (to {self.destination!r}): "
                "it does not declare the capability 'tombstones'"
            )
        headers = dict(headers) if headers else {}
        raw_key = key if type(key) is bytes else key_bytes(key)
        partition = self._sticky
        if self._partitioned:
            partition = self._partition(None, headers, key, raw_key)
        return self._made(None, raw_key, headers, partition)

    def forward(
        self, value: bytes | None, key: bytes | None, headers: dict[str, str]
    ) -> OutboundRecord:
        """A record of a value as received (not encoded again) with ``headers`` as given,
        placed by its key like any record (a retry scheduled again, say); ``x-delay``,
        ``ttl`` and tracing as for :meth:`record`."""
        partition = self._sticky if key is None else select_partition(key, self._count)
        return self._made(value, key, dict(headers), partition)

    def records(self, outputs: Iterable[tuple[Any, Any, dict[str, str]]]) -> list[OutboundRecord]:
        """Encode a function's outputs."""
        return [self.record(payload, key, headers) for payload, key, headers in outputs]

    def _partition(self, payload: Any, headers: dict[str, str], key: Any, raw: bytes | None) -> int:
        if self.key_expression is not None:
            key = decode_key(key) if type(key) is bytes else key
            raw = partition_key(self.key_expression, payload, headers, key)
        if raw is None:
            return self._sticky
        return select_partition(raw, self._count)

    def _move_on(self) -> None:
        """A batch was sealed: the next one's keyless records go to the next partition."""
        if self._count > 1:
            self._sticky = (self._sticky + 1) % self._count

    def _keep_or_place(self, records: Sequence[OutboundRecord]) -> None:
        """Dead letters carry their original partition: kept when this destination has it,
        else placed by key, else with this batch's keyless records."""
        count = self._count
        for record in records:
            if not 0 <= record.partition < count:
                key = record.key
                record.partition = self._sticky if key is None else select_partition(key, count)

    def traced_letters(
        self, originals: Sequence[InboundRecord], letters: list[OutboundRecord]
    ) -> list[OutboundRecord]:
        """Dead letters of ``originals`` with publish spans under the originals' contexts
        (their ``traceparent`` kept, not replaced), when tracing."""
        if self._tracing is None:
            return letters
        self._traced = True
        return self._tracing.letters(self._system, self.destination, originals, letters)

    async def send(
        self, payload: Any, key: Any = None, headers: Mapping[str, Any] | None = None
    ) -> None:
        """Encode and send one message; returns once the backend accepted it."""
        record = self.record(payload, key, normalize_headers(headers) if headers else None)
        await self.send_records((record,))

    def submit(
        self, payload: Any, key: Any = None, headers: Mapping[str, Any] | None = None
    ) -> asyncio.Future[None]:
        """Encode now and send together with everything else submitted in this loop iteration.

        Returns a future of its own per call (cancelling it abandons only the wait), done
        once the backend accepted the message; an encoding error fails it at once. Costs no
        task per message, so ``asyncio.gather`` over many submits runs at the client's speed.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        try:
            record = self.record(payload, key, normalize_headers(headers) if headers else None)
        except Exception as exc:
            future.set_exception(exc)
            return future
        batch = self._batch
        if batch is None:
            batch = self._batch = ([], [])
            loop.call_soon(self._flush)
        batch[0].append(record)
        batch[1].append(future)
        return future

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        self._move_on()  # the batch is sealed: keyless records after it go elsewhere
        task = asyncio.get_running_loop().create_task(self._deliver(*batch))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(
        self, records: list[OutboundRecord], futures: list[asyncio.Future[None]]
    ) -> None:
        try:
            await self._send(records)
        except asyncio.CancelledError:
            _fail(futures, ClosedError(f"{self.destination}: closed while sending"))
            raise
        except Exception as exc:
            _fail(futures, exc)
            return
        del records  # accepted: not kept alive while their sends complete
        await _succeed(futures)

    async def send_records(self, records: Sequence[OutboundRecord]) -> None:
        """Send encoded records in order, as one batch; returns once the backend accepted all
        of them. Keyless records made after this call go to the next partition."""
        if not records:
            return
        self._move_on()
        await self._send(records)

    async def _send(self, records: Sequence[OutboundRecord]) -> None:
        producer = self._producer
        if producer is None:
            await self.start()
            producer = self._producer
            assert producer is not None
        if self.dead_letters_of is not None:
            self._keep_or_place(records)
        try:
            if self._holding and _any_due(records):
                await self._send_or_hold(producer, records)
            else:
                await producer.send_batch(records)
        except Exception as exc:
            self.stats.errors += len(records)
            if self._traced:
                end_sent(records, exc)
            raise
        self.stats.sent += len(records)
        if self._traced:
            end_sent(records)
        for observer in self._observers:
            for record in records:
                observer(self.destination, record)

    async def send_located(self, records: Sequence[OutboundRecord]) -> list[tuple[int, Any]]:
        """Send ``records`` (one by one: for tools) and say where each went: its partition and
        its position where the producer tells it (``send_located``: an offset, an entry id),
        ``"due <ISO time>"`` for a delayed record, else ``None``."""
        if self._producer is None:
            await self.start()
        producer = self._producer
        assert producer is not None
        located = getattr(producer, "send_located", None)
        places: list[tuple[int, Any]] = []
        for record in records:
            due = getattr(record, "due", None)
            if due is not None:
                await self._send([record])
                when = datetime.fromtimestamp(due / 1000, UTC).isoformat(timespec="milliseconds")
                places.append((record.partition, f"due {when}"))
            elif located is not None:
                (where,) = await located([record])
                self.stats.sent += 1
                places.append((record.partition, where))
            else:
                await self._send([record])
                places.append((record.partition, None))
        return places

    async def _send_or_hold(self, producer: Producer, records: Sequence[OutboundRecord]) -> None:
        """Records due later go to the producer's ``schedule``, the others as a batch."""
        later = [r for r in records if getattr(r, "due", None) is not None]
        now = [r for r in records if getattr(r, "due", None) is None]
        schedule = getattr(producer, "schedule", None)
        if schedule is None:
            raise CapabilityError(
                f"binder {self.binder.name!r} declares delayed_delivery but its producer for "
                f"{self.destination!r} has no schedule()"
            )
        if now:
            await producer.send_batch(now)
        await schedule(later)


def _any_due(records: Sequence[OutboundRecord]) -> bool:
    return any(getattr(r, "due", None) is not None for r in records)


_SUCCEED_SLICE = 512
"""Accepted sends completed per loop iteration (see :func:`_succeed`)."""


async def _succeed(futures: list[asyncio.Future[None]]) -> None:
    """Complete accepted sends, a slice per loop iteration (all of them, even if cancelled).

    Each ``set_result`` schedules its waiters' callbacks (one ``gather`` callback per send):
    a backlog of thousands at once sits in the ready queue long enough for the garbage
    collector to promote all of it to the oldest generation and then rescan the heap.
    """
    done = 0
    try:
        while done < len(futures):
            if done:
                await asyncio.sleep(0)
            for future in futures[done : done + _SUCCEED_SLICE]:
                if not future.done():
                    future.set_result(None)
            done += _SUCCEED_SLICE
    finally:
        for future in futures[done:]:
            if not future.done():
                future.set_result(None)


def _fail(futures: list[asyncio.Future[None]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
