"""``binder dlq list|show|replay`` through the real entry point on real binders: counts by
exception type, letters with their stack trace, a filtered replay to the original destination,
parking a letter replayed too often, and a replay killed half way and run again that sends
each letter exactly once: killed at a random point, and killed in the one window, after a
copy was accepted and before its letter was committed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from binder import App
from binder.testing.processes import python_env, run_cli


@pytest.fixture(params=["log", "redis", "rabbit", "kafka"])
def backend(
    request: pytest.FixtureRequest, cli_backend: Callable[[str], tuple[dict[str, Any], Path, str]]
) -> tuple[str, dict[str, Any], Path, str]:
    options, config, prefix = cli_backend(request.param)
    return request.param, options, config, f"{prefix}dlq-{uuid.uuid4().hex[:10]}"


def _dead_letter(options: dict[str, Any], destination: str, count: int) -> None:
    """Send ``count`` orders that a consumer in group ``g`` fails on (even: ValueError, odd:
    KeyError), at once, so each is dead-lettered."""
    bindings = {
        "check-in-0": {"destination": destination, "group": "g", "consumer": {"max-attempts": 1}}
    }
    app = App({"binder": {"binders": {"under-test": options}, "bindings": bindings}}, environ={})
    seen: list[int] = []

    @app.consumer
    def check(order: dict[str, Any]) -> None:
        seen.append(order["n"])
        raise (ValueError if order["n"] % 2 == 0 else KeyError)(f"order {order['n']}")

    async def scenario() -> None:
        async with app:
            for n in range(count):
                await app.send(destination, {"n": n}, key=f"k{n}")
            while sum(b.stats.dead_lettered for b in app.bindings.values()) < count:  # type: ignore[union-attr]
                await asyncio.sleep(0.02)

    asyncio.run(scenario())


def _payloads(done: subprocess.CompletedProcess[str]) -> list[Any]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line)["payload"] for line in done.stdout.splitlines() if line.strip()]


def test_list_show_and_a_filtered_replay(backend: tuple[str, dict[str, Any], Path, str]) -> None:
    _, options, config, destination = backend
    _dead_letter(options, destination, 6)
    listed = run_cli("dlq", "list", destination, "--group", "g", "--format", "json", config=config)
    assert listed.returncode == 0, listed.stderr
    counts = json.loads(listed.stdout)
    assert counts["total"] == 6
    by_type = {row["exception-type"]: row["count"] for row in counts["by-exception-type"]}
    assert by_type == {"builtins.ValueError": 3, "builtins.KeyError": 3}
    shown = run_cli("dlq", "show", destination, "--group", "g", "--limit", "2", config=config)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("Traceback (most recent call last)") == 2
    plan = run_cli(
        "dlq", "replay", destination, "--group", "g", "--dry-run", "--format", "json",
        "--filter", "headers['x-exception-type'] == 'builtins.ValueError'", config=config,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    actions = [step["action"] for step in json.loads(plan.stdout)["letters"]]
    assert sorted(actions) == ["keep"] * 3 + ["replay"] * 3
    again = run_cli("dlq", "list", destination, "--group", "g", "--format", "json", config=config)
    assert json.loads(again.stdout)["total"] == 6, "a dry run takes nothing"
    replayed = run_cli(
        "dlq", "replay", destination, "--group", "g", "--format", "json",
        "--filter", "headers['x-exception-type'] == 'builtins.ValueError'", config=config,
    )  # fmt: skip
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout.splitlines()[-1]) == {"replayed": 3, "parked": 0, "kept": 3}
    back = run_cli("tail", destination, "--group", "g", "--format", "json", config=config)
    rows = [json.loads(line) for line in back.stdout.splitlines()]
    assert sorted(row["payload"]["n"] for row in rows) == [0, 2, 4]
    assert all(row["headers"]["x-replay-count"] == "1" for row in rows)
    assert not [h for row in rows for h in row["headers"] if h.startswith("x-exception-")]
    assert {row["key"] for row in rows} == {"k0", "k2", "k4"}


def test_a_letter_replayed_too_often_is_parked(
    backend: tuple[str, dict[str, Any], Path, str],
) -> None:
    _, options, config, destination = backend
    _dead_letter(options, destination, 2)
    done = run_cli(
        "dlq", "replay", destination, "--group", "g", "--max-replays", "0", "--format", "json",
        config=config,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"replayed": 0, "parked": 2, "kept": 0}
    parked = run_cli("dlq", "list", f"{destination}.g.dlq", "--group", "x", "--dlq",
                     f"{destination}.g.dlq.parked", "--format", "json", config=config)  # fmt: skip
    assert json.loads(parked.stdout)["total"] == 2


def test_a_replay_killed_half_way_and_run_again_sends_each_letter_once(tmp_path: Path) -> None:
    options = {"type": "log", "path": str(tmp_path / "log")}
    config = tmp_path / "app.yml"
    config.write_text(yaml.safe_dump({"binder": {"binders": {"disk": options}}}))
    destination = "orders"
    _dead_letter(options, destination, 40)
    replay = [sys.executable, "-m", "binder", "dlq", "replay", destination, "--group", "g",
              "--rate", "40", "--config", str(config)]  # fmt: skip
    first = subprocess.Popen(
        replay, stderr=subprocess.PIPE, text=True, env=python_env(), cwd=tmp_path
    )
    assert first.stderr is not None
    for _ in range(15):  # each line is printed once its letter was committed
        assert first.stderr.readline().startswith("replay ")
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    second = subprocess.run(replay, capture_output=True, text=True, env=python_env(), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    fresh = run_cli("tail", destination, "--from-beginning", "--format", "json", config=config)
    replays = [p for p in _payloads(fresh)][40:]  # after the 40 originals
    assert sorted(p["n"] for p in replays) == list(range(40)), "each letter exactly once"


_KILLING_REPLAY = """
import os, signal, sys
from binder.cli import main
from binder.outputs import OutputBinding

