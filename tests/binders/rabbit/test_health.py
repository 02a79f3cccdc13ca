"""``/health/ready`` of a real ``binder run`` process on RabbitMQ: 503 while a binding is
down (the broker closed its connection), 200 again once its consumer is back."""

from __future__ import annotations

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

from binders.rabbit.testing import close_connections

ROOT = Path(__file__).parents[3]


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_ready_turns_503_when_a_binding_fails_and_200_when_it_is_back(
    tmp_path: Path, rabbit_url: str, destination: str, group: str
) -> None:
    binder = f"health-{uuid.uuid4().hex[:8]}"  # names the process's connection
    (tmp_path / "readyapp.py").write_text(
        textwrap.dedent("""
        from binder import App
        app = App()

        @app.consumer
        def sink(value):
            pass
        """),
        encoding="utf-8",
    )
    config = tmp_path / "app.yml"
    config.write_text(
        json.dumps(
            {
                "binder": {
                    "binders": {binder: {"type": "rabbit", "url": rabbit_url}},
                    "bindings": {"sink-in-0": {"destination": destination, "group": group}},
                }
            }
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "binder", "run", "readyapp:app", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--metrics-port", "0"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    seen: list[tuple[int, str]] = []
    errors: list[str] = []
    try:
        port = None
        for line in proc.stderr:
            found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else port
            if "running:" in line:
                break
        assert port is not None, "the metrics port was logged"
        ready = f"http://127.0.0.1:{port}/health/ready"
        status, body = _get(ready)
        seen.append((status, body["bindings"]["sink-in-0"]["state"]))
        assert close_connections(f"streambinder {binder}") == 1
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # down (restarting after 1 s), then up again
            status, body = _get(ready)
            state = body["bindings"]["sink-in-0"]["state"]
            if (status, state) != seen[-1]:
                seen.append((status, state))
                if status == 503:
                    assert body["status"] == "down"
                    errors.append(body["bindings"]["sink-in-0"]["error"])
            if len(seen) >= 3 and status == 200:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    assert proc.returncode == 0, rest
    assert seen[0] == (200, "running")
    assert (503, "failed") in seen, seen
    assert errors and all(errors), "a failed binding says why"
    assert seen[-1] == (200, "running"), seen
