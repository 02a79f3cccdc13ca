"""The binder on a real Redis Cluster (three masters, ``cluster: true``): where its keys
live, and keyed and anonymous delivery over partition streams on several nodes.

Where a key lives is read from the masters themselves (``SCAN`` on each one: a master
stores only keys of its own slots), never from the client's routing table alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from redis.cluster import RedisCluster as ClusterClient

from binder.app import App
from binder.message import Message
from binder.testing.conformance.support import Conformance, Inbox, keys_for_partitions, run
from binders.redis.testing import FAST_CLAIMS

PARTITIONS = 8
KEYS = [f"key-{k}" for k in range(16)]
PER_KEY = 25


@pytest.fixture
def cluster(redis_cluster_url: str, cluster_key_prefix: str) -> Iterator[Conformance]:
    """Apps and raw binders on the cluster; every destination a test declared is deleted
    after (and every key under the prefix, by ``cluster_key_prefix``)."""
    suite = Conformance(
        {
            "type": "redis",
            "url": redis_cluster_url,
            "cluster": True,
            "key-prefix": cluster_key_prefix,
            **FAST_CLAIMS,
        }
    )
    yield suite
    run(suite.cleanup())


@pytest.fixture
def nodes(redis_cluster_url: str) -> Iterator[ClusterClient]:
    """A plain synchronous redis-py cluster client (replies as bytes)."""
    with ClusterClient.from_url(redis_cluster_url) as client:
        yield client


def _stored(nodes: ClusterClient, pattern: str) -> dict[bytes, int]:
    """Each key matching ``pattern`` (a glob), with the port of the master storing it."""
    where: dict[bytes, int] = {}
    for primary in nodes.get_primaries():
        with Redis(host=primary.host, port=primary.port) as node:
            where.update(dict.fromkeys(node.scan_iter(match=pattern, count=1000), primary.port))
    return where


def _sender(cluster: Conformance, stream: str) -> App:
    return cluster.app(
        {"sender": {"destination": stream, "producer": {"partition-count": PARTITIONS}}}
    )


def _member(
    cluster: Conformance, stream: str, group: str | None, inbox: Inbox[Any], name: str
) -> App:
    """An app whose consumer adds ``(name, key, payload)`` to ``inbox`` for each message."""
    app = cluster.app({f"{name}-in-0": {"destination": stream, "group": group}})

    @app.consumer(name=name)
    async def handle(message: Message[Any]) -> None:
        inbox.add((name, message.key, message.payload))

    return app


async def _burst(sender: App) -> None:
    """``PER_KEY`` messages for each of ``KEYS``, all sent in one loop iteration."""
    sends = [
        sender.send("sender", {"key": key, "seq": seq}, key=key)
        for seq in range(PER_KEY)
        for key in KEYS
    ]
    await asyncio.gather(*sends)


def _sequences(received: list[tuple[str, Any, Any]]) -> dict[str, list[int]]:
    by_key: dict[str, list[int]] = defaultdict(list)
    for _, key, payload in received:
        by_key[key].append(payload["seq"])
    return by_key


async def _until_split(nodes: ClusterClient, leases: list[str], owners: int) -> None:
    """Poll the lease keys until every one is held and ``owners`` members hold them."""
    deadline = time.monotonic() + 10.0
    while True:
        held = [nodes.get(lease) for lease in leases]
        if None not in held and len(set(held)) == owners:
            return
        assert time.monotonic() < deadline, f"the leases never split: {held}"
        await asyncio.sleep(0.05)


def _lease_keys(prefix: str, stream: str, group: str) -> list[str]:
    return [f"{{{prefix}{stream}:{p}}}:lease:{group}" for p in range(PARTITIONS)]


# -- where the keys live ----------------------------------------------------------------------


def test_the_partition_streams_of_one_destination_live_on_several_nodes(
    cluster: Conformance, cluster_key_prefix: str, nodes: ClusterClient, stream: str
) -> None:
    """Eight partition streams, each in a slot of its own name: over three masters they
    cannot all share one (unless the eight slots fall on one master: 3 * 3**-8, 0.05 %)."""

    async def send() -> None:
        async with _sender(cluster, stream) as sender:
            for key in keys_for_partitions(PARTITIONS):  # every partition stream exists
                await sender.send("sender", {"key": key}, key=key)

    run(send())
    base = f"{cluster_key_prefix}{stream}"
    stored = _stored(nodes, f"{base}:*")
    streams = [f"{base}:{p}".encode() for p in range(PARTITIONS)]
    assert sorted(stored) == sorted([*streams, f"{base}:partition-count".encode()])
    assert all(nodes.xlen(s) == 1 for s in streams)
    assert len({stored[s] for s in streams}) > 1, f"all on one node: {stored}"
    assert len({nodes.cluster_keyslot(s) for s in streams}) > 1


def test_each_lease_is_in_the_slot_and_on_the_node_of_its_stream(
    cluster: Conformance,
    cluster_key_prefix: str,
    nodes: ClusterClient,
    stream: str,
    group: str,
) -> None:
    """The lease keys the binder made while one member of a group consumes every partition,
    read from the masters: one per partition stream, hash-tagged into its stream's slot."""
    sentinels = keys_for_partitions(PARTITIONS)
    base = f"{cluster_key_prefix}{stream}"

    async def scenario() -> tuple[dict[bytes, int], dict[bytes, bytes | None], list[bytes]]:
        await cluster.provision(stream, PARTITIONS, [group])
        inbox: Inbox[Any] = Inbox()
        async with _member(cluster, stream, group, inbox, "one"), _sender(cluster, stream) as s:
            for key in sentinels:
                await s.send("sender", {"key": key}, key=key)
            await inbox.wait_count(PARTITIONS, "a message from every partition")
            leases = _stored(nodes, f"{{{base}:*}}:lease:*")
            owners = {lease: nodes.get(lease) for lease in leases}
            return leases, owners, nodes.zrange(f"{base}:members:{group}", 0, -1)

    leases, owners, members = run(scenario())
    streams = [f"{base}:{p}".encode() for p in range(PARTITIONS)]
    stored = _stored(nodes, f"{base}:*")
    assert sorted(leases) == sorted(f"{{{s.decode()}}}:lease:{group}".encode() for s in streams)
    for partition_stream in streams:
        lease = b"{" + partition_stream + b"}:lease:" + group.encode()
        assert nodes.cluster_keyslot(lease) == nodes.cluster_keyslot(partition_stream)
        assert leases[lease] == stored[partition_stream], f"{lease!r} not with its stream"
    (owner,) = set(owners.values())  # one member holds every lease
    assert owner in members


