"""OpenTelemetry tracing: one trace from ``app.send`` through a function to its consumer, on
the log and on Redis, and across two processes through the ``traceparent`` header; failed
attempts and dead letters; nothing done without a configured SDK or without the extra."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from binder import App, Message
from binder.message import EXCEPTION_TYPE
from binders.log.engine import Broker

ROOT = Path(__file__).parents[2]
PRODUCER, CONSUMER = SpanKind.PRODUCER, SpanKind.CONSUMER


class Spans:
    """A tracer provider exporting to memory, and questions about what it exported."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.all if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span


def child_of(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return (
        span.parent is not None
        and span.parent.span_id == parent.context.span_id
        and span.context.trace_id == parent.context.trace_id
    )


@pytest.fixture
def spans() -> Spans:
    return Spans()


@pytest.fixture
def broker() -> Iterator[str]:
    name = f"tracing-{uuid.uuid4().hex}"
    yield name
    Broker.forget(name)


def _log_app(broker: str, bindings: dict[str, Any], spans: Spans, **binder: Any) -> App:
    doc = {"binders": {"local": {"type": "log", "broker": broker}}, "bindings": bindings, **binder}
    return App(config={"binder": doc}, environ={}, tracer_provider=spans.provider)


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.01)


PIPELINE = {
    "upper-in-0": {"destination": "words", "group": "g"},
    "upper-out-0": {"destination": "upper"},
    "audit-in-0": {"destination": "upper", "group": "a"},
}


def _check_chain(spans: Spans, system: str, words: str = "words", upper: str = "upper") -> None:
    """app.send's publish → the function's process → its output's publish → the consumer's
    process: one trace, each span the child of the one before."""
    sent, handled = spans.one(f"{words} publish"), spans.one(f"{words} process")
    output, audited = spans.one(f"{upper} publish"), spans.one(f"{upper} process")
    assert [s.kind for s in (sent, handled, output, audited)] == [
        PRODUCER,
        CONSUMER,
        PRODUCER,
        CONSUMER,
    ]
    assert sent.parent is None
    assert child_of(handled, sent) and child_of(output, handled) and child_of(audited, output)
    assert sent.attributes is not None and handled.attributes is not None
    assert sent.attributes["messaging.system"] == system
    assert sent.attributes["messaging.destination.name"] == words
    assert sent.attributes["messaging.operation.type"] == "publish"
    assert sent.attributes["messaging.destination.partition.id"] == "0"
    assert handled.attributes["messaging.system"] == system
    assert handled.attributes["messaging.destination.name"] == words
    assert handled.attributes["messaging.consumer.group.name"] == "g"
    assert handled.attributes["messaging.destination.partition.id"] == "0"
    assert handled.attributes["messaging.operation.type"] == "process"
    assert handled.attributes["messaging.message.id"]
    assert audited.attributes is not None
    assert audited.attributes["messaging.consumer.group.name"] == "a"
    assert all(s.status.status_code is not StatusCode.ERROR for s in spans.all)


@pytest.mark.parametrize("shape", ["sync", "async"])
def test_one_trace_from_send_through_a_function_to_its_consumer(
    broker: str, spans: Spans, shape: str
) -> None:
    app = _log_app(broker, PIPELINE, spans)
    got: list[Message[str]] = []
    if shape == "sync":
        app.function(lambda word: word.upper(), name="upper")
    else:

        async def upper(word: str) -> str:
            return word.upper()

        app.function(upper)

    @app.consumer
    async def audit(message: Message[str]) -> None:
        got.append(message)

    async def scenario() -> None:
        async with app:
            await app.send("words", "hi")
            await _until(lambda: bool(got) and len(spans.all) == 4)

    asyncio.run(scenario())
    _check_chain(spans, "streambinder")
    assert spans.one("words process").attributes["messaging.message.id"] == "0"  # type: ignore[index]
    output = spans.one("upper publish")  # the consumer got the output's context
    parent = got[0].headers["traceparent"].split("-")
    assert parent[1] == f"{output.context.trace_id:032x}"
    assert parent[2] == f"{output.context.span_id:016x}"


def test_a_send_inside_a_function_is_a_child_of_its_process_span(broker: str, spans: Spans) -> None:
    bindings = {
        "fan-in-0": {"destination": "words", "group": "g"},
        "sink-in-0": {"destination": "side", "group": "s"},
    }
    app = _log_app(broker, bindings, spans)
    got: list[str] = []

    @app.consumer
    async def fan(word: str) -> None:
        await app.send("side", word * 2)

    app.consumer(got.append, name="sink")

    async def scenario() -> None:
        async with app:
            await app.send("words", "ab")
            await _until(lambda: got == ["abab"] and len(spans.all) == 4)

    asyncio.run(scenario())
    assert child_of(spans.one("side publish"), spans.one("words process"))
    assert child_of(spans.one("side process"), spans.one("side publish"))


