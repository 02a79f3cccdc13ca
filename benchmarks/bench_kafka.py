"""The Kafka binder side by side with raw aiokafka, against the same broker in one run.

Work: produce N keyed 100-byte messages to a 4-partition topic, pipelined; then
consume them all in a consumer group, committing after each fetched batch.

- raw aiokafka, as one would write it: ``producer.send`` for every message, then
  ``gather`` of the delivery futures; ``getmany`` in a loop, a call per record,
  ``commit`` per batch (awaited, as in aiokafka's manual-commit example);
- the binder as an app uses it: ``asyncio.gather`` over ``app.send``, and an
  ``@app.consumer`` (async, receiving the payload as ``bytes``);
- the binder's own layer without the core: ``send_batch`` of the N records on its
  producer, and a ``fetch`` → ``commit`` loop on its consumer. The gap between the
  two binder rows is the core's per-message work (encoding, a future per
  ``app.send`` and its ``gather``, decoding and calling the function), common to
  every binder;
- for reference, raw aiokafka's batch API (``create_batch`` / ``send_batch``), which
  the binder's producer uses inside: the fastest way to produce with the client, but
  not the way most code is written, so not the target's anchor.

Then a backlog: N (:data:`BACKLOG_N`) keyed messages to one partition with every send
outstanding at once, raw ``send`` per message without awaiting its delivery then ``flush``,
against ``app.send`` per message then one ``gather`` of all, and both again awaiting each
1,000 (:data:`BACKLOG_CHUNK`) before the next; the anchor of every ratio is raw all-outstanding.

Then latency: one timestamp every 5 ms, raw ``send_and_wait`` → ``getmany`` against
``await app.send`` → ``@app.consumer``, both with a 10 ms fetch wait (see
:data:`LATENCY_FETCH_WAIT_MS`).

The binder is faster than the raw client at the same work where it does less per
message than idiomatic client code: its producer builds record batches itself
(no coroutine and delivery future per record), its consumer commits in the
background, one request in flight, instead of awaiting a commit per fetch.

Both use the same client settings (``acks=all``, linger 0; the group timings of
:data:`binders.kafka.testing.FAST_GROUPS`). Consumption is timed from the moment
the consumer owns its partitions (both wait for the group join first) to the last
message handled. The broker is ``$KAFKA_BOOTSTRAP_SERVERS``, else a Tansu started here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Iterator

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

from binder import App
from binder.partitioning import select_partition
from binder.spi import Binder, ConsumerSpec, OutboundRecord, ProducerSpec
from binder.testing.conformance.support import IdleListener
from binders.kafka import KAFKA_BINDER_TYPE, KafkaOptions
from binders.kafka.testing import FAST_GROUPS, Tansu

PARTITIONS = 4
VALUE = b"x" * 100
ROUNDS = 3
FETCH_MAX_WAIT_MS = 100
"""Both consumers: a long poll on drained partitions delays the others' next fetch by up
to this much (one fetch in flight per broker), which at the default 500 ms is most of
the noise between runs."""


@contextlib.contextmanager
def _broker() -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    with Tansu() as servers:
        yield servers


def _keys(n: int) -> list[bytes]:
    return [f"key-{i % 1000}".encode() for i in range(n)]


def _app(
    servers: str,
    bindings: dict[str, dict[str, object]] | None = None,
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
) -> App:
    kafka = {
        "type": "kafka",
        "bootstrap-servers": servers,
        "fetch-max-wait-ms": fetch_max_wait_ms,
        **FAST_GROUPS,
    }
    return App(config={"binder": {"binders": {"kafka": kafka}, "bindings": bindings or {}}})


# -- raw aiokafka -------------------------------------------------------------------------


async def raw_produce(servers: str, topic: str, n: int) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await producer.start()
    try:
        keys = _keys(n)
        started = time.perf_counter()
        pending = [await producer.send(topic, VALUE, key=key) for key in keys]
        await asyncio.gather(*pending)
        return n / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def raw_produce_batches(servers: str, topic: str, n: int) -> float:
    """For reference, not the target's anchor: the client's batch API as an expert uses it
    (a batch per partition, Kafka's default partitioner, a full batch submitted at once)."""
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await producer.start()
    try:
        keys = _keys(n)
        partitions = sorted(await producer.partitions_for(topic))
        partitioner = DefaultPartitioner()
        started = time.perf_counter()
        batches: dict[int, BatchBuilder] = {}
        pending = []
        for key in keys:
            partition = partitioner(key, partitions, partitions)
            batch = batches.get(partition) or batches.setdefault(partition, producer.create_batch())
            if batch.append(key=key, value=VALUE, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=VALUE, timestamp=None)
        for partition, batch in batches.items():
            pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
        return n / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def raw_consume(servers: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=FAST_GROUPS["session-timeout-ms"],
        heartbeat_interval_ms=FAST_GROUPS["heartbeat-interval-ms"],
        max_poll_records=500,
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
    )
    await consumer.start()  # returns once the group gave it its partitions
    handled = 0

    def handle(value: bytes) -> None:
        nonlocal handled
        handled += 1

    try:
        started = time.perf_counter()
        while handled < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batch.values():
                for record in records:
                    handle(record.value)
            if batch:
                await consumer.commit({tp: rs[-1].offset + 1 for tp, rs in batch.items()})
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


# -- the binder ---------------------------------------------------------------------------


async def binder_produce(servers: str, topic: str, n: int) -> float:
    async with _app(servers) as app:
        await app.send(topic, VALUE, key=b"warm-up")  # provisions the topic, starts the client
        keys = _keys(n)
        started = time.perf_counter()
        await asyncio.gather(*(app.send(topic, VALUE, key=key) for key in keys))
        return n / (time.perf_counter() - started)


async def binder_consume(servers: str, topic: str, n: int) -> float:
    group = f"binder-{uuid.uuid4().hex[:8]}"
    app = _app(servers, {"sink-in-0": {"destination": topic, "group": group}})
    done = asyncio.Event()
    handled = 0

    @app.consumer
    async def sink(value: bytes) -> None:
        nonlocal handled
        handled += 1
        if handled >= n:
            done.set()

    async with app:  # returns once the group gave the consumer its partitions
        started = time.perf_counter()
        await done.wait()
        return n / (time.perf_counter() - started)


# -- the binder's own layer (the SPI the core drives), without the core -------------------


async def spi_produce(servers: str, topic: str, n: int) -> float:
    binder = _binder(servers)
    await binder.start()
    try:
        producer = await binder.producer(ProducerSpec(topic, PARTITIONS))
        records = [  # placed as the core would: the binder writes the partition it is given
            OutboundRecord(VALUE, key, {}, select_partition(key, PARTITIONS)) for key in _keys(n)
        ]
        started = time.perf_counter()
        await producer.send_batch(records)
        return n / (time.perf_counter() - started)
    finally:
        await binder.close()


async def spi_consume(servers: str, topic: str, n: int) -> float:
    binder = _binder(servers)
    await binder.start()
    try:
        spec = ConsumerSpec(topic, f"spi-{uuid.uuid4().hex[:8]}", max_records=500)
        consumer = await binder.consumer(spec, IdleListener())
        handled = 0
        started = time.perf_counter()
        while handled < n:
            records = await consumer.fetch()
            handled += len(records)
            await consumer.commit(records)
        return n / (time.perf_counter() - started)
    finally:
        await binder.close()


def _binder(servers: str) -> Binder:
    options = KafkaOptions.model_validate(
        {"bootstrap-servers": servers, "fetch-max-wait-ms": FETCH_MAX_WAIT_MS, **FAST_GROUPS}
    )
    return KAFKA_BINDER_TYPE.create("bench", options)


# -- the run ------------------------------------------------------------------------------


CONSUMERS = {"raw": raw_consume, "app": binder_consume, "spi": spi_consume}
CONSUME_PASSES = 3
"""Consuming N records takes a fraction of a second here, where a stall of a few
milliseconds shows: each round reads the topic this many times per consumer, the
consumers' order turned each pass."""


async def _round(servers: str, n: int) -> dict[str, list[float]]:
    raw_topic, binder_topic = (f"bench-{kind}-{uuid.uuid4().hex[:8]}" for kind in "rb")
    for topic in (raw_topic, binder_topic):
        await _create(servers, topic)
    figures = {
        "produce raw": [await raw_produce(servers, raw_topic, n)],
        "produce raw-batches": [await raw_produce_batches(servers, raw_topic, n)],
        "produce app": [await binder_produce(servers, binder_topic, n)],
        "produce spi": [await spi_produce(servers, binder_topic, n)],
    }
    order = list(CONSUMERS)
    for _ in range(CONSUME_PASSES):
        for side in order:
            figure = await CONSUMERS[side](servers, raw_topic, n)
            figures.setdefault(f"consume {side}", []).append(figure)
        order = order[1:] + order[:1]
    await _delete(servers, raw_topic, binder_topic)
    return figures


async def _create(servers: str, topic: str, partitions: int = PARTITIONS) -> None:
    binder = _binder(servers)
    await binder.start()
    try:
        await binder.provision(topic, partitions)
    finally:
        await binder.close()


async def _delete(servers: str, *topics: str) -> None:
    binder = _binder(servers)
    await binder.start()
    try:
        for topic in topics:
            await binder.delete(topic)
    finally:
        await binder.close()


# -- many sends outstanding, one partition -------------------------------------------------

BACKLOG_N = 20_000
BACKLOG_CHUNK = 1_000
BACKLOG_SHAPES = {"all": None, "chunks": BACKLOG_CHUNK}
"""all outstanding at once, or awaited 1,000 at a time."""


async def raw_backlog(servers: str, topic: str, n: int, chunk: int | None) -> float:
    """``producer.send`` per message, its delivery future not awaited, then ``flush``."""
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, VALUE, key=b"warm-up")  # metadata, connection
        keys = _keys(n)
        step = chunk or n
        started = time.perf_counter()
        for start in range(0, n, step):
            for key in keys[start : start + step]:
                await producer.send(topic, VALUE, key=key)
            await producer.flush()
        return n / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def binder_backlog(servers: str, topic: str, n: int, chunk: int | None) -> float:
    """``futures = [app.send(...) for ...]`` then ``await gather(*futures)``, per chunk."""
    async with _app(servers) as app:
        await app.send(topic, VALUE, key=b"warm-up")
        keys = _keys(n)
        step = chunk or n
        started = time.perf_counter()
        for start in range(0, n, step):
            futures = [app.send(topic, VALUE, key=key) for key in keys[start : start + step]]
            await asyncio.gather(*futures)
        return n / (time.perf_counter() - started)


