"""Failures are logged with their traceback; app.run() logs even when the app set up none."""

from __future__ import annotations

import logging
import queue
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from binder import App, HandlerError

TIMEOUT = 5.0


def _app(**consumer: Any) -> App:
    options = {"max-attempts": 3, "back-off-initial-interval": 0.001, **consumer}
    bindings = {"doomed-in-0": {"destination": "orders", "group": "g", "consumer": options}}
    return App(config={"binder": {"bindings": bindings}}, environ={})


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "binder.bindings"]


def _register(app: App, handled: queue.Queue[int]) -> None:
    @app.consumer
    def doomed(order: dict[str, int]) -> None:
        if order["id"] < 0:
            raise RuntimeError(f"cannot handle {order['id']}")
        handled.put(order["id"])


def test_retried_attempts_warn_and_the_dead_letter_errors_with_the_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="binder.bindings")
    app = _app()
    _register(app, queue.Queue())
    with app.test() as t:
        t.send("orders", {"id": -1})
        assert t.receive("orders.g.dlq", timeout=TIMEOUT) is not None
    records = _records(caplog)
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING, logging.ERROR]
    assert "attempt 1 of 3 failed" in records[0].getMessage()
    assert "dead-lettering" in records[2].getMessage()
    for record in records:
        assert record.exc_info is not None and isinstance(record.exc_info[1], HandlerError)
        assert record.binding == "doomed-in-0"  # type: ignore[attr-defined]
        assert (record.destination, record.group) == ("orders", "g")  # type: ignore[attr-defined]
    text = caplog.text
    assert "Traceback (most recent call last)" in text
    assert "raise RuntimeError(f\"cannot handle {order['id']}\")" in text


def test_a_dropped_message_is_an_error_with_the_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="binder.bindings")
    app = _app(**{"max-attempts": 1, "dead-letter": False})
    handled: queue.Queue[int] = queue.Queue()
    _register(app, handled)
    with app.test() as t:
        t.send("orders", {"id": -1}, key="k")
        t.send("orders", {"id": 2}, key="k")  # same partition, after the dropped one
        assert handled.get(timeout=TIMEOUT) == 2
    (record,) = _records(caplog)
    assert record.levelno == logging.ERROR
    assert "dropping 1 failed message(s) after 1 attempt(s)" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1].__cause__, RuntimeError)


def test_an_undecodable_payload_is_an_error_with_its_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="binder.bindings")
    app = _app()
    _register(app, queue.Queue())
    with app.test() as t:
        t.send("orders", b"{not json", headers={"contentType": "application/json"})
        assert t.receive("orders.g.dlq", timeout=TIMEOUT) is not None
    (record,) = _records(caplog)
    assert record.levelno == logging.ERROR, "never retried, so no warning first"
    assert "undecodable" in record.getMessage()
    assert "payload is not valid JSON" in caplog.text


RUN_WITHOUT_LOGGING = """
from binder import App
app = App(config={"binder": {"bindings": {"audit-in-0": {"destination": "orders"}}}}, environ={})

@app.consumer
def audit(order: dict) -> None:
    pass

app.run()
"""


def test_run_configures_logging_when_the_app_has_none() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_WITHOUT_LOGGING], stderr=subprocess.PIPE, text=True
    )
    watchdog = threading.Timer(30, proc.kill)  # a hung child fails the test, never blocks it
    watchdog.start()
    try:
        assert proc.stderr is not None
        first = ""
        while "running:" not in first and proc.poll() is None:
            first += proc.stderr.readline()  # blocks until the app says it runs
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        proc.wait(timeout=15)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, first + rest
    assert "INFO binder.app: running: audit-in-0" in first
    lines = rest.splitlines()
    assert lines and lines[-1].endswith("INFO binder.app: stopped"), rest
