"""Health: ``app.health()``, and ``/health/live``, ``/health/ready`` and ``/metrics`` of a real
``binder run`` process over HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from binder import App, BindingState
from binder.bindings import InputBinding
from binder.health import HealthServer
from binders.log.engine import Broker

ROOT = Path(__file__).parents[2]


FEED_AND_SINK = (
    "    feed-out-0: {destination: in}\n"
    "    sink-in-0: {destination: in, group: g, consumer: {max-attempts: 2, "
    "back-off-initial-interval: 10ms}}\n"
)
"""Bindings of a supplier feeding a consumer that retries once, then dead-letters."""


def _write_config(folder: Path, bindings: str) -> Path:
    """``folder/app.yml`` holding ``bindings`` (YAML lines under ``binder.bindings``)."""
    config = folder / "app.yml"
    config.write_text("binder:\n  bindings:\n" + bindings)
    return config


def _env(folder: Path) -> dict[str, str]:
    """The environment of a ``binder run`` of an app module written in ``folder``."""
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{ROOT}"}


@pytest.fixture
def broker() -> Any:
    name = f"health-{uuid.uuid4().hex}"
    yield name
    Broker.forget(name)


async def _state_after(binding: InputBinding, wanted: BindingState, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while binding.state is not wanted and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return binding.state


def test_health_is_up_while_bindings_run_or_pause_and_down_when_one_fails(broker: str) -> None:
    bindings = {"sink-in-0": {"destination": "in", "group": "g"}}
    doc = {"binders": {"local": {"type": "log", "broker": broker}}, "bindings": bindings}
    app = App(config={"binder": doc}, environ={})
    app.consumer(lambda payload: None, name="sink")

    async def scenario() -> list[dict[str, Any]]:
        seen = []
        async with app:
            binding = app.binding("sink-in-0")
            assert isinstance(binding, InputBinding)
            seen.append(app.health())
            binding.pause()
            seen.append(app.health())
            binding.resume()
            Broker.forget(broker)  # the backend goes away: the binding fails, then restarts
            await _state_after(binding, BindingState.FAILED)
            seen.append(app.health())
        return seen

    running, paused, failed = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert running == {
        "status": "up",
        "bindings": {"sink-in-0": {"state": "running", "error": None}},
    }
    assert paused["status"] == "up" and paused["bindings"]["sink-in-0"]["state"] == "paused"
    assert failed["status"] == "down"
    entry = failed["bindings"]["sink-in-0"]
    assert entry["state"] == "failed" and entry["error"]


def test_the_server_answers_health_metrics_and_nothing_else() -> None:
    report = {"status": "down", "bindings": {"b": {"state": "failed", "error": "boom"}}}

    async def scenario() -> dict[str, tuple[int, bytes]]:
        server = HealthServer(lambda: report, lambda: b"m 1\n", port=0)
        await server.start()
        try:
            return {
                path: await asyncio.to_thread(_get, f"http://127.0.0.1:{server.port}{path}")
                for path in ("/health/live", "/health/ready", "/metrics", "/nope")
            }
        finally:
            await server.close()

    answers = asyncio.run(scenario())
    assert answers["/health/live"][0] == 200
    assert answers["/health/ready"] == (503, json.dumps(report, separators=(",", ":")).encode())
    assert answers["/metrics"] == (200, b"m 1\n")
    assert answers["/nope"][0] == 404


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_binder_run_serves_health_and_metrics_on_its_metrics_port(tmp_path: Path) -> None:
    (tmp_path / "healthapp.py").write_text(
        textwrap.dedent("""
        from binder import App
        app = App()

        @app.consumer
        def sink(value):
            pass
        """),
        encoding="utf-8",
    )
    config = _write_config(tmp_path, "    sink-in-0: {destination: in, group: g}\n")
    env = _env(tmp_path)
    command = [sys.executable, "-m", "binder", "run", "healthapp:app", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--metrics-port", "0"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        port = None
        for line in proc.stderr:
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
            if "running:" in line:
                break
        assert port is not None, "the metrics port was logged"
        base = f"http://127.0.0.1:{port}"
        assert _get(f"{base}/health/live")[0] == 200
        status, body = _get(f"{base}/health/ready")
        assert status == 200
        assert json.loads(body) == {
            "status": "up",
            "bindings": {"sink-in-0": {"state": "running", "error": None}},
        }
        status, text = _get(f"{base}/metrics")
        assert status == 200 and b"python_info" in text, "the default registry, as text"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    assert proc.returncode == 0, rest


@pytest.mark.parametrize("case", ["no prometheus_client", "metrics off"])
def test_without_metrics_the_endpoint_answers_501_saying_why(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc: dict[str, Any] = {}
    if case == "metrics off":
        doc = {"metrics": {"enabled": False}}
    else:
        monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    app = App(config={"binder": doc}, environ={})

    async def scenario() -> tuple[int, bytes, int]:
        server = HealthServer(app.health, app._metrics_text(), port=0)
        await server.start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            status, body = await asyncio.to_thread(_get, f"{base}/metrics")
            live, _ = await asyncio.to_thread(_get, f"{base}/health/live")
            return status, body, live
        finally:
            await server.close()

    status, body, live = asyncio.run(scenario())
    assert status == 501 and live == 200
    why = b"streambinder[metrics]" if case == "no prometheus_client" else b"enabled: false"
    assert why in body


def test_the_metrics_port_and_host_are_configuration_keys() -> None:
    app = App(config={"binder": {"metrics": {"port": 9464, "host": "0.0.0.0"}}}, environ={})
    assert (app.config.metrics.port, app.config.metrics.host) == (9464, "0.0.0.0")
    env = App(config=None, environ={"BINDER_METRICS__PORT": "9100"})
    assert env.config.metrics.port == 9100 and env.config.metrics.host == "127.0.0.1"


def test_binder_run_log_format_json_prints_one_object_a_line(tmp_path: Path) -> None:
    """The records of a failing message carry its binding, destination, group and partition."""
    (tmp_path / "jsonapp.py").write_text(
        textwrap.dedent("""
        from binder import App
        app = App()

        @app.consumer
        def sink(value):
            raise ValueError("no")

        @app.supplier
        def feed():
            return {"n": 1}
        """),
        encoding="utf-8",
    )
    config = _write_config(tmp_path, FEED_AND_SINK)
    env = _env(tmp_path)
    command = [sys.executable, "-m", "binder", "run", "jsonapp:app", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--log-format", "json"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:
            lines.append(json.loads(line))
            if "dead-lettering" in lines[-1]["message"]:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=20)
    lines += [json.loads(line) for line in rest.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert all(line["logger"].startswith("binder") for line in lines)
    letter = next(line for line in lines if "dead-lettering" in line["message"])
    assert (letter["binding"], letter["destination"], letter["group"]) == ("sink-in-0", "in", "g")
    assert letter["partition"] == 0 and "ValueError: no" in letter["exception"]
    assert lines[-1]["message"] == "stopped"


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_binder_run_metrics_move_as_messages_flow(tmp_path: Path) -> None:
    """A supplier feeds a consumer that fails every third message: scraped twice over HTTP,
    the counters grow, and failures show as retried then dead_lettered."""
    (tmp_path / "flowapp.py").write_text(
        textwrap.dedent("""
        import itertools
        from binder import App
        app = App()
        numbers = itertools.count()

        @app.supplier(interval=0.02)
        def feed():
            return {"n": next(numbers)}

        @app.consumer
        def sink(order):
            if order["n"] % 3 == 0:
                raise ValueError("every third")
        """),
        encoding="utf-8",
    )
    config = _write_config(tmp_path, FEED_AND_SINK)
    env = _env(tmp_path)
    command = [sys.executable, "-m", "binder", "run", "flowapp:app", "--config", str(config)]
    log_file = tmp_path / "run.log"
    with log_file.open("w") as sink:
        proc = subprocess.Popen(
            [*command, "--metrics-port", "0"], cwd=tmp_path, env=env, stderr=sink, text=True
        )
    group = {"binding": "sink-in-0", "destination": "in", "group": "g"}
    try:
        deadline = time.monotonic() + 20
        port = None
        while port is None:
            assert time.monotonic() < deadline and proc.poll() is None, log_file.read_text()
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", log_file.read_text())
            port = int(found.group(1)) if found else time.sleep(0.05)
        scrapes = []
        for _ in range(2):
            text = ""
            for _ in range(100):
                text = _get(f"http://127.0.0.1:{port}/metrics")[1].decode()
                dead = _sample(
                    text, "streambinder_messages_processed_total", **group, outcome="dead_lettered"
                )
                ok = _sample(text, "streambinder_messages_processed_total", **group, outcome="ok")
                if ok and dead and (not scrapes or dead > scrapes[-1]["dead"]):
                    break
                time.sleep(0.1)
            scrapes.append(
                {
                    "received": _sample(text, "streambinder_messages_received_total", **group),
                    "ok": _sample(
                        text, "streambinder_messages_processed_total", **group, outcome="ok"
                    ),
                    "retried": _sample(
                        text, "streambinder_messages_processed_total", **group, outcome="retried"
                    ),
                    "dead": _sample(
                        text,
                        "streambinder_messages_processed_total",
                        **group,
                        outcome="dead_lettered",
                    ),
                    "up": _sample(text, "streambinder_binding_up", binding="sink-in-0"),
                }
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    first, second = scrapes
    assert first["up"] == 1.0 and first["ok"] and first["retried"] and first["dead"]
    assert second["received"] > first["received"] and second["dead"] > first["dead"]
    assert second["retried"] >= second["dead"], "each dead letter was retried once first"