async def _backlog_round(servers: str, n: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {}
    topics = []
    for shape, chunk in BACKLOG_SHAPES.items():
        for side, run in (("raw", raw_backlog), ("app", binder_backlog)):
            topic = f"bench-backlog-{side}-{uuid.uuid4().hex[:8]}"
            await _create(servers, topic, 1)
            topics.append(topic)
            figures[f"{side} {shape}"] = [await run(servers, topic, n, chunk)]
    await _delete(servers, *topics)
    return figures


# -- latency ------------------------------------------------------------------------------

LATENCY_MESSAGES = 300
LATENCY_GAP = 0.005
LATENCY_FETCH_WAIT_MS = 10
"""Tansu answers a fetch that found nothing only when its wait runs out (Apache Kafka answers
as soon as data arrives), so latency there is about half the wait: both sides use 10 ms."""


async def raw_latency(servers: str, topic: str) -> list[float]:
    """``send_and_wait`` a timestamp every 5 ms; a group consumer's ``getmany`` loop."""
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=servers,
        group_id=f"raw-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="latest",
        fetch_max_wait_ms=LATENCY_FETCH_WAIT_MS,
        session_timeout_ms=FAST_GROUPS["session-timeout-ms"],
        heartbeat_interval_ms=FAST_GROUPS["heartbeat-interval-ms"],
    )
    await producer.start()
    await consumer.start()
    seen: list[float] = []

    async def consume() -> None:
        while len(seen) < LATENCY_MESSAGES:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                seen.extend(time.perf_counter() - float(r.value) for r in records)

    try:
        await asyncio.sleep(1)  # the consumer owns its partitions and is fetching
        reading = asyncio.create_task(consume())
        for _ in range(LATENCY_MESSAGES):
            await producer.send_and_wait(topic, str(time.perf_counter()).encode())
            await asyncio.sleep(LATENCY_GAP)
        await asyncio.wait_for(reading, 30)
        return seen
    finally:
        await consumer.stop()
        await producer.stop()


