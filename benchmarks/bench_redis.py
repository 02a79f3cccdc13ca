"""The Redis Streams binder side by side with raw redis-py and FastStream, on one Redis in one run.

Work: N (``--redis-n``) 100-byte messages with a key (``key-0`` … ``key-999``), one stream;
every client and handler on one event loop. Each row is the best (median) of :data:`ROUNDS`
runs; ratios are to the raw row of the same work.

Produce, each run to a fresh stream, after one warm-up message (connection, binder set-up):

- raw, the anchor: ``redis.asyncio.Redis``, ``XADD`` with fields ``payload`` and ``key`` in
  pipelines of 1,000 (``transaction=False``), each pipeline awaited before the next;
- ``app.send`` all outstanding: a coroutine per message, one ``asyncio.gather`` of all N;
- ``app.send`` in gathers of 1,000, each awaited before the next.

After a binder run the stream must hold every message and its last entry the fields
``payload`` and ``key``, else the row fails.

Consume, of a stream pre-filled with N entries (fields ``payload``, ``key``) by raw pipelined
``XADD``, each consumer in a fresh group created at ``0``, all calling the same async handler
(it counts; the time is taken at its N-th call):

- raw, the anchor: ``XREADGROUP COUNT 1000 BLOCK 1000`` in a loop, an awaited handler call
  per entry, then ``XACK`` of the batch's ids; timed from just after ``XGROUP CREATE``;
- ``@app.consumer``, the handler taking ``bytes``, the group set in its binding (the binder
  creates it): timed from entering ``async with app``, and again from the handler's first call;
- FastStream (``faststream.redis``): ``RedisBroker(url, logger=None)`` (its per-message access
  log off, which moves its rate by a few per cent here), ``@broker.subscriber(stream=
  StreamSub(name, group=..., consumer=..., batch=False, max_records=1000))``, of
  N_fs = min(N, :data:`FASTSTREAM_N`) entries as its own publisher writes them (one
  ``broker.publish`` copied by pipelined ``XADD``), in a group created here at ``0`` (FastStream
  creates its groups at ``$``, past a pre-filled stream); timed from ``broker.start()``, and
  from the first call. It acks each message with an awaited ``XACK`` of its own. Being slower,
  it reads fewer messages: compare rates, not times. The binder ÷ FastStream line divides rates
  measured the same way (from start; from the first call).

Latency: a timestamp every 5 ms (:data:`LATENCY_MESSAGES` of them, after one warm-up message
waited for), raw ``XADD`` → a group reader blocked in ``XREADGROUP`` (``BLOCK 1000``, on its
own connection) against ``await app.send`` → ``@app.consumer`` in a group.

Every row is bounded: a wait for messages gives up after :data:`ROW_TIMEOUT` s, naming how many
arrived; a row still running :data:`STOP_GRACE` s later is cancelled. A row that fails is
reported on its line with the reason, not run again in later rounds, and the others go on.
Every key of a run starts with a fresh prefix (the binder's ``key-prefix`` too), and at the end
all of them are deleted (``SCAN MATCH <prefix>*`` + ``UNLINK``), also when a row or the run fails.
Redis is ``$REDIS_URL``, else ``redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.asyncio import Redis

from binder import App

T = TypeVar("T")

VALUE = b"x" * 100
BATCH = 1_000
ROUNDS = 3
ROW_TIMEOUT = 120.0
STOP_GRACE = 15.0
FASTSTREAM_N = 20_000
FASTSTREAM_REQUIREMENT = "faststream[redis]>=0.7.8,<0.8"
"""Tested with 0.7.8 (it asks for ``redis>=5,<9``, so it sits beside redis-py 8.1)."""
LATENCY_MESSAGES = 200
LATENCY_GAP = 0.005
LATENCY_TIMEOUT = 30.0
DEFAULT_URL = "redis://127.0.0.1:6379/0"


class RowError(Exception):
    """A row that could not be measured; its message is what the table prints."""


@dataclass
class Tally:
    """What the shared handler saw: calls, and the times of the first and the N-th."""

    n: int
    calls: int = 0
    first: float = 0.0
    last: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def rates(self, started: float) -> tuple[float, float]:
        """msg/s from ``started`` to the N-th call, and from the first call to the N-th."""
        from_first = (self.n - 1) / (self.last - self.first) if self.n > 1 else 0.0
        return self.n / (self.last - started), from_first


def _sink(n: int) -> tuple[Callable[[bytes], Awaitable[None]], Tally]:
    """The handler every consume row calls, and its tally."""
    tally = Tally(n)

    async def sink(value: bytes) -> None:
        tally.calls += 1
        if tally.calls == 1:
            tally.first = time.perf_counter()
        if tally.calls == tally.n:
            tally.last = time.perf_counter()
            tally.done.set()

    return sink, tally


@contextlib.asynccontextmanager
async def _deadline(tally: Tally) -> AsyncIterator[None]:
    """Bounds the body by :data:`ROW_TIMEOUT`, failing with how far the handler got."""
    try:
        async with asyncio.timeout(ROW_TIMEOUT):
            yield
    except TimeoutError:
        raise RowError(
            f"aborted after {ROW_TIMEOUT:.0f} s: {tally.calls:,} of {tally.n:,} messages handled"
        ) from None


@dataclass(kw_only=True)
class Runs:
    """The figures of a benchmark run so far and the rows that failed (shared by the
    binder benchmarks); ``system`` names the run in failure lines."""

    system: str = "redis"
    figures: dict[str, list[float]] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    async def attempt(self, case: str, run: Callable[[], Awaitable[T]]) -> T | None:
        """``run()``'s result, or ``None`` with the reason kept (and then not run again)."""
        if case in self.failures:
            return None
        try:
            return await _bounded(run(), ROW_TIMEOUT + STOP_GRACE)
        except Exception as exc:
            self.failures[case] = _reason(exc)
            print(f"{self.system} bench: {case} failed: {self.failures[case]}", flush=True)
            return None

    async def measure(self, case: str, run: Callable[[], Awaitable[Any]]) -> None:
        """A figure (or, for a pair, the figures from start and from the first call)."""
        result = await self.attempt(case, run)
        if result is None:
            return
        start, first = result if isinstance(result, tuple) else (result, None)
        self.figures.setdefault(case, []).append(start)
        if first is not None:
            self.figures.setdefault(f"{case} first", []).append(first)


