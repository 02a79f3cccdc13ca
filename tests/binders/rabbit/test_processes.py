"""Real processes against the real broker: kill -9 with messages unacknowledged, a partition
queue passing from a killed member to the waiting one (single active consumer), and a
poison message that kills its consumer every time, on a quorum queue.

Each member is ``_member.py`` in a process of its own; it writes a line per handled message
to a pipe the test reads on its event loop before its handler returns, so the test waits on
what arrives (and on a member's exit, through its pidfd) rather than on a clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from binder.message import EXCEPTION_TYPE
from binder.testing.conformance.support import Conformance, run
from binder.testing.processes import child_env
from binder.testing.servers import die_with_parent
from binders.rabbit.testing import queues_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MEMBER = HERE / "_member.py"
POISONED = 17
"""The exit status of a member that met the poison (``_member.POISONED``)."""
WAIT = 20.0
"""Seconds any one wait gets."""
LINGER = 30.0
"""Seconds a process stopped with SIGTERM gets to drain and exit."""


# -- member processes and what they report --------------------------------------------------


class Reports:
    """The lines members write to one pipe, and their exits, watched on the test's loop.

    :meth:`until` wakes on a line, an exit, or :meth:`poke` (another source of news)."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.items: list[dict[str, Any]] = []
        self._partial = b""
        self._changed: asyncio.Event | None = None
        self._pidfds: set[int] = set()

    def open(self) -> None:
        """Start reading the pipe on the running loop."""
        self._changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.read_fd, self._read)

    def _read(self) -> None:
        data = os.read(self.read_fd, 1 << 16)
        *lines, self._partial = (self._partial + data).split(b"\n")
        self.items.extend(json.loads(line) for line in lines)
        self.poke()

    def poke(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def watch_exit(self, process: subprocess.Popen[bytes]) -> None:
        """Wake :meth:`until` when ``process`` exits (Linux: its pidfd becomes readable)."""
        loop = asyncio.get_running_loop()
        pidfd = os.pidfd_open(process.pid)
        self._pidfds.add(pidfd)

        def exited() -> None:
            loop.remove_reader(pidfd)
            self._pidfds.discard(pidfd)
            os.close(pidfd)
            self.poke()

        loop.add_reader(pidfd, exited)

    def by(self, label: str) -> list[dict[str, Any]]:
        return [item for item in self.items if item["label"] == label]

    def handled(self) -> set[Any]:
        return {item["n"] for item in self.items}

    async def until(
        self,
        done: Callable[[], bool],
        what: str,
        *,
        alive: tuple[Member, ...] = (),
        timeout: float = WAIT,
    ) -> float:
        """Wait until ``done()``; the seconds it took. AssertionError (with the members' logs)
        when one of ``alive`` exits first, or on timeout."""
        assert self._changed is not None, "open() first"
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not done():
            for member in alive:
                if member.exited:
                    raise AssertionError(
                        f"{member.label} exited ({member.process.returncode}) before {what}:"
                        f"\n{member.tail()}"
                    )
            self._changed.clear()
            remaining = started + timeout - loop.time()
            try:
                await asyncio.wait_for(self._changed.wait(), max(remaining, 0))
            except TimeoutError:
                logs = "\n".join(f"--- {m.label}:\n{m.tail()}" for m in alive)
                raise AssertionError(
                    f"waited {timeout}s for {what}; got {len(self.items)} lines\n{logs}"
                ) from None
        return loop.time() - started

    def close(self) -> None:
        """Close the pipe and the pidfds of members that have not exited (after the loop)."""
        for fd in (self.read_fd, self.write_fd, *self._pidfds):
            os.close(fd)
        self._pidfds.clear()


class Member:
    """One ``_member.py`` process; its output goes to ``<tmp>/<label>.log``."""

    def __init__(
        self, directory: Path, label: str, settings: dict[str, Any], reports: Reports
    ) -> None:
        self.label = label
        self.log = directory / f"{label}.log"
        self.started = time.monotonic()
        self._reports = reports
        settings = {**settings, "label": label, "report": reports.write_fd}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(MEMBER), json.dumps(settings)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=child_env("BINDER_", "RABBITMQ_"),
                pass_fds=(reports.write_fd,),
                preexec_fn=die_with_parent,
            )
        reports.watch_exit(self.process)

    @property
    def exited(self) -> bool:
        return self.process.poll() is not None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    async def stop(self, sig: int, timeout: float = LINGER) -> int:
        """Send ``sig``; the exit code once it exited."""
        self.process.send_signal(sig)
        await self._reports.until(lambda: self.exited, f"{self.label} to exit", timeout=timeout)
        return self.process.returncode

    async def wait_exit(self) -> int:
        await self._reports.until(lambda: self.exited, f"{self.label} to exit")
        return self.process.returncode


@pytest.fixture
def reports() -> Iterator[Reports]:
    watched = Reports()
    yield watched
    watched.close()


