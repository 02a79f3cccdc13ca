"""``binder groups list|describe|reset`` through the real entry point on every real binder:
lag per partition, a reset to earliest re-delivers to a restarted member and is refused while
a member is live, ``--dry-run`` changes nothing, and RabbitMQ says what it cannot do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from binders.kafka.testing import FAST_GROUPS

ROOT = Path(__file__).parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def binder(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "binder", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=config.parent,
        env=ENV,
    )


@pytest.fixture(params=["log", "redis", "kafka"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path, str]]:
    """(binder type, a config file using it, a destination no other test uses): the binders
    with positions."""
    kind = request.param
    if kind == "log":
        options: dict[str, Any] = {"type": "log", "path": str(tmp_path / "log")}
    elif kind == "redis":
        options = {"type": "redis", "url": request.getfixturevalue("redis_url")}
        options["key-prefix"] = request.getfixturevalue("key_prefix")
    else:
        servers = request.getfixturevalue("kafka_bootstrap_servers")
        options = {"type": "kafka", "bootstrap-servers": servers, **FAST_GROUPS}
    config = tmp_path / "app.yml"
    config.write_text(yaml.safe_dump({"binder": {"binders": {"under-test": options}}}))
    yield kind, config, f"grp-{uuid.uuid4().hex[:10]}"


def _send(config: Path, destination: str, count: int) -> None:
    lines = "".join(f'{{"n": {n}}}\n' for n in range(count))
    done = subprocess.run(
        [sys.executable, "-m", "binder", "send", destination, "--lines", "--config", str(config)],
        input=lines,
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
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
    kind, config, destination = backend
    assert binder("tail", destination, "--group", "g", config=config).returncode == 0
    _send(config, destination, 5)
    (described,) = _json(
        binder("groups", "describe", destination, "--group", "g", "--format", "json", config=config)
    )
    assert [p["lag"] for p in described["partitions"]] == [5]
    read = binder("tail", destination, "--group", "g", config=config)
    assert len(read.stdout.splitlines()) == 5
    listing = binder("groups", "list", destination, "--format", "json", config=config)
    if kind == "kafka" and listing.returncode == 1:  # Tansu 0.6: aiokafka cannot read its answer
        assert "ListGroups" in listing.stderr
    else:
        assert "g" in _json(listing)  # on Kafka: the groups that committed there
    (described,) = _json(
        binder("groups", "describe", destination, "--group", "g", "--format", "json", config=config)
    )
    assert [p["lag"] for p in described["partitions"]] == [0]
    reset = ["groups", "reset", destination, "--group", "g", "--to", "earliest"]
    dry = _json(binder(*reset, "--dry-run", "--format", "json", config=config))
    assert dry["dry-run"] is True and len(dry["changes"]) == 1
    assert binder("tail", destination, "--group", "g", config=config).stdout == "", "unchanged"
    moved = binder(*reset, config=config)
    assert moved.returncode == 0, moved.stderr
    again = binder("tail", destination, "--group", "g", "--format", "json", config=config)
    assert [json.loads(line)["payload"]["n"] for line in again.stdout.splitlines()] == list(
        range(5)
    ), "a member after the reset reads everything again"


def test_reset_is_refused_while_a_member_is_live_naming_it(
    backend: tuple[str, Path, str],
) -> None:
    _, config, destination = backend
    assert binder("tail", destination, "--group", "g", config=config).returncode == 0
    member = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(MEMBER), str(_member_config(config, destination))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=config.parent,
    )
    try:
        _send(config, destination, 1)
        assert member.stdout is not None and member.stdout.readline().strip() == "0"
        deadline = time.monotonic() + 20
        while True:  # its membership is visible to another process
            refused = binder(
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
    assert binder("tail", destination, "--group", "g", config=config).returncode == 0
    for args in (["list", destination], ["reset", destination, "--group", "g", "--to", "earliest"]):
        done = binder("groups", *args, config=config)
        assert done.returncode == 2, done.stderr
        assert "rabbit binder cannot" in done.stderr
    _send(config, destination, 3)
    (described,) = _json(
        binder("groups", "describe", destination, "--group", "g", "--format", "json", config=config)
    )
    assert [p["lag"] for p in described["partitions"]] == [3]


def test_a_bad_to_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "app.yml"
    options = {"type": "log", "path": str(tmp_path / "log")}
    config.write_text(yaml.safe_dump({"binder": {"binders": {"disk": options}}}))
    done = binder("groups", "reset", "d", "--group", "g", "--to", "yesterday", config=config)
    assert done.returncode == 2 and "--to 'yesterday'" in done.stderr
