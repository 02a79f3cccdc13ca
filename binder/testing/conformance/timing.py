"""Time: delayed delivery (never early, in due order per key, held by the backend across
restarts), expiry, and retries that do not block a partition.

The delayed scenarios need ``delayed_delivery``; expiry needs nothing of the binder.
Lateness is checked against a bound generous enough for any backend on a loaded machine
(:data:`LATE`); each binder's own tests and ``make bench`` hold it to its contract's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from binder.message import DELAY, DELIVER_AT, DELIVERY_ATTEMPT, EXCEPTION_TYPE, Message
from binder.testing.conformance.support import TIMEOUT, Conformance, Inbox, require, run

__all__ = [
    "test_a_delayed_message_is_held_by_the_backend_across_a_restart",
    "test_an_expired_message_is_dead_lettered_without_being_handled",
    "test_delayed_messages_are_never_early",
    "test_delayed_messages_of_one_key_arrive_in_due_time_order",
    "test_delayed_retries_let_the_partition_flow_and_dead_letter_at_max_attempts",
    "test_expired_messages_can_be_dropped",
]

LATE = 2.0
"""Seconds a delayed message may arrive after it was due, in these scenarios."""

Received = tuple[float, Message[Any]]
"""(wall-clock time it was handled, the message)."""


def _receiving_app(conformance: Conformance, dest: str, group: str, inbox: Inbox[Received]) -> Any:
    app = conformance.app({"sink-in-0": {"destination": dest, "group": group}})

    @app.consumer(name="sink")
    async def sink(message: Message[Any]) -> None:
        inbox.add((time.time(), message))

    return app


def test_delayed_messages_are_never_early(conformance: Conformance, dest: str, group: str) -> None:
    """Each message arrives no earlier than its delay after its send, carrying
    ``x-deliver-at`` (its due time, epoch ms) and not ``x-delay``; one sent without a delay
    goes at once; one sent with the header ``x-delay`` is delayed the same way."""
    require(conformance.capabilities, "delayed_delivery", "consumer_groups")
    delays = [0.9, 0.3, 0.6]

    async def scenario() -> tuple[dict[str, float], list[Received]]:
        await conformance.provision(dest, 1)
        inbox: Inbox[Received] = Inbox()
        async with _receiving_app(conformance, dest, group, inbox), conformance.app() as sender:
            sent: dict[str, float] = {}
            for n, delay in enumerate(delays):
                sent[f"d{n}"] = time.time() + delay
                await sender.send(dest, {"n": f"d{n}"}, delay=delay)
            sent["header"] = time.time() + 0.45
            await sender.send(dest, {"n": "header"}, headers={DELAY: "450"})
            sent["now"] = time.time()
            await sender.send(dest, {"n": "now"})
            return sent, await inbox.wait_count(len(sent), "every message")

    sent, received = run(scenario())
    assert received[0][1].payload == {"n": "now"}, "the undelayed one first"
    for at, message in received:
        name = message.payload["n"]
        assert DELAY not in message.headers
        if name == "now":
            continue
        due = int(message.headers[DELIVER_AT]) / 1000
        assert at >= due - 0.001, f"{name} arrived {due - at:.3f} s early"
        assert due >= sent[name] - 0.05, f"{name} due before its delay had passed"
        assert at - due <= LATE, f"{name} arrived {at - due:.3f} s late"


def test_delayed_messages_of_one_key_arrive_in_due_time_order(
    conformance: Conformance, dest: str, group: str
) -> None:
    """Messages of one key with different delays arrive in due-time order; equal delays
    sent one after the other keep their send order."""
    require(conformance.capabilities, "delayed_delivery", "consumer_groups")
    plan = [("a", 0.8), ("b", 0.2), ("c", 0.5), ("d", 0.5), ("e", 0.5), ("f", 0.05)]

    async def scenario() -> list[Received]:
        await conformance.provision(dest, 1)
        inbox: Inbox[Received] = Inbox()
        async with _receiving_app(conformance, dest, group, inbox), conformance.app() as sender:
            for name, delay in plan:
                await sender.send(dest, {"n": name}, key="one-key", delay=delay)
            return await inbox.wait_count(len(plan), "every message")

    received = run(scenario())
    assert [m.payload["n"] for _, m in received] == ["f", "b", "c", "d", "e", "a"]
    dues = [int(m.headers[DELIVER_AT]) for _, m in received]
    assert dues == sorted(dues)


def test_a_delayed_message_is_held_by_the_backend_across_a_restart(
    conformance: Conformance, dest: str, group: str
) -> None:
    """The sender stops before the message is due and the consumer starts only after: the
    message is still delivered, once (the consumer's app moves what the sender's left). The
    group is provisioned up front, as for any message sent before its group's consumer
    starts (a backend without ``replay_to_new_groups`` keeps nothing for an unknown group)."""
    require(conformance.capabilities, "delayed_delivery", "consumer_groups")

    async def scenario() -> list[Received]:
        await conformance.provision(dest, 1, [group])
        async with conformance.app() as sender:
            await sender.send(dest, {"n": "held"}, delay=0.5)
            await sender.send(dest, {"n": "later"}, delay=1.0)
        await asyncio.sleep(1.2)  # both due while no app of this destination runs
        inbox: Inbox[Received] = Inbox()
        async with _receiving_app(conformance, dest, group, inbox):
            await inbox.wait_count(2, "both messages after the restart")
            await asyncio.sleep(0.5)  # nothing more comes
            return inbox.items

    received = run(scenario())
    assert [m.payload["n"] for _, m in received] == ["held", "later"]


def _expiring_app(
    conformance: Conformance, dest: str, group: str, inbox: Inbox[Any], **consumer: Any
) -> Any:
    app = conformance.app(
        {
            "sink-in-0": {"destination": dest, "group": group, "consumer": consumer},
            "letters-in-0": {"destination": conformance.dead_letters(dest, group), "group": "ops"},
        }
    )

    @app.consumer(name="sink")
    async def sink(payload: Any) -> None:
        inbox.add(("handled", payload))

    @app.consumer(name="letters")
    async def letters(message: Message[Any]) -> None:
        inbox.add(("letter", message))

    return app


def test_an_expired_message_is_dead_lettered_without_being_handled(
    conformance: Conformance, dest: str, group: str
) -> None:
    """A message received after its ``x-expires-at`` (``app.send(..., ttl=...)``) is not
    handed to the function: it is dead-lettered, naming ``MessageExpired``; a message
    received in time is handled."""
    require(conformance.capabilities, "consumer_groups")

    async def scenario() -> list[Any]:
        await conformance.provision(dest, 1)
        inbox: Inbox[Any] = Inbox()
        app = _expiring_app(conformance, dest, group, inbox)
        async with app:
            binding = app.binding("sink-in-0")
            binding.pause()
            await app.send(dest, {"n": "stale"}, ttl=0.2)
            await app.send(dest, {"n": "fresh"}, ttl=60)
            await asyncio.sleep(0.5)
            binding.resume()
            return await inbox.wait_count(2, "the fresh one handled, the stale one a letter")

    items = run(scenario())
    handled = [payload for kind, payload in items if kind == "handled"]
    letters = [message for kind, message in items if kind == "letter"]
    assert handled == [{"n": "fresh"}]
    (letter,) = letters
    assert letter.payload == {"n": "stale"}
    assert letter.headers[EXCEPTION_TYPE] == "binder.errors.MessageExpired"


def test_expired_messages_can_be_dropped(conformance: Conformance, dest: str, group: str) -> None:
    """With ``consumer.expired: drop`` an expired message is neither handled nor
    dead-lettered, and is counted as dropped."""
    require(conformance.capabilities, "consumer_groups")

    async def scenario() -> tuple[list[Any], int]:
        await conformance.provision(dest, 1)
        inbox: Inbox[Any] = Inbox()
        app = _expiring_app(conformance, dest, group, inbox, expired="drop")
        async with app:
            binding = app.binding("sink-in-0")
            binding.pause()
            await app.send(dest, {"n": "stale"}, ttl=0.2)
            await asyncio.sleep(0.5)
            await app.send(dest, {"n": "fresh"})
            binding.resume()
            await inbox.wait_count(1, "the fresh one")
            await asyncio.sleep(0.5)  # no letter comes
            return inbox.items, binding.stats.dropped  # type: ignore[union-attr]

    items, dropped = run(scenario())
    assert items == [("handled", {"n": "fresh"})]
    assert dropped == 1


def test_delayed_retries_let_the_partition_flow_and_dead_letter_at_max_attempts(
    conformance: Conformance, dest: str, group: str
) -> None:
    """``retry-mode: delayed``: while the first message of a key is retried (after a back-off
    through ``<destination>.<group>.retry``), the messages behind it are handled; its attempts
    are numbered across (``x-delivery-attempt``), and after ``max-attempts`` it is
    dead-lettered to the destination's dead-letter destination, naming the original."""
    require(conformance.capabilities, "delayed_delivery", "consumer_groups")
    consumer = {"max-attempts": 3, "back-off-initial-interval": 0.3, "retry-mode": "delayed"}

    async def scenario() -> list[Any]:
        await conformance.provision(dest, 1)
        conformance.declare(f"{dest}.{group}.retry", group)
        inbox: Inbox[Any] = Inbox()
        app = conformance.app(
            {
                "work-in-0": {"destination": dest, "group": group, "consumer": consumer},
                "letters-in-0": {
                    "destination": conformance.dead_letters(dest, group),
                    "group": "ops",
                },
            }
        )

        @app.consumer(name="work")
        async def work(message: Message[Any]) -> None:
            inbox.add(("call", message.payload["n"], message.headers.get(DELIVERY_ATTEMPT)))
            if message.payload["n"] == "poison":
                raise RuntimeError("always fails")

        @app.consumer(name="letters")
        async def letters(message: Message[Any]) -> None:
            inbox.add(("letter", message.payload["n"], message.headers))

        async with app:
            await app.send(dest, {"n": "poison"}, key="k")
            for n in range(3):
                await app.send(dest, {"n": n}, key="k")
            return await inbox.wait_until(
                lambda items: any(item[0] == "letter" for item in items),
                "the poison message dead-lettered",
                TIMEOUT,
            )

    items = run(scenario())
    calls = [item[1:] for item in items if item[0] == "call"]
    poison = [attempt for n, attempt in calls if n == "poison"]
    assert poison == ["1", "2", "3"], calls
    first_retry = calls.index(("poison", "2"))
    assert {n for n, _ in calls[:first_retry]} >= {0, 1, 2}, "the others went first"
    (letter,) = [item for item in items if item[0] == "letter"]
    assert letter[2]["x-original-destination"] == dest
    assert letter[2]["x-original-delivery-attempt"] == "3"
