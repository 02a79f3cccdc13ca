"""InboundRecord.deliveries: a redelivered record's attempts start at its delivery count, and
one delivered more than ``max-attempts`` times is dead-lettered without calling its function.

The counts are set at the SPI boundary, as a Redis or RabbitMQ consumer sets them: a wrapper
around the real in-memory log hands each fetched record over with ``deliveries`` looked up by
its payload. Records are written before the app starts, so its first fetch takes them as one
chunk; an absence (a function never called) is proven by later records of the same lane.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from binder import App, Message, plugins
from binder.bindings import InputBinding
from binder.errors import DeliveryLimitExceeded
from binder.message import (
    DELIVERY_ATTEMPT,
    EXCEPTION_MESSAGE,
    EXCEPTION_TYPE,
    ORIGINAL_DELIVERY_ATTEMPT,
    ORIGINAL_OFFSET,
)
from binder.retry import RetryPolicy
from binder.spi import (
    Binder,
    Consumer,
    ConsumerSpec,
    InboundRecord,
    OutboundRecord,
    ProducerSpec,
    RebalanceListener,
)
from binder.testing.conformance.support import IdleListener, Inbox, fetch_records, run
from binders.log import LogBinder, LogOptions
from binders.log.engine import Broker

GROUP = "g"
MAX_ATTEMPTS = 3
OVER_LIMIT = "binder.errors.DeliveryLimitExceeded"
WITNESS = b'"witness"'

Call = tuple[str, str | None]
"""(payload, x-delivery-attempt) of one call; the attempt is None where the function takes
the payload and cannot see it."""


@pytest.fixture
def broker() -> Iterator[str]:
    name = f"redeliveries-{uuid.uuid4().hex}"
    yield name
    Broker.forget(name)


@pytest.fixture
def dest() -> str:
    return f"in-{uuid.uuid4().hex[:8]}"


# -- delivery counts at the SPI boundary ----------------------------------------------------


class Redeliveries:
    """Wraps a binder: its consumers of ``destination`` hand each record over with
    ``deliveries`` = ``counts[payload]`` (1 when absent), and ``chunks`` holds the
    payloads of each fetch, to show what came in one chunk."""

    def __init__(self, destination: str, counts: dict[str, int]) -> None:
        self.destination, self.counts = destination, counts
        self.chunks: list[list[Any]] = []

    def wrap(self, binder: Binder) -> Binder:
        return _CountingBinder(binder, self)

    def counted(self, records: Sequence[InboundRecord]) -> list[InboundRecord]:
        payloads: list[Any] = [json.loads(r.value) if r.value else None for r in records]
        self.chunks.append(payloads)
        return [
            dataclasses.replace(record, deliveries=self.counts.get(payload, 1))
            for record, payload in zip(records, payloads, strict=True)
        ]


class _CountingBinder:
    def __init__(self, inner: Binder, redeliveries: Redeliveries) -> None:
        self._inner, self._redeliveries = inner, redeliveries
        self.name, self.capabilities = inner.name, inner.capabilities

    def __getattr__(self, name: str) -> Any:  # start, provision, producer, delete, close
        return getattr(self._inner, name)

    async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> Consumer:
        inner = await self._inner.consumer(spec, listener)
        if spec.destination != self._redeliveries.destination:
            return inner
        return _CountingConsumer(inner, self._redeliveries)


class _CountingConsumer:
    def __init__(self, inner: Consumer, redeliveries: Redeliveries) -> None:
        self._inner, self._redeliveries = inner, redeliveries

    async def fetch(self) -> list[InboundRecord]:
        records = await self._inner.fetch()
        return self._redeliveries.counted(records) if records else records

    def __getattr__(self, name: str) -> Any:  # commit, pause, resume, close
        return getattr(self._inner, name)


# -- handler shapes -------------------------------------------------------------------------


class Handled:
    """What the function under test saw: each call (each batch call in batch mode), and
    the payloads it finished."""

    def __init__(self) -> None:
        self.calls: Inbox[Call] = Inbox()
        self.batches: Inbox[list[Call]] = Inbox()
        self.done: Inbox[str] = Inbox()

    def handle(self, payload: str, attempt: str | None) -> None:
        """Record a call; a payload starting with ``fail`` always raises."""
        self.calls.add((payload, attempt))
        if payload.startswith("fail"):
            raise RuntimeError(f"cannot handle {payload}")
        self.done.add(payload)


@dataclasses.dataclass(frozen=True)
class Shape:
    """A way to write the function under test, and the binding it gets."""

    name: str
    binding: str
    register: Callable[[App, Handled], None]
    consumer: dict[str, Any] = dataclasses.field(default_factory=dict)
    definition: str | None = None
    sees_attempt: bool = True


def _direct(app: App, handled: Handled) -> None:
    @app.consumer
    async def relay(payload: str) -> None:
        handled.handle(payload, None)


def _async_message(app: App, handled: Handled) -> None:
    @app.consumer
    async def relay(message: Message[str]) -> None:
        handled.handle(message.payload, message.headers[DELIVERY_ATTEMPT])


def _sync(app: App, handled: Handled) -> None:
    @app.consumer
    def relay(payload: str) -> None:
        handled.handle(payload, None)


def _sync_message(app: App, handled: Handled) -> None:
    @app.consumer
    def relay(message: Message[str]) -> None:
        handled.handle(message.payload, message.headers[DELIVERY_ATTEMPT])


def _composition(app: App, handled: Handled) -> None:
    attempts: dict[str, str] = {}

    @app.function
    async def first(message: Message[str]) -> str:
        attempts[message.payload] = message.headers[DELIVERY_ATTEMPT]
        return message.payload

    @app.consumer
    def then(payload: str) -> None:  # a sync stage after an async one: both ran
        handled.handle(payload, attempts[payload])


def _batch(app: App, handled: Handled) -> None:
    @app.consumer
    async def relay(batch: list[Message[str]]) -> None:
        handled.batches.add([(m.payload, m.headers[DELIVERY_ATTEMPT]) for m in batch])
        if any(m.payload.startswith("fail") for m in batch):
            raise RuntimeError("cannot handle the batch")
        for message in batch:
            handled.done.add(message.payload)


DIRECT = Shape("direct", "relay-in-0", _direct, sees_attempt=False)
SHAPES = [
    DIRECT,
    Shape("async-message", "relay-in-0", _async_message),
    Shape("sync", "relay-in-0", _sync, sees_attempt=False),
    Shape("sync-message", "relay-in-0", _sync_message),
    Shape("composition", "firstthen-in-0", _composition, definition="first|then;inspect"),
    Shape("lanes", "relay-in-0", _async_message, consumer={"concurrency": 3}),
]
BATCH = Shape("batch", "relay-in-0", _batch, consumer={"batch-mode": True})
by_shape = pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])


# -- one scenario ---------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    handled: Handled
    letters: list[Message[Any]]
    chunks: list[list[Any]]
    first_after: bytes
    """What a new consumer of the group reads first after the app stopped: the witness
    sent then, when everything before it was committed."""

    def calls_of(self, payload: str) -> list[str | None]:
        return [attempt for seen, attempt in self.handled.calls.items if seen == payload]


def _app(broker: str, dest: str, shape: Shape, consumer: dict[str, Any]) -> App:
    options = {
        "max-attempts": MAX_ATTEMPTS,
        "back-off-initial-interval": 0.001,
        **shape.consumer,
        **consumer,
    }
    bindings: dict[str, Any] = {
        shape.binding: {"destination": dest, "group": GROUP, "consumer": options},
        "inspect-in-0": {"destination": f"{dest}.{GROUP}.dlq", "group": "inspect"},
    }
    section: dict[str, Any] = {
        "binders": {"local": {"type": "log", "broker": broker}},
        "bindings": bindings,
    }
    if shape.definition is not None:
        section["function-definition"] = shape.definition
    return App(config={"binder": section}, environ={})


async def _seed(broker: str, dest: str, payloads: Sequence[str]) -> None:
    """Write ``payloads`` (JSON, keys k0, k1, …) to one partition before the app starts."""
    binder = LogBinder("seed", LogOptions(broker=broker))
    await binder.start()
    try:
        count = await binder.provision(dest, 1, [GROUP])
        producer = await binder.producer(ProducerSpec(dest, count))
        records = [
            OutboundRecord(json.dumps(p).encode(), f"k{n}".encode(), partition=0)
            for n, p in enumerate(payloads)
        ]
        await producer.send_batch(records)
        await producer.close()
    finally:
        await binder.close()


async def _read_after(broker: str, dest: str) -> bytes:
    """Send a witness and return what the group reads first."""
    binder = LogBinder("raw", LogOptions(broker=broker))
    await binder.start()
    try:
        producer = await binder.producer(ProducerSpec(dest))
        await producer.send_batch([OutboundRecord(WITNESS, partition=0)])
        await producer.close()
        consumer = await binder.consumer(ConsumerSpec(dest, GROUP), IdleListener())
        try:
            return (await fetch_records(consumer, 1))[0].value or b""
        finally:
            await consumer.close()
    finally:
        await binder.close()


class Setup:
    """An app on the in-memory log whose input destination's records carry ``counts``,
    with the shape's function, and an ``inspect`` consumer collecting the dead letters."""

    def __init__(
        self,
        broker: str,
        dest: str,
        shape: Shape,
        counts: dict[str, int],
        consumer: dict[str, Any] | None = None,
    ) -> None:
        self.broker, self.dest = broker, dest
        self.handled = Handled()
        self.letters: Inbox[Message[Any]] = Inbox()
        self.redeliveries = Redeliveries(dest, counts)
        self.app = _app(broker, dest, shape, consumer or {})
        kind = plugins.binder_types()["log"]
        wrap = self.redeliveries.wrap
        self.app.use_binder_factory(lambda name, entry: wrap(kind.create(name, entry.options)))
        shape.register(self.app, self.handled)
        letters = self.letters

        @self.app.consumer
        async def inspect(letter: Message[Any]) -> None:
            letters.add(letter)

    def outcome(self, first_after: bytes) -> Outcome:
        return Outcome(self.handled, self.letters.items, self.redeliveries.chunks, first_after)