target, after = os.environ["KILL_TARGET"], int(os.environ["KILL_AFTER"])
copies = 0


def killing(send):
    async def sending(self, records):
        global copies
        placed = await send(self, records)
        if self.destination == target:
            copies += len(records)
            if copies >= after:  # the copy is accepted, its letter not yet committed
                os.kill(os.getpid(), signal.SIGKILL)
        return placed
    return sending


OutputBinding.send_records = killing(OutputBinding.send_records)
OutputBinding.send_located = killing(OutputBinding.send_located)
sys.exit(main(sys.argv[1:]))
"""


def test_a_replay_killed_after_a_send_and_before_its_commit_sends_it_once(
    backend: tuple[str, dict[str, Any], Path, str], tmp_path: Path
) -> None:
    kind, options, config, destination = backend
    _dead_letter(options, destination, 8)
    script = tmp_path / "killing_replay.py"
    script.write_text(_KILLING_REPLAY)
    replay = ["dlq", "replay", destination, "--group", "g", "--config", str(config)]
    env = {**python_env(), "KILL_TARGET": destination, "KILL_AFTER": "3"}
    killed = subprocess.run(
        [sys.executable, str(script), *replay], capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    lines = killed.stderr.splitlines()
    assert sum(line.startswith("replay ") for line in lines) == 2, killed.stderr
    again = run_cli(*replay[:-2], "--format", "json", config=config)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1]) == {"replayed": 6, "parked": 0, "kept": 0}
    back = run_cli("tail", destination, "--group", "g", "--format", "json", config=config)
    copies = sorted(p["n"] for p in _payloads(back))
    if kind == "rabbit":  # no journal (an exchange cannot be read back): at least once
        assert sorted(set(copies)) == list(range(8)) and len(copies) == 9, copies
    else:
        assert copies == list(range(8)), "each letter exactly once"
    third = run_cli(*replay[:-2], "--format", "json", config=config)
    assert json.loads(third.stdout.splitlines()[-1]) == {"replayed": 0, "parked": 0, "kept": 0}


def test_a_record_in_the_journal_that_is_no_note_is_passed_over(tmp_path: Path) -> None:
    options = {"type": "log", "path": str(tmp_path / "log")}
    config = tmp_path / "app.yml"
    config.write_text(yaml.safe_dump({"binder": {"binders": {"disk": options}}}))
    _dead_letter(options, "orders", 2)
    for foreign in ("not json", '{"letter": "orders.g.dlq/0/0"}'):
        sent = run_cli("send", "orders.g.dlq.replay.replaying", foreign, "--content-type",
                       "text/plain", config=config)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    done = run_cli("dlq", "replay", "orders", "--group", "g", "--format", "json", config=config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"replayed": 2, "parked": 0, "kept": 0}
    assert done.stderr.count("not a replay's note") == 2, done.stderr
