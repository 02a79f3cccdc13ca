"""Durability barriers: fsync on a thread of its own, never under the broker lock.

Writers (a partition log, a group's offsets file) report each write with
:meth:`Syncer.written` — who wrote, how far (an offset that only grows) and
which file — while holding the broker lock; that costs a dict update. A
producer then asks :meth:`Syncer.wait` for a future that resolves once an
fsync covering its write has returned. The flusher thread fsyncs by path (a
descriptor of its own, so closing or deleting a segment never races with it)
and resolves futures on their own event loops.

Policies:

- ``batch`` (group commit): a pass fsyncs every file written since the last
  pass. Every send that asked to wait before the pass began waits on the same
  :class:`Barrier` (one per event loop and writer), resolved when the pass is
  done; sends that arrive during an fsync share the next pass. A loop starts a
  pass once it has run every task ready in its current iteration, so the sends
  of one iteration share one fsync. ``linger`` (``fsync-interval-ms``) makes a
  pass wait that much longer for company.
- ``always``: one fsync per waiting append, in arrival order; nobody shares.

Writes nobody waits for (offset commits) are fsynced by the next pass, or
within ``IDLE_SYNC`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from binder.errors import BackendError

__all__ = ["Barrier", "Syncer", "fsync_path"]

log = logging.getLogger("binder.log")

IDLE_SYNC = 1.0
"""Seconds after which writes nobody waits for are fsynced anyway."""

_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync


def fsync_path(path: Path) -> None:
    """Flush the file or directory at ``path`` to disk; a file deleted meanwhile needs none.

    A file gets ``fdatasync`` (its data and the size needed to read it back: all an
    append-only file needs), a directory ``fsync`` (its entries).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.fsync(fd)
        else:
            _datasync(fd)
    finally:
        os.close(fd)


class Barrier(asyncio.Future[None]):
    """The future many sends await together; one sender's cancellation cannot cancel it.

    A task cancelled while awaiting it gets its ``CancelledError`` once the
    fsync is done (at most one fsync later), as ``asyncio.shield`` would give.
    """

    def cancel(self, msg: Any | None = None) -> bool:
        return False


@dataclass(slots=True)
class _Pending:
    end: int = 0
    paths: set[Path] = field(default_factory=set)


_Waiter = tuple[Hashable, int, "asyncio.Future[None] | None", "Callable[[], None] | None"]
"""``(owner, end, future, callback)`` of ``always`` sends and of callbacks."""
_Key = tuple[asyncio.AbstractEventLoop, Hashable]
"""A batch barrier's event loop and writer."""