def _scenario(
    broker: str,
    dest: str,
    shape: Shape,
    payloads: Sequence[str],
    counts: dict[str, int],
    *,
    done: set[str],
    letters: int,
    consumer: dict[str, Any] | None = None,
) -> Outcome:
    """Seed ``payloads``, run the app until ``done`` were handled and ``letters`` dead
    letters arrived, stop it, and read what the group reads next."""
    setup = Setup(broker, dest, shape, counts, consumer)
    handled = setup.handled

    async def body() -> Outcome:
        await _seed(broker, dest, payloads)
        async with setup.app:
            await handled.done.wait_until(lambda items: done <= set(items), f"{sorted(done)}")
            await setup.letters.wait_count(letters, f"{letters} dead letter(s)")
        return setup.outcome(await _read_after(broker, dest))

    return run(body(), timeout=30)


def _letter(outcome: Outcome, payload: str) -> Message[Any]:
    (letter,) = [m for m in outcome.letters if m.payload == payload]
    return letter


# -- the shapes take the paths they name ----------------------------------------------------


@pytest.mark.parametrize("shape", [*SHAPES, BATCH], ids=[s.name for s in [*SHAPES, BATCH]])
def test_each_shape_takes_the_path_it_names(broker: str, dest: str, shape: Shape) -> None:
    app = _app(broker, dest, shape, {})
    shape.register(app, Handled())
    app.consumer(lambda letter: None, name="inspect")

    async def body() -> Any:
        async with app:
            binding = app.binding(shape.binding)
            assert isinstance(binding, InputBinding)
            return binding.invoker, binding.concurrency

    invoker, concurrency = run(body())
    is_direct = invoker.direct is not None
    assert is_direct == (shape.name in {"direct"}), "only the direct shape has the hot path"
    assert invoker.pipeline.is_async == (shape.name not in {"sync", "sync-message"})
    assert len(invoker.pipeline.stages) == (2 if shape.name == "composition" else 1)
    assert concurrency == (3 if shape.name == "lanes" else 1)
    assert invoker.batch == (shape is BATCH)


