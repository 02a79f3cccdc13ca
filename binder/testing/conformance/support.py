"""What the conformance scenarios share: the binder under test, inboxes, and small helpers.

A scenario talks to the binder under test in two ways: through an
:class:`~binder.App` built by :meth:`Conformance.app` (the user's view), or
through the SPI itself with :meth:`Conformance.binder` (a raw ``Binder``, to
provision, read dead letters as bytes, or kill a consumer mid-flight). Every
destination a scenario names is remembered and deleted with ``Binder.delete``
when the test ends, so a real backend is left clean.

Nothing here sleeps to prove an absence: an :class:`Inbox` is awaited until it
holds what a scenario expects (a sentinel sent last, where order allows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import reprlib
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import pytest

from binder import plugins
from binder.app import App
from binder.message import key_bytes
from binder.partitioning import select_partition
from binder.spi import (
    Binder,
    BinderType,
    Capabilities,
    Consumer,
    ConsumerSpec,
    InboundRecord,
    OutboundRecord,
    ProducerSpec,
)
from binder.wakeup import wake

__all__ = [
    "BINDER_NAME",
    "MIB",
    "TIMEOUT",
    "Conformance",
    "IdleListener",
    "Inbox",
    "binder_type_of",
    "fetch_records",
    "keys_for_partitions",
    "partition_of",
    "require",
    "run",
    "unique_group",
    "unique_name",
]

T = TypeVar("T")

TIMEOUT = float(os.environ.get("BINDER_CONFORMANCE_TIMEOUT", "10"))
"""Seconds a scenario waits for something it expects (real backends rebalance slowly)."""
MIB = 1 << 20
BINDER_NAME = "under-test"


def run(coro: Awaitable[T], timeout: float = TIMEOUT * 6) -> T:
    """Run one scenario's coroutine on a fresh event loop, bounded by ``timeout``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def require(capabilities: Capabilities, *names: str) -> None:
    """Skip the test, naming the capability, unless the binder declares all of ``names``."""
    for name in names:
        if not getattr(capabilities, name):
            pytest.skip(f"binder lacks {name}")


def binder_type_of(config: Mapping[str, Any]) -> BinderType:
    """The registered binder type named by ``config["type"]``."""
    kinds = plugins.binder_types()
    kind = config.get("type")
    if kind not in kinds:
        raise LookupError(f"binder_config names type {kind!r}; registered: {sorted(kinds)}")
    return kinds[kind]


def partition_of(key: Any, partition_count: int) -> int:
    """Where the contract puts ``key`` (a key or a key expression's value)."""
    raw = key_bytes(key)
    assert raw is not None
    return select_partition(raw, partition_count)


def keys_for_partitions(partition_count: int, prefix: str = "sentinel") -> list[str]:
    """One key per partition, the p-th landing on partition p."""
    found: dict[int, str] = {}
    index = 0
    while len(found) < partition_count:
        key = f"{prefix}-{index}"
        found.setdefault(partition_of(key, partition_count), key)
        index += 1
    return [found[p] for p in range(partition_count)]


class Inbox(Generic[T]):
    """What handlers saw, in arrival order; filled from any thread, awaited on a loop."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._lock = threading.Lock()
        self._waiters: list[asyncio.Future[None]] = []

    def add(self, item: T) -> None:
        with self._lock:
            self._items.append(item)
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            wake(waiter)

    @property
    def items(self) -> list[T]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    async def wait_until(
        self, done: Callable[[list[T]], bool], what: str, timeout: float = TIMEOUT
    ) -> list[T]:
        """The items once ``done(items)`` holds; AssertionError naming ``what`` on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            with self._lock:
                if done(list(self._items)):
                    return list(self._items)
                waiter = loop.create_future()
                self._waiters.append(waiter)
            remaining = deadline - loop.time()
            if remaining <= 0:
                shown = _SHORT.repr(self.items)
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; got {shown}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    async def wait_count(self, count: int, what: str = "", timeout: float = TIMEOUT) -> list[T]:
        """The items once there are at least ``count``."""
        return await self.wait_until(
            lambda items: len(items) >= count, what or f"{count} item(s)", timeout
        )

    async def wait_for(self, item: T, timeout: float = TIMEOUT) -> list[T]:
        """The items once ``item`` is among them."""
        return await self.wait_until(lambda items: item in items, f"{item!r}", timeout)


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxlist, short.maxstring, short.maxother = 20, 80, 120
    return short


_SHORT = _short_repr()


class IdleListener:
    """A rebalance listener for SPI-level code with nothing in flight to finish."""

    async def on_revoked(self, partitions: set[int]) -> None:
        return None

    async def on_assigned(self, partitions: set[int]) -> None:
        return None


