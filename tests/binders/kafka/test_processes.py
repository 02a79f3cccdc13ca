"""Real processes against a real broker: kill -9, a clean restart, dropped connections.

The consumer tests run an App in a child process (this file run as a script) that appends
each handled id to a file, line-buffered, so the file says what was handled even after a
kill -9. The connection test puts a TCP proxy between an in-process App and a dedicated
Tansu that advertises the proxy, then cuts every connection mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from binder import App
from binder.bindings import BindingState
from binder.errors import BackendError
from binder.testing.conformance.support import Conformance, run
from binder.testing.processes import child_env
from binder.testing.servers import die_with_parent_by
from binders.kafka.testing import FAST_GROUPS, Tansu

ROOT = Path(__file__).resolve().parents[3]
TOTAL = 3_000
PARTITIONS = 4
KEYS = 64
FETCH_MAX = 500
"""Records one fetch hands the core (``ConsumerSpec.max_records``)."""
PACE_EVERY, PACE_SLEEP = 10, 0.01
"""The child sleeps 10 ms every 10 messages: about 1 ms a message, 0.5 s a full chunk."""
KILL_AFTER = 700
"""Handled ids after which the first child is killed: mid-way through its second chunk."""
WAIT = 30.0
"""Seconds any one wait gets."""


def _key(n: int) -> str:
    return f"k{n % KEYS}"


# -- the child process ----------------------------------------------------------------------


def _child_main(settings_json: str, out: str) -> None:
    """Consume ``topic`` in ``group``, appending each handled id to ``out``, until
    SIGINT/SIGTERM (``app.run()`` then drains, commits and closes)."""
    settings = json.loads(settings_json)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    binding = {"destination": settings["topic"], "group": settings["group"]}
    section = {"binders": {"kafka": settings["binder"]}, "bindings": {"handle-in-0": binding}}
    app = App(config={"binder": section}, environ={})
    handled = open(out, "a", buffering=1)  # noqa: SIM115 - line-buffered: a write per id
    count = itertools.count(1)

    @app.consumer
    def handle(payload: dict[str, int]) -> None:  # in a worker thread, a chunk at a time
        handled.write(f"{payload['n']}\n")
        if next(count) % PACE_EVERY == 0:
            time.sleep(PACE_SLEEP)

    app.run()
    handled.close()


class Child:
    """One consumer process; :attr:`handled` is the ids it wrote, in handling order."""

    def __init__(self, directory: Path, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.out = directory / f"{name}.ids"
        self.log = directory / f"{name}.log"
        self.out.touch()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, __file__, json.dumps(settings), str(self.out)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=child_env("BINDER_", "KAFKA_"),
                preexec_fn=die_with_parent_by(signal.SIGKILL),  # no child outlives a killed run
            )

    @property
    def handled(self) -> list[int]:
        """Complete lines only: a kill may cut the last one."""
        lines = self.out.read_bytes().split(b"\n")[:-1]
        return [int(line) for line in lines]

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])

    def wait_handled(self, count: int) -> None:
        """Until at least ``count`` ids are handled; AssertionError (with the log) if the
        child exits or the wait times out."""
        _until(lambda: len(self.handled) >= count, f"{self.name}: {count} handled", self)

    def stop(self, sig: int) -> int:
        """Send ``sig``; the exit code once it exited."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} ignored signal {sig}:\n{self.tail()}") from None


def _until(done: Callable[[], bool], what: str, child: Child) -> None:
    deadline = time.monotonic() + WAIT
    while not done():
        if child.process.poll() is not None:
            code = child.process.returncode
            raise AssertionError(f"{child.name} exited ({code}) before {what}:\n{child.tail()}")
        if time.monotonic() > deadline:
            got = len(child.handled)
            raise AssertionError(f"waited {WAIT}s for {what}; got {got}:\n{child.tail()}")
        time.sleep(0.02)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Callable[[str, dict[str, Any]], Child]]:
    """``start(name, settings)`` starts a child; every child still alive is killed after."""
    started: list[Child] = []

    def start(name: str, settings: dict[str, Any]) -> Child:
        started.append(Child(tmp_path, name, settings))
        return started[-1]

    yield start
    for child in started:
        if child.process.poll() is None:
            child.process.kill()
        child.process.wait(WAIT)


def _fill(kafka: Conformance, topic: str, group: str) -> None:
    """A 4-partition topic holding ``TOTAL`` messages ``{"n": n}``, keyed ``k<n % 64>``."""

    async def send() -> None:
        await kafka.provision(topic, PARTITIONS)
        kafka.declare(topic, group)
        async with kafka.app() as sender:
            await asyncio.gather(*(sender.send(topic, {"n": n}, key=_key(n)) for n in range(TOTAL)))

    run(send())