# -- 1. a redelivered record starts at its delivery count ------------------------------------


@by_shape
def test_a_redelivered_failure_is_retried_from_its_delivery_count_then_dead_lettered(
    broker: str, dest: str, shape: Shape
) -> None:
    outcome = _scenario(broker, dest, shape, ["fail", "m1"], {"fail": 2}, done={"m1"}, letters=1)
    expected = ["2", "3"] if shape.sees_attempt else [None, None]
    assert outcome.calls_of("fail") == expected, "attempts 2 and 3: one retry, not two"
    letter = _letter(outcome, "fail")
    assert letter.headers[ORIGINAL_DELIVERY_ATTEMPT] == "3"
    assert letter.headers[EXCEPTION_TYPE] == "builtins.RuntimeError"
    assert letter.headers[DELIVERY_ATTEMPT] == "1", "the letter's own, first delivery"
    assert outcome.calls_of("m1") == (["1"] if shape.sees_attempt else [None])
    assert outcome.first_after == WITNESS, "both committed"


@by_shape
def test_a_redelivered_record_that_succeeds_is_handled_once_at_its_delivery_count(
    broker: str, dest: str, shape: Shape
) -> None:
    outcome = _scenario(
        broker, dest, shape, ["again", "fail", "m2"], {"again": 2}, done={"m2"}, letters=1
    )
    assert outcome.calls_of("again") == (["2"] if shape.sees_attempt else [None])
    assert [m.payload for m in outcome.letters] == ["fail"], "no letter for the success"
    assert _letter(outcome, "fail").headers[ORIGINAL_DELIVERY_ATTEMPT] == "3"
    assert outcome.first_after == WITNESS


