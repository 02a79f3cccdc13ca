"""``binder send`` and ``binder tail`` through their real entry point, on every real binder:
a send → tail round trip with keys and headers, a group's commits, delays, and bad usage."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from binder.testing.processes import python_env, run_cli


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(params=["log", "redis", "rabbit", "kafka"])
def backend(
    request: pytest.FixtureRequest, cli_backend: Callable[[str], tuple[dict[str, Any], Path, str]]
) -> tuple[str, Path, str]:
    """(binder type, a config file using it, a destination no other test uses)."""
    _, config, prefix = cli_backend(request.param)
    return request.param, config, f"{prefix}cli-{uuid.uuid4().hex[:10]}"


def test_send_then_tail_round_trips_keys_headers_and_payloads(
    backend: tuple[str, Path, str],
) -> None:
    kind, config, destination = backend
    joined = run_cli("tail", destination, "--group", "ops", config=config)  # the group exists
    assert joined.returncode == 0, joined.stderr
    sent = run_cli(
        "send", destination, '{"id": 1, "name": "ünï"}', "--key", "k-1",
        "--header", "x-note=hello", "--format", "json", config=config,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    (where,) = _json_lines(sent.stdout)
    assert where["partition"] == 0
    if kind != "rabbit":  # AMQP has no positions
        assert where["offset"] is not None, "the backend's position is printed"
    lines = run_cli(
        "send", destination, "--lines", "--content-type", "text/plain", config=config,
        stdin="second\nthird\n",
    )  # fmt: skip
    assert lines.returncode == 0, lines.stderr
    assert len(lines.stdout.splitlines()) == 2
    tailed = run_cli("tail", destination, "--group", "ops", "--format", "json", config=config)
    assert tailed.returncode == 0, tailed.stderr
    rows = _json_lines(tailed.stdout)
    assert [row["payload"] for row in rows] == [{"id": 1, "name": "ünï"}, "second", "third"]
    assert rows[0]["key"] == "k-1" and rows[0]["headers"]["x-note"] == "hello"
    again = run_cli("tail", destination, "--group", "ops", config=config)
    assert again.returncode == 0 and again.stdout == "", "the group committed what it printed"
    if kind != "rabbit":  # a queue holds only what came after it: nothing to read anew
        everything = run_cli("tail", destination, "--from-beginning", config=config)
        assert everything.returncode == 0, everything.stderr
        assert len(everything.stdout.splitlines()) == 3
        last = run_cli("tail", destination, "--last", "1", "--format", "json", config=config)
        assert [row["payload"] for row in _json_lines(last.stdout)] == ["third"]


def test_send_with_delay_reports_the_due_time_and_tail_sees_it_once_due(tmp_path: Path) -> None:
    config = tmp_path / "app.yml"
    options = {"type": "log", "path": str(tmp_path / "log")}
    config.write_text(yaml.safe_dump({"binder": {"binders": {"disk": options}}}))
    sent = run_cli("send", "later", '{"n": 1}', "--delay", "300ms", config=config)
    assert sent.returncode == 0, sent.stderr
    assert "due 20" in sent.stdout  # an ISO time
    tailed = run_cli("tail", "later", "--from-beginning", "--format", "json", config=config)
    (row,) = _json_lines(tailed.stdout)
    assert row["payload"] == {"n": 1} and "x-deliver-at" in row["headers"]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["send", "d", "{not json"], "is not JSON"),
        (["send", "d", "1", "--header", "novalue"], "NAME=VALUE"),
        (["send", "d", "1", "--delay", "soon"], "--delay"),
        (["send", "d"], "give a payload"),
        (["send", "d", "1", "--binder", "nope"], "unknown binder 'nope'"),
        (["tail", "d", "--last", "0"], "--last"),
    ],
)
def test_bad_usage_exits_2_saying_what(tmp_path: Path, args: list[str], problem: str) -> None:
    config = tmp_path / "app.yml"
    config.write_text(yaml.safe_dump({"binder": {"binders": {"m": {"type": "log"}}}}))
    done = run_cli(*args, config=config)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert problem in done.stderr


def test_each_command_says_what_it_does() -> None:
    for command in ("send", "tail"):
        shown = subprocess.run(
            [sys.executable, "-m", "binder", command, "--help"],
            capture_output=True,
            text=True,
            env=python_env(),
        )
        assert shown.returncode == 0 and "--config" in shown.stdout and "--binder" in shown.stdout
