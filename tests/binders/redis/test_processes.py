"""Real processes against the real server: kill -9 with entries pending, a poison message
that kills its consumer every time (restarted under a new name, or under the same one),
and partition leases passing from a killed member to a live one.

Each member is ``_member.py`` in a process of its own; it ``RPUSH``es a line per handled
message to a Redis list under the test's key prefix before its handler returns, and the
test ``BLPOP``s that list, so it waits on what arrives rather than on a clock.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis

from binder.testing.conformance.support import Conformance, run
from binder.testing.processes import child_env
from binder.testing.servers import die_with_parent_by

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MEMBER = HERE / "_member.py"
WAIT = 20.0
"""Seconds any one wait gets."""
LINGER = 60.0
"""Seconds a process stopped with SIGTERM gets to drain and exit."""


# -- member processes and what they report --------------------------------------------------


class Member:
    """One ``_member.py`` process; its output goes to ``<tmp>/<label>.log``."""

    def __init__(self, directory: Path, label: str, settings: dict[str, Any]) -> None:
        self.label = label
        self.log = directory / f"{label}.log"
        self.started = time.monotonic()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(MEMBER), json.dumps({**settings, "label": label})],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=child_env("BINDER_", "REDIS_"),
                preexec_fn=die_with_parent_by(signal.SIGKILL),  # no member outlives a killed run
            )

    @property
    def exited(self) -> bool:
        return self.process.poll() is not None

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    def stop(self, sig: int) -> int:
        """Send ``sig``; the exit code once it exited."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(LINGER)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.label} ignored signal {sig}:\n{self.tail()}") from None

    def wait_exit(self, timeout: float = WAIT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.label} did not exit in {timeout}s:\n{self.tail()}"
            ) from None


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Callable[[str, dict[str, Any]], Member]]:
    """``start(label, settings)`` starts a member; every one still alive is killed after."""
    started: list[Member] = []

    def start(label: str, settings: dict[str, Any]) -> Member:
        started.append(Member(tmp_path, label, settings))
        return started[-1]

    yield start
    for member in started:
        if not member.exited:
            member.process.kill()
        member.process.wait(WAIT)


