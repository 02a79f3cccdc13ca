"""The orders pipeline under ``app.test()``: every binder swapped for an in-memory log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from binder.partitioning import select_partition
from examples.orders.app import app, ledger

GOOD = {"id": 1, "customer_id": "c-0001", "items": [{"sku": "A", "qty": 2, "price": 5.0}]}


def test_a_good_order_is_enriched_partitioned_and_billed() -> None:
    with app.test() as t:
        t.send("orders", GOOD)
        enriched = t.receive("validateenrich-out-0", timeout=5)
        assert enriched is not None
        assert enriched.payload["total"] == 10.0
        assert enriched.payload["region"] == "EU"
        assert enriched.partition == select_partition(b"c-0001", 4)


def test_a_bad_order_is_dead_lettered_without_retries() -> None:
    with app.test() as t:
        t.send("orders", {**GOOD, "id": 2, "items": []})
        letter = t.receive("orders.pipeline.dlq", timeout=5)
        assert letter is not None
        assert letter.payload["id"] == 2
        assert letter.headers["x-exception-type"].endswith("InvalidOrder")
        assert letter.headers["x-delivery-attempt"] == "1"
        assert letter.headers["x-original-destination"] == "orders"
        assert letter.headers["x-original-group"] == "pipeline"


def test_an_undecodable_order_is_dead_lettered_and_does_not_block() -> None:
    with app.test() as t:
        t.send("orders", b"{not json")
        t.send("orders", {**GOOD, "id": 3})
        letter = t.receive("orders.pipeline.dlq", timeout=5)
        assert letter is not None
        assert letter.headers["x-exception-type"] == "binder.errors.ConversionError"
        assert t.receive("validateenrich-out-0", timeout=5).payload["id"] == 3


def test_billing_keeps_each_customers_order() -> None:
    ids = range(1000, 1200)
    with app.test() as t:
        for i in ids:
            t.send("orders", {**GOOD, "id": i, "customer_id": f"c-{i % 7:04d}"})
        deadline = time.monotonic() + 10
        while _billed(ids) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert _billed(ids) == len(ids)
    for invoices in ledger.invoices.values():
        mine = [i for i in invoices if i in ids]
        assert mine == sorted(mine)


def _billed(ids: range) -> int:
    return sum(1 for invoices in ledger.invoices.values() for i in invoices if i in ids)


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        # a Tansu the demo starts itself (memory only, gone with the process)
        ("--kafka", "on Kafka: a Tansu broker started for this run"),
        ("--redis", "on Redis at"),  # the machine's Redis, under a key prefix it deletes
        ("--rabbit", "on RabbitMQ, exchanges and queues named"),  # behind a prefix, deleted
    ],
    ids=["kafka", "redis", "rabbitmq"],
)
def test_the_demo_runs_unchanged_on_another_binder(flag: str, says: str) -> None:
    """Only the default binder changes: the same pipeline, leaving nothing behind."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "BINDER_"))}
    done = subprocess.run(
        [sys.executable, "-m", "examples.orders.demo", flag, "-n", "400"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert says in done.stdout
    assert "sent 400 orders; this run handled 400" in done.stdout
    assert "per-customer order kept: True" in done.stdout


def test_ctrl_c_on_the_demo_ends_with_a_short_line(tmp_path: Path) -> None:
    """SIGINT mid-run: the app drains and commits, the demo says so in one line, no traceback;
    the progress line is redrawn with a carriage return only on a terminal."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "BINDER_"))}
    environment["BINDER_BINDERS__LOCAL__PATH"] = str(tmp_path / "log")
    demo = subprocess.Popen(
        [sys.executable, "-m", "examples.orders.demo", "-n", "2000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert demo.stdout is not None
        first = demo.stdout.readline()  # a progress line: the pipeline is running
        assert first.startswith("[") and "\r" not in first
        demo.send_signal(signal.SIGINT)
        rest, errors = demo.communicate(timeout=60)
    finally:
        demo.kill()
        demo.wait()
    assert demo.returncode == 130, errors[-2000:]
    assert "interrupted: what was handled is committed" in rest
    assert "Traceback" not in errors and len(errors.splitlines()) <= 2, errors[-2000:]