class Conformance:
    """The binder under test for one scenario; made by the ``conformance`` fixture."""

    def __init__(self, binder_config: Mapping[str, Any]) -> None:
        self.binder_config = dict(binder_config)
        self.binder_type = binder_type_of(self.binder_config)
        self.capabilities: Capabilities = self._unstarted().capabilities
        """What the configured variant declares (the log with a ``path`` adds persistence)."""
        self._declared: dict[str, set[str]] = {}

    # -- destinations -----------------------------------------------------------------------

    def declare(self, destination: str, *groups: str) -> str:
        """Remember ``destination`` (and its ``groups``) for deletion after the test."""
        self._declared.setdefault(destination, set()).update(groups)
        return destination

    def group_or_anonymous(self, group: str) -> str | None:
        """``group``, or ``None`` (anonymous) on a binder that lacks ``consumer_groups``.

        For scenarios that need one consumer subscribed before they send, either kind.
        """
        return group if self.capabilities.consumer_groups else None

    def dead_letters(self, destination: str, group: str | None) -> str:
        """``<destination>.<group>.dlq``, declared for clean-up."""
        return self.declare(f"{destination}.{group or 'anonymous'}.dlq")

    async def provision(
        self, destination: str, partitions: int = 1, groups: Sequence[str] = ()
    ) -> None:
        """Create ``destination`` with ``partitions`` before anything uses it."""
        self.declare(destination, *groups)
        async with self.binder() as binder:
            await binder.provision(destination, partitions, groups)

    async def cleanup(self) -> None:
        """Delete every declared destination with its groups."""
        if not self._declared:
            return
        async with self.binder() as binder:
            for destination, groups in self._declared.items():
                await binder.delete(destination, sorted(groups))

    # -- the user's view --------------------------------------------------------------------

    def app(
        self,
        bindings: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        definition: str | None = None,
        wrap: Callable[[Binder], Binder] | None = None,
        options: Mapping[str, Any] | None = None,
        tracer_provider: Any = None,
    ) -> App:
        """An App on the binder under test; register functions on it, then ``async with``.

        ``wrap`` wraps the binder the app makes (to inject faults at the SPI boundary);
        ``options`` are binder options added to the configured ones for this app;
        ``tracer_provider`` is the app's OpenTelemetry one."""
        bindings = {name: dict(binding) for name, binding in (bindings or {}).items()}
        for binding in bindings.values():
            self._declare_binding(binding)
        section: dict[str, Any] = {
            "binders": {BINDER_NAME: {**self.binder_config, **(options or {})}},
            "default-binder": BINDER_NAME,
            "bindings": bindings,
        }
        if definition is not None:
            section["function-definition"] = definition
        app = App(config={"binder": section}, environ={}, tracer_provider=tracer_provider)
        if wrap is not None:
            kind = self.binder_type
            app.use_binder_factory(lambda name, entry: wrap(kind.create(name, entry.options)))
        return app

    def _declare_binding(self, binding: Mapping[str, Any]) -> None:
        destination = binding.get("destination")
        if destination is None:
            return
        group = binding.get("group")
        required = binding.get("producer", {}).get("required-groups", [])
        self.declare(destination, *([group] if group else []), *required)
        if binding.get("consumer", {}).get("dead-letter", True):
            self.dead_letters(destination, group)
        if group and binding.get("consumer", {}).get("retry-mode") == "delayed":
            self.declare(f"{destination}.{group}.retry", group)

    # -- the SPI view -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def binder(self) -> AsyncIterator[Binder]:
        """A started raw binder of the type under test, closed on exit."""
        binder = self._unstarted()
        await binder.start()
        try:
            yield binder
        finally:
            await binder.close()

    def _unstarted(self) -> Binder:
        options = {k: v for k, v in self.binder_config.items() if k != "type"}
        return self.binder_type.create(
            BINDER_NAME, self.binder_type.options.model_validate(options)
        )

    async def consumer(self, binder: Binder, destination: str, group: str | None) -> Consumer:
        """An SPI consumer of ``destination`` for ``group``; the destination is declared."""
        self.declare(destination, *([group] if group else []))
        return await binder.consumer(ConsumerSpec(destination, group), IdleListener())

    async def send_raw(
        self, binder: Binder, destination: str, records: Iterable[OutboundRecord]
    ) -> None:
        """Send records as they are (each to its ``partition``), one by one, through an SPI
        producer of ``destination`` (provisioned with one partition if missing)."""
        count = await binder.provision(self.declare(destination), 1)
        producer = await binder.producer(ProducerSpec(destination, count))
        try:
            for record in records:
                await producer.send_batch((record,))
        finally:
            await producer.close()

    async def read_raw(self, destination: str, group: str, count: int) -> list[InboundRecord]:
        """The first ``count`` records ``group`` reads from ``destination``, committed."""
        async with self.binder() as binder:
            consumer = await self.consumer(binder, destination, group)
            try:
                return await fetch_records(consumer, count)
            finally:
                await consumer.close()


async def fetch_records(
    consumer: Consumer, count: int, timeout: float = TIMEOUT
) -> list[InboundRecord]:
    """Fetch (and commit) until ``count`` records arrived; AssertionError on timeout."""
    records: list[InboundRecord] = []

    async def gather() -> None:
        while len(records) < count:
            batch = await consumer.fetch()
            assert batch, "the consumer closed while records were expected"
            records.extend(batch)
            await consumer.commit(batch)

    try:
        await asyncio.wait_for(gather(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"timed out after {timeout}s: {len(records)} of {count} record(s) fetched"
        ) from None
    return records


def unique_name(request: pytest.FixtureRequest, prefix: str) -> str:
    """A destination name no other test uses: ``<prefix>-<test name>-<random>``."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    return f"{prefix}-{name.strip('-')[:40]}-{uuid.uuid4().hex[:8]}"


def unique_group() -> str:
    """A consumer group name no other test uses."""
    return f"g{uuid.uuid4().hex[:10]}"