async def binder_latency(servers: str, topic: str) -> list[float]:
    """``await app.send`` of a timestamp every 5 ms; an ``@app.consumer`` in a group."""
    sink_binding = {"sink-in-0": {"destination": topic, "group": "latency"}}
    app = _app(servers, sink_binding, fetch_max_wait_ms=LATENCY_FETCH_WAIT_MS)
    seen: list[float] = []
    done = asyncio.Event()

    @app.consumer
    async def sink(sent: float) -> None:
        seen.append(time.perf_counter() - sent)
        if len(seen) >= LATENCY_MESSAGES:
            done.set()

    async with app:
        await asyncio.sleep(1)
        for _ in range(LATENCY_MESSAGES):
            await app.send(topic, time.perf_counter())
            await asyncio.sleep(LATENCY_GAP)
        await asyncio.wait_for(done.wait(), 30)
    return seen


async def _latencies(servers: str) -> dict[str, list[float]]:
    topics = {side: f"bench-latency-{side}-{uuid.uuid4().hex[:8]}" for side in ("raw", "app")}
    for topic in topics.values():
        await _create(servers, topic)
    figures = {
        "raw": await raw_latency(servers, topics["raw"]),
        "app": await binder_latency(servers, topics["app"]),
    }
    await _delete(servers, *topics.values())
    return figures