@pytest.fixture
def members(tmp_path: Path, reports: Reports) -> Iterator[Callable[[str, dict[str, Any]], Member]]:
    """``start(label, settings)`` starts a member (on a running loop); every one still alive
    is killed after."""
    started: list[Member] = []

    def start(label: str, settings: dict[str, Any]) -> Member:
        started.append(Member(tmp_path, label, settings, reports))
        return started[-1]

    yield start
    for member in started:
        if not member.exited:
            member.process.kill()
        member.process.wait(WAIT)


def _settings(config: dict[str, Any], destination: str, group: str, **more: Any) -> dict[str, Any]:
    return {"binder": config, "destination": destination, "group": group, **more}


async def _fill(
    rabbit: Conformance,
    destination: str,
    group: str,
    payloads: Iterable[Any],
    *,
    partitions: int = 1,
    key: Callable[[Any], str | None] = lambda n: None,
) -> None:
    """``destination`` provisioned with ``group``, holding ``{"n": p}`` for each payload, in
    order (through a binding with the partition count, so keys pick partitions)."""
    await rabbit.provision(destination, partitions, [group])
    fill = {"destination": destination, "producer": {"partition-count": partitions}}
    async with rabbit.app({"fill": fill}) as sender:
        for n in payloads:
            await sender.send("fill", {"n": n}, key=key(n))


async def _consumers(url: str, queues: list[str]) -> list[int]:
    """How many consumers each queue has (a passive declare; waiting ones count too)."""
    async with await aio_pika.connect(url) as connection:
        channel = await (await connection.channel()).get_underlay_channel()
        return [(await channel.queue_declare(q, passive=True)).consumer_count for q in queues]


async def _until_consumers(url: str, queues: list[str], count: int) -> None:
    """Poll the broker until every queue has ``count`` consumers (no event says so)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while (found := await _consumers(url, queues)) != [count] * len(queues):
        assert loop.time() < deadline, f"waited {WAIT}s for {count} consumer(s) each: {found}"
        await asyncio.sleep(0.05)


def _counts(queue: str) -> tuple[int, int]:
    """The queue's ready and unacknowledged messages, as ``rabbitmqctl`` says."""
    info = queues_info(queue, "messages_ready", "messages_unacknowledged").get(queue)
    assert info is not None, f"no queue {queue!r}"
    return int(info["messages_ready"]), int(info["messages_unacknowledged"])


# -- kill -9 with messages unacknowledged ---------------------------------------------------


def test_messages_a_killed_member_held_unacked_are_redelivered_to_another(
    rabbit: Conformance,
    rabbit_config: dict[str, Any],
    destination: str,
    group: str,
    reports: Reports,
    members: Callable[[str, dict[str, Any]], Member],
) -> None:
    """A member blocks in its handler after 50 messages and is killed with messages
    unacknowledged: the broker redelivers every one of them to the live member, flagged
    (attempt 2), and nothing is lost."""
    total = 300
    queue = f"{destination}.{group}"
    settings = _settings(rabbit_config, destination, group)
    figures: dict[str, Any] = {}

    async def scenario() -> None:
        await _fill(rabbit, destination, group, range(total))
        reports.open()
        first = members("first", {**settings, "hold-after": 50})
        await reports.until(lambda: len(reports.items) >= 50, "50 handled", alive=(first,))
        figures["held"] = await asyncio.to_thread(_counts, queue)
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        second = members("second", settings)
        await reports.until(lambda: reports.handled() >= set(range(total)), "all", alive=(second,))
        assert await second.stop(signal.SIGTERM) == 0, second.tail()

    run(scenario())
    ready, unacked = figures["held"]
    assert unacked >= 1, "the blocked member held messages unacknowledged"
    assert reports.handled() == set(range(total)), "nothing is lost"
    assert len(reports.by("second")) == ready + unacked, "the live one handled what was left"
    again = [item for item in reports.by("second") if item["attempt"] >= 2]
    assert len(again) == unacked, f"each unacknowledged one redelivered: {unacked}, {len(again)}"
    redelivered = {i["n"] for i in again}
    both = {i["n"] for i in reports.by("first")} & {i["n"] for i in reports.by("second")}
    assert both <= redelivered, "what both handled came to the live member as a redelivery"
    assert reports.by("first")[-1]["n"] in redelivered, "the one it blocked on"
    assert _counts(queue) == (0, 0)


# -- partition queues: single active consumer and fail-over ---------------------------------


PARTITIONS = 4
KEYS = 16


def _key(n: int) -> str:
    return f"k{n % KEYS}"


