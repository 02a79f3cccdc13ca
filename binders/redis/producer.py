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
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.exceptions import ResponseError

from binder.errors import BackendError, ClosedError
from binder.spi import OutboundRecord
from binders.redis.errors import CLIENT_ERRORS, backend_error

__all__ = ["PIPELINE_RECORDS", "RedisProducer", "SendQueue"]

PIPELINE_RECORDS = 2000
"""Most ``XADD`` commands in one pipeline; a larger burst goes in several, back to back."""

_Queued = tuple[Sequence[OutboundRecord], Callable[[int], bytes], "asyncio.Future[None]"]


class SendQueue:
    """The records waiting to be written, and the task that pipelines them; one per binder."""

    def __init__(
        self,
        client: Any,
        server: str,
        max_length: int | None,
        *,
        timeout: float = 10.0,
        cluster: bool = False,
    ) -> None:
        self._client = client
        self._server = server
        self._timeout = timeout
        self._cluster = cluster
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
        trim, dumps = self._trim, orjson.dumps
        commands: list[tuple[Any, ...]] = []
        add = commands.append
        headers_of: dict[int, bytes] = {}  # one encoding per headers dict of the pipeline
        for records, stream, _ in taken:
            for r in records:
                head = ("XADD", stream(r.partition), *trim, "*", "payload", r.value or b"")
                headers = r.headers
                if headers:
                    raw = headers_of.get(id(headers))
                    if raw is None:
                        raw = headers_of[id(headers)] = dumps(headers)
                    if r.key is not None:
                        add((*head, "key", r.key, "headers", raw))
                    else:
                        add((*head, "headers", raw))
                elif r.key is not None:
                    add((*head, "key", r.key))
                else:
                    add(head)
        try:
            if self._cluster:
                pipe = self._client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                await pipe.execute()
            else:
                await self._pipeline(commands)
        except CLIENT_ERRORS as exc:
            return backend_error(self._server, "XADD", exc)
        except Exception as exc:  # an argument redis-py refused: the send fails, said so
            return BackendError(f"redis at {self._server}: XADD refused: {exc}")
        return None

    async def _pipeline(self, commands: list[tuple[Any, ...]]) -> None:
        """``commands`` written at once on one pooled connection, their replies read in
        one go under one timeout (redis-py's pipeline arms a timer per reply); the first
        error reply is raised once every reply was read, so the connection stays in step."""
        pool = self._client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(connection.pack_commands(commands))
            read = connection.read_response
            first: ResponseError | None = None
            async with asyncio.timeout(self._timeout):
                for _ in range(len(commands)):
                    try:
                        await read(disable_decoding=True, timeout=math.inf)
                    except ResponseError as exc:
                        first = first or exc
            if first is not None:
                raise first
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)

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
