"""End-to-end throughput and latency through ``@app.function`` on the in-memory log binder.

Anchor in the same run: a hand-written loop doing the same work straight on the
engine (poll, decode JSON, call the function, encode, append, commit) — what a
user would write without the framework. Ratios are binder / hand-written.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from binder import App, Message
from binders.log.engine import Broker

PAYLOAD = {
    "id": 0,
    "customer_id": "c-0042",
    "sku": "SKU-123456",
    "qty": 3,
    "price": 19.99,
    "note": "leave at the back door",
}


def _dumps(value: object) -> bytes:
    """orjson, copied into Python's allocator (as the binder's JSON converter does: a long-lived
    orjson buffer fragments the C heap; see binder/converters.py)."""
    return bytes(memoryview(orjson.dumps(value)))


def _payload(i: int) -> bytes:
    return _dumps({**PAYLOAD, "id": i})


def _preload(broker: Broker, topic: str, n: int, headers: dict[str, str] | None = None) -> None:
    broker.create_topic(topic, 1)
    now = time.time()
    headers = headers or {"contentType": "application/json"}
    for start in range(0, n, 1000):
        entries = [(None, _payload(i), headers, now) for i in range(start, min(n, start + 1000))]
        broker.append(topic, 0, entries)


def transform(order: dict) -> dict:
    order["status"] = "ENRICHED"
    return order


async def _wait_for(broker: Broker, topic: str, n: int) -> None:
    """Woken by each append to ``topic`` (no polling timer competing for the loop)."""
    reader = broker.join(topic, None, start="earliest")
    seen = 0
    while seen < n:
        seen += len(await reader.poll(10_000))
    await reader.close()


async def hand_written(n: int) -> float:
    """The same work without the framework: the anchor."""
    broker = Broker(f"bench-{uuid.uuid4().hex}")
    _preload(broker, "in", n)
    broker.create_topic("out", 1)
    member = broker.join("in", "g")
    started = time.perf_counter()
    done = 0
    while done < n:
        batch = await member.poll(500)
        out = []
        now = time.time()
        for record in batch:
            result = transform(orjson.loads(record.value))
            out.append((None, _dumps(result), {"contentType": "application/json"}, now))
        broker.append("out", 0, out)
        member.commit(0, batch[-1].offset + 1)
        done += len(batch)
    elapsed = time.perf_counter() - started
    await member.close()
    return n / elapsed


def _app(broker: str, batch: bool, fn: Callable[..., Any], **extra: Any) -> App:
    metrics = extra.pop("metrics", True)
    app = App(
        config={
            "binder": {
                "binders": {"local": {"type": "log", "broker": broker}},
                "bindings": {
                    "transform-in-0": {
                        "destination": "in",
                        "group": "g",
                        "consumer": {"batch-mode": batch, "batch-size": 500},
                    },
                    "transform-out-0": {"destination": "out"},
                },
                "metrics": {"enabled": metrics},
            }
        },
        environ={},
        **extra,
    )
    app.function(fn, name="transform")
    return app


async def through_binder(
    n: int,
    *,
    batch: bool = False,
    use_async: bool = False,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> float:
    """Messages a second through ``transform`` (``extra``: ``metrics=False``, or an App
    keyword such as ``tracer_provider``)."""
    name = f"bench-{uuid.uuid4().hex}"
    broker = Broker.named(name)
    _preload(broker, "in", n, headers)
    if batch:

        def fn(orders: list[dict]) -> list[dict]:
            return [transform(o) for o in orders]
    elif use_async:

        async def fn(order: dict) -> dict:
            return transform(order)
    else:
        fn = transform
    app = _app(name, batch, fn, **extra)
    started = time.perf_counter()
    async with app:
        await _wait_for(broker, "out", n)
        elapsed = time.perf_counter() - started
    Broker.forget(name)
    return n / elapsed


async def latency(count: int = 5000, rate: float = 2000.0) -> tuple[float, float]:
    """Per-message latency (ms) from app.send to the consumer, paced below saturation."""
    name = f"bench-{uuid.uuid4().hex}"
    seen: list[float] = []
    done = asyncio.Event()
    app = App(
        config={
            "binder": {
                "binders": {"local": {"type": "log", "broker": name}},
                "function-definition": "transform;sink",
                "bindings": {
                    "transform-in-0": {"destination": "in", "group": "g"},
                    "transform-out-0": {"destination": "out"},
                    "sink-in-0": {"destination": "out", "group": "s"},
                },
            }
        },
        environ={},
    )
    app.function(transform, name="transform")

    @app.consumer
    async def sink(message: Message[dict]) -> None:
        seen.append((time.perf_counter() - message.payload["sent"]) * 1000)
        if len(seen) >= count:
            done.set()

    async with app:
        for i in range(count):
            await app.send("transform-in-0", {**PAYLOAD, "id": i, "sent": time.perf_counter()})
            await asyncio.sleep(1 / rate)
        await asyncio.wait_for(done.wait(), 60)
    Broker.forget(name)
    quantiles = statistics.quantiles(seen, n=100)
    return quantiles[49], quantiles[98]


UPSTREAM = {
    "contentType": "application/json",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
}
"""The headers of an input sent by a traced upstream."""


def observability(n: int, rounds: int = 3) -> None:
    """``@app.function`` with metrics on (the default), off (``binder.metrics.enabled:
    false``), with tracing on (the OpenTelemetry SDK, a batch span processor and an exporter
    that drops everything; inputs from a traced upstream: every message sampled), and with
    tracing on at 1% (``ParentBased(TraceIdRatioBased(0.01))``, inputs without a trace).
    Best of ``rounds`` interleaved runs; ratios to metrics on."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    every = TracerProvider()
    every.add_span_processor(BatchSpanProcessor(Drop()))
    sampled = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))
    sampled.add_span_processor(BatchSpanProcessor(Drop()))
    cases: dict[str, dict[str, Any]] = {
        "metrics on": {},
        "metrics off": {"metrics": False},
        "tracing on, every message": {"tracer_provider": every, "headers": UPSTREAM},
        "tracing on, 1% sampled": {"tracer_provider": sampled},
    }
    print(f"\nObservability cost, in-memory log, {n:,} messages, best of {rounds}")
    print(f"{'case':48} {'msg/s':>12} {'vs on':>10}")
    for shape, use_async in (("sync", False), ("async", True)):
        best = dict.fromkeys(cases, 0.0)
        for _ in range(rounds):
            for label, extra in cases.items():
                rate = asyncio.run(through_binder(n, use_async=use_async, **extra))
                best[label] = max(best[label], rate)
        for label, rate in best.items():
            print(f"{shape + ', ' + label:48} {rate:12,.0f} {rate / best['metrics on']:10.2f}")
    every.shutdown()
    sampled.shutdown()


def main(n: int) -> None:
    anchor = asyncio.run(hand_written(n))
    rows = [("hand-written loop on the engine (anchor)", anchor)]
    for label, kwargs in [
        ("@app.function, sync, single-message", {}),
        ("@app.function, async, single-message", {"use_async": True}),
        ("@app.function, sync, batch-mode", {"batch": True}),
    ]:
        rows.append((label, asyncio.run(through_binder(n, **kwargs))))
    print(
        f"\nEnd-to-end through @app.function, in-memory log, {n:,} messages of "
        f"{len(_payload(0))} bytes"
    )
    print(f"{'case':48} {'msg/s':>12} {'vs anchor':>10}")
    for label, rate in rows:
        print(f"{label:48} {rate:12,.0f} {rate / anchor:10.2f}")
    p50, p99 = asyncio.run(latency())
    print(
        f"\nLatency app.send → function → consumer, 5,000 msgs at 2,000/s: "
        f"p50 {p50:.3f} ms, p99 {p99:.3f} ms"
    )
    observability(n)
