"""The time an app goes by: when a delayed message is due, when a message expires.

:data:`SYSTEM` is the wall clock. :class:`ManualClock` stands still until a test moves it
(``app.test(clock=clock)``, then ``clock.advance(60)``): delayed messages become due, and
messages expire, without the test sleeping. Clocks are read from any thread and any event
loop (the test's thread advances the clock of an app running on its own loop).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
import time
from datetime import timedelta
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM", "Clock", "ManualClock", "SystemClock", "millis_of", "seconds_of"]


@runtime_checkable
class Clock(Protocol):
    """Epoch time, and a sleep that ends when that time has come."""

    def time(self) -> float:
        """Seconds since the epoch."""
        ...

    async def sleep_until(self, when: float) -> None:
        """Return once :meth:`time` is at least ``when`` (epoch seconds)."""
        ...


class SystemClock:
    """The wall clock (``time.time``)."""

    def time(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        delay = when - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM = SystemClock()
"""The clock of every app not given another."""


class ManualClock:
    """A clock that moves only when told (:meth:`advance`, :meth:`set`); starts at the
    wall clock's time unless given one, so epoch-millisecond headers look as usual.

    Sleepers on any event loop are woken when the clock passes their time."""

    def __init__(self, start: float | None = None) -> None:
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()
        self._sleepers: list[tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future[None]]]
        self._sleepers = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float | timedelta) -> float:
        """Move the clock forward by ``seconds`` (or a ``timedelta``); returns the new time."""
        step = seconds_of(seconds)
        if step < 0:
            raise ValueError(f"a clock does not go back: advance({seconds!r})")
        return self.set(self._now + step)

    def set(self, when: float) -> float:
        """Move the clock to ``when`` (epoch seconds; never back); returns it."""
        with self._lock:
            if when < self._now:
                raise ValueError(f"a clock does not go back: set({when}) before {self._now}")
            self._now = when
            woken = []
            while self._sleepers and self._sleepers[0][0] <= when:
                woken.append(heapq.heappop(self._sleepers))
        for _, _, loop, future in woken:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)
        return when

    async def sleep_until(self, when: float) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if when <= self._now:
                return
            future: asyncio.Future[None] = loop.create_future()
            heapq.heappush(self._sleepers, (when, next(self._order), loop, future))
        await future

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def seconds_of(value: float | timedelta) -> float:
    """Seconds, from a number of seconds or a ``timedelta``; refuses what is not one."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected seconds (a number) or a timedelta, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    return float(value)


def millis_of(value: float | timedelta) -> int:
    """Whole milliseconds (rounded up, so a delay is never shortened) of ``value``."""
    seconds = seconds_of(value)
    millis = int(seconds * 1000)
    return millis + 1 if millis < seconds * 1000 else millis
