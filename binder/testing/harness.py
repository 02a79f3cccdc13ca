"""``app.test()``: run an app on in-memory binders and look at everything it sends.

Used as ``with app.test() as t:`` (the app runs on its own event loop in a
background thread; ``t.send``/``t.receive`` block) or ``async with app.test()
as t:`` (the app runs on the caller's loop; ``await t.send(...)``).

Every binder of the app is swapped for an in-memory binder on a private broker
(or on the broker named by ``app.test(broker=...)``, so that several apps under
test can share groups), made by the plugin hook ``binder_make_test_binder`` (the
built-in ``log`` binder implements it; ``binder`` imports no backend), unless
``BINDER_TEST_BINDER=<type>`` names a binder type to run on instead (its options
are taken from the app's binder of that type when there is one, else that type's
defaults). The harness records every message
sent to any destination from the moment it starts — dead letters included —
so :meth:`receive` also returns what was sent before it was called.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from binder import plugins
from binder.clock import SYSTEM, Clock
from binder.converters import ConverterRegistry
from binder.errors import ConfigError, ConversionError
from binder.message import CONTENT_TYPE, TOMBSTONE, Message, decode_key
from binder.spi import Binder, OutboundRecord

if TYPE_CHECKING:
    from binder.app import App

__all__ = ["Recorder", "TestHarness"]

TEST_BINDER_ENV = "BINDER_TEST_BINDER"
_TICK = 0.01
"""Seconds between two looks at held (delayed) messages while a receive waits."""


class Recorder:
    """Messages sent per destination, in order; readable from any thread.

    A delayed message is held until it is due by ``clock`` (then it is readable, in due
    order, as its consumers get it)."""

    def __init__(self, converters: ConverterRegistry, clock: Clock = SYSTEM) -> None:
        self._converters = converters
        self.clock = clock
        self._queues: dict[str, deque[Message[Any]]] = defaultdict(deque)
        self._held: dict[str, list[tuple[int, int, Message[Any]]]] = defaultdict(list)
        self._order = itertools.count()
        self._history: dict[str, list[Message[Any]]] = defaultdict(list)
        self._changed = threading.Condition()
        self._events: dict[str, asyncio.Event] = {}

    def __call__(self, destination: str, record: OutboundRecord) -> None:
        message = self._decode(destination, record)
        due = getattr(record, "due", None)
        with self._changed:
            if due is None:
                self._queues[destination].append(message)
            else:
                heapq.heappush(self._held[destination], (due, next(self._order), message))
            self._history[destination].append(message)
            self._changed.notify_all()
        event = self._events.get(destination)
        if event is not None:
            event.set()

    def _decode(self, destination: str, record: OutboundRecord) -> Message[Any]:
        """The message as sent: a tombstone's payload is :data:`~binder.message.TOMBSTONE`."""
        content_type = record.headers.get(CONTENT_TYPE, "application/octet-stream")
        payload: Any = TOMBSTONE
        if record.value is not None:
            try:
                payload = self._converters.get(content_type).decode(record.value)
            except ConversionError:
                payload = record.value
        message: Message[Any] = Message(
            payload,
            key=decode_key(record.key),
            headers=record.headers,
            destination=destination,
            partition=record.partition,
        )
        return message

    def _ready_locked(self, destination: str) -> deque[Message[Any]]:
        """The readable messages of ``destination``, the held ones now due included."""
        queue, held = self._queues[destination], self._held.get(destination)
        if held:
            now = self.clock.time() * 1000
            while held and held[0][0] <= now:
                queue.append(heapq.heappop(held)[2])
        return queue

    def take(self, destination: str, timeout: float) -> Message[Any] | None:
        """The next unread message sent to ``destination``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                queue = self._ready_locked(destination)
                if queue:
                    return queue.popleft()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                wait = remaining if not self._held.get(destination) else min(remaining, _TICK)
                self._changed.wait(wait)

    async def take_async(self, destination: str, timeout: float) -> Message[Any] | None:
        """Like :meth:`take`, waiting on the event loop instead of blocking it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._changed:
                queue = self._ready_locked(destination)
                if queue:
                    return queue.popleft()
                holding = bool(self._held.get(destination))
            event = self._events.setdefault(destination, asyncio.Event())
            event.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(
                    event.wait(), min(remaining, _TICK) if holding else remaining
                )
            except TimeoutError:
                if loop.time() >= deadline:
                    return None

    def sent(self, destination: str) -> list[Message[Any]]:
        """Everything sent to ``destination`` so far, read or not."""
        with self._changed:
            return list(self._history[destination])