@dataclass
class Bench(Runs):
    """One run: where, how many, the figures so far and the rows that failed."""

    url: str
    prefix: str
    n: int
    admin: Redis


async def _bounded(run: Awaitable[T], seconds: float) -> T:
    """``run``'s result; past ``seconds`` it is cancelled (twice if it holds on) and fails."""
    task = asyncio.ensure_future(run)
    try:
        await asyncio.wait({task}, timeout=seconds)
        for _ in range(2):
            if task.done():
                break
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_GRACE)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        raise RowError(f"aborted after {seconds:.0f} s, and it did not stop when cancelled")
    if task.cancelled():
        raise RowError(f"aborted after {seconds:.0f} s")
    return task.result()


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    text = str(exc) if isinstance(exc, RowError) else f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:297] + "..."


def _keys(n: int) -> list[bytes]:
    return [f"key-{i % 1000}".encode() for i in range(n)]


def _app(bench: Bench, bindings: dict[str, dict[str, object]] | None = None) -> App:
    binder = {"type": "redis", "url": bench.url, "key-prefix": bench.prefix}
    config = {"default-binder": "r", "binders": {"r": binder}, "bindings": bindings or {}}
    return App(config={"binder": config})


async def _fill(client: Redis, stream: str, entries: list[dict[Any, bytes]]) -> None:
    """Raw pipelined ``XADD`` of ``entries``, 1,000 per pipeline."""
    for start in range(0, len(entries), BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for fields in entries[start : start + BATCH]:
                pipe.xadd(stream, fields)
            await pipe.execute()


# -- produce ------------------------------------------------------------------------------


async def raw_produce(bench: Bench, stream: str) -> float:
    async with Redis.from_url(bench.url) as client:
        await client.xadd(stream, {"payload": VALUE, "key": b"warm-up"})
        keys = _keys(bench.n)
        started = time.perf_counter()
        for start in range(0, bench.n, BATCH):
            async with client.pipeline(transaction=False) as pipe:
                for key in keys[start : start + BATCH]:
                    pipe.xadd(stream, {"payload": VALUE, "key": key})
                await pipe.execute()
        return bench.n / (time.perf_counter() - started)


async def binder_produce(bench: Bench, destination: str, chunk: int | None) -> float:
    """``app.send`` per message, gathered ``chunk`` at a time (``None``: all at once)."""
    async with _app(bench) as app:
        await app.send(destination, VALUE, key=b"warm-up")
        keys = _keys(bench.n)
        step = chunk or bench.n
        started = time.perf_counter()
        for start in range(0, bench.n, step):
            await asyncio.gather(
                *(app.send(destination, VALUE, key=k) for k in keys[start : start + step])
            )
        rate = bench.n / (time.perf_counter() - started)
    await _check_written(bench.admin, bench.prefix + destination, bench.n + 1)
    return rate


async def _check_written(client: Redis, stream: str, expected: int) -> None:
    length = await client.xlen(stream)
    if length != expected:
        raise RowError(f"stream {stream!r} holds {length:,} entries, expected {expected:,}")
    [(_, fields)] = await client.xrevrange(stream, count=1)
    if fields.get(b"payload") != VALUE or b"key" not in fields:
        raise RowError(f"last entry of {stream!r} has {sorted(fields)}, expected payload and key")


async def _produce_round(bench: Bench, index: int) -> None:
    rows: dict[str, Callable[[str], Awaitable[float]]] = {
        "produce raw": lambda dest: raw_produce(bench, bench.prefix + dest),
        "produce app all": lambda dest: binder_produce(bench, dest, None),
        "produce app chunks": lambda dest: binder_produce(bench, dest, BATCH),
    }
    for case, run in rows.items():
        destination = f"{case.replace(' ', '-')}-{index}"
        try:
            await bench.measure(case, lambda run=run, dest=destination: run(dest))
        finally:
            await bench.admin.unlink(bench.prefix + destination)


# -- consume ------------------------------------------------------------------------------


async def raw_consume(bench: Bench, stream: str, group: str) -> tuple[float, float]:
    sink, tally = _sink(bench.n)
    async with Redis.from_url(bench.url) as client, _deadline(tally):
        await client.xgroup_create(stream, group, id="0")
        started = time.perf_counter()
        while tally.calls < bench.n:
            reply = await client.xreadgroup(group, "c-0", {stream: ">"}, count=BATCH, block=1000)
            for _, entries in reply or ():
                for _, fields in entries:
                    await sink(fields[b"payload"])
                await client.xack(stream, group, *(entry_id for entry_id, _ in entries))
    return tally.rates(started)


async def binder_consume(bench: Bench, destination: str, group: str) -> tuple[float, float]:
    sink, tally = _sink(bench.n)
    app = _app(bench, {"sink-in-0": {"destination": destination, "group": group}})
    app.consumer(sink)
    async with _deadline(tally):
        started = time.perf_counter()
        async with app:
            await tally.done.wait()
    return tally.rates(started)


async def faststream_consume(bench: Bench, stream: str, group: str) -> tuple[float, float]:
    from faststream.redis import RedisBroker, StreamSub

    sink, tally = _sink(_faststream_n(bench.n))
    broker = RedisBroker(bench.url, logger=None)
    sub = StreamSub(stream, group=group, consumer="c-0", batch=False, max_records=BATCH)
    broker.subscriber(stream=sub)(sink)
    async with _deadline(tally):
        started = time.perf_counter()
        await broker.start()
        try:
            await tally.done.wait()
        finally:
            await broker.stop()
    return tally.rates(started)


async def _faststream_fields(bench: Bench) -> dict[bytes, bytes]:
    """The fields of one entry as FastStream's own publisher writes :data:`VALUE`."""
    from faststream.redis import RedisBroker

    stream = bench.prefix + "faststream-format"
    broker = RedisBroker(bench.url, logger=None)
    await broker.connect()
    try:
        await broker.publish(VALUE, stream=stream)
    finally:
        await broker.stop()
    [(_, fields)] = await bench.admin.xrange(stream, count=1)
    await bench.admin.unlink(stream)
    return fields


def _faststream_installed() -> bool:
    try:
        import faststream.redis  # noqa: F401
    except ImportError:
        return False
    return True


def _faststream_n(n: int) -> int:
    return min(n, FASTSTREAM_N)


async def _consume_round(bench: Bench, index: int) -> None:
    destination = f"consume-{index}"
    stream = bench.prefix + destination
    rows: dict[str, Callable[[], Awaitable[tuple[float, float]]]] = {
        "consume raw": lambda: raw_consume(bench, stream, "raw"),
        "consume app": lambda: binder_consume(bench, destination, "app"),
    }
    order = list(rows)[index % 2 :] + list(rows)[: index % 2]  # who reads first, turned
    try:
        await _fill(bench.admin, stream, [{"payload": VALUE, "key": k} for k in _keys(bench.n)])
        for case in order:
            await bench.measure(case, rows[case])
    finally:
        await bench.admin.unlink(stream)
    await bench.measure("consume faststream", lambda: _faststream_round(bench, index))


async def _faststream_round(bench: Bench, index: int) -> tuple[float, float]:
    stream = f"{bench.prefix}faststream-{index}"
    try:
        fields = await _faststream_fields(bench)
        await _fill(bench.admin, stream, [fields] * _faststream_n(bench.n))
        await bench.admin.xgroup_create(stream, "faststream", id="0")
        return await faststream_consume(bench, stream, "faststream")
    finally:
        await bench.admin.unlink(stream)


# -- latency ------------------------------------------------------------------------------


class Samples:
    """Latencies of received timestamps; :meth:`reached` waits until so many arrived."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._wanted = 0
        self._arrived = asyncio.Event()

    def add(self, payload: bytes) -> None:
        self.values.append(time.perf_counter() - float(payload))
        if len(self.values) >= self._wanted:
            self._arrived.set()

    async def reached(self, count: int) -> None:
        self._wanted = count
        self._arrived.clear()
        if len(self.values) >= count:
            return
        try:
            await asyncio.wait_for(self._arrived.wait(), LATENCY_TIMEOUT)
        except TimeoutError:
            got = f"{len(self.values):,} of {count:,}"
            raise RowError(f"aborted after {LATENCY_TIMEOUT:.0f} s: {got} arrived") from None


async def _drive(send: Callable[[bytes], Awaitable[object]], samples: Samples) -> list[float]:
    """A warm-up timestamp, waited for; then one every :data:`LATENCY_GAP`; their latencies."""
    await send(str(time.perf_counter()).encode())
    await samples.reached(1)
    for _ in range(LATENCY_MESSAGES):
        await send(str(time.perf_counter()).encode())
        await asyncio.sleep(LATENCY_GAP)
    await samples.reached(LATENCY_MESSAGES + 1)
    return samples.values[1:]


async def raw_latency(bench: Bench, stream: str) -> list[float]:
    samples = Samples()
    async with Redis.from_url(bench.url) as producer, Redis.from_url(bench.url) as consumer:
        await producer.xgroup_create(stream, "latency", id="$", mkstream=True)

        async def read() -> None:
            while True:
                reply = await consumer.xreadgroup(
                    "latency", "c-0", {stream: ">"}, count=BATCH, block=1000
                )
                for _, entries in reply or ():
                    for _, fields in entries:
                        samples.add(fields[b"payload"])
                    await consumer.xack(stream, "latency", *(entry_id for entry_id, _ in entries))

        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(read())
            try:
                return await _drive(lambda p: producer.xadd(stream, {"payload": p}), samples)
            finally:
                reader.cancel()


async def binder_latency(bench: Bench, destination: str) -> list[float]:
    samples = Samples()
    app = _app(bench, {"sink-in-0": {"destination": destination, "group": "latency"}})

    async def sink(value: bytes) -> None:
        samples.add(value)

    app.consumer(sink)
    async with app:
        return await _drive(lambda p: app.send(destination, p), samples)


async def _latencies(bench: Bench) -> None:
    rows = {
        "latency raw": lambda: raw_latency(bench, bench.prefix + "latency-raw"),
        "latency app": lambda: binder_latency(bench, "latency-app"),
    }
    for case, run in rows.items():
        values = await bench.attempt(case, run)
        if values is not None:
            bench.latency[case] = values


# -- the run ------------------------------------------------------------------------------


async def _run(url: str, n: int) -> tuple[Bench, str] | None:
    admin = Redis.from_url(url, socket_connect_timeout=5)
    bench = Bench(url, f"bench-redis-{uuid.uuid4().hex[:12]}:", n, admin)
    try:
        server = (await admin.info("server"))["redis_version"]
    except (redis.RedisError, OSError) as exc:
        print(f"\nRedis benchmark skipped: cannot reach Redis at {url}: {_reason(exc)}")
        await admin.aclose()
        return None
    try:
        if not _faststream_installed():
            bench.failures["consume faststream"] = (
                f"not installed: pip install '{FASTSTREAM_REQUIREMENT}'"
            )
            print(f"FastStream not installed: pip install '{FASTSTREAM_REQUIREMENT}'", flush=True)
        for index in range(ROUNDS):
            await _produce_round(bench, index)
            await _consume_round(bench, index)
        await _latencies(bench)
        return bench, server
    finally:
        await _delete_keys(admin, bench.prefix)
        await admin.aclose()


async def _delete_keys(client: Redis, prefix: str) -> None:
    """``UNLINK`` every key that starts with ``prefix`` (found by ``SCAN MATCH``)."""
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for start in range(0, len(keys), BATCH):
            await client.unlink(*keys[start : start + BATCH])
    except (redis.RedisError, OSError) as exc:
        print(f"redis bench: could not delete the keys {prefix}*: {_reason(exc)}")


ROWS = [
    ("produce", "produce raw", "raw: XADD, pipelines of 1,000 (anchor)"),
    ("produce", "produce app all", "app.send x N, one gather"),
    ("produce", "produce app chunks", "app.send, gathers of 1,000"),
    ("consume", "consume raw", "raw: XREADGROUP 1,000 + XACK (anchor)"),
    ("consume", "consume app", "@app.consumer, from app start"),
    ("consume", "consume app first", "@app.consumer, from its first call"),
    ("consume", "consume faststream", "FastStream, from broker start"),
    ("consume", "consume faststream first", "FastStream, from its first call"),
]


def main(n: int) -> None:
    url = os.environ.get("REDIS_URL", DEFAULT_URL)
    outcome = asyncio.run(_run(url, n))
    if outcome is None:
        return
    bench, server = outcome
    print(
        f"\nRedis binder vs raw redis-py {redis.__version__} and FastStream, {n:,} keyed "
        f"{len(VALUE)}-byte messages (FastStream {_faststream_n(n):,}), one stream, Redis "
        f"{server} at {url}, one event loop: best (median) of {ROUNDS} runs; "
        f"ratio to the raw row of its work"
    )
    print(f"{'work':8} {'way':40} {'msg/s':>16} {'ratio':>12}")
    best, median = _summary(bench.figures)
    for work, case, label in ROWS:
        print(f"{work:8} {label:40} {_row(bench, case, best, median, f'{work} raw')}")
    _print_versus(best, median)
    _print_latency(bench)


def _row(
    bench: Bench, case: str, best: dict[str, float], median: dict[str, float], anchor: str
) -> str:
    failure = bench.failures.get(case.removesuffix(" first"))
    if case not in best:
        return f"{'failed:':>16} {failure}"
    figures = f"{_rate(best[case])} ({_rate(median[case])})"
    ratio = ""
    if anchor in best:
        ratio = f"{best[case] / best[anchor]:5.2f} ({median[case] / median[anchor]:.2f})"
    note = f"; then failed: {failure}" if failure else ""
    return f"{figures:>16} {ratio:>12}{note}"


def _print_versus(best: dict[str, float], median: dict[str, float]) -> None:
    if "consume app" not in best or "consume faststream" not in best:
        return
    start = best["consume app"] / best["consume faststream"]
    first = best["consume app first"] / best["consume faststream first"]
    start_median = median["consume app"] / median["consume faststream"]
    print(
        f"binder ÷ FastStream consuming (rates): {start:.1f}x ({start_median:.1f}x) "
        f"from start, {first:.1f}x from the first call"
    )


def _print_latency(bench: Bench) -> None:
    sides = {
        "latency raw": "raw XADD → blocked XREADGROUP",
        "latency app": "app.send → @app.consumer",
    }
    parts = [
        f"{label} {_percentiles(bench.latency[case])}"
        if case in bench.latency
        else f"{label} failed: {bench.failures.get(case)}"
        for case, label in sides.items()
    ]
    gap = f"{LATENCY_GAP * 1000:.0f} ms"
    print(f"latency, one message every {gap}, {LATENCY_MESSAGES} samples: {'; '.join(parts)}")


def _summary(samples: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(best, median) per case over the rounds."""
    best = {case: max(figures) for case, figures in samples.items()}
    median = {case: statistics.median(figures) for case, figures in samples.items()}
    return best, median


def _percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]
    return f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def _rate(per_second: float) -> str:
    digits = 1 if per_second < 10_000 else 0
    return f"{per_second / 1000:,.{digits}f}k"