def test_a_failed_attempt_records_its_exception_and_each_retry_has_a_span(
    broker: str, spans: Spans
) -> None:
    retrying = {"max-attempts": 3, "back-off-initial-interval": "1ms"}
    bindings = {"flaky-in-0": {"destination": "words", "group": "g", "consumer": retrying}}
    app = _log_app(broker, bindings, spans)
    calls: list[str] = []

    @app.consumer
    def flaky(word: str) -> None:
        calls.append(word)
        if len(calls) < 3:
            raise RuntimeError(f"attempt {len(calls)} fails")

    async def scenario() -> None:
        async with app:
            await app.send("words", "w")
            await _until(lambda: len(spans.named("words process")) == 3)

    asyncio.run(scenario())
    sent = spans.one("words publish")
    attempts = sorted(spans.named("words process"), key=lambda s: s.start_time or 0)
    assert all(child_of(span, sent) for span in attempts)
    assert [s.attributes["streambinder.delivery_attempt"] for s in attempts] == [1, 2, 3]  # type: ignore[index]
    assert [s.status.status_code for s in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    for number, span in enumerate(attempts[:2], start=1):
        (event,) = span.events
        assert event.name == "exception"
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "RuntimeError"
        assert event.attributes["exception.message"] == f"attempt {number} fails"


def test_a_dead_letter_keeps_the_traceparent_of_its_original(broker: str, spans: Spans) -> None:
    once = {"max-attempts": 1, "dead-letter": True}
    bindings = {
        "poison-in-0": {"destination": "words", "group": "g", "consumer": once},
        "letters-in-0": {"destination": "words.g.dlq", "group": "ops"},
    }
    app = _log_app(broker, bindings, spans)
    letters: list[Message[Any]] = []

    @app.consumer
    def poison(word: str) -> None:
        raise ValueError("poison")

    async def read_letter(message: Message[Any]) -> None:
        letters.append(message)

    app.consumer(read_letter, name="letters")

    async def scenario() -> None:
        async with app:
            await app.send("words", "w")
            await _until(lambda: bool(letters) and len(spans.named("words.g.dlq process")) == 1)

    asyncio.run(scenario())
    sent, failed = spans.one("words publish"), spans.one("words process")
    letter_span = spans.one("words.g.dlq publish")
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.events[0].attributes["exception.type"] == "ValueError"  # type: ignore[index]
    assert child_of(letter_span, sent)  # under the original's context, not injected
    (letter,) = letters
    assert letter.headers[EXCEPTION_TYPE] == "builtins.ValueError"
    kept = letter.headers["traceparent"].split("-")
    assert kept[2] == f"{sent.context.span_id:016x}"  # the original's, unchanged
    assert child_of(spans.one("words.g.dlq process"), sent)


def test_a_batch_call_has_one_span_linked_to_every_message(broker: str, spans: Spans) -> None:
    batch = {"batch-mode": True, "batch-size": 10}
    bindings = {"bulk-in-0": {"destination": "words", "group": "g", "consumer": batch}}
    app = _log_app(broker, bindings, spans)
    seen: list[list[str]] = []

    @app.consumer
    def bulk(words: list[str]) -> None:
        seen.append(words)

    async def scenario() -> None:
        async with app:
            binding = app.binding("bulk-in-0")
            binding.pause()
            await asyncio.gather(*(app.send("words", w) for w in "abc"))
            binding.resume()
            await _until(lambda: sum(map(len, seen)) == 3 and bool(spans.named("words process")))

    asyncio.run(scenario())
    published = {s.context.span_id for s in spans.named("words publish")}
    linked = {link.context.span_id for s in spans.named("words process") for link in s.links}
    assert linked == published
    assert (
        sum(s.attributes["messaging.batch.message_count"] for s in spans.named("words process"))
        == 3
    )  # type: ignore[index,misc]


def test_a_callers_traceparent_is_continued_when_no_span_is_current(
    broker: str, spans: Spans
) -> None:
    app = _log_app(broker, {"sink-in-0": {"destination": "words", "group": "g"}}, spans)
    got: list[str] = []
    app.consumer(got.append, name="sink")
    caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def scenario() -> None:
        async with app:
            await app.send("words", "w", headers={"traceparent": caller})
            await _until(lambda: bool(got) and len(spans.all) == 2)

    asyncio.run(scenario())
    sent = spans.one("words publish")
    assert f"{sent.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    assert sent.parent is not None and f"{sent.parent.span_id:016x}" == "b7ad6b7169203331"


def test_without_a_configured_sdk_nothing_is_traced(broker: str) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    doc = {"binders": {"local": {"type": "log", "broker": broker}}}
    doc["bindings"] = {"sink-in-0": {"destination": "words", "group": "g"}}
    app = App(config={"binder": doc}, environ={})
    got: list[Message[str]] = []

    @app.consumer
    async def sink(message: Message[str]) -> None:
        got.append(message)

    async def scenario() -> None:
        async with app:
            await app.send("words", "w")
            await _until(lambda: bool(got))

    asyncio.run(scenario())
    assert "traceparent" not in got[0].headers


def test_without_the_otel_extra_the_app_runs_and_imports_nothing(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        from binder import App, Message
        app = App(config={"binder": {"binders": {"m": {"type": "log"}},
                  "bindings": {"sink-in-0": {"destination": "w", "group": "g"}}}}, environ={})
        got = []
        @app.consumer
        async def sink(message: Message[str]) -> None:
            got.append(message)
        async def main():
            async with app:
                await app.send("w", "x")
                while not got:
                    await asyncio.sleep(0.01)
        asyncio.run(main())
        assert got[0].payload == "x" and "traceparent" not in got[0].headers, got[0].headers
        assert not [m for m in sys.modules if m.startswith("opentelemetry.")]
        print("ok")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


# -- a real broker, and two processes -----------------------------------------------------------


def _redis_doc(redis_url: str, key_prefix: str, bindings: dict[str, Any]) -> dict[str, Any]:
    binder = {"type": "redis", "url": redis_url, "key-prefix": key_prefix}
    return {"binder": {"binders": {"r": binder}, "bindings": bindings}}


def test_one_trace_through_a_function_on_redis(
    redis_url: str, key_prefix: str, spans: Spans
) -> None:
    app = App(
        _redis_doc(redis_url, key_prefix, PIPELINE), environ={}, tracer_provider=spans.provider
    )
    got: list[str] = []
    app.function(lambda word: word.upper(), name="upper")
    app.consumer(got.append, name="audit")

    async def scenario() -> None:
        async with app:
            await app.send("words", "hi")
            await _until(lambda: got == ["HI"] and len(spans.all) == 4, timeout=20)

    asyncio.run(scenario())
    _check_chain(spans, "redis")
    entry = spans.one("words process").attributes["messaging.message.id"]  # type: ignore[index]
    assert isinstance(entry, str) and entry.count("-") == 1  # the stream entry's id


SENDER = """
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from binder import App

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # the global provider, as an application sets it up
app = App(json.loads(sys.argv[1]), environ={})

async def main():
    async with app:
        with trace.get_tracer("sender").start_as_current_span("checkout"):
            await app.send("words", "hi")
    (root,) = [s for s in exporter.get_finished_spans() if s.name == "checkout"]
    (sent,) = [s for s in exporter.get_finished_spans() if s.name == "words publish"]
    assert sent.parent.span_id == root.context.span_id
    print(json.dumps({"trace": sent.context.trace_id, "span": sent.context.span_id}))

asyncio.run(main())
"""


def test_a_trace_crosses_two_processes_through_the_traceparent_header(
    redis_url: str, key_prefix: str, spans: Spans
) -> None:
    """Another process sends inside a span of its own (global SDK provider); this one's
    process span continues that trace, as the child of the other's publish span."""
    bindings = {"sink-in-0": {"destination": "words", "group": "g"}}
    doc = _redis_doc(redis_url, key_prefix, bindings)
    app = App(doc, environ={}, tracer_provider=spans.provider)
    got: list[str] = []
    app.consumer(got.append, name="sink")
    sender_doc = _redis_doc(redis_url, key_prefix, {})

    async def scenario() -> dict[str, int]:
        async with app:
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            sender = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                SENDER,
                json.dumps(sender_doc),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            out, err = await asyncio.wait_for(sender.communicate(), 60)
            assert sender.returncode == 0, err.decode()
            await _until(lambda: got == ["hi"] and bool(spans.named("words process")), 20)
            return json.loads(out)

    ids = asyncio.run(scenario())
    handled = spans.one("words process")
    assert handled.context.trace_id == ids["trace"]
    assert handled.parent is not None and handled.parent.span_id == ids["span"]
    assert handled.parent.is_remote
    assert handled.attributes["messaging.system"] == "redis"  # type: ignore[index]
