"""Input and supplier bindings: their lifecycle and the processing loop.

An :class:`InputBinding` owns one consumer and the tasks that read from it.
For each fetched chunk it decodes, calls the pipeline, encodes and sends the
outputs, and only then acknowledges (at-least-once). A synchronous pipeline
runs in a worker thread one chunk at a time, so the event loop (and the
heartbeats of real backends) never stalls and the thread hop is paid once per
chunk rather than once per message. A failure retries in place (keeping key
order), then dead-letters. Every binding can be stopped, started, paused and
resumed at run time; :attr:`state` tells where it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from binder.errors import BinderError, ConversionError
from binder.invoke import Invoker
from binder.ordering import AckTracker, lane_of
from binder.outputs import OutputBinding
from binder.retry import RetryPolicy, dead_letter_record
from binder.spi import Binder, Consumer, ConsumerSpec, InboundRecord, OutboundRecord

__all__ = ["BindingState", "InputBinding", "SupplierBinding"]

log = logging.getLogger("binder.bindings")


def _never() -> bool:
    return False


class _Abandon(Exception):
    """Stopping mid-retry: leave the message uncommitted, to be redelivered."""


class BindingState(enum.StrEnum):
    """Where a binding is in its lifecycle."""

    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPING = "stopping"
    FAILED = "failed"


class _Lifecycle:
    """State shared by every binding kind: a name, a state and a stop signal."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = BindingState.STOPPED
        self.error: BaseException | None = None
        self._stop = asyncio.Event()

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stop; True when it was stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    def _failed(self, exc: BaseException) -> None:
        log.error("binding %s failed: %s", self.name, exc, exc_info=exc)
        self.state, self.error = BindingState.FAILED, exc


