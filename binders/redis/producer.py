"""Sending: ``XADD`` of each record to its partition's stream, pipelined.

Every send, from any task, is queued; one flusher task takes what is queued, in order,
and writes it as pipelines (``transaction=False``) of at most :data:`PIPELINE_RECORDS`
commands, packed here in the Redis protocol, so a burst of sends costs a round trip per
pipeline rather than per record, and while one pipeline is on the wire the next one fills.
A send completes when Redis replied to every ``XADD`` of its records; one that a pipeline
failed fails, and the rest of its records are not written. One pipeline is in flight at a
time, so the order of the calls is the order in Redis.

An entry's fields: ``payload`` (the value bytes), ``key`` (absent when there is none),
``headers`` (a JSON object of strings, absent when there are none).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from redis.exceptions import ResponseError

from binder.errors import BackendError, ClosedError
from binder.spi import OutboundRecord
from binders.redis.errors import CLIENT_ERRORS, backend_error

__all__ = ["PIPELINE_RECORDS", "RedisProducer", "SendQueue"]

PIPELINE_RECORDS = 2000
"""Most ``XADD`` commands in one pipeline; a larger burst goes in several, back to back."""

_INLINE = 16 * 1024
"""Values up to this size are copied into their command's chunk; larger ones are not."""

_HEADS = 1024
"""Most streams whose packed ``XADD`` head is kept."""