class Syncer:
    """The fsync thread of one storage directory (see the module docstring)."""

    def __init__(self, policy: Literal["always", "batch"], linger: float = 0.0) -> None:
        self.policy = policy
        self._serial = policy == "always"
        self._linger = linger
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending: dict[Hashable, _Pending] = {}
        self._synced: dict[Hashable, int] = {}
        self._last_path: dict[Hashable, tuple[Path]] = {}
        self._failed: dict[Hashable, BaseException] = {}
        self._barriers: dict[_Key, Barrier] = {}
        self._waiters: list[_Waiter] = []
        self._kicks: set[asyncio.AbstractEventLoop] = set()
        self._kicked = False
        self._closing = False
        self.fsyncs = 0
        """fsync calls made so far (for tests and benchmarks)."""
        self._thread = threading.Thread(target=self._serve, name="binder-log-fsync", daemon=True)
        self._thread.start()

    # -- writers (under the broker lock) ---------------------------------------------------

    def written(self, owner: Hashable, end: int, path: Path) -> None:
        """``owner`` wrote up to ``end`` into ``path``; fsync it in a coming pass."""
        with self._lock:
            pending = self._pending.get(owner)
            if pending is None:
                pending = self._pending[owner] = _Pending()
            pending.end = end
            pending.paths.add(path)
            if self._serial:
                self._last_path[owner] = (path,)

    def also(self, owner: Hashable, *paths: Path) -> None:
        """Add files (a new segment's directory, a sealed index) to ``owner``'s next fsync."""
        with self._lock:
            pending = self._pending.get(owner)
            if pending is None:
                pending = self._pending[owner] = _Pending(self._synced.get(owner, 0))
            pending.paths.update(paths)

    def forget(self, owner: Hashable, synced_to: int) -> None:
        """``owner`` fsynced itself up to ``synced_to`` (closing): release its waiters."""
        with self._lock:
            self._pending.pop(owner, None)
            self._synced[owner] = max(self._synced.get(owner, 0), synced_to)
            ready = self._take_ready_locked(lambda w: w[0] == owner)
            barriers = [(k, b) for k, b in self._barriers.items() if k[1] == owner]
            for key, _ in barriers:
                del self._barriers[key]
            del self._synced[owner]
            self._last_path.pop(owner, None)
        _settle(ready, barriers, {})

    def after(self, owner: Hashable, end: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` on the flusher thread once ``owner`` is fsynced up to ``end``."""
        with self._lock:
            self._waiters.append((owner, end, None, callback))
            self._kick_locked()

    # -- producers (on an event loop) -------------------------------------------------------

    def wait(self, owner: Hashable, end: int) -> asyncio.Future[None] | None:
        """A future resolved once ``owner`` is fsynced up to ``end``; ``None`` if it already is.

        With ``batch`` the future is a :class:`Barrier` shared with the other
        sends of the coming pass. It fails with
        :class:`~binder.errors.BackendError` if the fsync failed.
        """
        loop = asyncio.get_running_loop()
        with self._lock:
            failure = self._failed.get(owner)
            if failure is not None:
                future = loop.create_future()
                future.set_exception(_backend_error(failure))
                return future
            if self._serial:
                future = loop.create_future()
                self._waiters.append((owner, end, future, None))
                self._kick_locked()
                return future
            if self._synced.get(owner, -1) >= end:
                return None
            barrier = self._barriers.get((loop, owner))
            if barrier is None:
                barrier = self._barriers[(loop, owner)] = Barrier(loop=loop)
                if loop not in self._kicks:  # the pass starts when this iteration is done
                    self._kicks.add(loop)
                    loop.call_soon(self._kick, loop)
            return barrier

    def _kick(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._kicks.discard(loop)
            self._kick_locked()

    def _kick_locked(self) -> None:
        self._kicked = True
        self._cond.notify()

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Run a last pass over everything pending, then stop the thread. Idempotent."""
        with self._lock:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # -- the flusher thread --------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not (self._kicked or self._closing or (self._serial and self._waiters)):
                    if not self._cond.wait(IDLE_SYNC) and self._pending:
                        break
                self._kicked = False
                closing = self._closing
            if self._linger and not closing and not self._serial:
                with self._lock:
                    self._cond.wait_for(lambda: self._closing, self._linger)
            self._pass()
            if closing and self._finished():
                return

    def _pass(self) -> None:
        with self._lock:
            taken, select, barriers = self._take_locked()
        errors: dict[Hashable, BaseException] = {}
        for owner, pending in taken.items():
            for path in sorted(pending.paths):
                self.fsyncs += 1
                try:
                    fsync_path(path)
                except OSError as exc:
                    log.error("log: fsync of %s failed: %s", path, exc)
                    errors[owner] = exc
        with self._lock:
            for owner, pending in taken.items():
                if owner in errors:
                    self._failed[owner] = errors[owner]
                else:
                    self._synced[owner] = max(self._synced.get(owner, 0), pending.end)
            ready = self._take_ready_locked(select)
            failed = dict(self._failed)
        _settle(ready, barriers, failed)

    def _take_locked(
        self,
    ) -> tuple[dict[Hashable, _Pending], Callable[[_Waiter], bool], list[tuple[_Key, Barrier]]]:
        """What this pass fsyncs, which waiters it may resolve, and the barriers it resolves."""
        if self._serial and self._waiters:
            first = self._waiters[0]
            owner = first[0]
            pending = self._pending.pop(owner, None)
            if pending is None:  # a later write was fsynced already: fsync once more all the same
                pending = _Pending(self._synced.get(owner, 0))
                pending.paths.update(self._last_path.get(owner, ()))
            return {owner: pending}, lambda w: w is first, []
        taken, self._pending = self._pending, {}
        barriers, self._barriers = list(self._barriers.items()), {}
        return taken, lambda w: True, barriers

    def _take_ready_locked(self, eligible: Callable[[_Waiter], bool]) -> list[_Waiter]:
        ready: list[_Waiter] = []
        waiting: list[_Waiter] = []
        for waiter in self._waiters:
            owner = waiter[0]
            done = eligible(waiter) and (
                owner in self._failed or self._synced.get(owner, -1) >= waiter[1]
            )
            (ready if done else waiting).append(waiter)
        self._waiters = waiting
        return ready

    def _finished(self) -> bool:
        """Closing: once nothing is pending, release what still waits (its log fsynced itself
        on close) and stop."""
        with self._lock:
            if self._pending or (self._serial and self._waiters):
                return False
            left, self._waiters = self._waiters, []
            barriers, self._barriers = list(self._barriers.items()), {}
            failed = dict(self._failed)
        _settle(left, barriers, failed)
        return True


def _backend_error(cause: BaseException) -> BackendError:
    error = BackendError(f"log: fsync failed, the write may not be durable: {cause}")
    error.__cause__ = cause
    return error


def _settle(
    ready: list[_Waiter],
    barriers: list[tuple[_Key, Barrier]],
    failed: dict[Hashable, BaseException],
) -> None:
    """Run callbacks, and resolve futures with one hop per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], object]]] = {}
    for owner, _end, future, callback in ready:
        failure = failed.get(owner)
        if callback is not None:
            if failure is None:
                callback()
            continue
        assert future is not None
        outcome = None if failure is None else _backend_error(failure)
        by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    for (loop, owner), barrier in barriers:
        failure = failed.get(owner)
        outcome = None if failure is None else _backend_error(failure)
        by_loop.setdefault(loop, []).append((barrier, outcome))
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve_all, futures)


def _resolve_all(futures: list[tuple[asyncio.Future[None], object]]) -> None:
    for future, outcome in futures:
        if future.done():
            continue
        if outcome is None:
            future.set_result(None)
        else:
            assert isinstance(outcome, BaseException)
            future.set_exception(outcome)