@by_shape
def test_a_record_delivered_max_attempts_times_gets_one_last_attempt(
    broker: str, dest: str, shape: Shape
) -> None:
    outcome = _scenario(
        broker, dest, shape, ["fail", "m1"], {"fail": MAX_ATTEMPTS}, done={"m1"}, letters=1
    )
    assert outcome.calls_of("fail") == (["3"] if shape.sees_attempt else [None])
    letter = _letter(outcome, "fail")
    assert letter.headers[ORIGINAL_DELIVERY_ATTEMPT] == "3"
    assert letter.headers[EXCEPTION_TYPE] == "builtins.RuntimeError"


# -- 2. over the limit: dead-lettered without a call ------------------------------------------


@by_shape
def test_a_record_delivered_more_than_max_attempts_is_dead_lettered_without_a_call(
    broker: str, dest: str, shape: Shape
) -> None:
    payloads = ["m0", "poison", "m2", "m3", "poison-end"]
    counts = {"poison": 4, "poison-end": 5}
    outcome = _scenario(broker, dest, shape, payloads, counts, done={"m0", "m2", "m3"}, letters=2)
    assert outcome.chunks[0] == payloads, "all came in one chunk"
    assert outcome.calls_of("poison") == [], "never called for it (m2 and m3 came after)"
    assert sorted(outcome.handled.done.items) == ["m0", "m2", "m3"]
    if shape.sees_attempt:
        assert {attempt for _, attempt in outcome.handled.calls.items} == {"1"}
    letter = _letter(outcome, "poison")
    assert letter.headers[EXCEPTION_TYPE] == OVER_LIMIT
    message = letter.headers[EXCEPTION_MESSAGE]
    assert "delivered 4 times" in message and "max-attempts (3)" in message, message
    assert letter.headers[ORIGINAL_DELIVERY_ATTEMPT] == "3", "the attempts that failed"
    assert letter.headers[ORIGINAL_OFFSET] == "1"
    end = _letter(outcome, "poison-end")
    assert end.headers[EXCEPTION_TYPE] == OVER_LIMIT
    assert end.headers[ORIGINAL_DELIVERY_ATTEMPT] == "4"
    assert outcome.first_after == WITNESS, "all committed, the last letter's original too"


@by_shape
def test_records_after_an_over_limit_one_keep_their_own_attempt_numbers(
    broker: str, dest: str, shape: Shape
) -> None:
    payloads = ["poison", "again", "fail"]
    counts = {"poison": 9, "again": 2, "fail": 1}
    outcome = _scenario(broker, dest, shape, payloads, counts, done={"again"}, letters=2)
    assert outcome.calls_of("poison") == []
    assert outcome.calls_of("again") == (["2"] if shape.sees_attempt else [None])
    expected = ["1", "2", "3"] if shape.sees_attempt else [None] * 3
    assert outcome.calls_of("fail") == expected
    poison, fail = _letter(outcome, "poison"), _letter(outcome, "fail")
    assert (poison.headers[EXCEPTION_TYPE], fail.headers[EXCEPTION_TYPE]) == (
        OVER_LIMIT,
        "builtins.RuntimeError",
    )
    assert poison.headers[ORIGINAL_DELIVERY_ATTEMPT] == "8"
    assert fail.headers[ORIGINAL_DELIVERY_ATTEMPT] == "3"
    assert outcome.first_after == WITNESS