_Queued = tuple[Sequence[OutboundRecord], Callable[[int], bytes], "asyncio.Future[None]"]
_Part = tuple[Sequence[OutboundRecord], Callable[[int], bytes]]


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
        self._written = 0  # records of the first queued send already in a pipeline
        self._fields = 5 + len(self._trim)  # arguments of an XADD without key or headers
        self._heads: dict[bytes, bytes] = {}  # per stream: its XADD packed up to the value
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False

    async def add_one(self, stream: bytes, record: OutboundRecord) -> str:
        """``XADD`` one record now, outside the queue (a tool's send); its entry id."""
        fields: dict[str, Any] = {"payload": record.value or b""}
        if record.key is not None:
            fields["key"] = record.key
        if record.headers:
            fields["headers"] = orjson.dumps(record.headers)
        maxlen = int(self._trim[2]) if self._trim else None
        try:
            entry = await self._client.xadd(stream, fields, maxlen=maxlen, approximate=True)
        except CLIENT_ERRORS as exc:
            raise backend_error(self._server, "XADD", exc) from exc
        return entry.decode() if isinstance(entry, bytes) else str(entry)

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
                parts, dones, whole = self._take()
                error = await self._write(parts)
                if not whole and error is None:
                    dones.pop()  # the rest of that send goes in the next pipeline
                elif not whole:  # that send failed: the rest of it is not written
                    queue.popleft()
                    self._written = 0
                for done in dones:
                    if not done.done():
                        if error is None:
                            done.set_result(None)
                        else:
                            done.set_exception(error)
        finally:
            self._flusher = None

    def _take(self) -> tuple[list[_Part], list[asyncio.Future[None]], bool]:
        """The next pipeline's records, at most :data:`PIPELINE_RECORDS`, in queue order (a
        larger send goes in several pipelines, back to back); the sends it touches; and
        whether the last of those ends in it (else it stays first in the queue)."""
        queue, room = self._queue, PIPELINE_RECORDS
        parts: list[_Part] = []
        dones: list[asyncio.Future[None]] = []
        while queue and room:
            records, stream, done = queue[0]
            start = self._written
            end = min(len(records), start + room)
            parts.append((records[start:end] if start or end < len(records) else records, stream))
            dones.append(done)
            room -= end - start
            if end < len(records):
                self._written = end
                return parts, dones, False
            queue.popleft()
            self._written = 0
        return parts, dones, True

    async def _write(self, parts: list[_Part]) -> BaseException | None:
        """One pipeline of every record in ``parts``; the error, if it failed (some of its
        records may have been written: the caller resends them, at least once)."""
        try:
            if self._cluster:
                pipe = self._client.pipeline(transaction=False)
                for command in self._commands(parts):
                    pipe.execute_command(*command)
                await pipe.execute()
            else:
                await self._pipeline(self._pack(parts), sum(len(p[0]) for p in parts))
        except CLIENT_ERRORS as exc:
            return backend_error(self._server, "XADD", exc)
        except Exception as exc:  # an argument redis-py refused: the send fails, said so
            return BackendError(f"redis at {self._server}: XADD refused: {exc}")
        return None

    def _commands(self, parts: list[_Part]) -> list[tuple[Any, ...]]:
        """The ``XADD`` of each record, as arguments (a cluster pipeline routes each)."""
        trim, dumps = self._trim, orjson.dumps
        commands: list[tuple[Any, ...]] = []
        for records, stream in parts:
            for r in records:
                command: tuple[Any, ...] = ("XADD", stream(r.partition), *trim, "*")
                command += ("payload", r.value or b"")
                if r.key is not None:
                    command += ("key", r.key)
                if r.headers:
                    command += ("headers", dumps(r.headers))
                commands.append(command)
        return commands

    def _pack(self, parts: list[_Part]) -> list[bytes]:
        """The ``XADD`` of each record in the Redis protocol, as redis-py would pack it:
        written here, without an argument tuple per record, since packing is most of a
        send's cost. A large value is its own chunk (not copied)."""
        heads, head_of, wire, dumps = self._heads, self._head, self._wire, orjson.dumps
        base = self._fields
        out: list[bytes] = []
        add = out.append
        headers_of: dict[int, bytes] = {}  # one encoding per headers dict of the pipeline
        for records, stream in parts:
            for r in records:
                name = stream(r.partition)
                head = heads.get(name) or head_of(name)
                value = r.value
                if type(value) is not bytes:
                    value = wire(value)
                count, tail = base, b"\r\n"
                key, headers = r.key, r.headers
                if key is not None:
                    if type(key) is not bytes:
                        key = wire(key)
                    count, tail = count + 2, b"\r\n$3\r\nkey\r\n$%d\r\n%b\r\n" % (len(key), key)
                if headers:
                    raw = headers_of.get(id(headers))
                    if raw is None:
                        raw = headers_of[id(headers)] = dumps(headers)
                    count += 2
                    tail += b"$7\r\nheaders\r\n$%d\r\n%b\r\n" % (len(raw), raw)
                if len(value) <= _INLINE:
                    add(b"*%d\r\n%b$%d\r\n%b%b" % (count, head, len(value), value, tail))
                else:
                    add(b"*%d\r\n%b$%d\r\n" % (count, head, len(value)))
                    add(value)
                    add(tail)
        return out

    def _head(self, stream: bytes) -> bytes:
        """The packed arguments of an ``XADD`` to ``stream`` before its value."""
        args = [b"XADD", stream, *(t.encode() for t in self._trim), b"*", b"payload"]
        head = b"".join(b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args)
        if len(self._heads) >= _HEADS:
            self._heads.clear()
        self._heads[stream] = head
        return head

    def _wire(self, value: Any) -> bytes:
        """A value that is not ``bytes`` as redis-py would encode it (``None``: empty)."""
        return b"" if value is None else bytes(self._client.get_encoder().encode(value))

    async def _pipeline(self, packed: list[bytes], replies: int) -> None:
        """``packed`` written at once on one pooled connection, its ``replies`` read in
        one go under one timeout (redis-py's pipeline arms a timer per reply); the first
        error reply is raised once every reply was read, so the connection stays in step."""
        pool = self._client.connection_pool
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(packed)
            read = connection.read_response
            first: ResponseError | None = None
            async with asyncio.timeout(self._timeout):
                for _ in range(replies):
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

    def __init__(
        self,
        sends: SendQueue,
        destination: str,
        streams: Sequence[bytes],
        schedule: Callable[[Sequence[OutboundRecord], Sequence[bytes]], Awaitable[None]],
        on_close: Callable[[], Awaitable[None]],
    ) -> None:
        self._sends = sends
        self.destination = destination
        self._streams = tuple(streams)
        self._schedule = schedule
        self._on_close = on_close
        self._closed = False

    def _stream(self, partition: int) -> bytes:
        return self._streams[partition]

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        if self._closed:
            raise ClosedError(f"the redis producer of {self.destination!r} is closed")
        if records:
            await self._sends.send(records, self._stream)

    async def send_located(self, records: Sequence[OutboundRecord]) -> list[str]:
        """``XADD`` each record alone; the entry id each one got (for tools: ``binder send``)."""
        if self._closed:
            raise ClosedError(f"the redis producer of {self.destination!r} is closed")
        return [await self._sends.add_one(self._stream(r.partition), r) for r in records]

    async def schedule(self, records: Sequence[OutboundRecord]) -> None:
        """Hold delayed records in their partitions' sorted sets (see
        :mod:`binders.redis.scheduler`); returns once Redis has them."""
        if self._closed:
            raise ClosedError(f"the redis producer of {self.destination!r} is closed")
        if records:
            await self._schedule(records, self._streams)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._on_close()