# -- keyed delivery -----------------------------------------------------------------------


def test_a_keyed_burst_arrives_in_order_per_key_at_one_member(
    cluster: Conformance, stream: str, group: str
) -> None:
    async def scenario() -> list[tuple[str, Any, Any]]:
        await cluster.provision(stream, PARTITIONS, [group])
        inbox: Inbox[tuple[str, Any, Any]] = Inbox()
        async with _member(cluster, stream, group, inbox, "one"), _sender(cluster, stream) as s:
            await _burst(s)
            return await inbox.wait_count(len(KEYS) * PER_KEY)

    received = run(scenario())
    by_key = _sequences(received)
    assert sorted(by_key) == sorted(KEYS)
    for key in KEYS:
        assert by_key[key] == list(range(PER_KEY)), f"{key}: out of order {by_key[key]}"


def test_a_keyed_burst_arrives_in_order_per_key_at_two_members_of_one_group(
    cluster: Conformance,
    cluster_key_prefix: str,
    nodes: ClusterClient,
    stream: str,
    group: str,
) -> None:
    """Two apps in one group split the eight partitions (waited for on the lease keys)
    before the burst: both handle some of it, and each key's messages keep their order."""

    async def scenario() -> list[tuple[str, Any, Any]]:
        await cluster.provision(stream, PARTITIONS, [group])
        inbox: Inbox[tuple[str, Any, Any]] = Inbox()
        async with (
            _member(cluster, stream, group, inbox, "one"),
            _member(cluster, stream, group, inbox, "two"),
            _sender(cluster, stream) as sender,
        ):
            await _until_split(nodes, _lease_keys(cluster_key_prefix, stream, group), 2)
            await _burst(sender)
            return await inbox.wait_count(len(KEYS) * PER_KEY)

    received = run(scenario())
    assert {member for member, _, _ in received} == {"one", "two"}, "both members handle some"
    by_key = _sequences(received)
    for key in KEYS:
        assert by_key[key] == list(range(PER_KEY)), f"{key}: out of order {by_key[key]}"


# -- anonymous delivery -------------------------------------------------------------------


def test_an_anonymous_consumer_of_a_partitioned_destination_gets_what_was_sent_meanwhile(
    cluster: Conformance, stream: str
) -> None:
    """Sent before it subscribed: one message on every partition; while subscribed: a
    burst, then a sentinel on every partition, after which nothing older can come."""
    sentinels = keys_for_partitions(PARTITIONS, "end")
    end = [{"key": key, "seq": PER_KEY} for key in sentinels]

    async def scenario() -> list[tuple[str, Any, Any]]:
        await cluster.provision(stream, PARTITIONS)
        async with _sender(cluster, stream) as sender:
            for key in keys_for_partitions(PARTITIONS, "before"):
                await sender.send("sender", {"key": key, "seq": -1}, key=key)
        inbox: Inbox[tuple[str, Any, Any]] = Inbox()
        async with _member(cluster, stream, None, inbox, "anon"), _sender(cluster, stream) as s:
            await _burst(s)
            for payload in end:
                await s.send("sender", payload, key=payload["key"])
            return await inbox.wait_until(
                lambda items: all(("anon", p["key"], p) in items for p in end),
                "the sentinel of every partition",
            )

    by_key = _sequences(run(scenario()))
    assert sorted(by_key) == sorted([*KEYS, *sentinels]), "nothing sent before it subscribed"
    for key in KEYS:
        assert by_key[key] == list(range(PER_KEY)), f"{key}: {by_key[key]}"
    for key in sentinels:
        assert by_key[key] == [PER_KEY]
