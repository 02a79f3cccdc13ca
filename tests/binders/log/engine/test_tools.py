"""``binder log inspect`` and ``binder log verify`` on a log directory."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from binder.cli import main
from binders.log.engine import Broker
from binders.log.engine.disk import TopicPolicy
from binders.log.engine.segment import parse_index, render_index

Durable = Callable[..., Broker]


def _fill(durable: Durable) -> None:
    broker = durable(policy=TopicPolicy(segment_bytes=300))
    broker.create_topic("orders", 2)
    for i in range(30):
        broker.append("orders", i % 2, [(None, f"order-{i}".encode(), {}, time.time())])
    broker.register_group("orders", "billing")
    broker.close()


def _segments(tmp_path: Path, partition: int = 0) -> list[Path]:
    return sorted((tmp_path / "log" / "topics" / "orders" / str(partition)).glob("*.log"))


def test_inspect_shows_topics_offsets_segments_and_group_lag(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(durable)
    assert main(["log", "inspect", str(tmp_path / "log")]) == 0
    out = capsys.readouterr().out
    assert "topics (1)" in out and "groups (1)" in out
    row = next(line.split() for line in out.splitlines() if line.split()[:2] == ["orders", "0"])
    assert row[2:5] == ["0", "15", "15"] and int(row[5]) == len(_segments(tmp_path))
    lag = next(line.split() for line in out.splitlines() if line.startswith("  billing"))
    assert lag[-4:] == ["0", "0", "15", "15"]  # partition, committed, end, lag


def test_verify_passes_a_clean_directory(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(durable)
    assert main(["log", "verify", str(tmp_path / "log")]) == 0
    assert "no damage" in capsys.readouterr().out


def test_verify_fails_on_a_flipped_byte_anywhere(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(durable)
    first = _segments(tmp_path)[0]  # sealed, with an index: only verify reads it all
    raw = bytearray(first.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    first.write_bytes(bytes(raw))
    assert main(["log", "verify", str(tmp_path / "log")]) == 1
    out = capsys.readouterr().out
    assert "DAMAGE" in out and first.name in out
    assert main(["log", "inspect", str(tmp_path / "log")]) == 0  # inspect trusts indexes


def test_verify_fails_on_a_torn_tail(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(durable)
    with _segments(tmp_path, 1)[-1].open("ab") as file:
        file.write(b"\x00" * 17)
    assert main(["log", "verify", str(tmp_path / "log")]) == 1
    assert "torn tail" in capsys.readouterr().out


def test_verify_fails_on_an_index_entry_that_points_astray(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = durable()
    for _ in range(200):
        broker.append("orders", 0, [(None, b"x" * 100, {}, time.time())])
    broker.close()
    index = _segments(tmp_path)[0].with_suffix(".index")
    log_bytes, end, max_ts, offsets, positions = parse_index(index.read_bytes())  # type: ignore[misc]
    positions[0] += 1  # a well-formed index whose first entry misses its batch
    index.write_bytes(render_index(log_bytes, end, max_ts, offsets, positions))
    assert main(["log", "verify", str(tmp_path / "log")]) == 1
    assert "which does not hold it" in capsys.readouterr().out


def test_verify_reports_a_torn_commit_record(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(durable)
    (offsets,) = (tmp_path / "log" / "groups" / "billing").glob("*.offsets")
    offsets.write_bytes(offsets.read_bytes()[:-2])
    assert main(["log", "verify", str(tmp_path / "log")]) == 1
    assert "commit record" in capsys.readouterr().out


def test_the_tools_name_a_missing_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["log", "verify", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().out
