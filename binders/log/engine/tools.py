"""``binder log inspect PATH`` and ``binder log verify PATH``: look at a log directory.

Both only read: they change nothing on disk, and work on a directory a
running app has open (its last segment may then be mid-append, so verify it
after the app stopped for a definite answer).

- ``inspect`` prints each topic's partitions (start and end offsets, segments,
  bytes) and each group's committed offsets and lag.
- ``verify`` checks every batch's checksum and framing, every index entry,
  the continuity of offsets across segments and every commit record; it
  prints what it found and returns 1 on damage (a torn tail, which the next
  start cuts, counts: something was written that is not readable), else 0.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from binders.log.engine.durable import FORMAT, read_topic_dir
from binders.log.engine.offsets import State, read_group_dir
from binders.log.engine.recovery import Recovered, recover

__all__ = ["inspect", "main", "verify"]


@dataclass
class _Partition:
    topic: str
    partition: int
    found: Recovered

    @property
    def start(self) -> int:
        return self.found.segments[0].base if self.found.segments else 0

    @property
    def end(self) -> int:
        return self.found.segments[-1].end if self.found.segments else 0

    @property
    def size(self) -> int:
        return sum(s.size for s in self.found.segments)


@dataclass
class _Survey:
    partitions: list[_Partition] = field(default_factory=list)
    offsets: State = field(default_factory=dict)
    required: set[tuple[str, str]] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _survey(root: Path, full: bool) -> _Survey:
    survey = _Survey()
    _check_format(root, survey)
    topics = root / "topics"
    for directory in sorted(topics.iterdir()) if topics.is_dir() else []:
        if not directory.is_dir() or directory.name.startswith(".deleted-"):
            continue
        name, count = read_topic_dir(directory)
        for p in range(count):
            found = recover(directory / str(p), f"{name}/{p}", repair=False, full=full)
            for segment in found.segments:
                segment.close()
            survey.partitions.append(_Partition(name, p, found))
            survey.problems += found.problems
            survey.notes += found.notes
    groups = root / "groups"
    for directory in sorted(groups.iterdir()) if groups.is_dir() else []:
        state, required, problems = read_group_dir(directory)
        survey.offsets.update(state)
        survey.required |= required
        survey.problems += problems
    return survey


def _check_format(root: Path, survey: _Survey) -> None:
    try:
        found = json.loads((root / "format.json").read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError) as exc:
        survey.problems.append(f"{root}/format.json unreadable: {exc}")
        return
    if found != FORMAT:
        survey.problems.append(f"{root} holds format {found!r}; this release reads {FORMAT}")


def _in_use(root: Path) -> bool:
    """Whether some process has the directory open (it holds ``lock``, shared)."""
    try:
        fd = os.open(root / "lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _table(rows: list[list[str]]) -> Iterator[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        yield (
            "  "
            + "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )


def inspect(root: Path, out: TextIO | None = None) -> int:
    """Print topics, partitions, segments and group lag of the log directory ``root``."""
    out = out or sys.stdout
    if not root.is_dir():
        print(f"{root}: no such directory", file=out)
        return 2
    survey = _survey(root, full=False)
    busy = _in_use(root)
    print(f"log directory {root}" + (" (open in a running process)" if busy else ""), file=out)
    ends: dict[tuple[str, int], int] = {}
    rows = [["topic", "partition", "start", "end", "records", "segments", "bytes"]]
    for part in survey.partitions:
        ends[(part.topic, part.partition)] = part.end
        rows.append(
            [
                part.topic,
                str(part.partition),
                str(part.start),
                str(part.end),
                str(part.end - part.start),
                str(len(part.found.segments)),
                f"{part.size:,}",
            ]
        )
    print(f"\ntopics ({len({p.topic for p in survey.partitions})})", file=out)
    for line in _table(rows):
        print(line, file=out)
    rows = [["group", "topic", "partition", "committed", "end", "lag"]]
    for (group, topic), partitions in sorted(survey.offsets.items()):
        marker = " (required)" if (group, topic) in survey.required else ""
        for partition, committed in sorted(partitions.items()):
            end = ends.get((topic, partition), committed)
            rows.append(
                [
                    group + marker,
                    topic,
                    str(partition),
                    str(committed),
                    str(end),
                    str(max(end - committed, 0)),
                ]
            )
    print(f"\ngroups ({len({g for g, _ in survey.offsets})})", file=out)
    for line in _table(rows):
        print(line, file=out)
    for problem in survey.problems:
        print(f"\nDAMAGE {problem}", file=out)
    return 0


def verify(root: Path, out: TextIO | None = None) -> int:
    """Check every checksum, index and commit record under ``root``; 1 on damage, else 0."""
    out = out or sys.stdout
    if not root.is_dir():
        print(f"{root}: no such directory", file=out)
        return 2
    if _in_use(root):
        print(f"note: {root} is open in a running process; its tails may be mid-append", file=out)
    survey = _survey(root, full=True)
    for part in survey.partitions:
        state = "DAMAGED" if part.found.problems else "ok"
        print(
            f"{state:7} {part.topic}/{part.partition}: offsets {part.start}..{part.end},"
            f" {len(part.found.segments)} segment(s), {part.size:,} bytes",
            file=out,
        )
    for note in survey.notes:
        print(f"note: {note} (rebuilt on the next start)", file=out)
    for problem in survey.problems:
        print(f"DAMAGE: {problem}", file=out)
    verdict = f"{len(survey.problems)} problem(s)" if survey.problems else "no damage"
    print(f"{root}: {len(survey.partitions)} partition(s) checked, {verdict}", file=out)
    return 1 if survey.problems else 0


def main(action: str, path: str) -> int:
    """Run ``inspect`` or ``verify`` on ``path``; the exit code."""
    tool = {"inspect": inspect, "verify": verify}[action]
    return tool(Path(path).expanduser())
