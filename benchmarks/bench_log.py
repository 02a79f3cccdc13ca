"""The durable log engine on this machine's disk, side by side with its anchors, 100-byte records.

In one run:

- the engine's batched append API (``Broker.append`` of 1,000-record batches,
  awaiting the future of ``Broker.append_synced`` where the policy fsyncs) for ``fsync: never``,
  ``batch`` and ``always``;
- anchors doing the same work: SQLite in WAL mode (``executemany`` of each
  batch in one transaction; ``synchronous=NORMAL`` leaves the WAL to the OS
  like ``never``, ``FULL`` fsyncs each commit like ``always``), and a bare
  Python loop appending length-prefixed, crc32-checked records to a file with
  one ``os.write`` per batch (and an fsync per batch for the ``always`` row);
- many sends outstanding (``fsync: never``, 20,000 keyed records): ``app.send`` per record
  then one ``gather`` of all, and in gathers of 1,000, against the bare loop;
- ``app.send`` from 1 and from 64 concurrent senders, per fsync policy, and the
  same group commit without the framework (single-record ``append_synced`` from
  64 tasks under ``batch``, from one under ``always``);
- reading: a new group polling everything back, in the process that appended
  (the newest records from the tail cache) and after a restart (all from disk),
  SQLite reading the same rows in offset order as the anchor;
- end to end through a consumer group: ``@app.function`` reading, transforming
  and writing JSON on the durable log (``fsync: batch``) and in memory.

Files go to a temporary directory under ``--dir`` (default: ``benchmarks/results``,
on the same disk as the project; never a tmpfs, where fsync is free).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import statistics
import struct
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from binder import App
from binders.log.binder import durable_broker_name
from binders.log.engine import Broker
from binders.log.engine.disk import TopicPolicy
from binders.log.engine.durable import DurableStorage, StorageSettings

VALUE = bytes(range(100))
BATCH = 1000
RESULTS = Path(__file__).resolve().parent / "results"


def _storage(root: Path, fsync: str) -> DurableStorage:
    return DurableStorage(root, StorageSettings(fsync=fsync, policy=TopicPolicy()))  # type: ignore[arg-type]


def _entries(count: int) -> list[tuple[bytes | None, bytes, dict[str, str], float]]:
    now = time.time()
    return [(None, VALUE, {}, now) for _ in range(count)]


# -- appends -------------------------------------------------------------------------------------


async def engine_appends(root: Path, fsync: str, n: int) -> float:
    broker = Broker("bench", storage=_storage(root, fsync))
    broker.create_topic("t", 1)
    batch = _entries(BATCH)
    started = time.perf_counter()
    for _ in range(n // BATCH):
        future = broker.append_synced("t", 0, batch)[1]
        if future is not None:
            await future
    elapsed = time.perf_counter() - started
    broker.close()
    return n // BATCH * BATCH / elapsed


async def engine_single_appends(root: Path, fsync: str, senders: int, n: int) -> float:
    """One record per append, awaited, from ``senders`` concurrent tasks: group commit alone,
    without the framework's per-send work."""
    broker = Broker("bench", storage=_storage(root, fsync))
    broker.create_topic("t", 1)
    per_sender = max(n // senders, 1)

    async def sender() -> None:
        entry = _entries(1)
        for _ in range(per_sender):
            future = broker.append_synced("t", 0, entry)[1]
            if future is not None:
                await future

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    elapsed = time.perf_counter() - started
    broker.close()
    return per_sender * senders / elapsed


def sqlite_appends(root: Path, synchronous: str, n: int) -> float:
    db = sqlite3.connect(root / "bench.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(
        "CREATE TABLE log (offset INTEGER PRIMARY KEY, ts REAL, key BLOB, value BLOB, headers BLOB)"
    )
    now = time.time()
    offset = 0
    started = time.perf_counter()
    for _ in range(n // BATCH):
        rows = [(offset + i, now, None, VALUE, b"") for i in range(BATCH)]
        db.execute("BEGIN")
        db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        offset += BATCH
    elapsed = time.perf_counter() - started
    db.close()
    return offset / elapsed


def bare_appends(root: Path, fsync: bool, n: int) -> float:
    """Length-prefixed, crc32-checked records, one os.write per batch: near Python's limit."""
    fd = os.open(root / "bare.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pack, crc32 = struct.Struct("<II").pack, zlib.crc32
    values = [VALUE] * BATCH
    started = time.perf_counter()
    for _ in range(n // BATCH):
        os.write(fd, b"".join([pack(len(v), crc32(v)) + v for v in values]))
        if fsync:
            os.fsync(fd)
    elapsed = time.perf_counter() - started
    os.close(fd)
    return n // BATCH * BATCH / elapsed


def fsync_latency(root: Path, size: int, count: int = 200) -> float:
    """Median seconds of an fdatasync after appending ``size`` bytes: what this disk costs."""
    fd = os.open(root / "latency", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    timings = []
    for _ in range(count):
        os.write(fd, b"x" * size)
        started = time.perf_counter()
        os.fdatasync(fd)
        timings.append(time.perf_counter() - started)
    os.close(fd)
    return statistics.median(timings)


# -- app.send ------------------------------------------------------------------------------------


def _app(root: Path, fsync: str, bindings: dict[str, Any] | None = None) -> App:
    binder = {"type": "log", "path": str(root), "fsync": fsync}
    config = {"binder": {"binders": {"local": binder}, "bindings": bindings or {}}}
    return App(config=config, environ={})


async def app_sends(root: Path, fsync: str, senders: int, n: int) -> float:
    app = _app(root, fsync)
    per_sender = max(n // senders, 1)

    async def sender() -> None:
        for _ in range(per_sender):
            await app.send("t", VALUE)

    async with app:
        await app.send("t", VALUE)  # provisions the producer
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(senders)))
        elapsed = time.perf_counter() - started
    return per_sender * senders / elapsed


BACKLOG_N = 20_000
BACKLOG_CHUNK = 1_000
BACKLOG_RUNS = 3


async def app_backlog(root: Path, n: int, chunk: int | None) -> float:
    """``futures = [app.send(...) for ...]`` then ``await gather(*futures)``, per chunk
    (``None``: all outstanding at once); keyed, one partition, ``fsync: never``."""
    app = _app(root, "never")
    keys = [f"key-{i % 1000}".encode() for i in range(n)]
    step = chunk or n
    async with app:
        await app.send("t", VALUE, key=b"warm-up")  # provisions the producer
        started = time.perf_counter()
        for start in range(0, n, step):
            futures = [app.send("t", VALUE, key=key) for key in keys[start : start + step]]
            await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
    return n / elapsed


async def futures_alone(n: int, chunk: int | None) -> float:
    """The floor of the shape: ``n`` futures made, completed and gathered, no work at all."""
    loop = asyncio.get_running_loop()
    step = chunk or n
    started = time.perf_counter()
    for _ in range(0, n, step):
        futures = [loop.create_future() for _ in range(step)]
        gathered = asyncio.gather(*futures)
        for future in futures:
            future.set_result(None)
        await gathered
    return n / (time.perf_counter() - started)


def backlog(base: Path, bare: float) -> float:
    """Print both shapes, best (median) of :data:`BACKLOG_RUNS` and their ratios to ``bare``;
    return the lower best ratio."""
    print(
        f"\nmany sends outstanding, {BACKLOG_N:,} keyed records, fsync never, best (median) of "
        f"{BACKLOG_RUNS}; ratio to the bare loop ({bare:,.0f}/s)"
    )
    ratios = []
    for chunk in (None, BACKLOG_CHUNK):
        figures = [
            _run(base, lambda r, c=chunk: app_backlog(r, BACKLOG_N, c)) for _ in range(BACKLOG_RUNS)
        ]
        best, median = max(figures), statistics.median(figures)
        label = f"gathers of {chunk:,}" if chunk else "all outstanding"
        print(
            f"  app.send, {label:20} {best:10,.0f} ({median:,.0f})  "
            f"{best / bare:5.3f} ({median / bare:.3f})"
        )
        ratios.append(best / bare)
        floor = [asyncio.run(futures_alone(BACKLOG_N, chunk)) for _ in range(BACKLOG_RUNS)]
        top, middle = max(floor), statistics.median(floor)
        print(
            f"    (floor: futures + gather alone {top:10,.0f} ({middle:,.0f})"
            f"  {top / bare:5.3f}; app.send = {best / top:.2f} of it)"
        )
    return min(ratios)


# -- reads ---------------------------------------------------------------------------------------


async def _drain(broker: Broker, n: int) -> float:
    member = broker.join("t", f"g-{uuid.uuid4().hex[:6]}")
    seen = 0
    started = time.perf_counter()
    while seen < n:
        seen += len(await member.poll(500))
    elapsed = time.perf_counter() - started
    await member.close()
    return seen / elapsed


async def engine_reads(root: Path, n: int) -> tuple[float, float]:
    """(in the process that appended: the newest 4 MiB from the tail cache, the rest from
    disk; after a restart: all from disk) in records/s."""
    broker = Broker("bench", storage=_storage(root, "never"))
    broker.create_topic("t", 1)
    batch = _entries(BATCH)
    for _ in range(n // BATCH):
        broker.append("t", 0, batch)
    hot = await _drain(broker, n // BATCH * BATCH)
    broker.close()
    broker = Broker("bench", storage=_storage(root, "never"))
    cold = await _drain(broker, n // BATCH * BATCH)
    broker.close()
    return hot, cold


def sqlite_reads(root: Path, n: int) -> float:
    db = sqlite3.connect(root / "bench.db")
    started = time.perf_counter()
    seen, offset = 0, 0
    while seen < n:
        rows = db.execute(
            "SELECT offset, ts, key, value, headers FROM log WHERE offset >= ? ORDER BY offset"
            " LIMIT 500",
            (offset,),
        ).fetchall()
        if not rows:
            break
        seen += len(rows)
        offset = rows[-1][0] + 1
    elapsed = time.perf_counter() - started
    db.close()
    return seen / elapsed


# -- end to end ------------------------------------------------------------------------------------


def _transform(order: dict) -> dict:
    order["status"] = "ENRICHED"
    return order


async def end_to_end(root: Path | None, n: int) -> float:
    """Preloaded JSON orders through ``@app.function`` (group ``g``) to ``out``."""
    bindings = {
        "transform-in-0": {"destination": "in", "group": "g"},
        "transform-out-0": {"destination": "out"},
    }
    if root is None:
        name = f"bench-{uuid.uuid4().hex}"
        binder: dict[str, Any] = {"type": "log", "broker": name}
        app = App(
            config={"binder": {"binders": {"local": binder}, "bindings": bindings}}, environ={}
        )
    else:
        app = _app(root, "batch", bindings)
    app.function(_transform, name="transform")
    payload = {"id": 0, "customer_id": "c-0042", "sku": "SKU-123456", "qty": 3, "price": 19.99}
    async with app:
        broker = Broker.named(name if root is None else durable_broker_name(root))
        now = time.time()
        entries = [
            (None, orjson.dumps({**payload, "id": i}), {"contentType": "application/json"}, now)
            for i in range(n)
        ]
        reader = broker.join("out", None)
        started = time.perf_counter()
        for start in range(0, n, BATCH):
            broker.append("in", 0, entries[start : start + BATCH])
        seen = 0
        while seen < n:
            seen += len(await reader.poll(10_000))
        elapsed = time.perf_counter() - started
        await reader.close()
    if root is None:
        Broker.forget(name)
    return n / elapsed


# -- the report ------------------------------------------------------------------------------------


def _fresh(base: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix="log-", dir=base))


def _run(base: Path, work: Callable[[Path], Any]) -> Any:
    """``work`` (a function or a coroutine function) on a fresh directory, removed after."""
    root = _fresh(base)
    try:
        result = work(root)
        return asyncio.run(result) if asyncio.iscoroutine(result) else result
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(n: int, directory: Path | None = None) -> None:
    base = directory or RESULTS
    base.mkdir(parents=True, exist_ok=True)
    slow = max(n // 100, 500)  # one fsync per message: keep those runs short
    rows: list[tuple[str, float]] = []

    def row(label: str, value: float) -> float:
        rows.append((label, value))
        return value

    print(f"\nDurable log, {len(VALUE)}-byte records, files under {base}")
    never = row(
        "engine append API, fsync never", _run(base, lambda r: engine_appends(r, "never", n))
    )
    row("engine append API, fsync batch", _run(base, lambda r: engine_appends(r, "batch", n)))
    row("engine append API, fsync always", _run(base, lambda r: engine_appends(r, "always", n)))
    wal = row(
        "anchor: SQLite WAL, synchronous=NORMAL",
        _run(base, lambda r: sqlite_appends(r, "NORMAL", n)),
    )
    row("anchor: SQLite WAL, synchronous=FULL", _run(base, lambda r: sqlite_appends(r, "FULL", n)))
    bare = row(
        "anchor: bare loop, crc32 + length prefix", _run(base, lambda r: bare_appends(r, False, n))
    )
    row("anchor: bare loop, fsync per batch", _run(base, lambda r: bare_appends(r, True, n)))
    sends: dict[tuple[str, int], float] = {}
    for fsync in ("never", "batch", "always"):
        for senders in (1, 64):
            fast = fsync == "never" or (fsync == "batch" and senders > 1)
            count = n // 4 if fast else slow
            sends[(fsync, senders)] = row(
                f"app.send, fsync {fsync}, {senders} sender(s)",
                _run(base, lambda r, f=fsync, s=senders, c=count: app_sends(r, f, s, c)),
            )
    engine_batch = row(
        "engine single appends, fsync batch, 64 tasks",
        _run(base, lambda r: engine_single_appends(r, "batch", 64, n // 4)),
    )
    engine_always = row(
        "engine single appends, fsync always, 1 task",
        _run(base, lambda r: engine_single_appends(r, "always", 1, slow)),
    )
    hot, cold = _run(base, lambda r: engine_reads(r, n))
    row("read: new group, in the process that appended", hot)
    row("read: new group, from disk after a restart", cold)
    row("anchor: SQLite WAL read in offset order", _run(base, lambda r: _read_sqlite(r, n)))
    e2e = n // 4
    row("end to end @app.function, durable (batch)", _run(base, lambda r: end_to_end(r, e2e)))
    row("end to end @app.function, in memory", asyncio.run(end_to_end(None, e2e)))
    print(f"{'case':48} {'msg/s':>12}")
    for label, value in rows:
        print(f"{label:48} {value:12,.0f}")
    outstanding = backlog(base, bare)
    group_commit = sends[("batch", 64)] / sends[("always", 1)]
    small, large = (_run(base, lambda r, b=b: fsync_latency(r, b)) for b in (150, 64 * 150))
    print(
        f"\ndisk: fdatasync after a 150-byte append {small * 1e6:,.0f} µs, "
        f"after {64 * 150:,} bytes {large * 1e6:,.0f} µs (median)"
    )
    print("\ntargets")
    print(f"  batched appends (never) / SQLite WAL (NORMAL):  {never / wal:6.2f}  (>= 2)")
    print(f"  batched appends (never) / bare file loop:       {never / bare:6.2f}  (>= 0.7)")
    print(f"  app.send batch x64 / always x1:                 {group_commit:6.2f}  (>= 20)")
    print(f"  app.send outstanding (never) / bare loop:       {outstanding:6.2f}  (>= 0.25)")
    print(f"  (engine single appends, batch x64 / always x1:  {engine_batch / engine_always:6.2f})")


def _read_sqlite(root: Path, n: int) -> float:
    sqlite_appends(root, "NORMAL", n)
    return sqlite_reads(root, n)
