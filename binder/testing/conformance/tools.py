"""What the operator's tools need of a binder (``binder groups``, ``binder dlq``): the groups
of a destination, their positions and lag, their live members, moving a group, and reading a
partition from a position.

A binder without one of these methods (RabbitMQ has no positions to move) skips the
scenario that needs it, naming the method.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from binder.spi import GroupPosition
from binder.testing.conformance.groups import consumer_app, payloads_of, send_all
from binder.testing.conformance.support import TIMEOUT, Conformance, Inbox, require, run

__all__ = [
    "test_a_group_reset_to_earliest_reads_everything_again",
    "test_a_partition_read_from_a_position_gives_what_came_after",
    "test_positions_and_members_of_a_group",
]


def _needs(binder: Any, *names: str) -> None:
    for name in names:
        if not callable(getattr(binder, name, None)):
            pytest.skip(f"binder lacks {name}() for the operator's tools")


def test_positions_and_members_of_a_group(conformance: Conformance, dest: str, group: str) -> None:
    """A group that read everything has lag 0 on every partition; while its app runs it has
    a live member, and soon after it stopped none."""
    require(conformance.capabilities, "consumer_groups")

    async def scenario() -> tuple[dict[int, GroupPosition], list[str], list[str]]:
        await conformance.provision(dest, 1, [group])
        await send_all(conformance, dest, [{"n": n} for n in range(3)])
        inbox: Inbox[tuple[str, Any]] = Inbox()
        async with conformance.binder() as binder:
            _needs(binder, "positions", "members")
            async with consumer_app(conformance, dest, group, inbox):
                await inbox.wait_count(3, "every message")
                live = await binder.members(dest, group)
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while (gone := await binder.members(dest, group)) and (
                asyncio.get_running_loop().time() < deadline
            ):
                await asyncio.sleep(0.2)  # a broker may take a session timeout to see it leave
            return await binder.positions(dest, group), live, gone

    positions, live, gone = run(scenario())
    assert positions and all(p.lag == 0 for p in positions.values()), positions
    assert live, "a running member is live"
    assert gone == [], "a stopped member is not"


def test_a_group_reset_to_earliest_reads_everything_again(
    conformance: Conformance, dest: str, group: str
) -> None:
    """After a group read three messages and stopped, a reset to earliest makes its next
    member read the three again; a dry run changes nothing."""
    require(conformance.capabilities, "consumer_groups")

    async def scenario() -> tuple[list[Any], list[Any], dict[int, GroupPosition]]:
        await conformance.provision(dest, 1, [group])
        await send_all(conformance, dest, [{"n": n} for n in range(3)])
        first: Inbox[tuple[str, Any]] = Inbox()
        async with consumer_app(conformance, dest, group, first):
            await first.wait_count(3, "the first read")
        async with conformance.binder() as binder:
            _needs(binder, "reset", "positions")
            await binder.reset(dest, group, "earliest", dry_run=True)
            unchanged = await binder.positions(dest, group)
            await binder.reset(dest, group, "earliest")
        again: Inbox[tuple[str, Any]] = Inbox()
        async with consumer_app(conformance, dest, group, again):
            await again.wait_count(3, "everything again after the reset")
        return payloads_of(first.items), payloads_of(again.items), unchanged

    first, again, unchanged = run(scenario())
    assert first == again == [{"n": n} for n in range(3)]
    assert all(p.lag == 0 for p in unchanged.values()), "the dry run moved nothing"


def test_a_partition_read_from_a_position_gives_what_came_after(
    conformance: Conformance, dest: str, group: str
) -> None:
    """``read`` from a partition's end as ``positions`` gave it returns exactly what was
    written after, in order, with headers; from ``None`` everything kept; from the position
    it returned, nothing more; and it takes nothing from a group."""
    require(conformance.capabilities, "consumer_groups")

    async def scenario() -> tuple[list[Any], list[Any], list[Any], GroupPosition]:
        await conformance.provision(dest, 1, [group])
        await send_all(conformance, dest, [{"n": n} for n in range(3)])
        async with conformance.binder() as binder:
            _needs(binder, "read", "positions")
            end = (await binder.positions(dest, group))[0].end
            async with conformance.app() as sender:
                for n in range(3, 5):
                    await sender.send(dest, {"n": n}, headers={"trace": f"t{n}"})
            after, since = await binder.read(dest, 0, end, 500)
            everything: list[Any] = []
            position = None
            while True:  # two at a time, on from where each read ended
                records, position = await binder.read(dest, 0, position, 2)
                if not records:
                    break
                everything.extend(records)
            more, _ = await binder.read(dest, 0, since, 500)
            return after, everything, more, (await binder.positions(dest, group))[0]

    after, everything, more, position = run(scenario())
    assert [orjson.loads(r.value) for r in after] == [{"n": 3}, {"n": 4}]
    assert [r.headers.get("trace") for r in after] == ["t3", "t4"]
    assert [orjson.loads(r.value) for r in everything] == [{"n": n} for n in range(5)]
    assert more == []
    assert position.lag == 5, "reading took nothing from the group"
