"""Reading one destination's streams as a member of a consumer group (or anonymously).

- Anonymous: ``XREAD`` from the last entry of each stream at the moment of subscribing;
  nothing is acknowledged.
- A group on an unpartitioned destination: every member reads the one stream with
  ``XREADGROUP`` (shared: no per-key order across members).
- A group on a partitioned destination: each partition stream is read by one member at a
  time, assigned statically (``instance-index``/``instance-count``) or through leases in
  Redis (:meth:`RedisConsumer._balance`), handed over revoke → commit → release.

``XACK`` follows processing (:meth:`RedisConsumer.commit`). Entries left pending are
*recovered* one at a time (``XCLAIM``, which counts the delivery; the record carries the
count as ``deliveries``), each acknowledged before the next is handed out, so an entry that
kills its consumer runs up only its own count: a member's own pending entries when it
opens, every pending entry of a partition it takes over, and (every ``claim-interval``)
other members' entries idle for ``min-idle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from binder.errors import BackendError
from binder.spi import ConsumerSpec, InboundRecord, RebalanceListener
from binders.redis.errors import CLIENT_ERRORS, backend_error, is_no_group

if TYPE_CHECKING:
    from binders.redis.binder import RedisBinder

__all__ = ["RedisConsumer", "entry_record"]

log = logging.getLogger("binder.redis.consumer")

_JSON = {"contentType": "application/json"}
_NO_HEADERS: dict[str, str] = {}
_HANDED_OVER_IDLE_MS = 86_400_000
"""The idle time a closing member gives the entries it leaves pending, so that the next
claim of any member takes them at once."""
_CLUSTER_WAIT_MS = 100
"""On a cluster, the longest a read of several partition streams waits on one of them."""
_SCAN = 1000
"""Pending entries listed per ``XPENDING`` call."""

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class RedisConsumer:
    """One consumer of one destination; see the module docstring."""

    def __init__(
        self,
        binder: RedisBinder,
        spec: ConsumerSpec,
        listener: RebalanceListener,
        name: str,
        partition_count: int,
    ) -> None:
        self.name = name
        self._binder = binder
        self._client = binder.client
        self._options = options = binder.options
        self._server = binder.server
        self._spec = spec
        self._destination = spec.destination
        self._group = spec.group
        self._listener = listener
        self._streams = binder.keys.streams(spec.destination, partition_count)
        self._partition_of = {stream: p for p, stream in enumerate(self._streams)}
        self._count = max(1, spec.max_records // len(self._streams))
        self._leased = spec.group is not None and partition_count > 1 and spec.instance_count == 1
        self._exclusive = spec.group is not None and (
            self._leased or spec.instance_count > 1 or spec.sole
        )
        self._owned: set[int] = set()
        self._revoking: set[int] = set()
        self._positions: dict[bytes, bytes] = {}  # anonymous: last id read per stream
        self._recovery: deque[tuple[int, bytes, bool]] = deque()  # partition, id, at once
        self._queued: set[tuple[int, bytes]] = set()  # partition streams share entry ids
        self._awaiting: tuple[int, bytes] | None = None  # a recovered entry handed out, not acked
        self._held: list[InboundRecord] = []  # read while paused or before a recovery
        self._paused = False
        self._closed = False
        self._wake = asyncio.Event()
        self._reading: set[int] | None = None  # the partitions of the read in progress
        self._read_done = asyncio.Event()
        self._failure: BackendError | None = None
        self._cluster = options.cluster
        self._turn = 0  # a cluster: which stream the next blocking read waits on
        self._acks: dict[int, list[bytes]] = {}  # noted by commit, not yet acknowledged
        self._acking: asyncio.Task[None] | None = None
        self._ack_error: BackendError | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._min_idle_ms = int(options.min_idle * 1000)
        self._lease_key = {
            p: binder.keys.lease(s, spec.group or "") for p, s in enumerate(self._streams)
        }
        self._members = binder.keys.members(spec.destination, spec.group or "")
        self._renew = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self.on_close: Callable[[], Awaitable[None]] | None = None
        """Called once when this consumer closes (the binder stops its mover with the last)."""

    @property
    def closed(self) -> bool:
        return self._closed

    def reads(self, spec: ConsumerSpec) -> bool:
        """Whether this consumer reads ``spec``'s destination in ``spec``'s group."""
        return spec.destination == self._destination and spec.group == self._group

    # -- opening ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Subscribe: once this returns, every entry added later reaches this consumer
        (anonymous) or its group."""
        from binders.redis.binder import create_groups

        client, spec = self._client, self._spec
        with self._errors("subscribe"):
            if self._group is None:  # from the end, or from the first entry kept
                if spec.start == "earliest":
                    self._positions = dict.fromkeys(self._streams, b"0-0")
                else:
                    pipe = client.pipeline(transaction=False)
                    for stream in self._streams:
                        pipe.xrevrange(stream, count=1)
                    for stream, last in zip(self._streams, await pipe.execute(), strict=True):
                        self._positions[stream] = last[0][0] if last else b"0-0"
                self._owned = set(range(len(self._streams)))
                return
            start = b"$" if spec.start == "latest" else b"0"
            await create_groups(client, self._streams, self._group, start)
            if self._leased:
                await self._balance()
            else:
                self._owned = {
                    p
                    for p in range(len(self._streams))
                    if p % spec.instance_count == spec.instance_index
                }
                for p in sorted(self._owned):  # first what this member, then others, left
                    await self._queue_pending(p, everyone=self._exclusive)
                    if not self._exclusive:
                        await self._queue_pending(p, everyone=True, idle_ms=self._min_idle_ms)
        self._maintenance = asyncio.create_task(
            self._maintain(), name=f"redis-consumer:{self._destination}:{self._group}"
        )

    # -- fetching ---------------------------------------------------------------------------

    async def fetch(self) -> list[InboundRecord]:
        task = asyncio.current_task()
        while not self._closed:
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # redis-py can return from a cancelled read
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._paused or self._awaiting is not None:
                await self._sleep(self._options.block_ms / 1000)
                continue
            if self._recovery and not self._held:
                record = await self._recover_next()
                if record is not None:
                    return [record]
                continue
            if self._held:
                held = [r for r in self._held if r.partition in self._owned]
                self._held = []
                if held:
                    return held
                continue
            readable = sorted(self._owned - self._revoking)
            if not readable:
                await self._sleep(self._options.block_ms / 1000)
                continue
            records = await self._read(readable)
            if task is not None and task.cancelling():
                raise asyncio.CancelledError  # what it read stays pending: recovered later
            if not records:
                continue
            if self._paused:
                self._held.extend(records)  # in this member's pending list: handed out later
                continue
            return records
        return []

    async def _sleep(self, timeout: float) -> None:
        """Wait until woken (resume, assignment, acknowledgement, close) or ``timeout``."""
        self._wake.clear()
        try:  # not wait_for: on 3.11 it can swallow a cancel that comes with the wake-up
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _read(self, partitions: list[int]) -> list[InboundRecord]:
        """One blocking read of ``partitions``' streams; the records of those still owned."""
        client, streams = self._client, self._streams
        block = self._options.block_ms
        self._reading = set(partitions)
        self._read_done.clear()
        try:
            if self._cluster and len(partitions) > 1:
                reply = await self._read_cluster(partitions, block)
            else:
                reply = await self._read_command(client, [streams[p] for p in partitions], block)
        except CLIENT_ERRORS as exc:
            if self._group is not None and is_no_group(exc):
                await self._group_deleted(partitions)
                return []
            raise backend_error(self._server, f"read {self._destination!r}", exc) from exc
        finally:
            self._reading = None
            self._read_done.set()
        if not reply:
            return []
        records: list[InboundRecord] = []
        decoded: dict[bytes, dict[str, str]] = {}
        make, destination = entry_record, self._destination
        items = reply.items() if isinstance(reply, dict) else reply
        for stream, entries in items:
            partition = self._partition_of[stream]
            if entries and self._group is None:
                self._positions[stream] = entries[-1][0]
            if partition not in self._owned or partition in self._revoking:
                continue  # left pending: the partition's next owner recovers it
            for entry in entries:
                records.append(make(destination, partition, entry[0], entry[1], 1, decoded))
        return records

    def _read_command(self, client: Any, streams: list[bytes], block: int | None) -> Any:
        """``XREAD`` (anonymous, from the last position) or ``XREADGROUP`` (``>``) of
        ``streams``, blocking up to ``block`` ms (``None``: not at all)."""
        if self._group is None:
            positions = self._positions
            return client.xread(
                {stream: positions[stream] for stream in streams}, count=self._count, block=block
            )
        wanted = dict.fromkeys(streams, b">")
        return client.xreadgroup(self._group, self.name, wanted, count=self._count, block=block)

    async def _read_cluster(self, partitions: list[int], block: int) -> list[Any]:
        """On a cluster one command cannot read streams of several slots: one read per
        stream, pipelined (to their nodes) without blocking; when all are empty, a blocking
        read of one of them in turn, for at most :data:`_CLUSTER_WAIT_MS` (what arrives on
        the others meanwhile waits that long)."""
        pipe = self._client.pipeline(transaction=False)
        for partition in partitions:
            self._read_command(pipe, [self._streams[partition]], None)
        merged: list[Any] = []
        for reply in await pipe.execute():
            if reply:
                merged.extend(reply.items() if isinstance(reply, dict) else reply)
        if merged:
            return merged
        self._turn = (self._turn + 1) % len(partitions)
        stream = self._streams[partitions[self._turn]]
        reply = await self._read_command(self._client, [stream], min(block, _CLUSTER_WAIT_MS))
        if not reply:
            return []
        return list(reply.items()) if isinstance(reply, dict) else reply

    async def _group_deleted(self, partitions: list[int]) -> None:
        """``NOGROUP``: the group was deleted under us. Create it again at ``0`` (what is
        retained is delivered again: at least once), after a pause, so this is no loop."""
        from binders.redis.binder import create_groups

        log.warning(
            "%s: the group is gone (NOGROUP); creating it again at 0 in %d ms: retained "
            "entries are delivered again",
            self._describe(),
            self._options.block_ms,
        )
        await self._sleep(self._options.block_ms / 1000)
        assert self._group is not None
        with self._errors("create the group again"):
            await create_groups(
                self._client, [self._streams[p] for p in partitions], self._group, b"0"
            )

    # -- recovery ---------------------------------------------------------------------------

    async def _queue_pending(self, partition: int, *, everyone: bool, idle_ms: int = 0) -> None:
        """Queue for recovery the entries pending on ``partition``'s stream: this member's
        (``everyone``: every member's), idle at least ``idle_ms``."""
        assert self._group is not None
        stream, start = self._streams[partition], b"-"
        mine = None if everyone else self.name
        while True:
            listed = await self._client.xpending_range(
                stream, self._group, start, b"+", _SCAN, consumername=mine, idle=idle_ms or None
            )
            for entry in listed:
                entry_id = entry["message_id"]
                consumer = _text(entry["consumer"])
                if (partition, entry_id) in self._queued or (idle_ms and consumer == self.name):
                    continue  # own entries idle that long may be in hand: not taken twice
                self._queued.add((partition, entry_id))
                self._recovery.append((partition, entry_id, everyone or consumer == self.name))
            if len(listed) < _SCAN:
                return
            start = b"(" + listed[-1]["message_id"]

    async def _recover_next(self) -> InboundRecord | None:
        """Claim the next queued entry (counting the delivery) and hand it out alone."""
        partition, entry_id, at_once = self._recovery.popleft()
        self._queued.discard((partition, entry_id))
        if partition not in self._owned or partition in self._revoking:
            return None
        assert self._group is not None
        stream = self._streams[partition]
        pipe = self._client.pipeline(transaction=False)
        pipe.xclaim(stream, self._group, self.name, 0 if at_once else self._min_idle_ms, [entry_id])
        pipe.xpending_range(stream, self._group, entry_id, entry_id, 1)
        try:
            claimed, pending = await pipe.execute()
        except CLIENT_ERRORS as exc:
            if is_no_group(exc):
                return None  # the group was deleted: the next read creates it again
            raise backend_error(self._server, f"claim on {self._destination!r}", exc) from exc
        if not claimed or claimed[0][1] is None:
            return None  # another member took it, or it was trimmed
        deliveries = pending[0]["times_delivered"] if pending else 2
        self._awaiting = (partition, entry_id)
        return entry_record(self._destination, partition, entry_id, claimed[0][1], deliveries, {})

    # -- acknowledging ----------------------------------------------------------------------

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Note the records' ids and ``XACK`` them in the background: one request in flight
        (a command per stream), what is noted meanwhile going in the next, so acknowledging
        never holds up the next read. Done before partitions are handed over and before
        :meth:`close` returns; a failure is raised by a later call, its ids kept."""
        if self._group is None or not records:
            return
        if self._ack_error is not None:
            error, self._ack_error = self._ack_error, None
            raise error
        acks, first = self._acks, records[0].partition
        if all(r.partition == first for r in records):
            acks.setdefault(first, []).extend([r.token for r in records])
        else:
            for r in records:
                acks.setdefault(r.partition, []).append(r.token)
        if self._acking is None:
            self._acking = asyncio.create_task(self._ack_noted())

    async def _ack_noted(self) -> None:
        group, streams = self._group, self._streams
        assert group is not None
        try:
            while self._acks:
                acks, self._acks = self._acks, {}
                try:
                    if len(acks) == 1:
                        ((partition, ids),) = acks.items()
                        await self._client.xack(streams[partition], group, *ids)
                    else:
                        pipe = self._client.pipeline(transaction=False)
                        for partition, ids in acks.items():
                            pipe.xack(streams[partition], group, *ids)
                        await pipe.execute()
                except CLIENT_ERRORS as exc:
                    if is_no_group(exc):
                        log.warning("%s: acknowledging: the group is gone", self._describe())
                        continue
                    for partition, ids in acks.items():  # kept for the next attempt
                        self._acks[partition] = ids + self._acks.get(partition, [])
                    self._ack_error = backend_error(
                        self._server, f"XACK on {self._destination!r}", exc
                    )
                    return
                awaiting = self._awaiting
                if awaiting is not None and awaiting[1] in acks.get(awaiting[0], ()):
                    self._awaiting = None  # acknowledged: the next recovered entry may go
                    self._wake.set()
        finally:
            self._acking = None

    async def _flush_acks(self) -> None:
        """Wait until every noted id is acknowledged (or failed: then it is raised)."""
        if self._acking is None and self._acks and self._ack_error is None:
            self._acking = asyncio.create_task(self._ack_noted())
        while self._acking is not None:
            await asyncio.shield(self._acking)
        if self._ack_error is not None:
            error, self._ack_error = self._ack_error, None
            raise error

    # -- pause, close -----------------------------------------------------------------------

    async def lag(self) -> dict[int, int]:
        """Partition → entries of the group not yet acknowledged: its pending entries plus
        those not yet read (``XINFO GROUPS``: ``pending`` + ``lag``), per partition read; an
        anonymous consumer has none."""
        if self._group is None:
            return {}
        lag = {}
        with self._errors("read the lag"):
            for partition in sorted(self._owned):
                for info in await self._client.xinfo_groups(self._streams[partition]):
                    name = info.get("name")
                    if (name.decode() if isinstance(name, bytes) else name) == self._group:
                        lag[partition] = int(info.get("pending") or 0) + int(info.get("lag") or 0)
        return lag

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    async def close(self) -> None:
        """Leave: hand the entries left pending to the group (they look idle, so the next
        claim takes them), remove this consumer's entry when nothing is pending, release
        the partitions. Idempotent."""
        if self._closed:
            return
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            await on_close()
        try:
            await self._flush_acks()
        except BackendError as exc:
            log.error(
                "%s: closing with finished entries not acknowledged (they will be delivered "
                "again): %s",
                self._describe(),
                exc,
            )
        self._closed = True
        self._wake.set()
        task, self._maintenance = self._maintenance, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._group is None:
            return
        try:
            for partition in sorted(self._owned):
                await self._leave_stream(partition)
            if self._leased:
                for partition in sorted(self._owned):
                    await self._release(keys=[self._lease_key[partition]], args=[self.name])
                await self._client.zrem(self._members, self.name)
        except CLIENT_ERRORS as exc:
            log.warning("%s: leaving cleanly failed (leases expire): %s", self._describe(), exc)
        self._owned.clear()

    async def _leave_stream(self, partition: int) -> None:
        assert self._group is not None
        stream, group, client = self._streams[partition], self._group, self._client
        left = await client.xpending_range(stream, group, b"-", b"+", _SCAN, consumername=self.name)
        if not left:
            await client.xgroup_delconsumer(stream, group, self.name)
            return
        while left:
            by_count: dict[int, list[bytes]] = {}
            for entry in left:
                by_count.setdefault(entry["times_delivered"], []).append(entry["message_id"])
            pipe = client.pipeline(transaction=False)
            for count, ids in by_count.items():  # a clean stop is no failed delivery
                pipe.xclaim(
                    stream,
                    group,
                    self.name,
                    0,
                    ids,
                    idle=_HANDED_OVER_IDLE_MS,
                    retrycount=max(count - 1, 0),
                    justid=True,
                )
            await pipe.execute()
            if len(left) < _SCAN:
                break
            ids = [left[-1]["message_id"]]
            left = await client.xpending_range(
                stream, group, b"(" + ids[-1], b"+", _SCAN, consumername=self.name
            )
        log.info("%s: left entries pending for the group to claim", self._describe())

    # -- maintenance: leases, claims, clean-up, trimming ------------------------------------

    async def _maintain(self) -> None:
        """Renew and balance leases, claim idle entries, remove idle consumers, trim; a
        failure is raised by the next :meth:`fetch` (the core then opens a new consumer)."""
        options = self._options
        period = options.lease_ms / 3000 if self._leased else options.claim_interval
        next_claim = time.monotonic() + options.claim_interval
        rounds = 0
        try:
            while not self._closed:
                await asyncio.sleep(min(period, options.claim_interval))
                if self._leased:
                    await self._balance()
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + options.claim_interval
                    await self._claim_idle(cleanup=rounds % 10 == 0)
                    rounds += 1
        except asyncio.CancelledError:
            raise
        except BackendError as exc:
            self._fail(exc)
        except CLIENT_ERRORS as exc:
            self._fail(backend_error(self._server, f"maintain {self._destination!r}", exc))
        except Exception as exc:  # a bug: the binding shows it, never a task that just ends
            self._fail(BackendError(f"redis consumer of {self._destination!r} failed: {exc!r}"))

    def _fail(self, error: BackendError) -> None:
        log.error("%s: %s", self._describe(), error)
        self._failure = error
        self._wake.set()

    async def _claim_idle(self, *, cleanup: bool) -> None:
        """Queue other members' entries idle for ``min-idle``; now and then remove consumers
        idle with nothing pending; with ``trim: safe``, trim what every group is done with."""
        for partition in sorted(self._owned - self._revoking):
            try:
                await self._queue_pending(partition, everyone=True, idle_ms=self._min_idle_ms)
                if cleanup:
                    await self._remove_idle_consumers(self._streams[partition])
            except CLIENT_ERRORS as exc:
                if not is_no_group(exc):
                    raise
                log.debug("%s: the group is gone; the next read creates it", self._describe())
                continue
            if self._recovery:
                self._wake.set()
            if self._options.trim == "safe":
                await trim_safely(self._client, self._streams[partition])

    async def _remove_idle_consumers(self, stream: bytes) -> None:
        assert self._group is not None
        options = self._options
        idle_limit = max(self._min_idle_ms, options.lease_ms, 10 * options.block_ms)
        for consumer in await self._client.xinfo_consumers(stream, self._group):
            name = _text(consumer["name"])
            if name != self.name and consumer["pending"] == 0 and consumer["idle"] > idle_limit:
                await self._client.xgroup_delconsumer(stream, self._group, name)

    async def _balance(self) -> None:
        """Leases: renew this member's, keep its fair share of the partitions (members in
        name order: the first ``N % members`` take one more), giving extras back after
        they were committed and taking free ones."""
        client, lease_ms = self._client, self._options.lease_ms
        now = int(time.time() * 1000)
        pipe = client.pipeline(transaction=False)
        pipe.zadd(self._members, {self.name: now + lease_ms})
        pipe.zremrangebyscore(self._members, "-inf", now)
        pipe.zrange(self._members, 0, -1)
        with self._errors("register as a member"):
            *_, listed = await pipe.execute()
            members = sorted(_text(m) for m in listed)
            lost = set()
            for partition in sorted(self._owned):
                if not await self._renew(
                    keys=[self._lease_key[partition]], args=[self.name, lease_ms]
                ):
                    lost.add(partition)
        if lost:
            log.warning("%s: lost the lease of partitions %s", self._describe(), sorted(lost))
            await self._revoke(lost, release=False)
        total, count = len(self._streams), max(len(members), 1)
        rank = members.index(self.name) if self.name in members else count - 1
        target = total // count + (1 if rank < total % count else 0)
        if len(self._owned) > target:
            await self._revoke(set(sorted(self._owned)[target:]), release=True)
            return
        if len(self._owned) == target:
            return
        first = rank * total // count
        for step in range(total):
            partition = (first + step) % total
            if partition in self._owned:
                continue
            with self._errors("take a partition lease"):
                taken = await client.set(
                    self._lease_key[partition], self.name, nx=True, px=lease_ms
                )
                if taken:
                    await self._queue_pending(partition, everyone=True)
            if taken:
                self._owned.add(partition)
                log.info("%s: took partition %d", self._describe(), partition)
                await self._listener.on_assigned({partition})
                self._wake.set()
                if len(self._owned) >= target:
                    return

    async def _revoke(self, partitions: set[int], *, release: bool) -> None:
        """Stop reading ``partitions``, let the core finish and commit what it has of them,
        then (``release``) give their leases back."""
        self._revoking |= partitions
        while self._reading is not None and self._reading & partitions:
            await self._read_done.wait()
        try:
            await self._listener.on_revoked(partitions)
            await self._flush_acks()
        finally:
            self._owned -= partitions
            self._revoking -= partitions
            self._held = [r for r in self._held if r.partition not in partitions]
            kept = [item for item in self._recovery if item[0] not in partitions]
            self._recovery = deque(kept)
            self._queued = {(partition, entry_id) for partition, entry_id, _ in kept}
        if release:
            with self._errors("release a partition lease"):
                for partition in sorted(partitions):
                    await self._release(keys=[self._lease_key[partition]], args=[self.name])
            log.info("%s: handed over partitions %s", self._describe(), sorted(partitions))

    # -- helpers ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except CLIENT_ERRORS as exc:
            raise backend_error(self._server, f"{action} ({self._destination!r})", exc) from exc

    def _describe(self) -> str:
        return (
            f"redis consumer {self.name!r} of {self._destination!r} "
            f"(group {self._group or 'anonymous'})"
        )


async def trim_safely(client: Any, stream: bytes) -> None:
    """``XTRIM MINID ~`` below the oldest entry of ``stream`` that one of its groups has not
    read or not acknowledged; nothing when it has no group."""
    from redis.exceptions import ResponseError

    try:
        groups = await client.xinfo_groups(stream)
    except ResponseError:
        return
    if not groups:
        return
    needed: list[tuple[int, int]] = []
    for group in groups:
        if group["pending"]:
            summary = await client.xpending(stream, group["name"])
            needed.append(_id_tuple(summary["min"]))
        else:
            ms, seq = _id_tuple(group["last-delivered-id"])
            needed.append((ms, seq + 1))
    ms, seq = min(needed)
    await client.xtrim(stream, minid=f"{ms}-{seq}", approximate=True)


def _id_tuple(entry_id: Any) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


def _headers(raw: bytes) -> dict[str, str]:
    """The ``headers`` field: a JSON object of strings. Accepted liberally from other
    writers: other JSON values become their JSON text; what is not an object, nothing."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {
        name: value if isinstance(value, str) else orjson.dumps(value).decode()
        for name, value in parsed.items()
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entry_record(
    destination: str,
    partition: int,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    deliveries: int,
    decoded: dict[bytes, dict[str, str]],
) -> InboundRecord:
    """The record of one stream entry: ``payload``, ``key`` and ``headers`` fields as this
    binder writes them, or an entry another program wrote (no ``payload``) as a JSON object of
    its fields. ``decoded`` caches the header sets seen in one read."""
    payload = fields.get(b"payload")
    if payload is None:  # written by another program: its fields, as a JSON object
        value = orjson.dumps(
            {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()}
        )
        key, headers = None, _JSON
    else:
        value, key = payload, fields.get(b"key")
        raw = fields.get(b"headers")
        headers = _NO_HEADERS
        if raw is not None:
            headers = decoded.get(raw) or decoded.setdefault(raw, _headers(raw))
    millis = int(entry_id[: entry_id.find(b"-")] or b"0")
    return InboundRecord(
        destination,
        partition,
        None,
        value,
        key,
        headers,
        millis / 1000,
        entry_id,
        None,
        deliveries,
        entry_id.decode(),
    )
