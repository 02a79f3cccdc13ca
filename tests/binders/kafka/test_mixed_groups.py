"""One consumer group of binder members and librdkafka (confluent-kafka) members.

``partition-assignment-strategy`` decides which assignment protocols a binder member
offers; a group can only form on a protocol every member offers. The librdkafka member
here is a real second client: a ``confluent_kafka.Consumer`` polling in a thread of its
own, handling each poll's messages and committing them synchronously before the next
poll (and in ``on_revoke``), so it never holds finished work uncommitted when its
partitions move.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from binder import App, BackendError, ConfigError, Message
from binder.testing.conformance.support import (
    TIMEOUT,
    Conformance,
    keys_for_partitions,
    partition_of,
    run,
)
from binders.kafka import KafkaOptions
from binders.kafka.consumer import assignors
from binders.kafka.testing import FAST_GROUPS

TOTAL = 10_000
PARTITIONS = 4
LIBRDKAFKA = "librdkafka"
BINDER = "binder"
RANGE = [[0, 1], [2, 3]]
ROUNDROBIN = [[0, 2], [1, 3]]
"""The librdkafka member's partitions (of four) in a group of two, by protocol."""

TANSU_FIXES_THE_PROTOCOL = pytest.mark.xfail(
    not os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
    reason="Tansu 0.6 bug: the group's protocol is its first member's first choice, and a "
    "joiner that does not offer that one is refused (INCONSISTENT_GROUP_PROTOCOL) although "
    "the members share another; Kafka picks among the protocols every member offers",
    raises=AssertionError,
    strict=True,
)


# -- the option -----------------------------------------------------------------------------


def test_the_default_offers_range_first_then_roundrobin() -> None:
    assert KafkaOptions().partition_assignment_strategy == ["range", "roundrobin"]
    classes = assignors(KafkaOptions().partition_assignment_strategy)
    assert [c.name for c in classes] == ["range", "roundrobin"]


