"""``make demo``: feed the orders pipeline, show progress while it works, then a summary.

The pipeline runs on the durable log in ``examples/orders/data``: run the demo
again and every group resumes where it stopped (interrupt it with Ctrl-C and
the next run finishes the leftovers first). ``--clean`` starts from an empty log.

``--kafka`` runs the same code on the Kafka binder instead (only the default binder
changes): on ``$KAFKA_BOOTSTRAP_SERVERS``, else on a Tansu broker started for the run.
``--redis`` runs it on the Redis binder: on ``$REDIS_URL``, else 127.0.0.1:6379, under a key
prefix of its own that is deleted when the run ends. ``--rabbit`` runs it on the RabbitMQ
binder: on ``$RABBITMQ_URL``, else guest on 127.0.0.1:5672, its exchanges and queues behind a
name prefix of its own, deleted when the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from binders.log.binder import durable_broker_name
from binders.log.engine import Broker

if TYPE_CHECKING:
    from binder import App
    from examples.orders.app import Ledger

STEP = 500  # orders sent per gather
CUSTOMERS = [f"c-{region}{n:03d}" for region in range(3) for n in range(40)]
GROUPS = {  # group → the destination it reads
    "pipeline": "orders",
    "billing": "orders.enriched",
    "support": "orders.pipeline.dlq",
}


def make_order(order_id: int, rng: random.Random) -> dict | bytes:
    """Mostly good orders; about 2% break a rule and 1% are not even JSON."""
    roll = rng.random()
    if roll < 0.01:
        return b"{not json"
    items = [
        {
            "sku": f"SKU-{rng.randrange(1000):04d}",
            "qty": rng.randint(1, 5),
            "price": round(rng.uniform(1, 200), 2),
        }
        for _ in range(rng.randint(1, 4))
    ]
    if roll < 0.02:
        items = []
    elif roll < 0.03:
        items[0]["qty"] = 500
    return {"id": order_id, "customer_id": rng.choice(CUSTOMERS), "items": items}


def progress(ledger: Ledger, sent: int, total: int, started: float) -> str:
    elapsed = max(time.perf_counter() - started, 1e-9)
    done = ledger.billed + sum(ledger.rejected.values())
    bar = "#" * min(30, int(30 * done / total))
    return (
        f"[{bar:<30}] sent {sent:>6}/{total}  billed {ledger.billed:>6}  "
        f"dead-lettered {sum(ledger.rejected.values()):>4}  {done / elapsed:>8,.0f} msg/s"
    )


class Progress:
    """Redraws one line on a terminal; elsewhere (a pipe, a CI log) prints a line a second."""

    def __init__(self) -> None:
        self._terminal = sys.stdout.isatty()
        self._last = 0.0

    def show(self, line: str, final: bool = False) -> None:
        if self._terminal:
            sys.stdout.write("\r" + line)
        elif final or time.monotonic() - self._last >= 1.0:
            sys.stdout.write(line + "\n")
            self._last = time.monotonic()
        sys.stdout.flush()


def log_path(app: App) -> Path | None:
    """The durable log's directory, when the app's binder has one."""
    options = app.config.binders[app.config.default_binder or "local"].options
    path = getattr(options, "path", None)
    return None if path is None else Path(path)


@dataclass
class Position:
    """Where a group stands on its destination: committed offsets against the end."""

    committed: int
    end: int

    @property
    def lag(self) -> int:
        return self.end - self.committed


def positions(broker: Broker) -> dict[str, Position]:
    found = {}
    for group, topic in GROUPS.items():
        ends, committed = broker.end_offsets(topic), broker.committed(group, topic)
        found[group] = Position(sum(committed.get(p, 0) for p in ends), sum(ends.values()))
    return found


async def run(app: App, ledger: Ledger, total: int, seed: int) -> None:
    path = log_path(app)
    async with app:
        broker = Broker.named(durable_broker_name(path)) if path else None
        before = positions(broker) if broker else None
        first_id = before["pipeline"].end if before else 0  # order ids go on across runs
        rng = random.Random(seed + first_id)
        started = time.perf_counter()
        shown = Progress()
        for start in range(0, total, STEP):
            batch = range(start, min(total, start + STEP))
            await asyncio.gather(
                *(app.send("orders", make_order(first_id + i, rng), key=None) for i in batch)
            )
            shown.show(progress(ledger, batch[-1] + 1, total, started))
        await _finish(ledger, broker, total, started, shown)
        shown.show(progress(ledger, total, total, started), final=True)
        elapsed = time.perf_counter() - started
        after = positions(broker) if broker else None
        fsyncs = _fsyncs(broker)
    _summary(ledger, total, elapsed, path, before, after)
    if fsyncs:
        print(
            f"\nwhat it waited for: {fsyncs:,} fdatasyncs of the log's files. With `fsync: batch`"
            " every send and\ncommit waits for the group fsync covering it, so this disk's fsync"
            " time paces the pipeline;\nBINDER_BINDERS__LOCAL__FSYNC=never shows it without"
            " waiting for the disk."
        )


def _fsyncs(broker: Broker | None) -> int:
    """How many file fsyncs the durable log has made so far (0 in memory)."""
    syncer = getattr(broker.storage, "syncer", None) if broker is not None else None
    return getattr(syncer, "fsyncs", 0)


async def _finish(
    ledger: Ledger, broker: Broker | None, total: int, started: float, shown: Progress
) -> None:
    """Wait until every group committed everything on its destination (in memory: counts)."""

    def busy() -> bool:
        if broker is not None:
            return any(p.lag for p in positions(broker).values())
        return ledger.billed + sum(ledger.rejected.values()) < total

    deadline = time.monotonic() + 120
    while busy():
        if time.monotonic() > deadline:
            raise SystemExit("\nthe pipeline stopped making progress")
        await asyncio.sleep(0.1)
        shown.show(progress(ledger, total, total, started))


def _summary(
    ledger: Ledger,
    total: int,
    elapsed: float,
    path: Path | None,
    before: dict[str, Position] | None,
    after: dict[str, Position] | None,
) -> None:
    handled = ledger.billed + sum(ledger.rejected.values())
    print(
        f"\n\nsent {total:,} orders; this run handled {handled:,} in {elapsed:.2f} s "
        f"({handled / elapsed:,.0f} msg/s end to end)"
    )
    print(
        f"billed      {ledger.billed:,} orders for {len(ledger.invoices)} customers, "
        f"revenue {ledger.revenue:,.2f}"
    )
    print(
        f"dead letters {sum(ledger.rejected.values())} on orders.pipeline.dlq: "
        + ", ".join(f"{n} {reason}" for reason, n in ledger.rejected.most_common())
    )
    in_order = all(ids == sorted(ids) for ids in ledger.invoices.values())
    print(f"per-customer order kept: {in_order}")
    if path is None or before is None or after is None:
        return
    print(f"\ndurable log in {path}/ (inspect it: binder log inspect {path})")
    pipeline = before["pipeline"]
    if pipeline.end == 0:
        print("first run on an empty log: every group started at the beginning")
        print("run `make demo` again: each group will resume where it stopped")
        return
    print(
        f"the log already held {pipeline.end:,} orders from earlier runs; group 'pipeline' "
        f"resumed at offset {pipeline.committed:,}, where its last commit left it"
    )
    if pipeline.lag:
        print(f"  ({pipeline.lag:,} orders left over from an interrupted run were handled first)")
    print(
        f"  nothing before it was processed again: this run handled "
        f"{after['pipeline'].committed - pipeline.committed:,} orders, "
        f"now at offset {after['pipeline'].committed:,} of {after['pipeline'].end:,}"
    )
    print("  (--clean starts over from an empty log)")


@contextlib.contextmanager
def kafka() -> Iterator[None]:
    """Make Kafka the default binder, on ``$KAFKA_BOOTSTRAP_SERVERS`` or a Tansu of our own."""
    os.environ["BINDER_DEFAULT_BINDER"] = "kafka"
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        print(f"on Kafka at {os.environ['KAFKA_BOOTSTRAP_SERVERS']}")
        yield
        return
    from binders.kafka.testing import Tansu

    with Tansu() as servers:
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = servers
        print(f"on Kafka: a Tansu broker started for this run at {servers} (memory only)")
        yield


@contextlib.contextmanager
def redis() -> Iterator[None]:
    """Make Redis the default binder, under a key prefix of this run's, deleted at the end."""
    import uuid

    from binders.redis.testing import DEFAULT_URL, delete_prefixed

    url = os.environ.get("REDIS_URL") or DEFAULT_URL
    prefix = f"orders-demo-{uuid.uuid4().hex[:8]}:"
    os.environ["BINDER_DEFAULT_BINDER"] = "redis"
    os.environ["BINDER_BINDERS__REDIS__URL"] = url
    os.environ["BINDER_BINDERS__REDIS__KEY_PREFIX"] = prefix
    print(f"on Redis at {url}, keys under {prefix!r} (deleted when the run ends)")
    try:
        yield
    finally:
        delete_prefixed(url, prefix)