def test_max_attempts_one_dead_letters_any_redelivered_record(broker: str, dest: str) -> None:
    outcome = _scenario(
        broker,
        dest,
        DIRECT,
        ["again", "m1"],
        {"again": 2},
        done={"m1"},
        letters=1,
        consumer={"max-attempts": 1},
    )
    assert outcome.calls_of("again") == []
    letter = _letter(outcome, "again")
    assert letter.headers[EXCEPTION_TYPE] == OVER_LIMIT
    assert "max-attempts (1)" in letter.headers[EXCEPTION_MESSAGE]
    assert letter.headers[ORIGINAL_DELIVERY_ATTEMPT] == "1"


def test_an_over_limit_record_is_not_retried_even_where_everything_is_retryable() -> None:
    policy = RetryPolicy(
        max_attempts=10, retryable={"DeliveryLimitExceeded": True}, default_retryable=True
    )
    assert not policy.should_retry(DeliveryLimitExceeded("delivered 11 times"), 1)


# -- 3. batch mode ----------------------------------------------------------------------------


def test_batch_mode_dead_letters_over_limit_records_and_calls_once_with_the_rest(
    broker: str, dest: str
) -> None:
    payloads = ["m0", "poison", "m2", "m3", "poison-end"]
    counts = {"poison": 4, "poison-end": 4}
    outcome = _scenario(broker, dest, BATCH, payloads, counts, done={"m0", "m2", "m3"}, letters=2)
    assert outcome.chunks[0] == payloads
    assert outcome.handled.batches.items == [[("m0", "1"), ("m2", "1"), ("m3", "1")]]
    for payload in ("poison", "poison-end"):
        letter = _letter(outcome, payload)
        assert letter.headers[EXCEPTION_TYPE] == OVER_LIMIT
        assert "delivered 4 times" in letter.headers[EXCEPTION_MESSAGE]
        assert letter.headers[ORIGINAL_DELIVERY_ATTEMPT] == "3"
    assert outcome.first_after == WITNESS, "the batch and the letters committed together"


def test_batch_mode_with_only_over_limit_records_makes_no_call_and_commits(
    broker: str, dest: str
) -> None:
    setup = Setup(broker, dest, BATCH, {"poison-a": 4, "poison-b": 4})

    async def body() -> bytes:
        await _seed(broker, dest, ["poison-a", "poison-b"])
        async with setup.app:
            await setup.letters.wait_count(2)
            await setup.app.send(dest, "m9")  # after them: a call with them would come first
            await setup.handled.done.wait_for("m9")
        return await _read_after(broker, dest)

    first_after = run(body(), timeout=30)
    assert setup.handled.batches.items == [[("m9", "1")]]
    assert {m.headers[EXCEPTION_TYPE] for m in setup.letters.items} == {OVER_LIMIT}
    assert first_after == WITNESS


def test_batch_mode_letters_carry_each_records_own_delivery_count(broker: str, dest: str) -> None:
    outcome = _scenario(
        broker,
        dest,
        BATCH,
        ["poison-a", "poison-b", "m2"],
        {"poison-a": 4, "poison-b": 6},
        done={"m2"},
        letters=2,
    )
    a, b = _letter(outcome, "poison-a"), _letter(outcome, "poison-b")
    assert a.headers[ORIGINAL_DELIVERY_ATTEMPT] == "3"
    assert "delivered 4 times" in a.headers[EXCEPTION_MESSAGE]
    assert b.headers[ORIGINAL_DELIVERY_ATTEMPT] == "5"
    assert "delivered 6 times" in b.headers[EXCEPTION_MESSAGE]


def test_a_failing_batch_is_numbered_by_its_most_delivered_record(broker: str, dest: str) -> None:
    outcome = _scenario(broker, dest, BATCH, ["m0", "fail"], {"fail": 2}, done=set(), letters=2)
    assert outcome.handled.batches.items == [
        [("m0", "2"), ("fail", "2")],
        [("m0", "3"), ("fail", "3")],
    ], "attempt 2, then one retry"
    assert {m.headers[ORIGINAL_DELIVERY_ATTEMPT] for m in outcome.letters} == {"3"}
    assert outcome.first_after == WITNESS


# -- 4. without a dead-letter destination ------------------------------------------------------