def _percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    return f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


ROWS = [
    ("produce", "app", "app.send x N, gathered"),
    ("produce", "spi", "binder producer.send_batch"),
    ("consume", "app", "@app.consumer (async)"),
    ("consume", "spi", "binder fetch → commit loop"),
]


def main(n: int) -> None:
    with _broker() as servers:
        rounds = [asyncio.run(_round(servers, n)) for _ in range(ROUNDS)]
        backlog = [asyncio.run(_backlog_round(servers, BACKLOG_N)) for _ in range(ROUNDS)]
        latency = asyncio.run(_latencies(servers))
    best, median = _summary(rounds)
    print(
        f"\nKafka binder vs raw aiokafka, {n:,} keyed {len(VALUE)}-byte messages, "
        f"{PARTITIONS} partitions, broker {servers}: best (median) of {ROUNDS} runs producing, "
        f"{ROUNDS * CONSUME_PASSES} consuming"
    )
    print(f"{'work':8} {'binder side':28} {'raw msg/s':>18} {'binder msg/s':>18} {'ratio':>12}")
    for work, side, label in ROWS:
        raw, ours = f"{work} raw", f"{work} {side}"
        print(
            f"{work:8} {label:28} {_pair(best[raw], median[raw]):>18} "
            f"{_pair(best[ours], median[ours]):>18} "
            f"{best[ours] / best[raw]:5.2f} ({median[ours] / median[raw]:.2f})"
        )
    batches, app = best["produce raw-batches"], best["produce app"]
    print(
        f"for reference: raw aiokafka's batch API (create_batch/send_batch) {batches:,.0f} "
        f"msg/s; app.send reaches {app / batches:.2f} of it"
    )
    _print_backlog(*_summary(backlog))
    print(
        f"latency, one message every {LATENCY_GAP * 1000:.0f} ms, fetch wait "
        f"{LATENCY_FETCH_WAIT_MS} ms: raw send_and_wait → getmany {_percentiles(latency['raw'])}; "
        f"app.send → @app.consumer {_percentiles(latency['app'])}"
    )


def _summary(rounds: list[dict[str, list[float]]]) -> tuple[dict[str, float], dict[str, float]]:
    """(best, median) per case over the rounds."""
    samples = {case: [f for r in rounds for f in r[case]] for case in rounds[0]}
    best = {case: max(figures) for case, figures in samples.items()}
    median = {case: statistics.median(figures) for case, figures in samples.items()}
    return best, median


def _print_backlog(best: dict[str, float], median: dict[str, float]) -> None:
    print(
        f"\nmany sends outstanding: {BACKLOG_N:,} keyed {len(VALUE)}-byte messages, 1 partition, "
        f"best (median) of {ROUNDS} runs; ratio to raw all outstanding (send, then flush)"
    )
    print(f"{'shape':24} {'raw msg/s':>18} {'app.send msg/s':>18} {'ratio':>12}")
    anchor_best, anchor_median = best["raw all"], median["raw all"]
    for shape, label in (("all", "all outstanding"), ("chunks", f"gathers of {BACKLOG_CHUNK:,}")):
        raw, ours = f"raw {shape}", f"app {shape}"
        print(
            f"{label:24} {_pair(best[raw], median[raw]):>18} "
            f"{_pair(best[ours], median[ours]):>18} "
            f"{best[ours] / anchor_best:5.2f} ({median[ours] / anchor_median:.2f})"
        )


def _pair(best: float, median: float) -> str:
    return f"{best / 1000:,.0f}k ({median / 1000:,.0f}k)"
