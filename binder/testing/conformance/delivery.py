"""Delivery: payloads survive the trip intact, anonymous consumers, composition, suppliers."""

from __future__ import annotations

import hashlib
import itertools
import os
from typing import Any

import pytest

from binder.message import Message
from binder.testing.conformance.support import MIB, Conformance, Inbox, require, run

__all__ = [
    "test_anonymous_consumers_get_only_what_was_sent_while_subscribed",
    "test_composition_feeds_one_function_into_the_next",
    "test_round_trip_binary",
    "test_round_trip_empty_payload",
    "test_round_trip_one_mebibyte",
    "test_round_trip_unicode",
    "test_supplier_output_is_delivered",
    "test_trace_context_crosses_the_backend",
]

Sent = tuple[Any, Any, dict[str, str]]
"""(payload, key, headers) of one message a scenario sends."""


async def _round_trip(
    conformance: Conformance, dest: str, group: str, sent: list[Sent], content_type: str
) -> list[Message[Any]]:
    await conformance.provision(dest, 1)
    app = conformance.app(
        {
            "rt-in-0": {
                "destination": dest,
                "group": conformance.group_or_anonymous(group),
                "content-type": content_type,
            }
        }
    )
    inbox: Inbox[Message[Any]] = Inbox()

    @app.consumer(name="rt")
    async def rt(message: Message) -> None:  # type: ignore[type-arg]
        inbox.add(message)

    async with app:
        for payload, key, headers in sent:
            await app.send("rt-in-0", payload, key=key, headers=headers)
        return await inbox.wait_count(len(sent), f"{len(sent)} message(s) on {dest}")


def _fingerprint(value: Any) -> Any:
    """Bytes by digest and length, so a failed comparison of 1 MiB stays readable."""
    if isinstance(value, bytes):
        return len(value), hashlib.sha256(value).hexdigest()
    return value


def _check_round_trip(
    conformance: Conformance, dest: str, sent: list[Sent], received: list[Message[Any]]
) -> None:
    assert len(received) == len(sent), f"expected {len(sent)} message(s), got {len(received)}"
    for (payload, key, headers), message in zip(sent, received, strict=True):
        assert type(message.payload) is type(payload)
        assert _fingerprint(message.payload) == _fingerprint(payload)
        assert message.key == key
        assert {name: message.headers.get(name) for name in headers} == headers
        assert message.destination == dest
        assert isinstance(message.partition, int)
        if conformance.capabilities.native_partitions:
            assert message.partition == 0, "a one-partition destination has only partition 0"
    if conformance.capabilities.offsets:
        offsets = [message.offset for message in received]
        assert all(isinstance(offset, int) and offset >= 0 for offset in offsets), offsets
        assert offsets == sorted(set(offsets)), f"offsets must increase in send order: {offsets}"


def test_round_trip_unicode(conformance: Conformance, dest: str, group: str) -> None:
    headers = {"x-note": "ça va? ☃ 𝄞 日本語", "trace-id": "t-1"}
    sent: list[Sent] = [
        ({"text": "héllo wörld ☃ 𝄞 日本語 🚀", "n": 1}, "ключ-🔑", headers),
        ({"list": ["β", "δ", "λ"], "nested": {"ü": "ö"}}, "ключ-🔑", {"x-note": "второй"}),
        ("just a string", "k-2", {}),
    ]
    received = run(_round_trip(conformance, dest, group, sent, "application/json"))
    _check_round_trip(conformance, dest, sent, received)


def test_round_trip_binary(conformance: Conformance, dest: str, group: str) -> None:
    sent: list[Sent] = [
        (bytes(range(256)), b"\xff\x00\xfe", {"x-kind": "all bytes"}),
        (b"\x00" * 16 + b"\xff" * 16, b"\x80key", {"x-kind": "zeros and ones"}),
        (b"\xc3\x28 invalid utf-8", "text-key", {}),
    ]
    received = run(_round_trip(conformance, dest, group, sent, "application/octet-stream"))
    _check_round_trip(conformance, dest, sent, received)


def test_round_trip_empty_payload(conformance: Conformance, dest: str, group: str) -> None:
    sent: list[Sent] = [(b"", "empty", {"x-empty": ""}), (b"", None, {}), (b"x", "after", {})]
    received = run(_round_trip(conformance, dest, group, sent, "application/octet-stream"))
    _check_round_trip(conformance, dest, sent, received)


def test_round_trip_one_mebibyte(conformance: Conformance, dest: str, group: str) -> None:
    limit = conformance.capabilities.max_payload_bytes
    if limit is not None and limit < MIB + 1024:
        pytest.skip("binder lacks max_payload_bytes >= 1 MiB")
    sent: list[Sent] = [(os.urandom(MIB), "big", {"x-size": str(MIB)}), (b"small", "big", {})]
    received = run(_round_trip(conformance, dest, group, sent, "application/octet-stream"))
    _check_round_trip(conformance, dest, sent, received)


