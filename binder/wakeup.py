"""Waking a waiter parked on another thread's event loop."""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["wake"]


def wake(waiter: asyncio.Future[None]) -> None:
    """Resolve ``waiter`` on its own loop, from any thread; a closed loop is ignored.

    Directly when called on that loop, else through ``call_soon_threadsafe``.
    Idempotent: a waiter already done stays as it is.
    """
    loop = waiter.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        _resolve(waiter)
    else:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