def test_a_comma_separated_list_is_read_as_kafka_writes_it() -> None:
    options = KafkaOptions.model_validate({"partition-assignment-strategy": "sticky, range"})
    assert options.partition_assignment_strategy == ["sticky", "range"]
    environ = {"BINDER_BINDERS__K__PARTITION_ASSIGNMENT_STRATEGY": "[roundrobin]"}
    app = App(config={"binder": {"binders": {"k": {"type": "kafka"}}}}, environ=environ)
    assert app.config.binders["k"].options.partition_assignment_strategy == ["roundrobin"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["range", "cooperative-sticky"], "aiokafka has no cooperative rebalancing"),
        (["uniform"], "unknown assignor 'uniform': use range, roundrobin, sticky"),
        (["range", "range"], "listed twice"),
        ([], "at least 1 item"),
    ],
)
def test_a_strategy_aiokafka_lacks_is_refused_naming_the_key(value: Any, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        KafkaOptions.model_validate({"partition-assignment-strategy": value})
    config = {
        "binder": {"binders": {"k": {"type": "kafka", "partition-assignment-strategy": value}}}
    }
    with pytest.raises(ConfigError, match=r"binder\.binders\.k\.partition-assignment-strategy"):
        App(config=config, environ={})


def test_each_client_gets_its_own_sticky_assignor() -> None:
    """aiokafka's sticky assignor keeps the member's assignment in class attributes."""
    first, second = assignors(["sticky"])[0], assignors(["sticky"])[0]
    assert first is not second and first.name == second.name == "sticky"
    first.member_assignment = []
    assert second.member_assignment is None


# -- the librdkafka member ------------------------------------------------------------------


class _Tally:
    """Which member handled which message, counted from any thread; awaited on changes."""

    def __init__(self) -> None:
        self.seen: Counter[int] = Counter()
        self.by: Counter[str] = Counter()
        self.partitions: dict[str, set[int]] = {}
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    def add(self, who: str, n: int, partition: int) -> None:
        with self._lock:
            self.seen[n] += 1
            self.by[who] += 1
            self.partitions.setdefault(who, set()).add(partition)
        self.poke()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.poke()

    def poke(self) -> None:
        if self._loop is not None and self._changed is not None:
            self._loop.call_soon_threadsafe(self._changed.set)

    async def wait(self, done: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        self._loop, self._changed = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if self.error is not None:
                        raise AssertionError(f"the librdkafka member failed: {self.error!r}")
                    with self._lock:
                        if done():
                            return
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


class LibrdkafkaMember:
    """A ``confluent_kafka.Consumer`` of ``topic`` in ``group``, polling in its own thread.

    Each poll's messages are handled, then committed synchronously before the next poll;
    ``on_revoke`` commits whatever is left, so nothing handled is ever given to another
    member uncommitted. ``assigned`` is its current assignment; ``assignments`` each one
    it got; a client error (an inconsistent group protocol, a failed commit) ends the
    thread and is in ``tally.error``.
    """

    def __init__(self, servers: str, topic: str, group: str, strategy: str, tally: _Tally) -> None:
        self.config = {
            "bootstrap.servers": servers,
            "group.id": group,
            "partition.assignment.strategy": strategy,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": FAST_GROUPS["session-timeout-ms"],
            "heartbeat.interval.ms": FAST_GROUPS["heartbeat-interval-ms"],
            "max.poll.interval.ms": FAST_GROUPS["max-poll-interval-ms"],
        }
        self.topic, self.tally = topic, tally
        self.assigned: set[int] = set()
        self.assignments: list[list[int]] = []
        self._pending: dict[int, int] = {}  # partition → next offset, handled not committed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="librdkafka-member", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Leave the group (``close`` revokes, so ``on_revoke`` commits) and join the thread.
        Idempotent; nothing to do when never started."""
        self._stop.set()
        if self._thread.ident is None:
            return
        self._thread.join(TIMEOUT * 3)
        assert not self._thread.is_alive(), "the librdkafka member did not close"

    def _run(self) -> None:
        from confluent_kafka import Consumer

        try:
            consumer = Consumer(self.config)
            try:
                consumer.subscribe(
                    [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
                )
                while not self._stop.is_set():
                    self._handle(consumer, consumer.consume(num_messages=100, timeout=0.1))
            finally:
                consumer.close()
        except BaseException as exc:  # reported through the tally
            self.tally.fail(exc)

    def _handle(self, consumer: Any, messages: Sequence[Any]) -> None:
        from confluent_kafka import KafkaException

        for message in messages:
            if message.error() is not None:
                raise KafkaException(message.error())
            self.tally.add(LIBRDKAFKA, json.loads(message.value())["n"], message.partition())
            self._pending[message.partition()] = message.offset() + 1
        self._commit(consumer)

    def _commit(self, consumer: Any) -> None:
        from confluent_kafka import TopicPartition

        if self._pending:
            offsets = [TopicPartition(self.topic, p, o) for p, o in self._pending.items()]
            consumer.commit(offsets=offsets, asynchronous=False)
            self._pending.clear()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        self.assigned = {tp.partition for tp in partitions}
        self.assignments.append(sorted(self.assigned))
        self.tally.poke()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._commit(consumer)
        self.assigned = set()
        self.tally.poke()


@pytest.fixture
def tally() -> _Tally:
    return _Tally()


def _binder_member(
    kafka: Conformance, topic: str, group: str, tally: _Tally, lanes: int = 2
) -> App:
    """A binder member of ``group``, counting what it handles in ``tally``."""
    binding = {"destination": topic, "group": group, "consumer": {"concurrency": lanes}}
    app = kafka.app({"member-in-0": binding})

    @app.consumer
    async def member(message: Message[dict[str, int]]) -> None:
        assert message.partition is not None
        tally.add(BINDER, message.payload["n"], message.partition)

    return app


def _suite(kafka_config: dict[str, Any], strategy: Sequence[str] | None) -> Conformance:
    if strategy is None:
        return Conformance(kafka_config)
    return Conformance({**kafka_config, "partition-assignment-strategy": list(strategy)})


async def _send_one_per_partition(kafka: Conformance, topic: str, first: int) -> None:
    """Message ``first + p`` to partition ``p``, for each partition."""
    producer = {"sender": {"destination": topic, "producer": {"partition-count": PARTITIONS}}}
    async with kafka.app(producer) as sender:
        for p, key in enumerate(keys_for_partitions(PARTITIONS)):
            assert partition_of(key, PARTITIONS) == p
            await sender.send("sender", {"n": first + p}, key=key)


# -- sharing a group ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("librdkafka", "binder", "first", "shapes"),
    [
        ("range", None, LIBRDKAFKA, RANGE),
        ("range,roundrobin", None, LIBRDKAFKA, RANGE),
        ("roundrobin", ["roundrobin"], LIBRDKAFKA, ROUNDROBIN),
        ("roundrobin", None, LIBRDKAFKA, ROUNDROBIN),
        ("range", None, BINDER, RANGE),
        pytest.param("roundrobin", None, BINDER, ROUNDROBIN, marks=TANSU_FIXES_THE_PROTOCOL),
    ],
    ids=[
        "range-joined-by-default",
        "librdkafka-default-joined-by-default",
        "roundrobin-joined-by-roundrobin",
        "roundrobin-joined-by-default",
        "default-joined-by-range",
        "default-joined-by-roundrobin",
    ],
)
def test_a_binder_member_and_a_librdkafka_member_share_a_group(
    kafka_config: dict[str, Any],
    topic: str,
    group: str,
    tally: _Tally,
    librdkafka: str,
    binder: list[str] | None,
    first: str,
    shapes: list[list[int]],
) -> None:
    """The ``first`` member has every partition; the other joins (the binder's default: no
    option); the group splits the partitions as the common protocol does (``range``: two
    in a row each, ``roundrobin``: every other one), and each message goes to one."""
    kafka = _suite(kafka_config, binder)
    member = LibrdkafkaMember(kafka_config["bootstrap-servers"], topic, group, librdkafka, tally)
    shared: list[int] = []  # the librdkafka member's partitions while both are in

    async def scenario() -> None:
        await kafka.provision(topic, PARTITIONS, [group])
        if first == LIBRDKAFKA:
            member.start()
            await tally.wait(lambda: len(member.assigned) == PARTITIONS, "librdkafka: all four")
        async with _binder_member(kafka, topic, group, tally):  # started: it has partitions
            if first == BINDER:
                member.start()
            await tally.wait(lambda: len(member.assigned) == 2, "librdkafka: half of them")
            shared.extend(sorted(member.assigned))
            await _send_one_per_partition(kafka, topic, 0)
            await tally.wait(lambda: len(tally.seen) == PARTITIONS, "one message per partition")
        await asyncio.to_thread(member.stop)

    try:
        run(scenario())
    finally:
        member.stop()
        run(kafka.cleanup())
    assert shared in shapes, f"librdkafka got {member.assignments}"
    assert tally.partitions[LIBRDKAFKA] == set(shared)
    assert tally.partitions[BINDER] == set(range(PARTITIONS)) - set(shared)
    assert set(tally.seen.values()) == {1}, "each message once"


def test_without_a_common_protocol_the_binder_member_is_refused_by_name(
    kafka_config: dict[str, Any], topic: str, group: str, tally: _Tally
) -> None:
    """``roundrobin`` alone cannot join a ``range``-only group: what the binder did before
    it had the option, and what a member of a ``cooperative-sticky``-only Java group gets."""
    kafka = _suite(kafka_config, ["roundrobin"])
    member = LibrdkafkaMember(kafka_config["bootstrap-servers"], topic, group, "range", tally)

    async def scenario() -> None:
        await kafka.provision(topic, PARTITIONS, [group])
        member.start()
        await tally.wait(lambda: len(member.assigned) == PARTITIONS, "librdkafka: every partition")
        with pytest.raises(BackendError, match="InconsistentGroupProtocol"):
            async with _binder_member(kafka, topic, group, tally):
                pass
        await asyncio.to_thread(member.stop)

    try:
        run(scenario())
    finally:
        member.stop()
        run(kafka.cleanup())
    assert tally.error is None


# -- joining and leaving while messages flow ------------------------------------------------


async def _produce(sender: App, gates: Sequence[tuple[int, asyncio.Event]]) -> None:
    """Send ``TOTAL`` keyed messages, in pipelined chunks of 100; before message ``n`` of
    each gate, wait for its event."""
    waits = dict(gates)
    for start in range(0, TOTAL, 100):
        if start in waits:
            await waits[start].wait()
        chunk = range(start, start + 100)
        await asyncio.gather(*(sender.send("sender", {"n": n}, key=f"k{n % 64}") for n in chunk))


def test_a_librdkafka_member_joins_and_leaves_while_messages_flow_each_handled_once(
    kafka: Conformance, kafka_config: dict[str, Any], topic: str, group: str, tally: _Tally
) -> None:
    """A binder member (default strategy) consumes a 4-partition topic; a ``range``-only
    librdkafka member joins mid-stream, takes part, and leaves mid-stream. Both sides
    commit what they finished before their partitions are revoked, so every message is
    handled exactly once across the two: none lost, none twice."""
    member = LibrdkafkaMember(kafka_config["bootstrap-servers"], topic, group, "range", tally)
    joining, joined, leaving = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def scenario() -> None:
        await kafka.provision(topic, PARTITIONS)
        producer = {"sender": {"destination": topic, "producer": {"partition-count": PARTITIONS}}}
        async with _binder_member(kafka, topic, group, tally), kafka.app(producer) as sender:
            flow = asyncio.create_task(
                _produce(sender, [(3000, joining), (6000, joined), (8000, leaving)])
            )
            try:
                await tally.wait(lambda: len(tally.seen) >= 2000, "the binder at work")
                joining.set()  # 3000..5999 flow while the librdkafka member joins
                member.start()
                await tally.wait(lambda: len(member.assigned) == 2, "librdkafka: two partitions")
                joined.set()
                await tally.wait(lambda: tally.by[LIBRDKAFKA] >= 300, "librdkafka at work")
                before_leaving = tally.by[BINDER]
                leaving.set()  # 8000..9999 flow while it leaves
                await asyncio.to_thread(member.stop)
                await asyncio.wait_for(flow, TIMEOUT * 3)
                await tally.wait(lambda: len(tally.seen) == TOTAL, f"all {TOTAL}", TIMEOUT * 3)
                assert tally.by[BINDER] > before_leaving
            finally:
                flow.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flow

    try:
        run(scenario(), timeout=TIMEOUT * 12)
    finally:
        member.stop()
    assert tally.error is None
    assert set(tally.seen) == set(range(TOTAL)), f"lost: {len(set(range(TOTAL)) - set(tally.seen))}"
    twice = {n: count for n, count in tally.seen.items() if count > 1}
    assert not twice, f"{len(twice)} handled more than once, e.g. {sorted(twice)[:10]}"
    assert member.assignments[0] in ([0, 1], [2, 3]), f"range: {member.assignments}"
    assert tally.by[LIBRDKAFKA] >= 300 and tally.by[BINDER] >= 2000
