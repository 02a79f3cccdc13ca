"""``binder log inspect``, ``verify`` and ``repair`` on a log directory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from binder.cli import main
from binders.log.engine import Broker
from binders.log.engine.disk import TopicPolicy
from binders.log.engine.recovery import SKIPS
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


def test_inspect_says_when_a_directory_is_not_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("not a log")
    for action in ("inspect", "verify", "repair"):
        assert main(["log", action, str(tmp_path)]) == 1
        assert "not a log directory" in capsys.readouterr().out
    assert not (tmp_path / "lock").exists()  # nothing was created there


def test_inspect_into_a_pipe_whose_reader_left_ends_quietly(
    durable: Durable, tmp_path: Path
) -> None:
    _fill(durable)
    read, write = os.pipe()
    os.close(read)  # as `| head` does once it has its lines: every write now fails (EPIPE)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "binder", "log", "inspect", str(tmp_path / "log")],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert done.returncode == 1
    assert done.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored"


def _damaged(durable: Durable, tmp_path: Path) -> Path:
    """``orders``: two partitions of three batches of four records; the second batch of
    partition 0 has a flipped byte. Returns its segment."""
    broker = durable()
    broker.create_topic("orders", 2)
    for b in range(3):
        for p in range(2):
            rows = [(None, f"{p}-{4 * b + i}".encode(), {}, time.time()) for i in range(4)]
            broker.append("orders", p, rows)
    broker.close()
    (segment,) = _segments(tmp_path)
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    segment.write_bytes(bytes(raw))
    return segment


async def _read_all(broker: Broker, group: str, stopped: bool = False) -> list[tuple[int, int]]:
    """What ``group`` reads (committing it), until dry (or until a partition stopped)."""
    member = broker.join("orders", group)
    got: list[tuple[int, int]] = []
    while True:
        try:
            records = await asyncio.wait_for(member.poll(100), 0.5)
        except TimeoutError:
            break
        for record in records:
            member.commit(record.partition, record.offset + 1)
        got += [(r.partition, r.offset) for r in records]
        if stopped and member.damaged:
            break
    await member.close()
    return got


def test_repair_without_skip_damaged_only_says_what_it_would_skip(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segment = _damaged(durable, tmp_path)
    before = segment.read_bytes()
    assert main(["log", "repair", str(tmp_path / "log")]) == 1
    out = capsys.readouterr().out
    assert "would skip orders/0: offsets 4..7 (4 record(s))" in out and "dry run" in out
    assert segment.read_bytes() == before
    assert not (segment.parent / SKIPS).exists()


def test_repair_skips_the_damage_so_groups_read_on_and_verify_is_clean(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _damaged(durable, tmp_path)
    broker = durable()
    first = asyncio.run(_read_all(broker, "billing", stopped=True))
    assert sorted(o for p, o in first if p == 0) == [0, 1, 2, 3]  # stopped at the damage
    broker.close()
    assert main(["log", "repair", str(tmp_path / "log"), "--skip-damaged"]) == 0
    out = capsys.readouterr().out
    assert "skipped orders/0: offsets 4..7 (4 record(s))" in out and "no damage left" in out
    assert main(["log", "verify", str(tmp_path / "log")]) == 0
    out = capsys.readouterr().out
    assert "no damage" in out and "offsets 4..7 were given up" in out
    broker = durable()
    rest = asyncio.run(_read_all(broker, "billing"))
    assert sorted(o for p, o in rest if p == 0) == [8, 9, 10, 11]  # on after the damage
    late = asyncio.run(_read_all(broker, "late"))
    assert sorted(o for p, o in late if p == 0) == [0, 1, 2, 3, 8, 9, 10, 11]
    assert sorted(o for p, o in late if p == 1) == list(range(12))
    assert main(["log", "repair", str(tmp_path / "log")]) == 0  # nothing left to skip


def test_repair_refuses_a_directory_another_process_has_open(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    segment = _damaged(durable, tmp_path)
    durable()  # open (flock is per open file, so this counts as another process)
    assert main(["log", "repair", str(tmp_path / "log"), "--skip-damaged"]) == 1
    assert "open in a running process: stop it first" in capsys.readouterr().out
    assert not (segment.parent / SKIPS).exists()
    assert main(["log", "repair", str(tmp_path / "log")]) == 1  # the dry run still reports
    assert "would skip orders/0" in capsys.readouterr().out


def test_repair_gives_up_a_missing_segment_and_cuts_a_torn_tail(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(durable)
    lost, after = _segments(tmp_path)[1:3]
    gone = range(int(lost.stem), int(after.stem))
    lost.unlink()
    lost.with_suffix(".index").unlink()
    with _segments(tmp_path, 1)[-1].open("ab") as file:
        file.write(b"\x00" * 17)
    assert main(["log", "repair", str(tmp_path / "log"), "--skip-damaged"]) == 0
    assert "skipped orders/0: offsets" in capsys.readouterr().out
    assert main(["log", "verify", str(tmp_path / "log")]) == 0
    broker = durable()
    got = asyncio.run(_read_all(broker, "billing"))
    assert sorted(o for p, o in got if p == 0) == [o for o in range(15) if o not in gone]
    assert sorted(o for p, o in got if p == 1) == list(range(15))


def test_repair_gives_up_the_damaged_end_of_a_sealed_segment(
    durable: Durable, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fill(durable)
    first, second = _segments(tmp_path)[:2]
    raw = bytearray(first.read_bytes())
    raw[-5] ^= 0xFF  # its last batch: no valid batch follows it in that file
    first.write_bytes(bytes(raw))
    assert main(["log", "verify", str(tmp_path / "log")]) == 1
    assert main(["log", "repair", str(tmp_path / "log"), "--skip-damaged"]) == 0
    assert f"..{int(second.stem) - 1} (1 record(s))" in capsys.readouterr().out
    assert main(["log", "verify", str(tmp_path / "log")]) == 0
    got = asyncio.run(_read_all(durable(), "billing"))
    lost = int(second.stem) - 1
    assert sorted(o for p, o in got if p == 0) == [o for o in range(15) if o != lost]