def _first_handling_in_send_order(items: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Each key's ids in the order first handled (redeliveries dropped); unordered ones."""
    first: dict[str, list[int]] = defaultdict(list)
    for n in dict.fromkeys(item["n"] for item in items):
        first[_key(n)].append(n)
    return {key: ids for key, ids in first.items() if ids != sorted(ids)}


def test_a_partition_queue_passes_from_a_killed_member_to_the_waiting_one_in_key_order(
    rabbit: Conformance,
    rabbit_config: dict[str, Any],
    rabbit_url: str,
    destination: str,
    group: str,
    reports: Reports,
    members: Callable[[str, dict[str, Any]], Member],
) -> None:
    """Two members consume the four partition queues; the broker delivers each to the first
    (the second waits: it handles nothing); kill -9 the first mid-stream and the second takes
    every queue over. Per key, the ids first handled are in send order and complete; only
    what the killed member had handled comes twice."""
    total = 600
    queues = [f"{destination}.{group}-{p}" for p in range(PARTITIONS)]
    consumer = {"partitioned": True}
    settings = _settings(rabbit_config, destination, group, consumer=consumer, pace=0.004)
    figures: dict[str, Any] = {}

    async def scenario() -> None:
        await rabbit.provision(destination, PARTITIONS, [group])
        reports.open()
        a = members("a", settings)
        await _until_consumers(rabbit_url, queues, 1)
        b = members("b", settings)
        await _until_consumers(rabbit_url, queues, 2)
        await _fill(rabbit, destination, group, range(total), partitions=PARTITIONS, key=_key)
        await reports.until(lambda: len(reports.items) >= 150, "150 handled", alive=(a, b))
        figures["before"] = list(reports.items)
        assert await a.stop(signal.SIGKILL) == -signal.SIGKILL
        await reports.until(lambda: reports.handled() >= set(range(total)), "all", alive=(b,))
        assert await b.stop(signal.SIGTERM) == 0, b.tail()

    run(scenario())
    assert {item["label"] for item in figures["before"]} == {"a"}, "b waited while a was active"
    assert reports.handled() == set(range(total)), "complete"
    assert _first_handling_in_send_order(reports.items) == {}, "per key, in send order"
    twice = {n for n, count in Counter(i["n"] for i in reports.items).items() if count > 1}
    by_a = {i["n"] for i in reports.by("a")}
    assert twice <= by_a, f"handled twice without being the killed member's: {twice - by_a}"


# -- a poison message on a quorum queue -----------------------------------------------------


POISON_BATCH = [*range(20), "poison", *range(20, 40)]
"""What the poisoned queue holds: the poison between 40 good messages."""
MAX_ATTEMPTS = 3


def test_a_poison_message_on_a_quorum_queue_is_dead_lettered_after_max_attempts(
    rabbit_config: dict[str, Any],
    rabbit_url: str,
    destination: str,
    group: str,
    reports: Reports,
    members: Callable[[str, dict[str, Any]], Member],
) -> None:
    """The poison ends its consumer's process on each of its 3 attempts; the broker counts
    each return (``x-delivery-count``), so the member started fourth dead-letters it without
    calling the function, rather than dying forever, and handles the good messages."""
    config = {**rabbit_config, "queue-type": "quorum"}
    quorum = Conformance(config)
    dead_letters = f"{destination}.{group}.dlq"
    consumer = {"max-attempts": MAX_ATTEMPTS, "back-off-initial-interval": 0.01}
    settings = _settings(config, destination, group, consumer=consumer, poison=True)
    letters: list[aio_pika.abc.AbstractIncomingMessage] = []
    lives: list[float] = []

    def lettered() -> set[Any]:
        return {json.loads(letter.body)["n"] for letter in letters}

    async def collect(letter: aio_pika.abc.AbstractIncomingMessage) -> None:
        letters.append(letter)
        reports.poke()

    async def restarts() -> Member:
        """Members one after another, as a supervisor would, each once the one before died
        of the poison, until the poison is dead-lettered; the live member."""
        for attempt in range(MAX_ATTEMPTS + 2):
            member = members(f"member-{attempt}", settings)
            await reports.until(lambda m=member: bool(letters) or m.exited, "poison or a death")
            if not member.exited:
                return member
            assert await member.wait_exit() == POISONED, member.tail()
            lives.append(time.monotonic() - member.started)
        raise AssertionError(f"never dead-lettered after {len(lives)} deaths: it loops")

    async def scenario() -> None:
        await _fill(quorum, destination, group, POISON_BATCH)
        async with quorum.binder() as binder:
            await binder.provision(dead_letters, 1, dead_letters_of=destination)
        reports.open()
        async with await aio_pika.connect(rabbit_url) as connection:
            channel = await connection.channel()
            await (await channel.get_queue(dead_letters)).consume(collect, no_ack=True)
            last = await restarts()
            everything = set(POISON_BATCH)
            await reports.until(
                lambda: reports.handled() | lettered() >= everything, "all", alive=(last,)
            )
        assert await last.stop(signal.SIGTERM) == 0, last.tail()

    run(scenario())
    assert len(lives) == MAX_ATTEMPTS, f"the poison ended one process per attempt: {lives}"
    poison = [letter for letter in letters if json.loads(letter.body)["n"] == "poison"]
    assert len(poison) == 1
    assert poison[0].headers[EXCEPTION_TYPE] == "binder.errors.DeliveryLimitExceeded"
    good_letters = sorted(lettered() - {"poison"})
    assert not good_letters, f"good messages returned with the poison dead-lettered: {good_letters}"
    assert reports.handled() == set(POISON_BATCH) - {"poison"}
    assert _counts(f"{destination}.{group}") == (0, 0)