@contextlib.contextmanager
def rabbit() -> Iterator[None]:
    """Make RabbitMQ the default binder, behind a name prefix of this run's; at the end the
    exchanges and queues of every configured destination and group are deleted."""
    import uuid

    from binders.rabbit.testing import DEFAULT_URL

    url = os.environ.get("RABBITMQ_URL") or DEFAULT_URL
    prefix = f"orders-demo-{uuid.uuid4().hex[:8]}."
    os.environ["BINDER_DEFAULT_BINDER"] = "rabbit"
    os.environ["BINDER_BINDERS__RABBIT__URL"] = url
    os.environ["BINDER_BINDERS__RABBIT__PREFIX"] = prefix
    print(f"on RabbitMQ, exchanges and queues named {prefix}* (deleted when the run ends)")
    try:
        yield
    finally:
        from examples.orders.app import app

        asyncio.run(_delete_topology(app))


async def _delete_topology(app: App) -> None:
    """Delete every configured destination of ``app``'s default binder with its groups and
    dead-letter destinations."""
    from binder import plugins
    from binder.retry import dead_letter_destination

    groups: dict[str, set[str]] = {}
    for binding in app.config.bindings.values():
        destination = binding.destination or ""
        named = groups.setdefault(destination, set())
        named.update(binding.producer.required_groups)
        if binding.group is not None:
            named.add(binding.group)
            letters = dead_letter_destination(
                destination, binding.group, binding.consumer.dead_letter_destination
            )
            groups.setdefault(letters, set())
    entry = app.config.binders[app.config.default_binder or ""]
    name = app.config.default_binder or ""
    binder = plugins.binder_types()[entry.type].create(name, entry.options)
    await binder.start()
    try:
        for destination, named in groups.items():
            await binder.delete(destination, sorted(named))
    finally:
        await binder.close()


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    for handler in logging.getLogger().handlers:  # dead letters are counted below, not logged
        handler.addFilter(lambda record: " dead-lettering " not in record.getMessage())
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", "--orders", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--clean", action="store_true", help="delete the log's data first")
    parser.add_argument("--kafka", action="store_true", help="run on the Kafka binder")
    parser.add_argument("--redis", action="store_true", help="run on the Redis binder")
    parser.add_argument("--rabbit", action="store_true", help="run on the RabbitMQ binder")
    args = parser.parse_args()
    backend = (
        kafka()
        if args.kafka
        else redis()
        if args.redis
        else rabbit()
        if args.rabbit
        else contextlib.nullcontext()
    )
    with backend:
        from examples.orders.app import app, ledger  # the app reads the environment: after kafka()

        path = log_path(app)
        if args.clean and path is not None and path.exists():
            shutil.rmtree(path)
            print(f"removed {path}/")
        try:
            asyncio.run(run(app, ledger, args.orders, args.seed))
        except KeyboardInterrupt:  # the app stopped cleanly: what it handled is committed
            print("\ninterrupted: what was handled is committed; run again to finish the rest")
            raise SystemExit(130) from None


if __name__ == "__main__":
    main()
