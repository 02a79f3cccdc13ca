"""Retries and dead letters: attempts and backoff, what a dead letter carries, poison messages.

The scenarios that must show a message was *not* retried give it a backoff far
longer than the time they wait for the messages behind it: a retry would hold
those back past the timeout, so the proof needs no sleep.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from pydantic import BaseModel

from binder.converters import BOM
from binder.message import (
    CONTENT_TYPE,
    DELIVERY_ATTEMPT,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    EXCEPTION_TYPE,
    ORIGINAL_DELIVERY_ATTEMPT,
    ORIGINAL_DESTINATION,
    ORIGINAL_GROUP,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    Message,
)
from binder.spi import InboundRecord, OutboundRecord
from binder.testing.conformance.support import TIMEOUT, Conformance, Inbox, require, run

__all__ = [
    "test_dead_letter_carries_the_original_and_why_it_failed",
    "test_dead_letters_keep_their_original_partition_on_a_custom_destination",
    "test_invalid_model_is_dead_lettered_without_retries",
    "test_non_retryable_exception_is_dead_lettered_at_once",
    "test_records_without_headers_are_read_with_the_binding_content_type",
    "test_retries_respect_attempts_and_backoff",
    "test_spring_content_type_forms_are_understood",
    "test_undecodable_payload_is_dead_lettered_and_does_not_block",
]

NEVER = TIMEOUT * 10
"""A backoff no scenario waits for: a retry would show as a timeout."""


class Order(BaseModel):
    id: int
    qty: int


def _retrying(dest: str, group: str, consumer: dict[str, Any]) -> dict[str, Any]:
    return {"destination": dest, "group": group, "consumer": consumer}


def test_retries_respect_attempts_and_backoff(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    initial, multiplier = 0.05, 2.0

    async def scenario() -> tuple[list[tuple[str, float]], list[Any]]:
        await conformance.provision(dest, 1)
        app = conformance.app(
            {
                "flaky-in-0": _retrying(
                    dest,
                    group,
                    {
                        "max-attempts": 3,
                        "back-off-initial-interval": initial,
                        "back-off-multiplier": multiplier,
                        "back-off-max-interval": 1.0,
                    },
                )
            }
        )
        attempts: Inbox[tuple[str, float]] = Inbox()
        done: Inbox[Any] = Inbox()

        @app.consumer
        async def flaky(message: Message[dict[str, Any]]) -> None:
            attempt = message.headers.get(DELIVERY_ATTEMPT, "?")
            attempts.add((attempt, time.monotonic()))
            if attempt != "3":
                raise RuntimeError(f"attempt {attempt} fails")
            done.add(message.payload)

        async with app:
            await app.send(dest, {"n": 1}, key="k")
            await app.send(dest, {"n": 2}, key="k")
            await done.wait_for({"n": 2}, timeout=TIMEOUT)
        return attempts.items, done.items

    attempts, done = run(scenario())
    assert done == [{"n": 1}, {"n": 2}], "retries keep the partition's order"
    first = attempts[:3]
    assert [a for a, _ in first] == ["1", "2", "3"], f"x-delivery-attempt per attempt: {attempts}"
    gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(first)]
    for gap, wanted in zip(gaps, [initial, initial * multiplier], strict=True):
        assert wanted * 0.9 <= gap < wanted + 2.0, f"backoff {wanted}s, waited {gaps}"


def test_dead_letter_carries_the_original_and_why_it_failed(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    dlq = conformance.dead_letters(dest, group)
    headers = {"trace-id": "abc-123", "x-note": "ünïcode"}

    async def scenario() -> tuple[list[Message[Any]], list[Message[Any]]]:
        await conformance.provision(dest, 1)
        await conformance.provision(dlq, 1)
        app = conformance.app(
            {
                "doomed-in-0": _retrying(
                    dest, group, {"max-attempts": 2, "back-off-initial-interval": 0.01}
                ),
                "inspect-in-0": {"destination": dlq, "group": f"{group}-inspect"},
            }
        )
        seen: Inbox[Message[Any]] = Inbox()
        letters: Inbox[Message[Any]] = Inbox()

        @app.consumer
        async def doomed(message: Message[dict[str, Any]]) -> None:
            seen.add(message)
            raise RuntimeError(f"cannot handle order {message.payload['id']}")

        @app.consumer
        async def inspect(message: Message[dict[str, Any]]) -> None:
            letters.add(message)

        async with app:
            await app.send(dest, {"id": 7}, key="order-7", headers=headers)
            await letters.wait_count(1, f"a dead letter on {dlq}")
        return seen.items, letters.items

    seen, letters = run(scenario())
    assert [m.headers[DELIVERY_ATTEMPT] for m in seen] == ["1", "2"]
    (letter,) = letters
    original = seen[0]
    assert letter.destination == dlq
    assert (letter.payload, letter.key) == ({"id": 7}, "order-7")
    assert {name: letter.headers.get(name) for name in headers} == headers
    assert letter.headers[EXCEPTION_TYPE].endswith("RuntimeError")
    assert "cannot handle order 7" in letter.headers[EXCEPTION_MESSAGE]
    assert letter.headers[ORIGINAL_DELIVERY_ATTEMPT] == "2", "the attempts that failed"
    trace = letter.headers[EXCEPTION_STACKTRACE]
    assert "in doomed" in trace and trace.endswith("RuntimeError: cannot handle order 7")
    _check_origin(conformance, letter.headers, dest, group, original.partition, original.offset)


def test_dead_letters_keep_their_original_partition_on_a_custom_destination(
    conformance: Conformance, dest: str, group: str
) -> None:
    """The core places a dead letter on its original partition when the dead-letter
    destination has that many, whatever its name. The originals share one key but sit on
    all four partitions, so a letter placed by its key would not land where its original was."""
    require(conformance.capabilities, "consumer_groups", "native_partitions")
    parked = conformance.declare(f"{dest}-parked")
    consumer = {"max-attempts": 1, "dead-letter-destination": parked}
    app = conformance.app({"fail-in-0": _retrying(dest, group, consumer)})
    poison = [OutboundRecord(b'{"n": %d}' % p, b"one-key", {}, p) for p in range(4)]

    @app.consumer
    async def fail(payload: Any) -> None:
        raise ValueError("poison")

    async def scenario() -> list[InboundRecord]:
        await conformance.provision(dest, 4)
        await conformance.provision(parked, 4)
        async with app:
            async with conformance.binder() as binder:
                await conformance.send_raw(binder, dest, poison)
            return await conformance.read_raw(parked, f"{group}-inspect", len(poison))

    letters = run(scenario())
    assert sorted(int(r.headers[ORIGINAL_PARTITION]) for r in letters) == [0, 1, 2, 3]
    assert all(r.partition == int(r.headers[ORIGINAL_PARTITION]) for r in letters)


def _check_origin(
    conformance: Conformance,
    headers: dict[str, str],
    dest: str,
    group: str,
    partition: int | None,
    offset: int | None,
) -> None:
    assert headers[ORIGINAL_DESTINATION] == dest
    assert headers[ORIGINAL_GROUP] == group
    if conformance.capabilities.native_partitions:
        assert headers[ORIGINAL_PARTITION] == str(partition)
    if conformance.capabilities.offsets:
        assert headers[ORIGINAL_OFFSET] == str(offset)


async def _poison_then_good(
    conformance: Conformance,
    dest: str,
    group: str,
    function: Any,
    poison: tuple[Any, dict[str, str]],
    good: list[Any],
    **consumer: Any,
) -> tuple[list[Any], InboundRecord, InboundRecord]:
    """Send ``poison`` then ``good`` with one key (one partition, in order) to a consumer
    that never retries in time: the payloads it handled, the raw dead letter, and the
    poison message as it was stored (read by a group provisioned up front)."""
    dlq = conformance.dead_letters(dest, group)
    witness = f"{group}-raw"
    await conformance.provision(dest, 1, [witness])
    await conformance.provision(dlq, 1)
    options = {
        "max-attempts": 3,
        "back-off-initial-interval": NEVER,
        "back-off-max-interval": NEVER,
        **consumer,
    }
    app = conformance.app({"poisoned-in-0": _retrying(dest, group, options)})
    handled: Inbox[Any] = Inbox()
    app.consumer(function(handled), name="poisoned")
    async with app:
        payload, headers = poison
        await app.send(dest, payload, key="same-key", headers=headers)
        for item in good:
            await app.send(dest, item, key="same-key")
        await handled.wait_until(
            lambda items: good[-1] in items,
            "the messages behind the poison one (retried, or blocked?)",
        )
    (letter,) = await conformance.read_raw(dlq, f"{group}-inspect", 1)
    original = (await conformance.read_raw(dest, witness, 1))[0]
    return handled.items, letter, original


def _check_letter(
    conformance: Conformance,
    letter: InboundRecord,
    original: InboundRecord,
    dest: str,
    group: str,
    exception: str,
) -> None:
    assert (letter.value, letter.key) == (original.value, original.key)
    assert {name: letter.headers.get(name) for name in original.headers} == original.headers
    assert exception in letter.headers[EXCEPTION_TYPE]
    assert letter.headers[EXCEPTION_MESSAGE]
    assert letter.headers.get(DELIVERY_ATTEMPT, "1") == "1", "dead-lettered on the first attempt"
    _check_origin(conformance, letter.headers, dest, group, original.partition, original.offset)


def test_undecodable_payload_is_dead_lettered_and_does_not_block(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    raw = b'{"id": 1, not json'
    good = [{"id": 2}, {"id": 3}]

    def function(handled: Inbox[Any]) -> Any:
        async def poisoned(order: dict[str, Any]) -> None:
            handled.add(order)

        return poisoned

    handled, letter, original = run(
        _poison_then_good(
            conformance, dest, group, function, (raw, {CONTENT_TYPE: "application/json"}), good
        )
    )
    assert handled == good, "the undecodable message never reaches the function"
    assert original.value == raw
    _check_letter(conformance, letter, original, dest, group, "ConversionError")
    assert letter.headers[CONTENT_TYPE] == "application/json", "original headers are kept"


def test_records_without_headers_are_read_with_the_binding_content_type(
    conformance: Conformance, dest: str, group: str
) -> None:
    """What a plain client sends (no ``contentType``) is decoded as the binding's content
    type; one that does not decode is dead-lettered and the rest flow on."""
    require(conformance.capabilities, "consumer_groups")
    values = [b'{"id": 1}', b"not json", b'{"id": 3}']

    async def scenario() -> tuple[list[Any], InboundRecord]:
        dlq = conformance.dead_letters(dest, group)
        await conformance.provision(dest, 1)
        await conformance.provision(dlq, 1)
        options = {"back-off-initial-interval": NEVER, "back-off-max-interval": NEVER}
        app = conformance.app({"plain-in-0": _retrying(dest, group, options)})
        handled: Inbox[Any] = Inbox()

        @app.consumer
        async def plain(order: dict[str, Any]) -> None:
            handled.add(order)

        async with app:
            async with conformance.binder() as binder:
                records = [OutboundRecord(value, b"one-key") for value in values]
                await conformance.send_raw(binder, dest, records)
            await handled.wait_until(lambda items: {"id": 3} in items, "the record after")
        (letter,) = await conformance.read_raw(dlq, f"{group}-inspect", 1)
        return handled.items, letter

    handled, letter = run(scenario())
    assert handled == [{"id": 1}, {"id": 3}]
    assert letter.value == b"not json"
    assert letter.headers[EXCEPTION_TYPE].endswith("ConversionError")
    assert CONTENT_TYPE not in letter.headers, "the original had none"


SPRING_FORMS = [
    (b'{"n": 1}', {CONTENT_TYPE: '"application/json"'}),  # Spring's header mapper: a JSON string
    (b'{"n": 2}', {CONTENT_TYPE: "application/json;charset=UTF-8"}),
    (b'{"n": 3}', {CONTENT_TYPE: '"application/json;charset=UTF-8"'}),
    (b'{"n": 4}', {CONTENT_TYPE: ""}),  # empty: the binding's content type
    (BOM + b'{"n": 5}', {CONTENT_TYPE: "application/json"}),
    (BOM + b'{"n": 6}', {}),
]


def test_spring_content_type_forms_are_understood(
    conformance: Conformance, dest: str, group: str
) -> None:
    """Records as a Spring (or other) producer writes them reach the function decoded:
    ``contentType`` quoted, with parameters, or empty; JSON after a UTF-8 byte-order mark.
    One that failed to decode would be dead-lettered and never arrive (and a retry, with a
    backoff no one waits for, would show as a timeout)."""
    require(conformance.capabilities, "consumer_groups")

    async def scenario() -> list[Any]:
        await conformance.provision(dest, 1)
        options = {"back-off-initial-interval": NEVER, "back-off-max-interval": NEVER}
        app = conformance.app({"spring-in-0": _retrying(dest, group, options)})
        handled: Inbox[Any] = Inbox()

        @app.consumer
        async def spring(order: dict[str, Any]) -> None:
            handled.add(order)

        async with app:
            async with conformance.binder() as binder:
                records = [OutboundRecord(v, b"one-key", h) for v, h in SPRING_FORMS]
                await conformance.send_raw(binder, dest, records)
            await handled.wait_count(len(SPRING_FORMS), "every Spring-form record")
        return handled.items

    handled = run(scenario())
    assert handled == [{"n": n} for n in range(1, len(SPRING_FORMS) + 1)]


def test_invalid_model_is_dead_lettered_without_retries(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    good = [{"id": 2, "qty": 1}, {"id": 3, "qty": 5}]

    def function(handled: Inbox[Any]) -> Any:
        def poisoned(order: Order) -> None:  # synchronous: runs in a worker thread
            handled.add(order.model_dump())

        return poisoned

    handled, letter, original = run(
        _poison_then_good(conformance, dest, group, function, ({"id": "not a number"}, {}), good)
    )
    assert handled == good, "a payload failing validation never reaches the function"
    assert json.loads(original.value) == {"id": "not a number"}
    _check_letter(conformance, letter, original, dest, group, "ConversionError")


def test_non_retryable_exception_is_dead_lettered_at_once(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    good = [{"n": 2}, {"n": 3}]
    attempts: Inbox[str] = Inbox()

    def function(handled: Inbox[Any]) -> Any:
        def poisoned(message: Message[dict[str, Any]]) -> None:  # synchronous
            if message.payload.get("bad"):
                attempts.add(message.headers[DELIVERY_ATTEMPT])
                raise ValueError("bad value")
            handled.add(message.payload)

        return poisoned

    handled, letter, original = run(
        _poison_then_good(
            conformance,
            dest,
            group,
            function,
            ({"bad": True}, {}),
            good,
            **{"retryable-exceptions": {"ValueError": False}},
        )
    )
    assert handled == good
    assert attempts.items == ["1"], "ValueError is not retryable: one attempt only"
    assert json.loads(original.value) == {"bad": True}
    _check_letter(conformance, letter, original, dest, group, "ValueError")
    assert letter.headers[EXCEPTION_MESSAGE] == "bad value"