class InputBinding(_Lifecycle):
    """Consumes one destination (for a group, or anonymously) through a pipeline."""

    def __init__(
        self,
        name: str,
        spec: ConsumerSpec,
        binder: Binder,
        invoker: Invoker,
        *,
        output: OutputBinding | None,
        dead_letters: OutputBinding | None,
        policy: RetryPolicy,
        concurrency: int = 1,
        batch_size: int = 100,
    ) -> None:
        super().__init__(name)
        self.spec = spec
        self.binder = binder
        self.invoker = invoker
        self.output = output
        self.dead_letters = dead_letters
        self.policy = policy
        self.concurrency = concurrency
        self.batch_size = batch_size
        self._consumer: Consumer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._lanes: list[asyncio.Queue[InboundRecord]] = []
        self._tracker = AckTracker()
        self._fetching = False
        self._chunk_done = asyncio.Event()  # one lane: no fetched chunk is being processed
        self._chunk_done.set()

    @property
    def destination(self) -> str:
        return self.spec.destination

    @property
    def group(self) -> str | None:
        return self.spec.group

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and start processing. Idempotent while running."""
        if self.state in (BindingState.RUNNING, BindingState.PAUSED, BindingState.STARTING):
            return
        self.state, self.error = BindingState.STARTING, None
        self._stop = asyncio.Event()
        self._tracker = AckTracker()
        self._consumer = await self.binder.consumer(self.spec, self)
        if self.concurrency > 1:
            self._lanes = [asyncio.Queue(self.spec.max_records) for _ in range(self.concurrency)]
            self._tasks = [asyncio.create_task(self._lane(q)) for q in self._lanes]
        self._tasks.append(asyncio.create_task(self._fetch_loop(), name=f"binding:{self.name}"))
        self.state = BindingState.RUNNING

    async def stop(self) -> None:
        """Finish the messages in hand, commit, and leave. Idempotent, also mid-handler.

        With one lane, fetched messages not yet started are left uncommitted: the group
        gets them again (an anonymous consumer, with no position to come back to, does
        not). With several lanes, what was fetched is finished first, so that no finished
        message sits behind an unfinished one and gets redelivered.
        """
        if self.state in (BindingState.STOPPED, BindingState.STOPPING):
            return
        self.state = BindingState.STOPPING
        self._stop.set()
        fetch_task = self._tasks[-1] if self._tasks else None
        if fetch_task is not None and self._fetching:
            fetch_task.cancel()
        if fetch_task is not None:
            await asyncio.gather(fetch_task, return_exceptions=True)
        for queue in self._lanes:
            await queue.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks, self._lanes = [], []
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.close()
        if self.state is BindingState.STOPPING:
            self.state = BindingState.STOPPED

    def pause(self) -> None:
        """Stop taking new messages; group membership is kept."""
        if self._consumer is not None and self.state is BindingState.RUNNING:
            self._consumer.pause()
            self.state = BindingState.PAUSED

    def resume(self) -> None:
        """Take messages again after :meth:`pause`."""
        if self._consumer is not None and self.state is BindingState.PAUSED:
            self._consumer.resume()
            self.state = BindingState.RUNNING

    # -- RebalanceListener ------------------------------------------------------------------

    async def on_revoked(self, partitions: set[int]) -> None:
        """Wait for in-flight records to finish and be committed before giving partitions up.

        A backend may rebalance while a chunk is being processed (Kafka does, from its
        client's own task), so with one lane this waits for the chunk in hand too.
        """
        await self._tracker.wait_idle()
        await self._chunk_done.wait()

    async def on_assigned(self, partitions: set[int]) -> None:
        log.debug("binding %s assigned partitions %s", self.name, sorted(partitions))

    # -- reading ----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            while not self._stop.is_set():
                self._fetching = True
                try:
                    records = await consumer.fetch()
                finally:
                    self._fetching = False
                if not records:
                    return
                if self._lanes:
                    self._tracker.track(records)
                    await self._dispatch(records)
                else:
                    self._chunk_done.clear()
                    try:
                        await self._process(records)
                    finally:
                        self._chunk_done.set()
        except asyncio.CancelledError:
            if not self._stop.is_set():
                raise
        except _Abandon:
            return
        except Exception as exc:
            self._failed(exc)

    async def _dispatch(self, records: Sequence[InboundRecord]) -> None:
        lanes = self._lanes
        for record in records:
            await lanes[lane_of(record, len(lanes))].put(record)

    async def _lane(self, queue: asyncio.Queue[InboundRecord]) -> None:
        while True:
            chunk = [await queue.get()]
            while not queue.empty() and len(chunk) < self.spec.max_records:
                chunk.append(queue.get_nowait())
            try:
                await self._process(chunk)
            except _Abandon:
                while not queue.empty():
                    queue.get_nowait()
                    queue.task_done()
            except Exception as exc:
                self._failed(exc)
            finally:
                for _ in chunk:
                    queue.task_done()

    async def _complete(self, records: Sequence[InboundRecord]) -> None:
        if not self._lanes:  # one lane: records finish in fetch order
            if records and self._consumer is not None:
                await self._consumer.commit(records)
            return
        released = self._tracker.complete(records)
        if released and self._consumer is not None:
            await self._consumer.commit(released)

    # -- processing -------------------------------------------------------------------------

    async def _process(self, records: Sequence[InboundRecord]) -> None:
        """Run a chunk through the pipeline; failures retry in place, then dead-letter."""
        if self.invoker.batch:
            for start in range(0, len(records), self.batch_size):
                if self._stop.is_set():
                    return
                await self._process_batch(records[start : start + self.batch_size])
            return
        position = 0
        while position < len(records):
            done, outgoing, failure = await self._attempt(records[position:])
            await self._send(outgoing)
            await self._complete(records[position : position + done])
            position += done
            if failure is None:
                return  # all done, or stopping: the rest stays uncommitted for redelivery
            await self._recover([records[position]], failure)
            position += 1

    async def _attempt(
        self, records: Sequence[InboundRecord]
    ) -> tuple[int, list[OutboundRecord], BaseException | None]:
        """Process records in order until one fails: (how many succeeded, their outputs, error)."""
        if self.invoker.pipeline.is_async:
            return await self._attempt_async(records)
        return await asyncio.to_thread(self._attempt_sync, records)

    def _attempt_sync(
        self, records: Sequence[InboundRecord]
    ) -> tuple[int, list, BaseException | None]:
        run, stopping = self.invoker.run, self._stopping_check()
        outgoing: list[OutboundRecord] = []
        make = self.output.record if self.output is not None else None
        for done, record in enumerate(records):
            if stopping():  # finish the message in hand, start no new one
                return done, outgoing, None
            try:
                outputs = run(record, 1)
                if outputs and make is not None:
                    outgoing.extend([make(*output) for output in outputs])
            except Exception as exc:
                return done, outgoing, exc
        return len(records), outgoing, None

    async def _attempt_async(
        self, records: Sequence[InboundRecord]
    ) -> tuple[int, list, BaseException | None]:
        if self.invoker.direct is not None:
            return await self._attempt_direct(records)
        run, encode = self.invoker.run_async, self._encode
        outgoing: list[OutboundRecord] = []
        stopping = self._stopping_check()
        for done, record in enumerate(records):
            if stopping():
                return done, outgoing, None
            try:
                outgoing.extend(encode(await run(record, 1)))
            except Exception as exc:
                return done, outgoing, exc
        return len(records), outgoing, None

    async def _attempt_direct(
        self, records: Sequence[InboundRecord]
    ) -> tuple[int, list, BaseException | None]:
        """The hot path of :meth:`_attempt_async`: one async function taking the payload,
        awaited here directly (no wrapper coroutine per message)."""
        invoker, encode = self.invoker, self._encode
        fn, payload = invoker.direct, invoker.payload
        assert fn is not None
        plain = invoker.decoder(None)
        stopping = self._stopping_check()
        outgoing: list[OutboundRecord] = []
        for done, record in enumerate(records):
            if stopping():
                return done, outgoing, None
            try:
                value = payload(record) if record.headers else plain(record.value)
                result = await fn(value)
            except Exception as exc:
                return done, outgoing, invoker.failure(exc)
            if result is not None:
                outgoing.extend(encode(invoker.outputs(result, record.key, record.headers)))
        return len(records), outgoing, None

    def _stopping_check(self) -> Callable[[], bool]:
        """When to stop starting messages: at stop with one lane; with several lanes the
        fetched messages are drained instead, since leaving a gap in a partition would have
        its later, finished messages redelivered as duplicates."""
        return _never if self._lanes else self._stop.is_set

    def _encode(self, outputs: list[Any]) -> list[OutboundRecord]:
        if not outputs or self.output is None:
            return []
        return self.output.records(outputs)

    async def _send(self, outgoing: list[OutboundRecord]) -> None:
        if outgoing and self.output is not None:
            await self.output.send_records(outgoing)

    async def _process_batch(self, records: Sequence[InboundRecord]) -> None:
        try:
            outgoing = await self._run_batch(records, 1)
        except Exception as exc:
            await self._recover(records, exc)
            return
        await self._send(outgoing)
        await self._complete(records)

    async def _run_batch(
        self, records: Sequence[InboundRecord], attempt: int
    ) -> list[OutboundRecord]:
        if self.invoker.pipeline.is_async:
            return self._encode(await self.invoker.run_batch_async(records, attempt))
        return await asyncio.to_thread(
            lambda: self._encode(self.invoker.run_batch(records, attempt))
        )

    async def _run_one(
        self, records: Sequence[InboundRecord], attempt: int
    ) -> list[OutboundRecord]:
        if self.invoker.batch:
            return await self._run_batch(records, attempt)
        if self.invoker.pipeline.is_async:
            return self._encode(await self.invoker.run_async(records[0], attempt))
        return await asyncio.to_thread(lambda: self._encode(self.invoker.run(records[0], attempt)))

    # -- failures ---------------------------------------------------------------------------

    async def _recover(self, records: Sequence[InboundRecord], exc: BaseException) -> None:
        """Retry with backoff; then dead-letter (or drop, logged). Stop leaves it uncommitted."""
        attempt = 1
        while self.policy.should_retry(exc, attempt):
            if await self._sleep(self.policy.delay(attempt)):
                raise _Abandon
            attempt += 1
            try:
                outgoing = await self._run_one(records, attempt)
            except Exception as again:
                exc = again
                continue
            await self._send(outgoing)
            await self._complete(records)
            return
        await self._give_up(records, exc, attempt)
        await self._complete(records)

    async def _give_up(
        self, records: Sequence[InboundRecord], exc: BaseException, attempts: int
    ) -> None:
        kind = "undecodable" if isinstance(exc, ConversionError) else "failed"
        if self.dead_letters is None:
            log.error(
                "%s: dropping %d %s message(s) after %d attempt(s): %s",
                self.name,
                len(records),
                kind,
                attempts,
                exc,
            )
            return
        letters = [dead_letter_record(r, exc, self.group, attempts) for r in records]
        log.warning(
            "%s: dead-lettering %d %s message(s) to %s after %d attempt(s): %s",
            self.name,
            len(records),
            kind,
            self.dead_letters.destination,
            attempts,
            exc,
        )
        while True:
            try:
                await self.dead_letters.send_records(letters)
                return
            except BinderError as send_error:
                log.error("%s: dead-letter send failed, retrying: %s", self.name, send_error)
                if await self._sleep(self.policy.max_interval):
                    raise _Abandon from send_error


class SupplierBinding(_Lifecycle):
    """Polls a supplier pipeline every ``interval`` seconds and sends what it returns."""

    def __init__(
        self,
        name: str,
        call: Callable[[], Awaitable[list[Any]]],
        output: OutputBinding,
        interval: float,
    ) -> None:
        super().__init__(name)
        self.output = output
        self.interval = interval
        self._call = call
        self._task: asyncio.Task[None] | None = None
        self._paused = asyncio.Event()

    @property
    def destination(self) -> str:
        return self.output.destination

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stop = asyncio.Event()
        self._paused.set()
        self._task = asyncio.create_task(self._loop(), name=f"supplier:{self.name}")
        self.state = BindingState.RUNNING

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self.state = BindingState.STOPPING
        self._stop.set()
        self._paused.set()
        await asyncio.gather(task, return_exceptions=True)
        if self.state is BindingState.STOPPING:
            self.state = BindingState.STOPPED

    def pause(self) -> None:
        if self.state is BindingState.RUNNING:
            self._paused.clear()
            self.state = BindingState.PAUSED

    def resume(self) -> None:
        if self.state is BindingState.PAUSED:
            self._paused.set()
            self.state = BindingState.RUNNING

    async def _loop(self) -> None:
        while not self._stop.is_set():
            await self._paused.wait()
            if self._stop.is_set():
                return
            try:
                for payload, key, headers in await self._call():
                    await self.output.send(payload, key, headers)
            except Exception as exc:
                log.error("supplier %s failed, trying again next interval: %s", self.name, exc)
            if await self._sleep(self.interval):
                return
