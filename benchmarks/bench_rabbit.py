"""The RabbitMQ binder side by side with raw aio-pika and FastStream, on one broker in one run.

Work: N (``--rabbit-n``, default 50,000) 100-byte messages with a key (``key-0`` … ``key-999``)
to one durable topic exchange with one durable classic queue bound with ``#``; every client
and handler on one event loop. Each row is the best (median) of :data:`ROUNDS` runs; ratios
are to the raw row of the same work.

Produce, each run to a fresh exchange and queue, after one warm-up message:

- raw, the anchor: aio-pika, a channel with publisher confirms, persistent messages published
  ``mandatory`` with the key as a header, in windows of 1,000 (``asyncio.gather`` of
  ``exchange.publish``, each window confirmed before the next);
- ``app.send`` all outstanding: a coroutine per message, one ``asyncio.gather`` of all N;
- ``app.send`` in gathers of 1,000, each awaited before the next;
- FastStream (``faststream.rabbit``) ``broker.publish`` in gathers of 1,000, persistent,
  with publisher confirms (its default), of N_fs = min(N, :data:`FASTSTREAM_N`).

After each run the queue must hold every message, else the row fails.

Consume, of a queue pre-filled with N messages by raw aio-pika, all calling the same async
handler (it counts; the time is taken at its N-th call):

- raw, the anchor: aio-pika ``queue.consume`` with manual acks, prefetch 1,000, the handler
  awaited per message, a ``multiple`` ack every :data:`ACK_EVERY` messages; timed from just
  before ``consume``;
- ``@app.consumer``, the handler taking ``bytes``, its group the pre-filled queue's: timed from
  entering ``async with app``, and again from the handler's first call;
- FastStream: ``@broker.subscriber`` on the same kind of queue (N_fs messages), acking after
  each handler call; timed from ``broker.start()``, and from the first call.

Latency: a timestamp every 5 ms (:data:`LATENCY_MESSAGES`), raw publish (confirmed) → a raw
consumer, against ``await app.send`` → ``@app.consumer``.

Names start with a fresh ``bench-rabbit-<random>`` prefix; every exchange and queue a run
declared is deleted at its end, also when a row fails. The broker is ``$RABBITMQ_URL``, else
``amqp://guest:guest@127.0.0.1:5672/``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aio_pika

from benchmarks.bench_redis import (
    RowError,
    Runs,
    Samples,
    _deadline,
    _percentiles,
    _reason,
    _row,
    _sink,
    _summary,
)
from binder import App

T = TypeVar("T")

VALUE = b"x" * 100
BATCH = 1_000
ACK_EVERY = 100
ROUNDS = 3
ROW_TIMEOUT = 120.0
STOP_GRACE = 15.0
FASTSTREAM_N = 10_000
LATENCY_MESSAGES = 200
LATENCY_GAP = 0.005
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
GROUP = "g"


@dataclass
class Bench(Runs):
    url: str
    prefix: str
    n: int
    channel: Any  # an aio-pika channel for set-up and checks
    declared: list[str] = field(default_factory=list)

    async def destination(self, name: str) -> str:
        """A fresh exchange ``<prefix><name>`` with the queue ``<it>.g`` bound with ``#``, as
        the binder declares a group."""
        exchange_name = self.prefix + name
        self.declared.append(exchange_name)
        exchange = await self.channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await self.channel.declare_queue(f"{exchange_name}.{GROUP}", durable=True)
        await queue.bind(exchange, "#")
        return exchange_name

    async def check_held(self, exchange: str, expected: int) -> None:
        queue = await self.channel.declare_queue(f"{exchange}.{GROUP}", passive=True)
        count = queue.declaration_result.message_count
        if count != expected:
            raise RowError(f"queue {exchange}.{GROUP} holds {count:,} messages, not {expected:,}")

    async def delete(self, exchange: str) -> None:
        await self.channel.queue_delete(f"{exchange}.{GROUP}")
        await self.channel.exchange_delete(exchange)


def _keys(n: int) -> list[str]:
    return [f"key-{i % 1000}" for i in range(n)]


def _app(bench: Bench, bindings: dict[str, dict[str, object]] | None = None) -> App:
    config = {
        "default-binder": "r",
        "binders": {"r": {"type": "rabbit", "url": bench.url}},
        "bindings": bindings or {},
    }
    return App(config={"binder": config})


def _message(key: str) -> aio_pika.Message:
    return aio_pika.Message(
        VALUE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/octet-stream",
        headers={"x-key": key},
    )


# -- produce ------------------------------------------------------------------------------


async def raw_produce(bench: Bench, exchange_name: str, n: int | None = None) -> float:
    n = n or bench.n
    connection = await aio_pika.connect(bench.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(exchange_name)
        await exchange.publish(_message("warm-up"), "r", mandatory=True)
        keys = _keys(n)
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            await asyncio.gather(
                *(
                    exchange.publish(_message(k), "r", mandatory=True)
                    for k in keys[start : start + BATCH]
                )
            )
        return n / (time.perf_counter() - started)
    finally:
        await connection.close()


async def binder_produce(bench: Bench, destination: str, chunk: int | None) -> float:
    async with _app(bench) as app:
        await app.send(destination, VALUE, key="warm-up")
        keys = _keys(bench.n)
        step = chunk or bench.n
        started = time.perf_counter()
        for start in range(0, bench.n, step):
            await asyncio.gather(
                *(app.send(destination, VALUE, key=k) for k in keys[start : start + step])
            )
        return bench.n / (time.perf_counter() - started)


async def faststream_produce(bench: Bench, exchange_name: str) -> float:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange

    n = min(bench.n, FASTSTREAM_N)
    broker = RabbitBroker(bench.url, logger=None)
    exchange = RabbitExchange(exchange_name, type=ExchangeType.TOPIC, durable=True)
    await broker.connect()
    try:
        await broker.publish(VALUE, exchange=exchange, routing_key="r", persist=True)
        keys = _keys(n)
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            await asyncio.gather(
                *(
                    broker.publish(
                        VALUE,
                        exchange=exchange,
                        routing_key="r",
                        persist=True,
                        mandatory=True,
                        headers={"x-key": k},
                    )
                    for k in keys[start : start + BATCH]
                )
            )
        return n / (time.perf_counter() - started)
    finally:
        await broker.stop()


async def _produce_round(bench: Bench, index: int) -> None:
    rows: dict[str, tuple[Callable[[str], Awaitable[float]], int]] = {
        "produce raw": (lambda d: raw_produce(bench, d), bench.n + 1),
        "produce app all": (lambda d: binder_produce(bench, d, None), bench.n + 1),
        "produce app chunks": (lambda d: binder_produce(bench, d, BATCH), bench.n + 1),
        "produce faststream": (
            lambda d: faststream_produce(bench, d),
            min(bench.n, FASTSTREAM_N) + 1,
        ),
    }
    for case, (run, expected) in rows.items():
        name = await bench.destination(f"{case.replace(' ', '-')}-{index}")

        async def measured(
            run: Callable[[str], Awaitable[float]] = run, name: str = name, expected: int = expected
        ) -> float:
            rate = await run(name)
            await bench.check_held(name, expected)
            return rate

        try:
            await bench.measure(case, measured)
        finally:
            await bench.delete(name)


# -- consume ------------------------------------------------------------------------------


async def raw_produce_exact(bench: Bench, exchange_name: str, n: int) -> None:
    connection = await aio_pika.connect(bench.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(exchange_name)
        keys = _keys(n)
        for start in range(0, n, BATCH):
            await asyncio.gather(
                *(exchange.publish(_message(k), "r") for k in keys[start : start + BATCH])
            )
    finally:
        await connection.close()


async def raw_consume(bench: Bench, exchange_name: str) -> tuple[float, float]:
    sink, tally = _sink(bench.n)
    connection = await aio_pika.connect(bench.url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=BATCH)
        queue = await channel.get_queue(f"{exchange_name}.{GROUP}")
        handled = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal handled
            await sink(message.body)
            handled += 1
            if handled % ACK_EVERY == 0 or handled == bench.n:
                await message.ack(multiple=True)

        async with _deadline(tally):
            started = time.perf_counter()
            await queue.consume(on_message, no_ack=False)
            await tally.done.wait()
        return tally.rates(started)
    finally:
        await connection.close()


async def binder_consume(bench: Bench, exchange_name: str) -> tuple[float, float]:
    sink, tally = _sink(bench.n)
    app = _app(bench, {"sink-in-0": {"destination": exchange_name, "group": GROUP}})
    app.consumer(sink)
    async with _deadline(tally):
        started = time.perf_counter()
        async with app:
            await tally.done.wait()
    return tally.rates(started)


async def faststream_consume(bench: Bench, exchange_name: str) -> tuple[float, float]:
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    sink, tally = _sink(min(bench.n, FASTSTREAM_N))
    broker = RabbitBroker(bench.url, logger=None)
    queue = RabbitQueue(f"{exchange_name}.{GROUP}", durable=True, routing_key="#")
    exchange = RabbitExchange(exchange_name, type=ExchangeType.TOPIC, durable=True)
    broker.subscriber(queue, exchange)(sink)
    async with _deadline(tally):
        started = time.perf_counter()
        await broker.start()
        try:
            await tally.done.wait()
        finally:
            await broker.stop()
    return tally.rates(started)


async def _consume_round(bench: Bench, index: int) -> None:
    rows: dict[str, tuple[Callable[[str], Awaitable[tuple[float, float]]], int]] = {
        "consume raw": (lambda d: raw_consume(bench, d), bench.n),
        "consume app": (lambda d: binder_consume(bench, d), bench.n),
        "consume faststream": (
            lambda d: faststream_consume(bench, d),
            min(bench.n, FASTSTREAM_N),
        ),
    }
    order = list(rows)
    if index % 2:
        order[0], order[1] = order[1], order[0]
    for case in order:
        run, count = rows[case]
        name = await bench.destination(f"{case.replace(' ', '-')}-{index}")
        try:
            await raw_produce_exact(bench, name, count)
            await bench.measure(case, lambda run=run, name=name: run(name))
        finally:
            await bench.delete(name)


# -- latency ------------------------------------------------------------------------------


async def _drive(send: Callable[[bytes], Awaitable[object]], samples: Samples) -> list[float]:
    await send(str(time.perf_counter()).encode())
    await samples.reached(1)
    for _ in range(LATENCY_MESSAGES):
        await send(str(time.perf_counter()).encode())
        await asyncio.sleep(LATENCY_GAP)
    await samples.reached(LATENCY_MESSAGES + 1)
    return samples.values[1:]


async def raw_latency(bench: Bench) -> list[float]:
    samples = Samples()
    name = await bench.destination("latency-raw")
    connection = await aio_pika.connect(bench.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(name)
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=BATCH)
        queue = await consuming.get_queue(f"{name}.{GROUP}")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            samples.add(message.body)
            await message.ack()

        await queue.consume(on_message)
        return await _drive(
            lambda p: exchange.publish(aio_pika.Message(p, delivery_mode=2), "r"), samples
        )
    finally:
        await connection.close()
        await bench.delete(name)


async def binder_latency(bench: Bench) -> list[float]:
    samples = Samples()
    name = bench.prefix + "latency-app"
    bench.declared.append(name)
    app = _app(bench, {"sink-in-0": {"destination": name, "group": GROUP}})

    async def sink(value: bytes) -> None:
        samples.add(value)

    app.consumer(sink)
    try:
        async with app:
            return await _drive(lambda p: app.send(name, p), samples)
    finally:
        await bench.delete(name)


# -- the run ------------------------------------------------------------------------------


async def _run(url: str, n: int) -> tuple[Bench, str] | None:
    try:
        connection = await aio_pika.connect(url, timeout=10)
    except Exception as exc:
        print(f"\nRabbitMQ benchmark skipped: cannot reach RabbitMQ at {url}: {_reason(exc)}")
        return None
    try:
        channel = await connection.channel()
        properties = connection.transport.connection.server_properties
        server = properties.get("version", "?")
        bench = Bench(url, f"bench-rabbit-{uuid.uuid4().hex[:8]}-", n, channel, system="rabbit")
        for index in range(ROUNDS):
            await _produce_round(bench, index)
            await _consume_round(bench, index)
        for case, run in {
            "latency raw": lambda: raw_latency(bench),
            "latency app": lambda: binder_latency(bench),
        }.items():
            values = await bench.attempt(case, run)
            if values is not None:
                bench.latency[case] = values
        return bench, str(server)
    finally:
        await connection.close()


ROWS = [
    ("produce", "produce raw", "raw aio-pika: confirms, windows of 1,000"),
    ("produce", "produce app all", "app.send x N, one gather"),
    ("produce", "produce app chunks", "app.send, gathers of 1,000"),
    ("produce", "produce faststream", "FastStream publish, gathers of 1,000"),
    ("consume", "consume raw", "raw aio-pika: prefetch 1,000, acks/100"),
    ("consume", "consume app", "@app.consumer, from app start"),
    ("consume", "consume app first", "@app.consumer, from its first call"),
    ("consume", "consume faststream", "FastStream, from broker start"),
    ("consume", "consume faststream first", "FastStream, from its first call"),
]


def main(n: int) -> None:
    url = os.environ.get("RABBITMQ_URL", DEFAULT_URL)
    outcome = asyncio.run(_run(url, n))
    if outcome is None:
        return
    bench, server = outcome
    print(
        f"\nRabbitMQ binder vs raw aio-pika {aio_pika.__version__} and FastStream, {n:,} keyed "
        f"{len(VALUE)}-byte messages (FastStream {min(n, FASTSTREAM_N):,}), one classic queue, "
        f"RabbitMQ {server}, one event loop: best (median) of {ROUNDS} runs; ratio to the raw "
        "row of its work"
    )
    print(f"{'work':8} {'way':40} {'msg/s':>16} {'ratio':>12}")
    best, median = _summary(bench.figures)
    for work, case, label in ROWS:
        print(f"{work:8} {label:40} {_row(bench, case, best, median, f'{work} raw')}")
    for work in ("produce", "consume"):
        app, fast = (
            f"{work} app" if work == "consume" else "produce app chunks",
            f"{work} faststream",
        )
        if app in best and fast in best:
            print(
                f"binder ÷ FastStream {work} (rates): {best[app] / best[fast]:.1f}x "
                f"({median[app] / median[fast]:.1f}x)"
            )
    parts = [
        f"{label} {_percentiles(bench.latency[case])}"
        if case in bench.latency
        else f"{label} failed: {bench.failures.get(case)}"
        for case, label in {
            "latency raw": "raw publish → consumer",
            "latency app": "app.send → @app.consumer",
        }.items()
    ]
    print(
        f"latency, one message every {LATENCY_GAP * 1000:.0f} ms, {LATENCY_MESSAGES} "
        f"samples: {'; '.join(parts)}"
    )
