"""Consumer groups: one member each, every group everything, where a group starts.

``required-groups`` needs only ``consumer_groups``: the group is created when
the producer provisions its destination, so a backend without
``replay_to_new_groups`` (RabbitMQ's durable queue per group) still keeps what
was sent before the group's first consumer started. That scenario starts the
consumer with ``start-offset: latest``, so it passes only when the group really
existed up front, also on a backend that replays to new groups anyway.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from binder.app import App
from binder.testing.conformance.support import (
    Conformance,
    Inbox,
    keys_for_partitions,
    require,
    run,
)

__all__ = [
    "test_durable_group_gets_what_was_sent_while_it_was_down",
    "test_group_delivers_each_message_to_one_member",
    "test_named_group_that_never_committed_starts_at_earliest",
    "test_required_group_gets_what_was_sent_before_it_started",
    "test_two_groups_each_get_every_message",
]


def consumer_app(
    conformance: Conformance,
    dest: str,
    group: str | None,
    inbox: Inbox[tuple[str, Any]],
    member: str = "sink",
    *,
    delay: float = 0.0,
    **binding: Any,
) -> App:
    """An app whose consumer adds ``(member, payload)`` to ``inbox`` for each message,
    after working for ``delay`` seconds."""
    app = conformance.app({f"{member}-in-0": {"destination": dest, "group": group, **binding}})

    @app.consumer(name=member)
    async def sink(payload: Any) -> None:
        if delay:
            await asyncio.sleep(delay)
        inbox.add((member, payload))

    return app


async def send_all(conformance: Conformance, dest: str, payloads: list[Any]) -> None:
    """Send ``payloads`` in order from an app of their own."""
    async with conformance.app() as sender:
        for payload in payloads:
            await sender.send(dest, payload)


def payloads_of(items: list[tuple[str, Any]], member: str | None = None) -> list[Any]:
    return [payload for who, payload in items if member is None or who == member]


def duplicates(items: list[Any]) -> dict[str, int]:
    """Items seen more than once, by repr, with their count."""
    return {item: n for item, n in Counter(map(repr, items)).items() if n > 1}


def test_group_delivers_each_message_to_one_member(
    conformance: Conformance, dest: str, group: str
) -> None:
    """The second member joins mid-stream: the rebalance hands over without duplicates."""
    require(conformance.capabilities, "consumer_groups")
    partitions = 4
    payloads = [{"n": n} for n in range(60)]
    sentinels = [{"end": key} for key in keys_for_partitions(partitions)]
    expected = [*payloads, *sentinels]
    lanes = {"concurrency": 2}  # work is still in flight when the partitions move

    async def scenario() -> list[tuple[str, Any]]:
        await conformance.provision(dest, partitions)
        inbox: Inbox[tuple[str, Any]] = Inbox()
        sender = conformance.app(
            {"sender": {"destination": dest, "producer": {"partition-count": partitions}}}
        )
        one = consumer_app(conformance, dest, group, inbox, "one", delay=0.001, consumer=lanes)
        two = consumer_app(conformance, dest, group, inbox, "two", delay=0.001, consumer=lanes)
        async with one, sender:
            for n, payload in enumerate(payloads[:30]):
                await sender.send("sender", payload, key=f"key-{n}")
            await inbox.wait_count(5, "the first member at work")
            async with two:
                for n, payload in enumerate(payloads[30:], start=30):
                    await sender.send("sender", payload, key=f"key-{n}")
                for sentinel in sentinels:  # last in each partition: all else is fetched first
                    await sender.send("sender", sentinel, key=sentinel["end"])
                await inbox.wait_until(
                    lambda items: all(s in payloads_of(items) for s in sentinels),
                    "the sentinel of every partition",
                )
        # read once both stopped: what was fetched before a sentinel has been handled by then
        return inbox.items

    received = run(scenario())
    union = payloads_of(received)
    assert not duplicates(union), "absent failures, a group gets each message once"
    assert sorted(map(repr, union)) == sorted(map(repr, expected))


def test_two_groups_each_get_every_message(conformance: Conformance, dest: str, group: str) -> None:
    require(conformance.capabilities, "consumer_groups")
    payloads = [{"n": n} for n in range(20)]
    end = {"n": "end"}

    async def scenario() -> list[tuple[str, Any]]:
        await conformance.provision(dest, 1)
        inbox: Inbox[tuple[str, Any]] = Inbox()
        async with (
            consumer_app(conformance, dest, f"{group}-a", inbox, "a"),
            consumer_app(conformance, dest, f"{group}-b", inbox, "b"),
        ):
            await send_all(conformance, dest, [*payloads, end])
            return await inbox.wait_until(
                lambda items: ("a", end) in items and ("b", end) in items, "the sentinel in both"
            )

    received = run(scenario())
    assert payloads_of(received, "a") == [*payloads, end], "group a gets every message once"
    assert payloads_of(received, "b") == [*payloads, end], "group b gets every message once"


def test_named_group_that_never_committed_starts_at_earliest(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups", "replay_to_new_groups")
    payloads = [{"n": n} for n in range(10)]

    async def scenario() -> list[tuple[str, Any]]:
        await conformance.provision(dest, 1)
        await send_all(conformance, dest, payloads)
        inbox: Inbox[tuple[str, Any]] = Inbox()
        async with consumer_app(conformance, dest, group, inbox):
            return await inbox.wait_until(
                lambda items: ("sink", payloads[-1]) in items,
                "the last message sent before the group existed",
            )

    assert payloads_of(run(scenario())) == payloads


def test_durable_group_gets_what_was_sent_while_it_was_down(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    first = {"n": "first"}
    while_down = [{"n": f"down-{n}"} for n in range(5)]
    end = {"n": "end"}

    async def scenario() -> tuple[list[Any], list[Any]]:
        await conformance.provision(dest, 1)
        inbox: Inbox[tuple[str, Any]] = Inbox()
        app = consumer_app(conformance, dest, group, inbox)
        async with app:
            await send_all(conformance, dest, [first])
            before = payloads_of(await inbox.wait_for(("sink", first)))
        await send_all(conformance, dest, while_down)
        async with app:  # the same app, started again
            await send_all(conformance, dest, [end])
            after = payloads_of(await inbox.wait_for(("sink", end)))[len(before) :]
        return before, after

    before, after = run(scenario())
    assert before == [first]
    assert after == [*while_down, end], "a stopped group resumes after its last commit"


def test_required_group_gets_what_was_sent_before_it_started(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    payloads = [{"n": n} for n in range(10)]

    async def scenario() -> list[tuple[str, Any]]:
        sender = conformance.app(
            {"sender": {"destination": dest, "producer": {"required-groups": [group]}}}
        )
        async with sender:
            for payload in payloads:
                await sender.send("sender", payload)
        inbox: Inbox[tuple[str, Any]] = Inbox()
        latest = {"start-offset": "latest"}
        async with consumer_app(conformance, dest, group, inbox, consumer=latest):
            return await inbox.wait_until(
                lambda items: ("sink", payloads[-1]) in items,
                "the last message sent before the group started",
            )

    assert payloads_of(run(scenario())) == payloads