def test_anonymous_consumers_get_only_what_was_sent_while_subscribed(
    conformance: Conformance, dest: str
) -> None:
    require(conformance.capabilities, "anonymous_consumers")
    before = [{"n": f"before-{i}"} for i in range(3)]
    after = [{"n": f"after-{i}"} for i in range(5)]
    end = {"n": "end"}

    async def scenario() -> tuple[list[Any], list[Any]]:
        await conformance.provision(dest, 1)
        async with conformance.app() as sender:
            for payload in before:
                await sender.send(dest, payload)
        app = conformance.app(
            {"one-in-0": {"destination": dest}, "two-in-0": {"destination": dest}}
        )
        one: Inbox[Any] = Inbox()
        two: Inbox[Any] = Inbox()

        @app.consumer(name="one")
        async def first(payload: Any) -> None:
            one.add(payload)

        @app.consumer(name="two")
        async def second(payload: Any) -> None:
            two.add(payload)

        async with app:
            for payload in [*after, end]:
                await app.send(dest, payload)
            return await one.wait_for(end), await two.wait_for(end)

    one, two = run(scenario())
    assert one == [*after, end], "anonymous consumer one: starts at latest, gets each once"
    assert two == [*after, end], "anonymous consumer two: starts at latest, gets each once"


def test_composition_feeds_one_function_into_the_next(
    conformance: Conformance, dest: str, group: str
) -> None:
    out = f"{dest}-out"
    either = conformance.group_or_anonymous(group)

    async def scenario() -> list[Message[Any]]:
        await conformance.provision(dest, 1)
        await conformance.provision(out, 1)
        app = conformance.app(
            {
                "doubletag-in-0": {"destination": dest, "group": either},
                "doubletag-out-0": {"destination": out},
                "collect-in-0": {"destination": out, "group": either},
            },
            definition="double|tag;collect",
        )
        inbox: Inbox[Message[Any]] = Inbox()

        @app.function
        def double(order: dict) -> dict:  # type: ignore[type-arg]
            return {**order, "n": order["n"] * 2}

        @app.function
        async def tag(order: dict) -> dict:  # type: ignore[type-arg]
            return {**order, "tagged": True}

        @app.consumer
        async def collect(message: Message[dict]) -> None:  # type: ignore[type-arg]
            inbox.add(message)

        async with app:
            for n in range(3):
                await app.send("doubletag-in-0", {"n": n}, key=f"k{n}", headers={"trace": str(n)})
            return await inbox.wait_count(3, f"3 results on {out}")

    received = run(scenario())
    assert [m.payload for m in received] == [{"n": 2 * n, "tagged": True} for n in range(3)]
    assert [m.key for m in received] == ["k0", "k1", "k2"], "the input's key is kept"
    assert [m.headers.get("trace") for m in received] == ["0", "1", "2"], "user headers are kept"


def test_supplier_output_is_delivered(conformance: Conformance, dest: str, group: str) -> None:
    either = conformance.group_or_anonymous(group)

    async def scenario() -> list[Any]:
        await conformance.provision(dest, 1)
        app = conformance.app(
            {
                "ticks-out-0": {"destination": dest},
                "collect-in-0": {"destination": dest, "group": either},
            }
        )
        counter = itertools.count()
        inbox: Inbox[Any] = Inbox()

        @app.supplier(interval=0.01)
        def ticks() -> dict:  # type: ignore[type-arg]
            return {"tick": next(counter)}

        @app.consumer
        async def collect(payload: dict) -> None:  # type: ignore[type-arg]
            inbox.add(payload["tick"])

        async with app:
            return await inbox.wait_count(3, f"3 ticks on {dest}")

    ticks = run(scenario())
    first = ticks[0]
    assert ticks[:3] == [first, first + 1, first + 2], f"ticks arrive in order: {ticks}"


def test_trace_context_crosses_the_backend(conformance: Conformance, dest: str, group: str) -> None:
    """With an OpenTelemetry SDK (skipped without ``opentelemetry-sdk``): ``app.send``'s
    publish span, the function's process span, its output's publish span and the consumer's
    process span make one trace across the backend, each the child of the one before, the
    ``traceparent`` carried in the binder's headers."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="needs opentelemetry-sdk")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    out = f"{dest}-out"
    either = conformance.group_or_anonymous(group)

    async def scenario() -> list[Message[Any]]:
        await conformance.provision(dest, 1)
        await conformance.provision(out, 1)
        app = conformance.app(
            {
                "relay-in-0": {"destination": dest, "group": either},
                "relay-out-0": {"destination": out},
                "collect-in-0": {"destination": out, "group": either},
            },
            tracer_provider=provider,
        )
        inbox: Inbox[Message[Any]] = Inbox()
        app.function(lambda order: order, name="relay")

        @app.consumer
        async def collect(message: Message[dict]) -> None:  # type: ignore[type-arg]
            inbox.add(message)

        async with app:
            await app.send(dest, {"n": 1})
            received = await inbox.wait_count(1, f"the relayed message on {out}")
        provider.force_flush()
        return received

    (message,) = run(scenario())
    spans = {span.name: span for span in exporter.get_finished_spans()}
    chain = [spans.get(f"{dest} publish"), spans.get(f"{dest} process")]
    chain += [spans.get(f"{out} publish"), spans.get(f"{out} process")]
    assert all(chain), f"four spans, got {sorted(spans)}"
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
        assert child.context.trace_id == chain[0].context.trace_id
    assert chain[3].parent.is_remote, "the consumer's parent came in the message's headers"
    assert message.headers["traceparent"].split("-")[2] == f"{chain[2].context.span_id:016x}"
    handled = chain[1].attributes
    assert handled["messaging.destination.name"] == dest
    assert handled["messaging.operation.type"] == "process"
    assert handled["messaging.system"] == chain[0].attributes["messaging.system"]
