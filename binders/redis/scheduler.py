"""Delayed delivery on Redis: a sorted set per partition, moved into its stream by a script.

A delayed record is ``ZADD``-ed to ``{<stream>}:delayed`` (the hash tag puts it in its
stream's slot on a cluster), scored by its due time (epoch ms); the member is a unique,
time-ordered id followed by the entry's fields. Every producer and consumer of the
destination runs a :class:`Mover`, which calls :data:`MOVE` on each partition when the
earliest known due time comes (and at least every :data:`POLL` seconds, for records other
processes scheduled): the script, atomic on the server, ``XADD``-s every due member to the
stream with the fields an ordinary send writes (``payload``, ``key``, ``headers``, ``MAXLEN``
as configured) and removes it, so several movers never move one record twice and a mover
that died loses nothing. Equal due times move in id order, that is send order.

Member layout: 32 characters of id (20 digits of nanoseconds, 12 hex of randomness), then
three netstring-like fields ``<length>:<bytes>`` (payload, key, headers JSON; length ``-1``
for a missing key or headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson

from binder.clock import Clock
from binder.spi import OutboundRecord

__all__ = ["MOVE", "POLL", "Mover", "delayed_key", "member_of"]

log = logging.getLogger("binder.redis.scheduler")

POLL = 0.05
"""Most seconds between two looks at a destination's delayed records."""
BATCH = 1000
"""Most records one script call moves."""
_REFRESH = 5.0  # seconds between two reads of the destination's partition count

MOVE = """
local function field(s, pos)
  local colon = string.find(s, ':', pos, true)
  local n = tonumber(string.sub(s, pos, colon - 1))
  if n < 0 then return nil, colon + 1 end
  return string.sub(s, colon + 1, colon + n), colon + 1 + n
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  local payload, key, headers, pos
  payload, pos = field(member, 33)
  key, pos = field(member, pos)
  headers, pos = field(member, pos)
  local args = {'XADD', KEYS[2]}
  if ARGV[3] ~= '' then
    table.insert(args, 'MAXLEN'); table.insert(args, '~'); table.insert(args, ARGV[3])
  end
  table.insert(args, '*'); table.insert(args, 'payload'); table.insert(args, payload)
  if key then table.insert(args, 'key'); table.insert(args, key) end
  if headers then table.insert(args, 'headers'); table.insert(args, headers) end
  redis.call(unpack(args))
  redis.call('ZREM', KEYS[1], member)
end
local head = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, head[2] or ''}
"""
"""KEYS: the sorted set, its stream; ARGV: now (epoch ms), most to move, MAXLEN or ''.
Returns how many it moved and the earliest due time left ('' when none)."""


def delayed_key(stream: bytes) -> bytes:
    """The sorted set of a partition's delayed records (in its stream's cluster slot)."""
    return b"{" + stream + b"}:delayed"


_last_id = 0


def _id() -> bytes:
    """32 bytes, increasing within this process (lexicographic order is send order)."""
    global _last_id
    now = max(time.time_ns(), _last_id + 1)
    _last_id = now
    return b"%020d%s" % (now, os.urandom(6).hex().encode())


def _field(value: bytes | None) -> bytes:
    return b"-1:" if value is None else b"%d:%b" % (len(value), value)


def member_of(record: OutboundRecord) -> bytes:
    """A delayed record's member: its id, then its ``XADD`` fields."""
    headers = orjson.dumps(record.headers) if record.headers else None
    return _id() + _field(record.value or b"") + _field(record.key) + _field(headers)


class Mover:
    """Moves one destination's due records while any client of it runs here."""

    def __init__(self, binder: Any, destination: str, clock: Clock) -> None:
        self.binder = binder
        self.destination = destination
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._script: Any = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"redis-mover:{self.destination}"
            )

    def poke(self) -> None:
        """Something was scheduled here: look again now (it may be due before the rest)."""
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        failing = False
        streams: list[bytes] = []
        refreshed = -_REFRESH
        while not self._closed:  # a client may turn a cancellation into an error: see here
            try:
                if time.monotonic() - refreshed >= _REFRESH:
                    count = await self.binder._count_for_use(self.destination)
                    streams = self.binder.keys.streams(self.destination, count)
                    refreshed = time.monotonic()
                head = await self._move(streams)
                if failing:
                    log.info("moving the due records of %r works again", self.destination)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                if not failing:
                    log.error(
                        "moving the due records of %r failed, trying again: %s",
                        self.destination,
                        exc,
                    )
                failing, head = True, None
            await self._sleep(head)

    async def _move(self, streams: Sequence[bytes]) -> float | None:
        """Move what is due on every partition; the earliest due time left (epoch ms)."""
        if self._script is None:
            self._script = self.binder.client.register_script(MOVE)
        trim = str(self.binder.options.max_length or "")
        earliest: float | None = None
        for stream in streams:
            while True:
                now = int(self.clock.time() * 1000)
                moved, head = await self._script(
                    keys=[delayed_key(stream), stream], args=[now, BATCH, trim]
                )
                if int(moved) < BATCH:
                    break
            if head not in (b"", ""):
                due = float(head)
                earliest = due if earliest is None else min(earliest, due)
        return earliest

    async def _sleep(self, head: float | None) -> None:
        """Until the earliest due time, a poke, or :data:`POLL` seconds, whichever first."""
        self._wake.clear()
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._wake.wait())]
        timeout = POLL
        if head is not None:
            timeout = min(POLL, max(0.0, head / 1000 - self.clock.time()))
            waits.append(asyncio.ensure_future(self.clock.sleep_until(head / 1000)))
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