def _first_handling_in_send_order(handled: list[int]) -> None:
    """Per key, the ids in order of first handling are in send order."""
    first: dict[str, list[int]] = defaultdict(list)
    for n in dict.fromkeys(handled):
        first[_key(n)].append(n)
    unordered = {key: ids for key, ids in first.items() if ids != sorted(ids)}
    assert not unordered, f"first handled out of send order: {unordered}"


def _first_member_at_work(
    kafka_config: dict[str, Any],
    topic: str,
    group: str,
    children: Callable[[str, dict[str, Any]], Child],
) -> tuple[dict[str, Any], Child]:
    """A first child consuming ``topic`` in ``group``, once it handled ``KILL_AFTER`` ids;
    with the settings a second member is started with."""
    settings = {"binder": kafka_config, "topic": topic, "group": group}
    first = children("first", settings)
    first.wait_handled(KILL_AFTER)
    return settings, first


# -- the tests ------------------------------------------------------------------------------


def test_a_consumer_killed_mid_stream_loses_nothing(
    kafka: Conformance,
    kafka_config: dict[str, Any],
    topic: str,
    group: str,
    children: Callable[[str, dict[str, Any]], Child],
) -> None:
    """kill -9 mid-chunk, then a new member of the group takes over: every id is handled
    (at least once); only ids the killed process handled come again, and no more of them
    than it can have handled without their commit: the chunk in hand (≤ 500: one lane
    notes a chunk for commit when the whole chunk is finished) plus the chunk before it,
    whose commit request may have been in flight. A chunk takes ≥ 0.5 s to handle here,
    far longer than a loopback commit, so older chunks are committed: bound 2 x 500."""
    _fill(kafka, topic, group)
    started = time.monotonic()
    settings, first = _first_member_at_work(kafka_config, topic, group, children)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    killed_at = time.monotonic()
    second = children("second", settings)
    everything = set(range(TOTAL))
    _until(lambda: everything <= set(first.handled) | set(second.handled), "every id", second)
    took_over = time.monotonic() - killed_at
    assert second.stop(signal.SIGTERM) == 0, second.tail()

    before, after = first.handled, second.handled
    assert set(before) | set(after) == set(range(TOTAL)), "nothing is lost"
    assert len(before) == len(set(before)) and len(after) == len(set(after))
    again = set(before) & set(after)  # so every duplicate is an id the killed process handled
    assert len(again) <= 2 * FETCH_MAX, f"{len(again)} redelivered, more than 2 chunks"
    _first_handling_in_send_order(before + after)
    print(
        f"\nkill -9: first handled {len(before)}, second {len(after)}, redelivered "
        f"{len(again)}; takeover and the rest {took_over:.1f}s, "
        f"in all {time.monotonic() - started:.1f}s"
    )


def test_a_consumer_restarted_cleanly_handles_nothing_twice(
    kafka: Conformance,
    kafka_config: dict[str, Any],
    topic: str,
    group: str,
    children: Callable[[str, dict[str, Any]], Child],
) -> None:
    """SIGTERM mid-stream: ``app.run()`` finishes the message in hand, commits everything
    finished and exits 0; the next member starts right after it, so every id is handled
    exactly once across the two processes."""
    _fill(kafka, topic, group)
    started = time.monotonic()
    settings, first = _first_member_at_work(kafka_config, topic, group, children)
    assert first.stop(signal.SIGTERM) == 0, first.tail()
    second = children("second", settings)
    second.wait_handled(TOTAL - len(first.handled))
    assert second.stop(signal.SIGTERM) == 0, second.tail()

    handled = first.handled + second.handled
    assert len(first.handled) < TOTAL, "the first process was stopped mid-stream"
    twice = [n for n, count in Counter(handled).items() if count > 1]
    assert not twice, f"{len(twice)} handled twice, e.g. {twice[:10]}"
    assert sorted(handled) == list(range(TOTAL))
    _first_handling_in_send_order(handled)
    print(
        f"\nclean restart: first handled {len(first.handled)}, second "
        f"{len(second.handled)}, none twice, {time.monotonic() - started:.1f}s"
    )


# -- dropped connections --------------------------------------------------------------------