class TestHarness:
    """Runs an app for a test; see the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        app: App,
        *,
        binder_type: str | None = None,
        broker: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.app = app
        self.broker = broker
        self.binder_type = binder_type or os.environ.get(TEST_BINDER_ENV) or None
        self.clock = clock
        """The clock the app goes by under test (``None``: its own)."""
        self._app_clock = app.clock
        self.recorder = Recorder(app.converters, clock if clock is not None else app.clock)
        self._brokers: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- binder swap ------------------------------------------------------------------------

    def _make_binder(self, name: str, entry: Any) -> Binder:
        if self.binder_type is None:
            broker = self.broker
            if broker is None:  # private to this harness, forgotten when it closes
                broker = f"test-{uuid.uuid4().hex}-{name}"
                self._brokers.append(broker)
            return plugins.make_test_binder(name, entry, broker)
        kinds = plugins.binder_types()
        if self.binder_type not in kinds:
            raise ConfigError(
                f"unknown binder type (known: {', '.join(sorted(kinds))})",
                path=TEST_BINDER_ENV,
                value=self.binder_type,
            )
        kind = kinds[self.binder_type]
        options = entry.options if entry.type == self.binder_type else self._options_for(kind)
        return kind.create(name, options)

    def _options_for(self, kind: Any) -> Any:
        for entry in self.app.config.binders.values():
            if entry.type == kind.name:
                return entry.options
        return kind.options()

    async def _start(self) -> None:
        if self.clock is not None:
            self._app_clock, self.app.clock = self.app.clock, self.clock
        self.app.use_binder_factory(self._make_binder)
        self.app.add_observer(self.recorder)
        try:
            await self.app.start()
        except BaseException:
            await self._stop()
            raise

    async def _stop(self) -> None:
        try:
            await self.app.stop()
        finally:
            self.app.use_binder_factory(None)
            self.app.remove_observer(self.recorder)
            self.app.clock = self._app_clock
            for broker in self._brokers:
                plugins.drop_test_broker(broker)

    # -- async use --------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncTestClient:
        await self._start()
        return AsyncTestClient(self)

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    # -- sync use ---------------------------------------------------------------------------

    def __enter__(self) -> TestClient:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="binder-test", daemon=True
        )
        self._thread.start()
        ready.wait()
        try:
            self._call(self._start())
        except BaseException:
            self._shutdown_loop()
            raise
        return TestClient(self)

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._call(self._stop())
        finally:
            self._shutdown_loop()

    def _serve(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(ready.set)
        self._loop.run_forever()

    def _call(self, coro: Any, timeout: float | None = None) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop = self._thread = None


class _Client:
    def __init__(self, harness: TestHarness) -> None:
        self.harness = harness
        self.app = harness.app

    def destination(self, name: str) -> str:
        """The destination a binding name or destination name refers to."""
        return self.app.destination_of(name)

    def sent(self, name: str) -> list[Message[Any]]:
        """Every message sent to the binding's (or named) destination so far."""
        return self.harness.recorder.sent(self.destination(name))

    async def _settle(self, timeout: float) -> None:
        """Wait until no running binding has a record left to finish, twice in a row (a
        function's outputs are written before its input is committed, so a second pass
        sees what the first one's bindings sent on)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2:
            left = {}
            for name, binding in self.app.bindings.items():
                backlog = getattr(binding, "backlog", None)
                if backlog is not None and binding.state == "running":
                    pending = await backlog()
                    if pending:
                        left[name] = pending
            quiet = 0 if left else quiet + 1
            if left and time.monotonic() >= deadline:
                busy = ", ".join(f"{name} ({n} left)" for name, n in sorted(left.items()))
                raise TimeoutError(f"the app did not settle within {timeout} s: {busy}")
            await asyncio.sleep(0.005)


class TestClient(_Client):
    """The blocking face of the harness (``with app.test() as t``)."""

    __test__ = False

    def send(
        self,
        name: str,
        payload: Any,
        *,
        key: Any = None,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        ttl: float | timedelta | None = None,
    ) -> None:
        """Send to a binding's destination (or a destination); returns once accepted.
        ``delay`` and ``ttl`` as in :meth:`binder.App.send`."""
        self.harness._call(self._send(name, payload, key, headers, delay, ttl))

    async def _send(
        self, name: str, payload: Any, key: Any, headers: Any, delay: Any, ttl: Any
    ) -> None:
        await self.app.send(name, payload, key=key, headers=headers, delay=delay, ttl=ttl)

    def receive(self, name: str, timeout: float = 1.0) -> Message[Any] | None:
        """The next message sent to that destination, or ``None`` after ``timeout`` seconds."""
        return self.harness.recorder.take(self.destination(name), timeout)

    def settle(self, timeout: float = 5.0) -> None:
        """Block until every running binding has finished what reached it (and what that
        sent on). Call it before ``clock.advance`` when what the app schedules depends
        on the time it handles a message: a delay counts from when the output is sent.
        Raises ``TimeoutError`` naming the bindings still busy after ``timeout`` seconds.
        A delayed message that is not yet due is not waited for."""
        self.harness._call(self._settle(timeout))


class AsyncTestClient(_Client):
    """The awaitable face of the harness (``async with app.test() as t``)."""

    __test__ = False

    async def send(
        self,
        name: str,
        payload: Any,
        *,
        key: Any = None,
        headers: Mapping[str, Any] | None = None,
        delay: float | timedelta | None = None,
        ttl: float | timedelta | None = None,
    ) -> None:
        """Send to a binding's destination (or a destination); returns once accepted.
        ``delay`` and ``ttl`` as in :meth:`binder.App.send`."""
        await self.app.send(name, payload, key=key, headers=headers, delay=delay, ttl=ttl)

    async def receive(self, name: str, timeout: float = 1.0) -> Message[Any] | None:
        return await self.harness.recorder.take_async(self.destination(name), timeout)

    async def settle(self, timeout: float = 5.0) -> None:
        """As :meth:`TestClient.settle`."""
        await self._settle(timeout)
