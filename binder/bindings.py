"""Input and supplier bindings: their lifecycle and the processing loop.

An :class:`InputBinding` owns one consumer and the tasks that read from it.
For each fetched chunk it decodes, calls the pipeline, encodes and sends the
outputs, and only then acknowledges (at-least-once). A synchronous pipeline
runs in a worker thread one chunk at a time, so the event loop (and the
heartbeats of real backends) never stalls and the thread hop is paid once per
chunk rather than once per message. A failure of the function or of the send
of its outputs retries in place (keeping key order), then dead-letters; a refused
commit is retried. Each failure is logged with its traceback by the ``binder.bindings``
logger: at WARNING for an attempt that will be retried, at ERROR for the message then
dead-lettered or dropped (``binding``, ``destination``, ``group``, ``partition`` and
``offset`` in the record's ``extra``). What cannot go on (the consumer failed or
closed) fails the binding, whose supervisor replaces the consumer after a back-off,
or stops the app (``binder.on-binding-failure: exit``). Every binding can be stopped, started,
paused and resumed at run time; :attr:`state` tells where it is, :attr:`error` why
it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from binder.clock import SYSTEM, Clock
from binder.errors import BackendError, ConversionError, DeliveryLimitExceeded, MessageExpired
from binder.invoke import Invoker
from binder.message import DELAY, DELIVERY_ATTEMPT, EXPIRES_AT
from binder.metrics import InputStats, UntimedStats
from binder.ordering import AckTracker, lane_of
from binder.outputs import OutputBinding
from binder.retry import RetryPolicy, dead_letter_record
from binder.spi import Binder, Consumer, ConsumerSpec, InboundRecord, OutboundRecord
from binder.tracing import Scope, Tracing

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
        log.error("binding %s failed: %s: %s", self.name, type(exc).__name__, exc, exc_info=exc)
        self.state, self.error = BindingState.FAILED, exc


class InputBinding(_Lifecycle):
    """Consumes one destination (for a group, or anonymously) through a pipeline.

    Supervised: the fetch loop and the lanes run in one task group, so a failure in one
    cancels the others and reaches the binding's supervisor, which closes the consumer
    (its partitions go to the other members at once), shows ``failed`` with the cause in
    :attr:`error`, logs it, and opens a new consumer after a back-off (1 s doubling to
    30 s), or, when ``on_fatal`` is given, hands the failure to it and stays down.
    """

    RESTART_INITIAL = 1.0
    RESTART_MAX = 30.0

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
        on_fatal: Callable[[InputBinding, BaseException], None] | None = None,
        tracing: Tracing | None = None,
        timed: bool = True,
        clock: Clock = SYSTEM,
        drop_expired: bool = False,
        retry_output: OutputBinding | None = None,
        retries_of: str | None = None,
    ) -> None:
        super().__init__(name)
        self.spec = spec
        self.stats = InputStats() if timed else UntimedStats()
        """Messages received and finished by outcome (``streambinder_messages_*_total``)."""
        self.binder = binder
        self.invoker = invoker
        self.output = output
        self.dead_letters = dead_letters
        self.policy = policy
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.restarts = 0
        """How many times the supervisor opened a new consumer after a failure."""
        self._on_fatal = on_fatal
        self._consumer: Consumer | None = None
        self._task: asyncio.Task[None] | None = None  # the supervisor
        self._fetch_task: asyncio.Task[None] | None = None
        self._lanes: list[asyncio.Queue[InboundRecord]] = []
        self._tracker = AckTracker()
        self._fetching = False
        self._paused = False
        self._restart_delay = self.RESTART_INITIAL
        self._chunk_done = asyncio.Event()  # one lane: no fetched chunk is being processed
        self._chunk_done.set()
        self._tracing = tracing
        self._system = getattr(binder, "messaging_system", None) or binder.name
        self._clock = clock
        self._drop_expired = drop_expired
        self.retry_output = retry_output
        """Where a failed attempt is scheduled again (``retry-mode: delayed``), else ``None``."""
        self.retries_of = retries_of
        """The destination whose retries this binding reads (its attempts are numbered by
        ``x-delivery-attempt``; its letters name that destination as the original)."""

    @property
    def destination(self) -> str:
        return self.spec.destination

    @property
    def group(self) -> str | None:
        return self.spec.group

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe and start processing. Idempotent while running.

        A consumer that cannot be opened here raises (the app fails to start); once
        running, failures are the supervisor's (see the class docstring)."""
        running = self._task is not None and not self._task.done()
        if running or self.state is BindingState.STARTING:
            return
        self.state, self.error = BindingState.STARTING, None
        self._stop = asyncio.Event()
        self._paused = False
        try:
            await self._open()
        except BaseException:
            self.state = BindingState.STOPPED
            raise
        self._task = asyncio.create_task(self._supervise(), name=f"binding:{self.name}")

    async def stop(self) -> None:
        """Finish the messages in hand, commit, and leave. Idempotent, also mid-handler.

        With one lane, fetched messages not yet started are left uncommitted: the group
        gets them again (an anonymous consumer, with no position to come back to, does
        not). With several lanes, what was fetched is finished first, so that no finished
        message sits behind an unfinished one and gets redelivered.
        """
        task, self._task = self._task, None
        if task is None and self._consumer is None:
            return
        self.state = BindingState.STOPPING
        self._stop.set()
        fetch = self._fetch_task
        if fetch is not None and self._fetching:
            fetch.cancel()  # a fetch is safe to cancel: nothing taken is lost
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        await self._drop_consumer()
        self.state = BindingState.STOPPED

    async def backlog(self) -> int | None:
        """Records of the destination this binding has still to finish: not yet committed
        by its group on the partitions it holds (``Consumer.lag``), or ``None`` when its
        binder cannot tell or it has no consumer."""
        read = getattr(self._consumer, "lag", None)
        if read is None:
            return None
        return sum((await read()).values())

    def pause(self) -> None:
        """Stop taking new messages; group membership is kept."""
        if self._consumer is not None and self.state is BindingState.RUNNING:
            self._consumer.pause()
            self._paused = True
            self.state = BindingState.PAUSED

    def resume(self) -> None:
        """Take messages again after :meth:`pause`."""
        if self._consumer is not None and self.state is BindingState.PAUSED:
            self._consumer.resume()
            self._paused = False
            self.state = BindingState.RUNNING

    # -- supervision ------------------------------------------------------------------------

    async def _open(self) -> None:
        """A new consumer, tracker and lanes; the state it leaves is running (or paused)."""
        self._tracker = AckTracker()
        self._chunk_done.set()
        self._consumer = await self.binder.consumer(self.spec, self)
        self.error = None
        if self._paused:
            self._consumer.pause()
        if self.concurrency > 1:
            self._lanes = [asyncio.Queue(self.spec.max_records) for _ in range(self.concurrency)]
        self.state = BindingState.PAUSED if self._paused else BindingState.RUNNING

    async def _supervise(self) -> None:
        """Serve until stopped; after a failure close the consumer, wait, open a new one."""
        while not self._stop.is_set():
            try:
                if self._consumer is None:
                    await self._open()
                    self.restarts += 1
                    log.warning("binding %s: restarted (consumer open again)", self.name)
                await self._serve(self._consumer)
                if self._stop.is_set():
                    return
                raise BackendError(f"{self.name}: the consumer closed while the binding ran")
            except Exception as exc:  # a task group's ExceptionGroup included
                cause = _first_cause(exc)
            await self._drop_consumer()
            self._failed(cause)
            if self._on_fatal is not None:
                self._on_fatal(self, cause)
                return
            delay = self._restart_delay
            self._restart_delay = min(delay * 2, self.RESTART_MAX)
            log.warning("binding %s: restarting in %.0f s", self.name, delay)
            if await self._sleep(delay):
                return

    async def _serve(self, consumer: Consumer | None) -> None:
        """The fetch loop and the lanes in one task group; returns once stopped and drained."""
        assert consumer is not None
        watch = asyncio.create_task(self._watch_lag(consumer), name=f"{self.name}-lag")
        try:
            async with asyncio.TaskGroup() as group:
                lanes = [group.create_task(self._lane(queue)) for queue in self._lanes]
                self._fetch_task = group.create_task(self._fetch_loop(consumer))
                await asyncio.wait([self._fetch_task])  # its failure is the group's to raise
                if self._fetch_task.cancelled() or self._fetch_task.exception() is not None:
                    return
                for queue in self._lanes:  # several lanes: finish what was fetched
                    await queue.join()
                for lane in lanes:
                    lane.cancel()
        finally:
            watch.cancel()
            self.stats.lag = {}

    async def _watch_lag(self, consumer: Consumer) -> None:
        """Read the consumer's lag (``Consumer.lag``, where its binder has it) every
        :data:`LAG_INTERVAL` seconds into :attr:`stats` while it serves; a failed read is
        logged once per streak and tried again (the lag is for metrics only)."""
        read = getattr(consumer, "lag", None)
        if read is None:
            return
        failing = False
        while True:
            try:
                self.stats.lag = await read()
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("binding %s: reading its lag failed: %s", self.name, exc)
                failing = True
            await asyncio.sleep(LAG_INTERVAL)

    async def _drop_consumer(self) -> None:
        """Close the consumer (its partitions go to other members), releasing anyone
        waiting for in-flight records that will now be redelivered instead."""
        self._tracker.abandon()
        self._chunk_done.set()
        self._lanes, self._fetch_task = [], None
        consumer, self._consumer = self._consumer, None
        self.stats.assigned.clear()  # its partitions go with it
        if consumer is None:
            return
        try:
            await consumer.close()
        except Exception as exc:
            log.warning("binding %s: closing its consumer failed: %s", self.name, exc)

    # -- RebalanceListener ------------------------------------------------------------------

    async def on_revoked(self, partitions: set[int]) -> None:
        """Wait for in-flight records to finish and be committed before giving partitions up.

        A backend may rebalance while a chunk is being processed (Kafka does, from its
        client's own task), so with one lane this waits for the chunk in hand too.
        """
        started = time.perf_counter()
        await self._tracker.wait_idle()
        await self._chunk_done.wait()
        stats = self.stats
        stats.assigned.difference_update(partitions)
        stats.rebalances += 1
        log.info(
            "binding %s: partitions %s revoked, handed over after %.0f ms (still assigned: %s)",
            self.name,
            sorted(partitions),
            (time.perf_counter() - started) * 1000,
            sorted(stats.assigned),
            extra=self._extra(()),
        )

    async def on_assigned(self, partitions: set[int]) -> None:
        stats = self.stats
        fresh = set(partitions) - stats.assigned
        if not fresh:
            return
        stats.assigned |= fresh
        stats.rebalances += 1
        log.info(
            "binding %s: partitions %s assigned (now: %s)",
            self.name,
            sorted(fresh),
            sorted(stats.assigned),
            extra=self._extra(()),
        )

    # -- reading ----------------------------------------------------------------------------

    async def _fetch_loop(self, consumer: Consumer) -> None:
        """Fetch and process (one lane) or dispatch (several) until stopped. Returns when
        stopped or when the consumer returned nothing (closed); raises what cannot go on."""
        try:
            while not self._stop.is_set():
                self._fetching = True
                try:
                    records = await consumer.fetch()
                finally:
                    self._fetching = False
                if not records:
                    return
                if self.retries_of is not None:
                    _number_retries(records)
                self.stats.received += len(records)
                self._restart_delay = self.RESTART_INITIAL  # working again
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
            finally:
                for _ in chunk:
                    queue.task_done()

    async def _complete(self, records: Sequence[InboundRecord]) -> None:
        if not self._lanes:  # one lane: records finish in fetch order
            if records:
                await self._commit(records)
            return
        released = self._tracker.complete(records)
        if released:
            await self._commit(released)

    async def _commit(self, records: Sequence[InboundRecord]) -> None:
        """Commit, retrying a refused commit with back-off (1.5 s in all, also while
        stopping); after the last attempt the error is the binding's, whose consumer is
        replaced: the records are redelivered, never skipped."""
        consumer = self._consumer
        if consumer is None:
            return
        delay = _COMMIT_BACK_OFF
        for attempt in range(1, _COMMIT_ATTEMPTS + 1):
            try:
                await consumer.commit(records)
                return
            except Exception as exc:
                if attempt == _COMMIT_ATTEMPTS:
                    raise
                log.warning(
                    "binding %s: commit failed (attempt %d of %d), retrying in %.1f s: %s",
                    self.name,
                    attempt,
                    _COMMIT_ATTEMPTS,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)  # not cut short by stop: stopping commits too
                delay *= 2

    # -- processing -------------------------------------------------------------------------

    async def _process(self, records: Sequence[InboundRecord]) -> None:
        """Run a chunk through the pipeline; failures retry in place, then dead-letter.

        A failed output send is a failed attempt of the message it came from, like an
        exception from the function."""
        if self.invoker.batch:
            for start in range(0, len(records), self.batch_size):
                if self._stop.is_set():
                    return
                await self._process_batch(records[start : start + self.batch_size])
            return
        position = 0
        while position < len(records):
            done, outgoing, ends, failure = await self._attempt(records[position:])
            await self._deliver(records[position : position + done], outgoing, ends)
            position += done
            if failure is None:
                return  # all done, or stopping: the rest stays uncommitted for redelivery
            await self._recover([records[position]], failure)
            position += 1

    async def _deliver(
        self, records: Sequence[InboundRecord], outgoing: list[OutboundRecord], ends: list[int]
    ) -> None:
        """Send the outputs of ``records`` (processed in order), then commit them.

        When the send fails, each record's outputs are sent alone, in order, and a record
        whose own send fails is recovered like a failed attempt."""
        if outgoing:
            try:
                await self._send(outgoing)
            except Exception as exc:
                log.warning(
                    "%s: sending %d output(s) to %s failed, sending them per message: %s",
                    self.name,
                    len(outgoing),
                    self._output_name(),
                    exc,
                )
                await self._deliver_each(records, outgoing, ends)
                return
        self.stats.ok += len(records)
        await self._complete(records)

    async def _deliver_each(
        self, records: Sequence[InboundRecord], outgoing: list[OutboundRecord], ends: list[int]
    ) -> None:
        begin = 0
        for record, end in zip(records, ends, strict=True):
            try:
                await self._send(outgoing[begin:end])
            except Exception as exc:
                await self._recover([record], exc)
            else:
                self.stats.ok += 1
                await self._complete((record,))
            begin = end

    def _output_name(self) -> str:
        return self.output.destination if self.output is not None else "(no output)"

    async def _attempt(
        self, records: Sequence[InboundRecord]
    ) -> tuple[int, list[OutboundRecord], list[int], BaseException | None]:
        """Process records in order until one fails: (how many succeeded, their outputs,
        where each one's outputs end in that list, the error)."""
        if self.invoker.pipeline.is_async:
            return await self._attempt_async(records)
        return await asyncio.to_thread(self._attempt_sync, records)

    def _attempt_sync(self, records: Sequence[InboundRecord]) -> _Attempt:
        run, stopping = self.invoker.run, self._stopping_check()
        limit = self.policy.max_attempts
        outgoing: list[OutboundRecord] = []
        ends: list[int] = []
        make = self.output.record if self.output is not None else None
        took, clock = self.stats.took, time.perf_counter
        traced, scope = self._tracing is not None, None
        started = clock()
        for done, record in enumerate(records):
            if stopping():  # finish the message in hand, start no new one
                return done, outgoing, ends, None
            attempt = record.deliveries
            if traced:
                scope = self._scope(record, attempt)
            try:
                if attempt != 1 and attempt > limit:
                    raise self._over_limit(record)
                if record.headers and EXPIRES_AT in record.headers:
                    self._check_expiry(record)
                outputs = run(record, attempt)
                if outputs and make is not None:
                    outgoing.extend([make(*output) for output in outputs])
            except Exception as exc:
                if scope is not None:
                    scope.close(exc)
                return done, outgoing, ends, exc
            if scope is not None:
                scope.close()
            ends.append(len(outgoing))
            now = clock()
            took(now - started)
            started = now
        return len(records), outgoing, ends, None

    async def _attempt_async(self, records: Sequence[InboundRecord]) -> _Attempt:
        if self.invoker.direct is not None and self._tracing is None:
            return await self._attempt_direct(records)
        return await self._attempt_each(records)

    async def _attempt_each(self, records: Sequence[InboundRecord]) -> _Attempt:
        """Each record through the invoker, its attempt numbered by its delivery count."""
        run, encode = self.invoker.run_async, self._encode
        limit = self.policy.max_attempts
        outgoing: list[OutboundRecord] = []
        ends: list[int] = []
        stopping = self._stopping_check()
        took, clock = self.stats.took, time.perf_counter
        traced, scope = self._tracing is not None, None
        for done, record in enumerate(records):
            if stopping():
                return done, outgoing, ends, None
            started = clock()
            attempt = record.deliveries
            if traced:
                scope = self._scope(record, attempt)
            try:
                if attempt != 1 and attempt > limit:
                    raise self._over_limit(record)
                if record.headers and EXPIRES_AT in record.headers:
                    self._check_expiry(record)
                outputs = await run(record, attempt)
                outgoing.extend(encode(outputs))
            except Exception as exc:
                if scope is not None:
                    scope.close(exc)
                return done, outgoing, ends, exc
            if scope is not None:
                scope.close()
            ends.append(len(outgoing))
            took(clock() - started)
        return len(records), outgoing, ends, None

    async def _attempt_direct(self, records: Sequence[InboundRecord]) -> _Attempt:
        """The hot path of :meth:`_attempt_async`: one async function taking the payload,
        awaited here directly (no wrapper coroutine per message)."""
        invoker, encode = self.invoker, self._encode
        fn, payload = invoker.direct, invoker.payload
        assert fn is not None
        plain = invoker.decoder(None)
        stopping = self._stopping_check()
        outgoing: list[OutboundRecord] = []
        ends: list[int] = []
        took, clock = self.stats.took, time.perf_counter
        for done, record in enumerate(records):
            if stopping():
                return done, outgoing, ends, None
            started = clock()
            if record.deliveries != 1 or (record.headers and EXPIRES_AT in record.headers):
                # delivered before (numbered attempts from here on), or expiring
                base = len(outgoing)
                more, tail, tail_ends, failure = await self._attempt_each(records[done:])
                outgoing.extend(tail)
                ends.extend(base + end for end in tail_ends)
                return done + more, outgoing, ends, failure
            try:
                data = record.value
                value = plain(data) if not record.headers and data is not None else payload(record)
                result = await fn(value)
            except Exception as exc:
                return done, outgoing, ends, invoker.failure(exc)
            if result is not None:
                try:
                    outgoing.extend(encode(invoker.outputs(result, record.key, record.headers)))
                except Exception as exc:
                    return done, outgoing, ends, exc
            ends.append(len(outgoing))
            took(clock() - started)
        return len(records), outgoing, ends, None

    def _scope(self, record: InboundRecord, attempt: int) -> Scope:
        """The process span of one attempt at ``record``, current until closed."""
        assert self._tracing is not None
        return self._tracing.process(self._system, self.group, record, attempt)

    async def _traced(self, records: Sequence[InboundRecord], attempt: int) -> None:
        """One attempt (a retry) at ``records`` and the send of its outputs, inside its
        process span when tracing."""
        tracing = self._tracing
        if tracing is None:
            await self._send(await self._run_one(records, attempt))
            return
        if self.invoker.batch:
            scope = tracing.process_batch(self._system, self.group, records)
        else:
            scope = self._scope(records[0], attempt)
        try:
            await self._send(await self._run_one(records, attempt))
        except Exception as exc:
            scope.close(exc)
            raise
        scope.close()

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
        """One batch call; records the backend delivered more than ``max-attempts`` times are
        dead-lettered first and left out of it. All are committed together at the end."""
        limit = self.policy.max_attempts
        batch = records
        if any(r.deliveries > limit or EXPIRES_AT in r.headers for r in records):
            batch = []
            for record in records:  # each letter with its own count
                if record.deliveries > limit:
                    await self._give_up([record], self._over_limit(record), record.deliveries - 1)
                    continue
                expired = self._expiry(record)
                if expired is not None:
                    await self._give_up([record], expired, record.deliveries - 1)
                    continue
                batch.append(record)
        if batch:
            started = time.perf_counter()
            try:
                await self._traced(batch, max(r.deliveries for r in batch))
            except Exception as exc:
                await self._recover(batch, exc, complete=False)
            else:
                self.stats.ok += len(batch)
            self.stats.took(time.perf_counter() - started)
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

    async def _recover(
        self, records: Sequence[InboundRecord], exc: BaseException, *, complete: bool = True
    ) -> None:
        """Retry (the function and the send of its outputs) with back-off; then dead-letter
        (or drop, logged), and commit (unless ``complete`` is false: the caller commits).
        Stopping leaves it uncommitted, to be redelivered.

        The failed attempt was the records' delivery count (1 unless the backend delivered
        them before); over the limit, none was made."""
        started = time.perf_counter()
        try:
            await self._retry(records, exc, complete=complete)
        finally:
            if not self.invoker.batch:  # a batch is timed whole by _process_batch
                self.stats.took(time.perf_counter() - started)

    async def _retry(
        self, records: Sequence[InboundRecord], exc: BaseException, *, complete: bool
    ) -> None:
        attempt = max(r.deliveries for r in records)
        if isinstance(exc, DeliveryLimitExceeded | MessageExpired):
            attempt -= 1  # the attempts that failed: this delivery's was not made
        while self.policy.should_retry(exc, attempt):
            delay = self.policy.delay(attempt)
            self.stats.retried += len(records)
            self._log_retry(records, exc, attempt, delay)
            if self.retry_output is not None:  # retry-mode: delayed
                await self._retry_later(records, attempt + 1, delay)
                if complete:
                    await self._complete(records)
                return
            if await self._sleep(delay):
                raise _Abandon
            attempt += 1
            try:
                await self._traced(records, attempt)
            except Exception as again:
                exc = again
                continue
            self.stats.ok += len(records)
            if complete:
                await self._complete(records)
            return
        await self._give_up(records, exc, attempt)
        if complete:
            await self._complete(records)

    def _expiry(self, record: InboundRecord) -> MessageExpired | None:
        """Why ``record`` is not to be handled: received after its ``x-expires-at``; ``None``
        while it is valid (or its ``x-expires-at`` is not a number: another program's)."""
        text = record.headers.get(EXPIRES_AT)
        if text is None:
            return None
        try:
            at = float(text)
        except ValueError:
            return None
        now = self._clock.time() * 1000
        if not now > at:
            return None
        return MessageExpired(
            f"expired: x-expires-at {text} ({_iso(at)}), received {now - at:.0f} ms later"
        )

    def _check_expiry(self, record: InboundRecord) -> None:
        expired = self._expiry(record)
        if expired is not None:
            raise expired

    async def _retry_later(
        self, records: Sequence[InboundRecord], attempt: int, delay: float
    ) -> None:
        """Schedule ``records`` to this group's retry destination as attempt ``attempt``,
        due after ``delay`` seconds (they are committed here once it holds them)."""
        output = self.retry_output
        assert output is not None
        millis = str(max(1, round(delay * 1000)))
        again = []
        for record in records:
            headers = {**record.headers, DELIVERY_ATTEMPT: str(attempt), DELAY: millis}
            headers.setdefault(RETRY_OF, self.retries_of or record.destination)
            again.append(output.forward(record.value, record.key, headers))
        await output.send_records(again)

    def _over_limit(self, record: InboundRecord) -> DeliveryLimitExceeded:
        return DeliveryLimitExceeded(
            f"delivered {record.deliveries} times, more than max-attempts "
            f"({self.policy.max_attempts}): its consumer stopped without acknowledging it "
            f"{record.deliveries - 1} times (a message that kills its consumer?)"
        )

    def _log_retry(
        self, records: Sequence[InboundRecord], exc: BaseException, attempt: int, delay: float
    ) -> None:
        log.warning(
            "%s: attempt %d of %d failed, retrying in %.3g s: %s",
            self.name,
            attempt,
            self.policy.max_attempts,
            delay,
            exc,
            exc_info=exc,
            extra=self._extra(records),
        )

    def _extra(self, records: Sequence[InboundRecord]) -> dict[str, Any]:
        """What a log record about ``records`` carries in ``extra`` (the first one's place)."""
        first = records[0] if records else None
        return {
            "binding": self.name,
            "destination": self.destination,
            "group": self.group,
            "partition": first.partition if first is not None else None,
            "offset": first.offset if first is not None else None,
        }

    async def _give_up(
        self, records: Sequence[InboundRecord], exc: BaseException, attempts: int
    ) -> None:
        kind = "undecodable" if isinstance(exc, ConversionError) else "failed"
        extra = self._extra(records)
        if isinstance(exc, MessageExpired):
            kind = "expired"
            if self._drop_expired:
                self.stats.dropped += len(records)
                log.warning(
                    "%s: dropping %d expired message(s) (consumer.expired: drop): %s",
                    self.name,
                    len(records),
                    exc,
                    extra=extra,
                )
                return
        if self.dead_letters is None:
            self.stats.dropped += len(records)
            log.error(
                "%s: dropping %d %s message(s) after %d attempt(s): %s",
                self.name,
                len(records),
                kind,
                attempts,
                exc,
                exc_info=exc,
                extra=extra,
            )
            return
        letters = [
            dead_letter_record(r, exc, self.group, attempts, self.retries_of) for r in records
        ]
        letters = self.dead_letters.traced_letters(records, letters)
        log.error(
            "%s: dead-lettering %d %s message(s) to %s after %d attempt(s): %s",
            self.name,
            len(records),
            kind,
            self.dead_letters.destination,
            attempts,
            exc,
            exc_info=exc,
            extra=extra,
        )
        while True:
            try:
                await self.dead_letters.send_records(letters)
                self.stats.dead_lettered += len(records)
                return
            except Exception as send_error:
                log.error(
                    "%s: dead-letter send failed, retrying: %s", self.name, send_error, extra=extra
                )
                if await self._sleep(self.policy.max_interval):
                    raise _Abandon from send_error


_Attempt = tuple[int, list[OutboundRecord], list[int], BaseException | None]
LAG_INTERVAL = 2.0
"""Seconds between two reads of a serving consumer's lag (``streambinder_consumer_lag``)."""
_COMMIT_ATTEMPTS = 5
_COMMIT_BACK_OFF = 0.1  # seconds, doubling: 0.1 + 0.2 + 0.4 + 0.8 before giving up


RETRY_OF = "x-retry-of"
"""Header of a scheduled retry: the destination the message was first consumed from."""


def _number_retries(records: Sequence[InboundRecord]) -> None:
    """Records read from a retry destination: each one's attempt is the ``x-delivery-attempt``
    it was scheduled with (plus any redeliveries of this read)."""
    for record in records:
        text = record.headers.get(DELIVERY_ATTEMPT)
        if text is not None and text.isdigit():
            record.deliveries = int(text) + record.deliveries - 1


def _iso(millis: float) -> str:
    """Epoch ms as an ISO 8601 UTC time, for people reading a log or a letter."""
    try:
        return datetime.fromtimestamp(millis / 1000, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return "out of range"


def _first_cause(exc: BaseException) -> BaseException:
    """The first failure inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


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
