"""Delayed delivery under load: N messages due uniformly over :data:`SPREAD` seconds.

Work, per case: one app sends N (``--delays-n``, default 100,000) messages with
``app.send(destination, payload, delay=...)`` as fast as it can, in gathers of :data:`BATCH`;
each payload is a JSON object of about 100 bytes (``{"i": n, "pad": ...}``). The due times are
drawn uniformly (seeded) from ``[t0 + LEAD, t0 + LEAD + SPREAD)``, ``t0`` being the first send
and :data:`LEAD` seconds leaving room to schedule all of them before the first is due; each
message's delay is its due time minus the time of its own send. The same app consumes the
destination in a group with a plain ``@app.consumer`` async function taking ``Message[dict]``,
which takes the wall time of each receipt; the app's mover (every producer and consumer of a
destination runs one) moves the due messages.

Cases, each in a process of its own so that one's memory does not hide or inflate another's:

- ``memory``: the in-memory log (a broker of its own); the waiting messages are records of a
  topic in the Python heap by nature, so its memory figure is shown but not judged;
- ``durable``: the durable log in a temporary directory, ``fsync: never`` (removed after);
- ``redis``: the Redis binder on ``$REDIS_URL`` else ``redis://127.0.0.1:6379/0``, under a key
  prefix of its own; every key under it is deleted at the end, also when the case fails.

Figures: how long scheduling the N sends took (and its rate); how many were delivered
(distinct, received by :data:`DELIVERY_GRACE` s after the last due time) and how many twice
(within :data:`DUPLICATE_GRACE` s of the last); how many arrived early (receipt before
``x-deliver-at`` less 1 ms of clock rounding); the p50, p99 and max lateness in ms (receipt
minus ``x-deliver-at``); the longest the event loop was blocked while they were delivered
(a 5 ms timer's overshoot: garbage collections, long synchronous steps); and the app's
resident memory growth (``VmRSS`` of ``/proc/self/status`` after a ``gc.collect()``, once all
are scheduled and before the first is due, minus the same just before the first send).
Targets: p99 lateness <= :data:`P99_TARGET_MS` ms, and RSS growth < :data:`RSS_TARGET_MB` MB
judged on the durable log and Redis. Where the backend holds the waiting messages is shown
too: the sorted set's ``MEMORY USAGE`` on the Redis server, the schedule's files on disk.

Run: ``python -m benchmarks --delays-n 100000``, or ``bench_delays.main(100000)``; one case
alone, printing its figures as JSON: ``python -m benchmarks.bench_delays redis 100000`` (the
way to profile one: ``pyinstrument -m benchmarks.bench_delays redis 100000``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from binder import App, Message
from binder.message import DELIVER_AT

BATCH = 1_000
SPREAD = 10.0
"""Seconds over which the due times are spread."""
LEAD = 5.0
"""Seconds from the first send to the earliest due time (scheduling must fit in it)."""
DELIVERY_GRACE = 60.0
"""Seconds after the last due time a case waits for the rest before giving up."""
DUPLICATE_GRACE = 0.5
"""Seconds a case keeps counting after the last distinct message (for duplicates only)."""
EARLY_SLACK_MS = 1
"""Clock rounding allowed: ``x-deliver-at`` is whole milliseconds."""
P99_TARGET_MS = 100.0
RSS_TARGET_MB = 50.0
DEFAULT_URL = "redis://127.0.0.1:6379/0"
DESTINATION = "reminders"
GROUP = "bench"
PAD = "x" * 80
CASES = {
    "memory": "in-memory log",
    "durable": "durable log (fsync never)",
    "redis": "redis",
    "rabbit": "rabbitmq (TTL ladder)",
    "kafka": "kafka (Tansu)",
}
SMALL = {"rabbit": 10_000, "kafka": 10_000}
"""Cases run with at most this many messages (the issue's figure for Kafka and RabbitMQ)."""
P99_TARGETS = {"rabbit": 1000.0, "kafka": 1000.0}
"""p99 lateness targets (ms) that differ from :data:`P99_TARGET_MS`."""
JUDGED = ("durable", "redis")
"""The cases the memory target is judged on (the in-memory log holds messages in its heap)."""
ROOT = Path(__file__).resolve().parent.parent
RESULT = "RESULT "
TICK = 0.005


@dataclass
class Figures:
    """What one case measured (printed by the child as JSON, read back by :func:`main`)."""

    case: str
    n: int
    scheduled_s: float = 0.0
    delivered: int = 0
    duplicates: int = 0
    early: int = 0
    lateness_ms: list[float] = field(default_factory=list)  # p50, p99, max
    rss_growth_mb: float = 0.0
    stall_ms: float = 0.0  # the longest the event loop was blocked while they were delivered
    first_due_in_s: float = 0.0  # seconds left before the first due time at the RSS reading
    held: str = ""  # where the backend keeps the waiting messages, and how much
    failure: str = ""


def rss_mb() -> float:
    """This process's resident set (``VmRSS``), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class Receipts:
    """What the consumer saw: per message id the receipt time and due time (first receipt),
    and how many arrived more than once."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.first: dict[int, tuple[float, int]] = {}
        self.duplicates = 0
        self.any_arrived = asyncio.Event()
        self.all_arrived = asyncio.Event()

    def add(self, at: float, message: Message[dict[str, Any]]) -> None:
        i = message.payload["i"]
        if i in self.first:
            self.duplicates += 1
            return
        self.first[i] = (at, int(message.headers.get(DELIVER_AT, "0")))
        self.any_arrived.set()
        if len(self.first) >= self.n:
            self.all_arrived.set()

    def by(self, deadline: float) -> int:
        """How many delayed messages arrived by ``deadline`` (epoch s)."""
        return sum(1 for i, (at, _) in self.first.items() if i >= 0 and at <= deadline)

    def lateness(self) -> tuple[int, list[float]]:
        """How many came early, and the lateness (ms) of every delayed message, sorted."""
        late = sorted(at * 1000 - due for i, (at, due) in self.first.items() if i >= 0)
        early = sum(1 for ms in late if ms < -EARLY_SLACK_MS)
        return early, late


class Stalls:
    """The longest the event loop was kept from running a :data:`TICK` s timer, while
    :meth:`watch` runs (a garbage collection, a long synchronous step)."""

    def __init__(self) -> None:
        self.longest = 0.0

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(TICK)
            now = loop.time()
            self.longest = max(self.longest, now - last - TICK)
            last = now


def _percentiles(ordered: list[float]) -> list[float]:
    if not ordered:
        return []
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return [ordered[len(ordered) // 2], p99, ordered[-1]]


# -- the backends -------------------------------------------------------------------------------


@dataclass
class Backend:
    """A case's binder options, and where it holds the waiting messages (how much)."""

    options: dict[str, Any]
    held: Callable[[], Awaitable[str]]


@contextlib.asynccontextmanager
async def _backend(case: str) -> AsyncIterator[Backend]:
    if case == "memory":
        options = {"type": "log", "broker": f"bench-delays-{uuid.uuid4().hex[:8]}"}
        yield Backend(options, _in_heap)
    elif case == "durable":
        path = Path(tempfile.mkdtemp(prefix="bench-delays-"))
        try:
            options = {"type": "log", "path": str(path), "fsync": "never"}
            yield Backend(options, lambda: _on_disk(path))
        finally:
            shutil.rmtree(path, ignore_errors=True)
    elif case == "redis":
        async with _redis() as backend:
            yield backend
    elif case == "rabbit":
        from binders.rabbit.testing import DEFAULT_URL as RABBIT_URL
        from binders.rabbit.testing import delete_prefixed

        url = os.environ.get("RABBITMQ_URL", RABBIT_URL)
        prefix = f"bench-delays-{uuid.uuid4().hex[:12]}."
        try:
            options = {"type": "rabbit", "url": url, "prefix": prefix}
            yield Backend(options, _in_broker)
        finally:
            await asyncio.to_thread(delete_prefixed, url, prefix)
    elif case == "kafka":
        from binders.kafka.testing import FAST_GROUPS, Tansu

        configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        with contextlib.nullcontext(configured) if configured else Tansu() as servers:
            options = {"type": "kafka", "bootstrap-servers": servers, **FAST_GROUPS}
            yield Backend(options, _in_broker)
    else:
        raise ValueError(f"unknown case {case!r}; one of {sorted(CASES)}")


async def _in_broker() -> str:
    return "the broker"


async def _in_heap() -> str:
    return "Python heap (a topic of the broker)"


async def _on_disk(path: Path) -> str:
    schedule = [p for p in path.rglob("*") if p.is_file() and "__delayed." in str(p)]
    size = sum(p.stat().st_size for p in schedule)
    return f"schedule files {size / 1e6:.1f} MB on disk"


@contextlib.asynccontextmanager
async def _redis() -> AsyncIterator[Backend]:
    from redis.asyncio import Redis

    from binders.redis.scheduler import delayed_key

    url = os.environ.get("REDIS_URL", DEFAULT_URL)
    prefix = f"bench-delays-{uuid.uuid4().hex[:12]}:"
    admin = Redis.from_url(url, socket_connect_timeout=5)

    async def held() -> str:
        key = delayed_key((prefix + DESTINATION).encode())
        size = await admin.memory_usage(key, samples=0) or 0
        return f"sorted set {size / 1e6:.1f} MB on the server"

    try:
        await admin.ping()
        options = {"type": "redis", "url": url, "key-prefix": prefix}
        yield Backend(options, held)
    finally:
        for pattern in (prefix, "{" + prefix):  # hash-tagged keys start with "{"
            keys = [k async for k in admin.scan_iter(match=f"{pattern}*", count=1000)]
            for start in range(0, len(keys), BATCH):
                await admin.unlink(*keys[start : start + BATCH])
        await admin.aclose()


# -- one case -----------------------------------------------------------------------------------


def _app(options: dict[str, Any], receipts: Receipts) -> App:
    binding = {"destination": DESTINATION, "group": GROUP}
    config = {"binders": {"b": options}, "default-binder": "b", "bindings": {"sink-in-0": binding}}
    app = App(config={"binder": config}, environ={})

    @app.consumer
    async def sink(message: Message[dict[str, Any]]) -> None:
        receipts.add(time.time(), message)

    return app


async def _schedule(app: App, offsets: list[float], payloads: list[dict[str, Any]]) -> float:
    """Send every payload, due ``LEAD + offset`` s after the first send; the first due time."""
    first_due = time.time() + LEAD
    clock = time.time
    for start in range(0, len(payloads), BATCH):
        end = start + BATCH
        await asyncio.gather(
            *(
                app.send(DESTINATION, payload, delay=max(0.0, first_due + offset - clock()))
                for payload, offset in zip(payloads[start:end], offsets[start:end], strict=True)
            )
        )
    return first_due


async def measure(case: str, n: int) -> Figures:
    """One case, start to end (see the module docstring)."""
    figures = Figures(case, n)
    rng = random.Random(n)
    offsets = [rng.uniform(0, SPREAD) for _ in range(n)]
    payloads = [{"i": i, "pad": PAD} for i in range(n)]
    receipts = Receipts(n + 1)  # the warm-up, -1, too
    async with _backend(case) as backend:
        app = _app(backend.options, receipts)
        async with app:
            await app.send(DESTINATION, {"i": -1, "pad": PAD})  # consumer and producer ready
            await asyncio.wait_for(receipts.any_arrived.wait(), 30)
            gc.collect()
            before = rss_mb()
            started = time.perf_counter()
            first_due = await _schedule(app, offsets, payloads)
            figures.scheduled_s = time.perf_counter() - started
            gc.collect()
            figures.rss_growth_mb = rss_mb() - before
            figures.first_due_in_s = first_due - time.time()
            figures.held = await backend.held()
            del payloads
            figures.stall_ms = await _deliveries(receipts, first_due) * 1000
            figures.delivered = receipts.by(first_due + SPREAD + DELIVERY_GRACE)
            figures.early, late = receipts.lateness()
            figures.lateness_ms = _percentiles(late)
            if receipts.all_arrived.is_set():
                await asyncio.sleep(DUPLICATE_GRACE)  # a benchmark: only duplicates counted
    figures.duplicates = receipts.duplicates
    return figures


async def _deliveries(receipts: Receipts, first_due: float) -> float:
    """Wait until all arrived, or :data:`DELIVERY_GRACE` s past the last due time; the
    longest stall of the event loop meanwhile (s). A loop blocked past the deadline
    returns only once it runs again."""
    stalls = Stalls()
    watcher = asyncio.create_task(stalls.watch())
    try:
        seconds = first_due + SPREAD + DELIVERY_GRACE - time.time()  # the deadline
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receipts.all_arrived.wait(), max(seconds, 1.0))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    return stalls.longest


# -- the run: a process per case ---------------------------------------------------------------


def _run_case(case: str, n: int) -> Figures:
    """:func:`measure` in a child process; its figures, or a failure naming the reason."""
    budget = LEAD + SPREAD + DELIVERY_GRACE + n / 2_000 + 60
    command = [sys.executable, "-m", "benchmarks.bench_delays", case, str(n)]
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired:
        return Figures(case, n, failure=f"no result within {budget:.0f} s")
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return Figures(**json.loads(line.removeprefix(RESULT)))
    said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
    return Figures(case, n, failure=said[:300])


def main(n: int) -> None:
    print(
        f"\nDelayed delivery: {n:,} messages of ~100 bytes due uniformly over {SPREAD:g} s "
        f"(the first {LEAD:g} s after the first send), app.send(delay=) in gathers of "
        f"{BATCH:,} from one app that also consumes them (@app.consumer, Message[dict], one "
        f"group); each case in a process of its own",
        flush=True,
    )
    results = [_run_case(case, min(n, SMALL.get(case, n))) for case in CASES]
    header = (
        f"{'case':26} {'schedule':>9} {'msg/s':>7} {'delivered':>10} {'dup':>4} {'early':>5} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>8} {'stall ms':>8} {'RSS +MB':>8}  held in"
    )
    print(header)
    for figures in results:
        print(_line(figures))
    _print_targets(results)


def _line(f: Figures) -> str:
    label = CASES[f.case]
    if f.failure:
        return f"{label:26} failed: {f.failure}"
    rate = f"{f.n / f.scheduled_s / 1000:.0f}k" if f.scheduled_s else "-"
    p50, p99, top = f.lateness_ms or [float("nan")] * 3
    overran = "" if f.first_due_in_s > 0 else f" (read {-f.first_due_in_s:.1f} s after due)"
    return (
        f"{label:26} {f.scheduled_s:8.2f}s {rate:>7} {f.delivered:>10,} {f.duplicates:>4} "
        f"{f.early:>5} {p50:7.1f} {p99:7.1f} {top:8.1f} {f.stall_ms:8.1f} {f.rss_growth_mb:8.1f}  "
        f"{f.held}{overran}"
    )


def _print_targets(results: list[Figures]) -> None:
    print(
        f"targets: p99 lateness <= {P99_TARGET_MS:g} ms (Kafka, RabbitMQ: 1 s), RSS growth < "
        f"{RSS_TARGET_MB:g} MB"
    )
    for f in results:
        if f.failure:
            print(f"  {CASES[f.case]:26} FAILED")
            continue
        target = P99_TARGETS.get(f.case, P99_TARGET_MS)
        checks = [
            ("all delivered", f.delivered == f.n),
            ("none early", f.early == 0),
            ("p99", bool(f.lateness_ms) and f.lateness_ms[1] <= target),
        ]
        if f.case in JUDGED:
            checks.append(("RSS", f.rss_growth_mb < RSS_TARGET_MB))
        verdict = ", ".join(f"{name} {'ok' if ok else 'MISSED'}" for name, ok in checks)
        if f.case not in JUDGED:
            verdict += "; RSS not judged: the in-memory log holds the messages in the heap"
        print(f"  {CASES[f.case]:26} {verdict}")


def _child(case: str, n: str) -> None:
    figures = asyncio.run(measure(case, int(n)))
    print(RESULT + json.dumps(asdict(figures)), flush=True)


if __name__ == "__main__":
    _child(*sys.argv[1:])
