"""Sending: ``XADD`` of each record to its partition's stream, pipelined.

Every send, from any task, is queued; one flusher task takes everything queued, in
order, and writes it as one pipeline (``transaction=False``), so a burst of sends costs
a round trip per pipeline rather than per record, and while one pipeline is on the wire
the next one fills. A send completes when Redis replied to every ``XADD`` of its records.
One pipeline is in flight at a time, so the order of the calls is the order in Redis.

An entry's fields: ``payload`` (the value bytes), ``key`` (absent when there is none),
``headers`` (a JSON object of strings, absent when there are none).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from binder.errors import BackendError, ClosedError
from binder.spi import OutboundRecord
from binders.redis.errors import CLIENT_ERRORS, backend_error

__all__ = ["PIPELINE_RECORDS", "RedisProducer", "SendQueue"]

PIPELINE_RECORDS = 2000
"""Most ``XADD`` commands in one pipeline; a larger burst goes in several, back to back."""

_Queued = tuple[Sequence[OutboundRecord], Callable[[int], bytes], "asyncio.Future[None]"]


class SendQueue:
    """The records waiting to be written, and the task that pipelines them; one per binder."""

    def __init__(self, client: Any, server: str, max_length: int | None) -> None:
        self._client = client
        self._server = server
        self._trim: tuple[str, ...] = ("MAXLEN", "~", str(max_length)) if max_length else ()
        self._queue: deque[_Queued] = deque()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    async def send(self, records: Sequence[OutboundRecord], stream: Callable[[int], bytes]) -> None:
        """Queue ``records`` (``stream(partition)`` names each one's stream); return once
        Redis accepted them all. Queued before the first await, so calls keep their order."""
        if self._closed:
            raise ClosedError("the redis producer is closed")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((records, stream, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="redis-send-queue")
        await done

    async def _flush(self) -> None:
        queue = self._queue
        try:
            while queue:
                taken: list[_Queued] = []
                size = 0
                while queue and (not taken or size + len(queue[0][0]) <= PIPELINE_RECORDS):
                    item = queue.popleft()
                    taken.append(item)
                    size += len(item[0])
                error = await self._write(taken)
                for _, _, done in taken:
                    if not done.done():
                        if error is None:
                            done.set_result(None)
                        else:
                            done.set_exception(error)
        finally:
            self._flusher = None

    async def _write(self, taken: list[_Queued]) -> BaseException | None:
        """One pipeline of every record in ``taken``; the error, if it failed (some of its
        records may have been written: the caller resends them, at least once)."""
        pipe = self._client.pipeline(transaction=False)
        command, trim, dumps = pipe.execute_command, self._trim, orjson.dumps
        for records, stream, _ in taken:
            for r in records:
                fields: list[Any] = ["payload", r.value if r.value is not None else b""]
                if r.key is not None:
                    fields += ("key", r.key)
                if r.headers:
                    fields += ("headers", dumps(r.headers))
                command("XADD", stream(r.partition), *trim, "*", *fields)
        try:
            await pipe.execute()
        except CLIENT_ERRORS as exc:
            return backend_error(self._server, "XADD", exc)
        except Exception as exc:  # an argument redis-py refused: the send fails, said so
            return BackendError(f"redis at {self._server}: XADD refused: {exc}")
        return None

    async def close(self) -> None:
        """Wait for what is queued, then refuse more. Idempotent."""
        self._closed = True
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(flusher)


class RedisProducer:
    """Sends to one destination's streams through the binder's :class:`SendQueue`."""

    def __init__(self, sends: SendQueue, destination: str, streams: Sequence[bytes]) -> None:
        self._sends = sends
        self.destination = destination
        self._streams = tuple(streams)
        self._closed = False

    def _stream(self, partition: int) -> bytes:
        return self._streams[partition]

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        if self._closed:
            raise ClosedError(f"the redis producer of {self.destination!r} is closed")
        if records:
            await self._sends.send(records, self._stream)

    async def close(self) -> None:
        self._closed = True
