"""Delayed delivery on Kafka: the timing wheel, what lands in the destination, lateness, a
30-day delay on a manual clock, forwarders joining and leaving mid-stream, and a forwarder
killed with SIGKILL.

The kill test runs a sender App in a child process (this file run as a script) that
schedules one record and then waits to be killed; its forwarder has read the record (its
log says so) but not delivered it. An App started in the test process afterwards delivers
it, once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from binder import App, ManualClock
from binder.message import DELAY, DELIVER_AT, Message
from binder.testing.conformance.support import Conformance, Inbox, run
from binder.testing.processes import child_env
from binder.testing.servers import die_with_parent_by
from binders.kafka.scheduler import PARTITIONS, TOP_BITS, delay_topic, place

PlainRead = Callable[[str, int, int], Awaitable[list[Any]]]
"""The ``plain_read`` fixture: a plain aiokafka consumer's view of a topic."""
Start = Callable[[dict[str, Any]], tuple["subprocess.Popen[bytes]", Path]]
"""The ``sender`` fixture: starts a sender child, returns it and its log."""
ROOT = Path(__file__).resolve().parents[3]
DAY = 86_400.0
WAIT = 20.0
"""Seconds any one wait gets."""


def _app(kafka_config: dict[str, Any], bindings: dict[str, Any], **kwargs: Any) -> App:
    section = {"binders": {"kafka": kafka_config}, "bindings": bindings}
    return App(config={"binder": section}, environ={}, **kwargs)


def _receiving(
    kafka_config: dict[str, Any], topic: str, group: str, inbox: Inbox[Any], **kwargs: Any
) -> App:
    """An App handing ``(clock time, message)`` of each message of ``topic`` to ``inbox``."""
    app = _app(kafka_config, {"sink-in-0": {"destination": topic, "group": group}}, **kwargs)

    @app.consumer(name="sink")
    async def sink(message: Message[Any]) -> None:
        inbox.add((app.clock.time(), message))

    return app


# -- the wheel ------------------------------------------------------------------------------


def test_a_record_only_hops_down_the_wheel_and_never_leaves_after_its_due_time() -> None:
    """From any time, for delays up to 60 days, and however late each hop is taken: every
    level is left no earlier than written and no later than due, levels only go down (the
    top one may repeat), and the record reaches the last slot (partition 0)."""
    chance = random.Random(7)
    for _ in range(2_000):
        now = chance.randrange(1_600_000_000_000, 2_000_000_000_000)
        due = now + chance.randrange(1, int(60 * DAY * 1000))
        partition, hops = PARTITIONS, 0
        while True:
            level, leave = place(now, due)
            assert 0 <= level < PARTITIONS
            if level == 0:
                assert due >> 10 <= now >> 10, "partition 0 only within the due slot"
                break
            assert now < leave <= due
            assert level < partition or level == partition == TOP_BITS - 9
            partition, hops = level, hops + 1
            now = leave + chance.choice([0, 0, 1, 37, 900])  # the forwarder may be late
        assert hops <= 2 * PARTITIONS


def test_equal_due_times_share_the_level_of_the_later_one() -> None:
    """A record written later, due at the same time, goes to the level the earlier one is
    in at that moment (when its hops were on time), so they leave in write order."""
    chance = random.Random(11)
    for _ in range(2_000):
        first = chance.randrange(1_600_000_000_000, 2_000_000_000_000)
        due = first + chance.randrange(2_000, int(30 * DAY * 1000))
        second = chance.randrange(first, due - 1_024)
        now, where = first, place(first, due)
        while where[1] <= second and where[0] != 0:  # the first one's hops, on time
            now = where[1]
            where = place(now, due)
        assert where[0] == place(second, due)[0]


# -- against the broker ---------------------------------------------------------------------