class _LogInbox(logging.Handler):
    """The ``binder.bindings`` log records at ERROR, to wait on."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: Inbox[logging.LogRecord] = Inbox()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.add(record)


@pytest.fixture
def errors() -> Iterator[_LogInbox]:
    handler, logger = _LogInbox(), logging.getLogger("binder.bindings")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.mark.parametrize(
    ("shape", "drops"),
    [(DIRECT, [1, 1]), (BATCH, [1, 1])],  # each over-limit record dropped with its own count
    ids=["direct", "batch"],
)
def test_without_dead_letters_an_over_limit_record_is_dropped_logged_and_committed(
    broker: str,
    dest: str,
    shape: Shape,
    drops: list[int],
    errors: _LogInbox,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="binder.bindings")
    setup = Setup(broker, dest, shape, {"poison": 4, "poison-end": 4}, {"dead-letter": False})

    async def body() -> bytes:
        await _seed(broker, dest, ["poison", "m1", "poison-end"])
        async with setup.app:
            await setup.handled.done.wait_for("m1")
            await errors.records.wait_count(len(drops), "the drops logged")
        return await _read_after(broker, dest)

    first_after = run(body(), timeout=30)
    called = {p for p, _ in setup.handled.calls.items}
    called |= {p for batch in setup.handled.batches.items for p, _ in batch}
    assert called == {"m1"}, "never called for the dropped ones"
    assert setup.letters.items == []
    records = [r for r in caplog.records if r.name == "binder.bindings"]
    assert [r.levelno for r in records] == [logging.ERROR] * len(drops), "no retry warnings"
    for record, count in zip(records, drops, strict=True):
        text = record.getMessage()
        assert f"dropping {count} failed message(s) after 3 attempt(s)" in text, text
        assert "delivered 4 times" in text and "max-attempts (3)" in text, text
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], DeliveryLimitExceeded)
    assert first_after == WITNESS, "dropped and committed, the last one too"


# -- 5. one delivery changes nothing ---------------------------------------------------------


@by_shape
def test_one_delivery_everywhere_numbers_attempts_from_one(
    broker: str, dest: str, shape: Shape
) -> None:
    counts = {"m0": 1, "fail": 1, "m2": 1}
    outcome = _scenario(
        broker, dest, shape, ["m0", "fail", "m2"], counts, done={"m0", "m2"}, letters=1
    )
    assert outcome.calls_of("m0") == (["1"] if shape.sees_attempt else [None])
    expected = ["1", "2", "3"] if shape.sees_attempt else [None] * 3
    assert outcome.calls_of("fail") == expected
    letter = _letter(outcome, "fail")
    assert letter.headers[ORIGINAL_DELIVERY_ATTEMPT] == "3"
    assert letter.headers[EXCEPTION_TYPE] == "builtins.RuntimeError"
    assert outcome.first_after == WITNESS


def test_one_delivery_in_batch_mode_numbers_the_call_one(broker: str, dest: str) -> None:
    outcome = _scenario(
        broker, dest, BATCH, ["m0", "m1"], {"m0": 1, "m1": 1}, done={"m0", "m1"}, letters=0
    )
    assert outcome.handled.batches.items == [[("m0", "1"), ("m1", "1")]]
    assert outcome.first_after == WITNESS


def test_a_record_built_without_a_count_is_delivered_once() -> None:
    assert InboundRecord("d", 0, 0, b"x").deliveries == 1


def test_app_send_places_keyed_records_over_the_real_partition_count() -> None:
    """The first burst of ``app.send`` to a destination that has 4 partitions (made by
    someone else) is placed by key over those 4, as a configured binding places it."""
    import uuid

    from binder.partitioning import select_partition
    from binder.testing.conformance.support import Conformance, run

    broker = f"placed-{uuid.uuid4().hex[:8]}"
    suite = Conformance({"type": "log", "broker": broker})
    keys = [f"k{n}" for n in range(40)]

    async def scenario() -> list[Any]:
        await suite.provision("placed", 4)
        app = suite.app()
        async with app:
            await asyncio.gather(*(app.send("placed", {"k": k}, key=k) for k in keys))
        return await suite.read_raw("placed", "g", len(keys))

    try:
        records = run(scenario())
    finally:
        run(suite.cleanup())
    placed = {record.key.decode(): record.partition for record in records}
    assert placed == {k: select_partition(k.encode(), 4) for k in keys}