class _Proxy:
    """Forwards ``127.0.0.1:port`` to the broker, both ways; :meth:`drop` cuts every
    connection open (both sides) and keeps accepting new ones."""

    def __init__(self, port: int, upstream: int) -> None:
        self.port, self.upstream = port, upstream
        self.accepted = self.dropped = 0
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._open.add(pair)
        pipes = [
            asyncio.create_task(_pipe(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._open.discard(pair)
            for side in pair:
                side.transport.abort()

    def drop(self) -> int:
        """Close both sides of every open connection; how many there were."""
        pairs, self._open = list(self._open), set()
        for pair in pairs:
            for side in pair:
                side.transport.abort()
        self.dropped += len(pairs)
        return len(pairs)

    async def stop(self) -> None:
        """Stop accepting, cut every connection and wait for their handlers to end."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.drop()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=WAIT)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _eventually(done: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.02)


async def _send_all(app: App, topic: str, total: int) -> tuple[int, list[str]]:
    """Send ``{"n": n}`` for every n, 50 at a time, paced; resend what failed. A send
    either succeeds or raises BackendError: (resends, the distinct errors)."""
    resends, errors = 0, []
    for start in range(0, total, 50):
        pending = list(range(start, start + 50))
        for _ in range(20):
            sends = [app.send(topic, {"n": n}, key=_key(n)) for n in pending]
            try:
                results = await asyncio.wait_for(
                    asyncio.gather(*sends, return_exceptions=True), WAIT
                )
            except TimeoutError:
                raise AssertionError(f"sends of {pending[:3]}... hung for {WAIT}s") from None
            for result in results:
                if result is not None and not isinstance(result, BackendError):
                    raise AssertionError(f"a send raised {result!r}, not a BackendError")
                if result is not None and str(result) not in errors:
                    errors.append(str(result))
            pending = [n for n, result in zip(pending, results, strict=True) if result]
            if not pending:
                break
            resends += len(pending)
            await asyncio.sleep(0.1)
        assert not pending, f"{len(pending)} sends still failing after 20 attempts: {errors}"
        await asyncio.sleep(0.02)
    return resends, errors


def test_dropped_connections_lose_nothing_and_the_binding_keeps_running(
    topic: str, group: str
) -> None:
    """Every connection of the app (producer, consumer, coordinator, admin) is cut twice
    mid-stream: the client reconnects through the advertised proxy, each failed send
    raises BackendError and is resent, every message is handled (at least once), and the
    binding is still RUNNING at the end."""
    total = 2_000
    proxy_port = _free_port()
    seen: Counter[int] = Counter()
    figures: dict[str, Any] = {}

    async def scenario(broker_port: int) -> None:
        proxy = _Proxy(proxy_port, broker_port)
        await proxy.start()
        try:
            config = {
                "type": "kafka",
                "bootstrap-servers": f"127.0.0.1:{proxy_port}",
                **FAST_GROUPS,
                "request-timeout-ms": 10_000,
            }
            suite = Conformance(config)
            await suite.provision(topic, PARTITIONS)
            app = suite.app({"handle-in-0": {"destination": topic, "group": group}})

            @app.consumer(name="handle")
            async def handle(payload: dict[str, int]) -> None:
                seen[payload["n"]] += 1

            async with app:
                sending = asyncio.create_task(_send_all(app, topic, total))
                try:
                    for mark in (400, 1_200):
                        await _eventually(lambda m=mark: len(seen) >= m, f"{mark} handled")
                        figures.setdefault("cut", []).append(proxy.drop())
                    figures["resends"], figures["errors"] = await sending
                finally:
                    sending.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await sending
                binding = app.binding("handle-in-0")
                await _eventually(
                    lambda: len(seen) == total or binding.state is BindingState.FAILED,
                    f"all {total} handled (got {len(seen)}, binding {binding.state})",
                )
                figures["state"], figures["error"] = binding.state, binding.error
                figures["accepted"] = proxy.accepted
        finally:
            await proxy.stop()

    started = time.monotonic()
    with Tansu(advertised_port=proxy_port) as servers:
        run(scenario(int(servers.rpartition(":")[2])), timeout=WAIT * 2)
    assert figures["state"] is BindingState.RUNNING, f"binding ended {figures['state']}: " + str(
        figures["error"]
    )
    assert all(cut > 0 for cut in figures["cut"]), f"each drop cut connections: {figures['cut']}"
    assert set(seen) == set(range(total)), f"lost: {sorted(set(range(total)) - set(seen))[:10]}"
    print(
        f"\ndropped connections: cut {figures['cut']}, accepted {figures['accepted']}, "
        f"resent {figures['resends']}, handled twice {sum(c - 1 for c in seen.values())}, "
        f"errors {figures['errors']}, {time.monotonic() - started:.1f}s"
    )


if __name__ == "__main__":
    _child_main(*sys.argv[1:])