def test_a_delayed_record_lands_as_an_ordinary_send_would(
    kafka: Conformance, kafka_config: dict[str, Any], topic: str, plain_read: PlainRead
) -> None:
    """Key, value, partition and headers (in order) as an ordinary send writes them, plus
    ``x-deliver-at``; no ``x-delay`` and none of the delay topic's headers."""

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 3)
        async with _app(kafka_config, {}) as sender:
            headers = {"h1": "one", "h2": "two"}
            await sender.send(topic, {"n": 1}, key="k", headers=headers)
            await sender.send(topic, {"n": 1}, key="k", headers={**headers, DELAY: "300"})
            return await asyncio.wait_for(plain_read(topic, 3, 2), WAIT)

    plain, delayed = sorted(run(scenario(), WAIT * 2), key=lambda r: r.offset)
    assert (delayed.partition, delayed.key, delayed.value) == (
        plain.partition,
        plain.key,
        plain.value,
    )
    names = [name for name, _ in delayed.headers]
    assert names.count(DELIVER_AT) == 1
    assert [h for h in delayed.headers if h[0] != DELIVER_AT] == list(plain.headers)
    assert not [n for n in names if n == DELAY or n.startswith("x-scheduled")], names


def test_delays_longer_than_a_level_are_never_early_and_at_most_a_second_late(
    kafka: Conformance, kafka_config: dict[str, Any], topic: str, group: str
) -> None:
    """Delays of 2 to 3.5 s (through the 2^10 and 2^11 ms levels), on two keys: each arrives
    no earlier than due, at most a second late, and per key in due-time order."""
    delays = [3.5, *(random.uniform(2.0, 3.5) for _ in range(19))]

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 2)
        kafka.declare(topic, group)
        inbox: Inbox[Any] = Inbox()
        async with _receiving(kafka_config, topic, group, inbox) as app:
            for n, delay in enumerate(delays):
                await app.send(topic, {"n": n}, key=f"k{n % 2}", delay=delay)
            return await inbox.wait_count(len(delays), "every delayed message", WAIT)

    received = run(scenario(), WAIT * 2)
    late = [at - int(m.headers[DELIVER_AT]) / 1000 for at, m in received]
    assert min(late) >= -0.001, f"early by {-min(late):.3f} s"
    assert max(late) <= 1.0, f"late by {max(late):.3f} s"
    for key in ("k0", "k1"):
        dues = [int(m.headers[DELIVER_AT]) for _, m in received if m.key == key]
        assert dues == sorted(dues), key


def test_a_thirty_day_delay_waits_for_its_due_time_on_a_manual_clock(
    kafka: Conformance, kafka_config: dict[str, Any], topic: str, group: str
) -> None:
    """Delayed by 30 days, a record goes down the wheel as the clock is moved: it is not
    delivered while a witness due 2 s before it is, and is once the clock reaches it."""
    clock = ManualClock()

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 1)
        kafka.declare(topic, group)
        inbox: Inbox[Any] = Inbox()
        async with _receiving(kafka_config, topic, group, inbox, clock=clock) as app:
            await app.send(topic, {"n": "late"}, delay=30 * DAY)
            await app.send(topic, {"n": "witness"}, delay=30 * DAY - 2)
            clock.advance(30 * DAY - 1)
            await inbox.wait_count(1, "the witness", WAIT)
            clock.advance(1)
            return await inbox.wait_count(2, "the 30-day one", WAIT)

    received = run(scenario(), WAIT * 3)
    assert [m.payload["n"] for _, m in received] == ["witness", "late"]
    for at, message in received:
        assert at >= int(message.headers[DELIVER_AT]) / 1000


