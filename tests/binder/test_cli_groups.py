"""``binder groups list|describe|reset`` through the real entry point on every real binder:
lag per partition, a reset to earliest re-delivers to a restarted member and is refused while
a member is live, ``--dry-run`` changes nothing, and RabbitMQ says what it cannot do."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from binder.testing.processes import python_env, run_cli


@pytest.fixture(params=["log", "redis", "kafka"])
def backend(
    request: pytest.FixtureRequest, cli_backend: Callable[[str], tuple[dict[str, Any], Path, str]]
) -> tuple[str, Path, str]:
    """(binder type, a config file using it, a destination no other test uses): the binders
    with positions."""
    _, config, _ = cli_backend(request.param)
    return request.param, config, f"grp-{uuid.uuid4().hex[:10]}"


def _send(config: Path, destination: str, count: int) -> None:
    lines = "".join(f'{{"n": {n}}}\n' for n in range(count))
    done = run_cli("send", destination, "--lines", config=config, stdin=lines)
    assert done.returncode == 0, done.stderr


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


MEMBER = """
import sys
from binder import App
app = App.from_yaml(sys.argv[1])
@app.consumer
def sink(payload):
    print(payload["n"], flush=True)
app.run()
"""


def _member_config(config: Path, destination: str) -> Path:
    """``config`` with a binding of the consumer ``sink`` in group ``g`` on ``destination``."""
    doc = yaml.safe_load(config.read_text())
    doc["binder"]["bindings"] = {"sink-in-0": {"destination": destination, "group": "g"}}
    member = config.with_name("member.yml")
    member.write_text(yaml.safe_dump(doc))
    return member


def test_describe_shows_lag_and_reset_to_earliest_redelivers(
    backend: tuple[str, Path, str],
) -> None:
    _, config, destination = backend
    assert run_cli("tail", destination, "--group", "g", config=config).returncode == 0
    _send(config, destination, 5)
    (described,) = _json(
        run_cli(
            "groups", "describe", destination, "--group", "g", "--format", "json", config=config
        )
    )
    assert [p["lag"] for p in described["partitions"]] == [5]
    read = run_cli("tail", destination, "--group", "g", config=config)
    assert len(read.stdout.splitlines()) == 5
    listing = run_cli("groups", "list", destination, "--format", "json", config=config)
    assert "g" in _json(listing)  # the groups that committed there
    (described,) = _json(
        run_cli(
            "groups", "describe", destination, "--group", "g", "--format", "json", config=config
        )
    )
    assert [p["lag"] for p in described["partitions"]] == [0]
    reset = ["groups", "reset", destination, "--group", "g", "--to", "earliest"]
    dry = _json(run_cli(*reset, "--dry-run", "--format", "json", config=config))
    assert dry["dry-run"] is True and len(dry["changes"]) == 1
    assert run_cli("tail", destination, "--group", "g", config=config).stdout == "", "unchanged"
    moved = run_cli(*reset, config=config)
    assert moved.returncode == 0, moved.stderr
    again = run_cli("tail", destination, "--group", "g", "--format", "json", config=config)
    assert [json.loads(line)["payload"]["n"] for line in again.stdout.splitlines()] == list(
        range(5)
    ), "a member after the reset reads everything again"


def test_reset_is_refused_while_a_member_is_live_naming_it(
    backend: tuple[str, Path, str],
) -> None:
    _, config, destination = backend
    assert run_cli("tail", destination, "--group", "g", config=config).returncode == 0
    member = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(MEMBER), str(_member_config(config, destination))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
        cwd=config.parent,
    )
    try:
        _send(config, destination, 1)
        assert member.stdout is not None and member.stdout.readline().strip() == "0"
        deadline = time.monotonic() + 20
        while True:  # its membership is visible to another process
            refused = run_cli(
                "groups", "reset", destination, "--group", "g", "--to", "latest", config=config
            )
            if refused.returncode == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert "live members" in refused.stderr and "--force" in refused.stderr
    finally:
        member.send_signal(signal.SIGTERM)
        member.communicate(timeout=30)


def test_rabbitmq_says_what_it_cannot_do_and_exits_2(
    tmp_path: Path, rabbit_url: str, rabbit_prefix: str
) -> None:
    config = tmp_path / "app.yml"
    options = {"type": "rabbit", "url": rabbit_url}
    config.write_text(yaml.safe_dump({"binder": {"binders": {"rb": options}}}))
    destination = f"{rabbit_prefix}grp"
    assert run_cli("tail", destination, "--group", "g", config=config).returncode == 0
    for args in (["list", destination], ["reset", destination, "--group", "g", "--to", "earliest"]):
        done = run_cli("groups", *args, config=config)
        assert done.returncode == 2, done.stderr
        assert "rabbit binder cannot" in done.stderr
    _send(config, destination, 3)
    (described,) = _json(
        run_cli(
            "groups", "describe", destination, "--group", "g", "--format", "json", config=config
        )
    )
    assert [p["lag"] for p in described["partitions"]] == [3]


def test_a_bad_to_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "app.yml"
    options = {"type": "log", "path": str(tmp_path / "log")}
    config.write_text(yaml.safe_dump({"binder": {"binders": {"disk": options}}}))
    done = run_cli("groups", "reset", "d", "--group", "g", "--to", "yesterday", config=config)
    assert done.returncode == 2 and "--to 'yesterday'" in done.stderr
