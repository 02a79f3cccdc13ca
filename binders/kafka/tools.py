"""What the operator's tools need of Kafka (``binder groups``): a destination's groups, their
committed offsets and lag, their live members, and moving a group.

Read with the admin client (``ListGroups``, ``OffsetFetch``, ``DescribeGroups``) and a
consumer client without a group for the partitions' first and next offsets; a group is moved
by committing through a client of that group assigned every partition by hand, which Kafka
accepts only while the group has no members (the tool refuses earlier, naming them).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from binder.errors import BackendError
from binder.spi import GroupPosition, InboundRecord
from binders.kafka.errors import backend_errors

if TYPE_CHECKING:
    from binders.kafka.binder import KafkaBinder

__all__ = ["groups", "members", "positions", "read", "reset"]


async def _partitions(binder: KafkaBinder, destination: str) -> list[TopicPartition]:
    count = await binder.admin.partition_count(destination) or 0
    return [TopicPartition(destination, p) for p in range(count)]


async def _bounds(
    binder: KafkaBinder, destination: str
) -> tuple[list[TopicPartition], dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The partitions, their first offsets, their next offsets."""
    partitions = await _partitions(binder, destination)
    client = AIOKafkaConsumer(enable_auto_commit=False, **binder._connection)
    with backend_errors(binder.options.bootstrap_servers, f"read the offsets of {destination!r}"):
        await client.start()
        try:
            starts = await client.beginning_offsets(partitions) if partitions else {}
            ends = await client.end_offsets(partitions) if partitions else {}
        finally:
            await client.stop()
    return partitions, starts, ends


async def groups(binder: KafkaBinder, destination: str) -> list[str]:
    """The groups with offsets committed on ``destination``: each group listed is asked for
    the offsets of the destination's partitions, named (an ``OffsetFetch`` for all of a
    group's offsets gets from Tansu 0.6 a reply without its topics, which aiokafka cannot
    decode)."""
    partitions = await _partitions(binder, destination)
    if not partitions:
        return []
    admin = binder.admin._admin
    found = []
    with backend_errors(binder.options.bootstrap_servers, "list the groups (ListGroups)"):
        for entry in await admin.list_consumer_groups():
            group = entry[0]
            offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
            if any(meta.offset >= 0 for meta in offsets.values()):
                found.append(group)
    return sorted(found)


async def positions(binder: KafkaBinder, destination: str, group: str) -> dict[int, GroupPosition]:
    partitions, starts, ends = await _bounds(binder, destination)
    admin = binder.admin._admin
    with backend_errors(binder.options.bootstrap_servers, f"read the offsets of {group!r}"):
        committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
    found = {}
    for tp in partitions:
        meta = committed.get(tp)
        offset = meta.offset if meta is not None and meta.offset >= 0 else None
        lag = ends[tp] - (offset if offset is not None else starts[tp])
        found[tp.partition] = GroupPosition(offset, starts[tp], ends[tp], lag)
    return found


async def read(
    binder: KafkaBinder, destination: str, partition: int, since: int | None, limit: int
) -> tuple[list[InboundRecord], int | None]:
    """Up to ``limit`` records of a partition from offset ``since`` (``None``: from the first
    kept) up to its end as it is now, with the offset to read on from: a client without a
    group, assigned the partition by hand."""
    from binders.kafka.consumer import batch_records

    tp = TopicPartition(destination, partition)
    client = AIOKafkaConsumer(enable_auto_commit=False, **binder._connection)
    found: list[InboundRecord] = []
    with backend_errors(binder.options.bootstrap_servers, f"read {destination!r}"):
        await client.start()
        try:
            client.assign([tp])
            first = (await client.beginning_offsets([tp]))[tp]
            end = (await client.end_offsets([tp]))[tp]
            position = first if since is None else max(int(since), first)
            if position >= end:
                return [], position
            client.seek(tp, position)
            stalled = 0  # polls that moved nothing: the end may be a marker never fetched
            while len(found) < limit and position < end and stalled < 10:
                batch = await client.getmany(tp, timeout_ms=500, max_records=limit - len(found))
                found.extend(batch_records(destination, batch))
                moved = await client.position(tp)
                stalled = 0 if moved > position else stalled + 1
                position = moved
        finally:
            await client.stop()
    return found, position


async def members(binder: KafkaBinder, destination: str, group: str) -> list[str]:
    """The group's members (``client-id@host``), whatever they read."""
    admin = binder.admin._admin
    with backend_errors(binder.options.bootstrap_servers, f"describe the group {group!r}"):
        described = await admin.describe_consumer_groups([group])
    names = []
    for response in described:
        for entry in response.groups:
            # (error_code, group, state, protocol_type, protocol, members)
            for member in entry[5]:
                names.append(f"{member[1]}@{member[2].lstrip('/')}")
    return sorted(names)


async def reset(
    binder: KafkaBinder, destination: str, group: str, to: Any, *, dry_run: bool = False
) -> dict[int, int]:
    """Commit ``group``'s offsets on every partition: the first, the next, ``to`` (bounded by
    what the partition holds), or the first at a time."""
    partitions, starts, ends = await _bounds(binder, destination)
    if to == "earliest":
        target = {tp: starts[tp] for tp in partitions}
    elif to == "latest":
        target = {tp: ends[tp] for tp in partitions}
    elif isinstance(to, datetime):
        target = await _at(binder, partitions, ends, int(to.timestamp() * 1000))
    else:
        target = {tp: min(max(int(to), starts[tp]), ends[tp]) for tp in partitions}
    if not dry_run and target:
        await _commit(binder, group, target)
    return {tp.partition: offset for tp, offset in target.items()}


async def _commit(binder: KafkaBinder, group: str, target: dict[TopicPartition, int]) -> None:
    """Commit ``target`` for ``group`` from outside it; a group whose last member just left
    may refuse for a while (its coordinator waits for the members to rejoin): tried for
    :data:`_SETTLE` seconds."""
    deadline = asyncio.get_running_loop().time() + _SETTLE
    while True:
        client = AIOKafkaConsumer(group_id=group, enable_auto_commit=False, **binder._connection)
        try:
            with backend_errors(binder.options.bootstrap_servers, f"reset {group!r}"):
                await client.start()
                try:
                    client.assign(list(target))
                    await client.commit(target)
                    return
                finally:
                    await client.stop()
        except BackendError:
            if asyncio.get_running_loop().time() >= deadline:
                raise
        await asyncio.sleep(0.5)


_SETTLE = 30.0
"""Seconds a reset keeps trying while the group settles (a rebalance waits up to the
members' max-poll-interval for them to come back)."""


async def _at(
    binder: KafkaBinder,
    partitions: list[TopicPartition],
    ends: dict[TopicPartition, int],
    millis: int,
) -> dict[TopicPartition, int]:
    client = AIOKafkaConsumer(enable_auto_commit=False, **binder._connection)
    with backend_errors(binder.options.bootstrap_servers, "look up offsets by time"):
        await client.start()
        try:
            found = await client.offsets_for_times(dict.fromkeys(partitions, millis))
        finally:
            await client.stop()
    return {tp: found[tp].offset if found.get(tp) is not None else ends[tp] for tp in partitions}