def test_forwarders_joining_and_leaving_mid_stream_deliver_every_record_once(
    kafka: Conformance, kafka_config: dict[str, Any], topic: str, group: str
) -> None:
    """While delayed records flow, a third app's forwarder joins the group and leaves, then
    the sender's leaves too (each rebalance hands the held records back): every record is
    delivered once, none early, and a witness scheduled after the last brings no copy."""

    async def pump(app: App, sent: list[int], seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            n = len(sent)
            await app.send(topic, {"n": n}, key=f"k{n % 7}", delay=random.uniform(0.1, 2.0))
            sent.append(n)
            await asyncio.sleep(0.01)

    async def scenario() -> list[Any]:
        await kafka.provision(topic, 2)
        kafka.declare(topic, group)
        inbox: Inbox[Any] = Inbox()
        sent: list[int] = []
        async with _receiving(kafka_config, topic, group, inbox) as receiver:
            async with _app(kafka_config, {}) as sender:
                await pump(sender, sent, 2)
                async with _app(kafka_config, {}) as third:
                    await third.send(topic, {"n": "third"}, delay=0.01)  # its forwarder joins
                    await pump(sender, sent, 3)
                await pump(sender, sent, 3)
            await inbox.wait_count(len(sent) + 1, "every record", WAIT)
            await receiver.send(topic, {"n": "witness"}, delay=0.3)
            return await inbox.wait_until(
                lambda items: any(m.payload["n"] == "witness" for _, m in items), "the witness"
            )

    received = run(scenario(), WAIT * 3)
    numbers = [m.payload["n"] for _, m in received if isinstance(m.payload["n"], int)]
    assert sorted(numbers) == list(range(len(numbers))), "each once"
    assert all(at >= int(m.headers[DELIVER_AT]) / 1000 for at, m in received)


# -- a forwarder killed ---------------------------------------------------------------------


def _sender_main(settings_json: str) -> None:
    """Schedule one record, then wait to be killed (the forwarder logs what it reads)."""
    settings = json.loads(settings_json)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("binder.kafka.forwarder").setLevel(logging.DEBUG)

    async def main() -> None:
        async with _app(settings["binder"], {}) as app:
            await app.send(settings["topic"], {"n": "held"}, delay=settings["delay"])
            print("scheduled", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())


@pytest.fixture
def sender(
    tmp_path: Path,
) -> Iterator[Callable[[dict[str, Any]], tuple[subprocess.Popen[bytes], Path]]]:
    """``start(settings)`` starts a sender child; ``(process, its log)``; killed after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(settings: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path]:
        out = tmp_path / "sender.log"
        with out.open("wb") as log:
            started.append(
                subprocess.Popen(
                    [sys.executable, __file__, json.dumps(settings)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    env=child_env("BINDER_", "KAFKA_"),
                    preexec_fn=die_with_parent_by(signal.SIGKILL),  # no child outlives a killed run
                )
            )
        return started[-1], out

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(WAIT)


def _until_logged(process: subprocess.Popen[bytes], log: Path, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in log.read_text(errors="replace"):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        assert process.poll() is None, f"the sender exited ({process.returncode}):\n{tail}"
        assert time.monotonic() < deadline, f"waited {WAIT}s for {text!r}:\n{tail}"
        time.sleep(0.02)


def test_a_record_read_by_a_forwarder_killed_with_sigkill_is_delivered_once_by_another_process(
    kafka: Conformance,
    kafka_config: dict[str, Any],
    topic: str,
    group: str,
    sender: Start,
) -> None:
    """The sender's forwarder read the record and is killed before it is due; a consumer
    App started afterwards takes the delay topic over and delivers it once, not early (a
    witness scheduled after it arrives, through the same forwarder, proves no second copy
    is on its way)."""
    run(kafka.provision(topic, 1))
    kafka.declare(topic, group)
    settings = {"binder": kafka_config, "topic": topic, "delay": 5.0}
    process, log = sender(settings)
    _until_logged(process, log, f"{delay_topic(topic)}: read 1 of partition")
    process.send_signal(signal.SIGKILL)
    process.wait(WAIT)

    async def scenario() -> list[Any]:
        inbox: Inbox[Any] = Inbox()
        async with _receiving(kafka_config, topic, group, inbox) as app:
            await inbox.wait_count(1, "the record the killed sender held", WAIT)
            await app.send(topic, {"n": "witness"}, delay=0.5)
            return await inbox.wait_until(
                lambda items: any(m.payload["n"] == "witness" for _, m in items), "the witness"
            )

    received = run(scenario(), WAIT * 2)
    assert [m.payload["n"] for _, m in received] == ["held", "witness"]
    at, held = received[0]
    assert at >= int(held.headers[DELIVER_AT]) / 1000


if __name__ == "__main__":
    _sender_main(sys.argv[1])