class Reports:
    """The lines the members pushed to the report list, popped in arrival order."""

    def __init__(self, client: Redis, key: str) -> None:
        self.client, self.key = client, key
        self.items: list[dict[str, Any]] = []

    def by(self, label: str) -> list[dict[str, Any]]:
        return [item for item in self.items if item["label"] == label]

    def handled(self) -> set[Any]:
        return {item["n"] for item in self.items}

    def wait_until(
        self,
        done: Callable[[list[dict[str, Any]]], bool],
        what: str,
        *,
        alive: tuple[Member, ...] = (),
        timeout: float = WAIT,
    ) -> float:
        """``BLPOP`` until ``done(items)``; the seconds it took. AssertionError (with the
        member's log) when one of ``alive`` exits first, or on timeout."""
        started = time.monotonic()
        deadline = started + timeout
        while not done(self.items):
            for member in alive:
                if member.exited:
                    raise AssertionError(
                        f"{member.label} exited ({member.process.returncode}) before {what}:"
                        f"\n{member.tail()}"
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                logs = "\n".join(f"--- {m.label}:\n{m.tail()}" for m in alive)
                raise AssertionError(
                    f"waited {timeout}s for {what}; got {len(self.items)} lines\n{logs}"
                )
            popped = self.client.blpop([self.key], timeout=min(remaining, 0.5))
            if popped is not None:
                self.items.append(json.loads(popped[1]))
        return time.monotonic() - started


@pytest.fixture
def reports(plain: Redis, key_prefix: str) -> Reports:
    return Reports(plain, f"{key_prefix}report")


def _settings(
    redis_config: dict[str, Any],
    redis_url: str,
    reports: Reports,
    stream: str,
    group: str,
    **more: Any,
) -> dict[str, Any]:
    """What a member is started with; ``binder`` options in ``more`` are added to the config."""
    binder = {**redis_config, **more.pop("binder", {})}
    return {
        "binder": binder,
        "url": redis_url,
        "report": reports.key,
        "destination": stream,
        "group": group,
        **more,
    }


def _fill(redis: Conformance, stream: str, group: str, payloads: list[Any], **send: Any) -> None:
    """``stream`` provisioned with ``group`` (so nothing is missed), holding ``payloads``
    (``{"n": p}`` each) in order; ``send`` (``partitions``, ``key``) shapes it."""
    partitions = send.get("partitions", 1)
    key: Callable[[Any], str | None] = send.get("key", lambda n: None)

    async def fill() -> None:
        await redis.provision(stream, partitions, [group])
        # Through a binding with the count, not app.send(<destination>): the core places the
        # sends made before that output has started on partition 0, whatever their keys.
        fill = {"destination": stream, "producer": {"partition-count": partitions}}
        async with redis.app({"fill": fill}) as sender:
            await asyncio.gather(*(sender.send("fill", {"n": n}, key=key(n)) for n in payloads))

    run(fill())


def _pending(plain: Redis, stream_key: str, group: str) -> dict[bytes, bytes]:
    """The entries pending in ``group``: id → consumer name."""
    listed = plain.xpending_range(stream_key, group, "-", "+", 10_000)
    return {entry["message_id"]: entry["consumer"] for entry in listed}


def _n_of(plain: Redis, stream_key: str, entry_ids: list[bytes]) -> set[Any]:
    """The payloads' ``n`` of the entries ``entry_ids``."""
    found = set()
    for entry_id in entry_ids:
        ((_, fields),) = plain.xrange(stream_key, entry_id, entry_id)
        found.add(orjson.loads(fields[b"payload"])["n"])
    return found


# -- kill -9 with entries pending -----------------------------------------------------------


def test_entries_a_killed_member_left_pending_are_claimed_by_another(
    redis: Conformance,
    redis_config: dict[str, Any],
    redis_url: str,
    key_prefix: str,
    plain: Redis,
    reports: Reports,
    stream: str,
    group: str,
    members: Callable[[str, dict[str, Any]], Member],
) -> None:
    """A member blocks in its handler after 50 messages and is killed with entries pending;
    a new member claims them once idle for min-idle: every message is handled, and each
    entry the dead one left pending comes as its second delivery (attempt 2)."""
    total = 800  # more than one fetch (500): some are never read by the first member
    _fill(redis, stream, group, list(range(total)))
    settings = _settings(redis_config, redis_url, reports, stream, group)
    first = members("first", {**settings, "hold-after": 50})
    reports.wait_until(lambda items: len(items) >= 50, "50 handled by first", alive=(first,))
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    left = _pending(plain, key_prefix + stream, group)
    assert left, "the killed member left entries pending"
    held = _n_of(plain, key_prefix + stream, list(left))

    second = members("second", settings)
    reports.wait_until(lambda _: reports.handled() >= set(range(total)), "all", alive=(second,))
    assert second.stop(signal.SIGTERM) == 0, second.tail()

    assert reports.handled() == set(range(total)), "nothing is lost"
    again = {item["n"]: item["attempt"] for item in reports.by("second") if item["n"] in held}
    assert set(again) == held, "every entry left pending is handled by the live member"
    assert set(again.values()) == {2}, f"delivered to the dead member, then once more: {again}"
    assert _pending(plain, key_prefix + stream, group) == {}


# -- a poison message that kills its consumer ---------------------------------------------


POISONED = [*range(20), "poison", *range(20, 40)]
"""What the poisoned stream holds: the poison entry between 40 good ones."""
MAX_ATTEMPTS = 3


def _restart_until_dead_lettered(
    settings: dict[str, Any],
    reports: Reports,
    plain: Redis,
    dead_letters: str,
    members: Callable[[str, dict[str, Any]], Member],
    *,
    cycle_limit: float = WAIT,
) -> tuple[Member, list[float]]:
    """Start members one after another, as a supervisor would, each once the one before was
    killed by the poison, until every good message is handled and the poison entry is on
    ``dead_letters``; the live member and how long each killed one lived."""
    lives: list[float] = []
    good = {n for n in POISONED if n != "poison"}

    def done(_: list[dict[str, Any]]) -> bool:
        return reports.handled() >= good and plain.xlen(dead_letters) > 0

    for attempt in range(MAX_ATTEMPTS + 2):
        member = members(f"member-{attempt}", settings)
        reports.wait_until(
            lambda items, m=member: done(items) or m.exited, "poison", timeout=cycle_limit
        )
        if not member.exited:
            return member, lives
        assert member.wait_exit() == -signal.SIGKILL, member.tail()
        lives.append(time.monotonic() - member.started)
    raise AssertionError(f"never dead-lettered after {len(lives)} deaths:\n{member.tail()}")


def _letter(plain: Redis, dead_letters: str) -> tuple[Any, dict[str, str]]:
    ((_, fields),) = plain.xrange(dead_letters)
    return orjson.loads(fields[b"payload"]), orjson.loads(fields[b"headers"])


def test_a_poison_message_is_dead_lettered_across_restarts_under_new_names(
    redis: Conformance,
    redis_config: dict[str, Any],
    redis_url: str,
    key_prefix: str,
    plain: Redis,
    reports: Reports,
    stream: str,
    group: str,
    members: Callable[[str, dict[str, Any]], Member],
) -> None:
    """The poison kills its consumer (SIGKILL) on each of its 3 attempts; each new member
    claims it after min-idle (the delivery count grows), the fourth dead-letters it without
    calling the function, acks it, and handles everything else."""
    _fill(redis, stream, group, POISONED)
    dead_letters = key_prefix + redis.dead_letters(stream, group)
    consumer = {"max-attempts": MAX_ATTEMPTS, "back-off-initial-interval": 0.01}
    settings = _settings(
        redis_config, redis_url, reports, stream, group, consumer=consumer, poison=True
    )
    last, lives = _restart_until_dead_lettered(settings, reports, plain, dead_letters, members)
    assert last.stop(signal.SIGTERM) == 0, last.tail()

    assert len(lives) == MAX_ATTEMPTS, "the poison killed one process per attempt"
    payload, headers = _letter(plain, dead_letters)
    assert payload == {"n": "poison"}
    assert headers["x-exception-type"] == "binder.errors.DeliveryLimitExceeded"
    assert reports.handled() == set(POISONED) - {"poison"}
    assert plain.xpending(key_prefix + stream, group)["pending"] == 0, "the poison was acked"


def test_a_restart_under_the_same_name_reads_its_own_pending_entries_first(
    redis: Conformance,
    redis_config: dict[str, Any],
    redis_url: str,
    key_prefix: str,
    plain: Redis,
    reports: Reports,
    stream: str,
    group: str,
    members: Callable[[str, dict[str, Any]], Member],
) -> None:
    """With a stable ``consumer-name``, a restarted member takes the entries it left pending
    at once: with min-idle 60 s, only that path can redeliver the poison; each restart
    meets it again within seconds, and the fourth start dead-letters it."""
    _fill(redis, stream, group, POISONED)
    dead_letters = key_prefix + redis.dead_letters(stream, group)
    binder = {"consumer-name": "worker-1", "min-idle": "60s"}
    consumer = {"max-attempts": MAX_ATTEMPTS, "back-off-initial-interval": 0.01}
    settings = _settings(
        redis_config, redis_url, reports, stream, group, binder=binder, consumer=consumer
    )
    settings["poison"] = True
    started = time.monotonic()
    last, lives = _restart_until_dead_lettered(
        settings, reports, plain, dead_letters, members, cycle_limit=10.0
    )
    took = time.monotonic() - started
    assert last.stop(signal.SIGTERM) == 0, last.tail()

    assert len(lives) == MAX_ATTEMPTS
    assert all(life < 10.0 for life in lives), f"each restart met the poison at once: {lives}"
    assert took < 30.0, f"{took:.1f}s in all: well before min-idle (60 s) would allow"
    payload, headers = _letter(plain, dead_letters)
    assert payload == {"n": "poison"}
    assert headers["x-exception-type"] == "binder.errors.DeliveryLimitExceeded"
    assert reports.handled() == set(POISONED) - {"poison"}
    assert plain.xpending(key_prefix + stream, group)["pending"] == 0


# -- partition leases -----------------------------------------------------------------------


PARTITIONS = 4
KEYS = 16


def _key(n: int) -> str:
    return f"k{n % KEYS}"


def _lease_holders(plain: Redis, key_prefix: str, stream: str, group: str) -> list[str | None]:
    """Who holds the lease of each partition stream (``{<stream>}:lease:<group>``)."""
    keys = [f"{{{key_prefix}{stream}:{p}}}:lease:{group}" for p in range(PARTITIONS)]
    return [None if held is None else held.decode() for held in plain.mget(keys)]


def _until(done: Callable[[], bool], what: str, timeout: float = WAIT) -> float:
    """Poll Redis state until ``done()`` (a lease has nothing to wait on); seconds taken."""
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"waited {timeout}s for {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def _first_handling_in_send_order(items: list[dict[str, Any]]) -> None:
    first: dict[str, list[int]] = defaultdict(list)
    for n in dict.fromkeys(item["n"] for item in items):
        first[_key(n)].append(n)
    unordered = {key: ids for key, ids in first.items() if ids != sorted(ids)}
    assert not unordered, f"first handled out of send order: {unordered}"


def test_partitions_are_split_between_members_and_taken_over_from_a_killed_one(
    redis: Conformance,
    redis_config: dict[str, Any],
    redis_url: str,
    key_prefix: str,
    plain: Redis,
    reports: Reports,
    stream: str,
    group: str,
    members: Callable[[str, dict[str, Any]], Member],
) -> None:
    """Two members share four partitions through leases (each key read by one of them, in
    order); kill -9 one, and the other holds every lease about lease-ms later and handles
    the rest, per key in order; only the killed member's ids come twice."""
    total = 800
    run(redis.provision(stream, PARTITIONS, [group]))
    settings = _settings(redis_config, redis_url, reports, stream, group, pace=0.004)
    slow_claims = {**redis_config, "min-idle": "30s"}  # only a takeover can deliver in time
    a = members("a", {**settings, "binder": {**slow_claims, "consumer-name": "member-a"}})
    b = members("b", {**settings, "binder": {**slow_claims, "consumer-name": "member-b"}})
    split = Counter({"member-a": 2, "member-b": 2})
    _until(lambda: Counter(_lease_holders(plain, key_prefix, stream, group)) == split, "a split")
    _fill(redis, stream, group, list(range(total)), partitions=PARTITIONS, key=_key)

    reports.wait_until(
        lambda items: len(items) >= 300 and {"a", "b"} <= {i["label"] for i in items},
        "300 handled by both",
        alive=(a, b),
    )
    assert b.stop(signal.SIGKILL) == -signal.SIGKILL
    before = list(reports.items)
    took_over = _until(
        lambda: _lease_holders(plain, key_prefix, stream, group) == ["member-a"] * PARTITIONS,
        "member-a holding every lease",
    )
    reports.wait_until(
        lambda _: reports.handled() >= set(range(total)), "the rest", alive=(a,), timeout=10
    )
    assert a.stop(signal.SIGTERM) == 0, a.tail()

    keys_of = {label: {i["key"] for i in before if i["label"] == label} for label in "ab"}
    assert keys_of["a"] and keys_of["b"] and not keys_of["a"] & keys_of["b"], keys_of
    assert took_over < 1.5 + 1.5, f"took {took_over:.1f}s over lease-ms 1.5 s"
    assert reports.handled() == set(range(total))
    _first_handling_in_send_order(reports.items)
    twice = {n for n, count in Counter(i["n"] for i in reports.items).items() if count > 1}
    by_b = {i["n"] for i in reports.by("b")}
    assert twice <= by_b, f"handled twice without being the killed member's: {twice - by_b}"
