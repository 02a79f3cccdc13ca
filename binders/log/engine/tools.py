"""``binder log inspect|verify|repair PATH``: look at a log directory, and mend it.

``inspect`` and ``verify`` only read: they change nothing on disk, and work on
a directory a running app has open (its last segment may then be mid-append,
so verify it after the app stopped for a definite answer).

- ``inspect`` prints each topic's partitions (start and end offsets, segments,
  bytes) and each group's committed offsets and lag.
- ``verify`` checks every batch's checksum and framing, every index entry,
  the continuity of offsets across segments and every commit record; it
  prints what it found and returns 1 on damage (a torn tail, which the next
  start cuts, counts: something was written that is not readable), else 0.
- ``repair`` lists the ranges of offsets that cannot be read (corrupt batches,
  missing segments) and, with ``--skip-damaged``, gives them up: records them
  in each partition's ``skipped.json`` (which recovery honours: readers go on
  after them), cuts torn tails and rewrites indexes that point astray. It
  holds the directory's ``lock`` exclusively while it works, so it refuses a
  directory another process has open, and no app opens it meanwhile. Without
  ``--skip-damaged`` it is a dry run. Returns 1 while damage remains.

Each returns 1 for a directory that is not a log, 2 for a path that is no
directory; a reader that goes away (``| head``) ends the output quietly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from binders.log.engine.durable import FORMAT, read_topic_dir
from binders.log.engine.offsets import State, read_group_dir
from binders.log.engine.recovery import Recovered, add_skips, recover
from binders.log.engine.segment import Damage

__all__ = ["inspect", "main", "repair", "verify"]

log = logging.getLogger("binder.log")


@dataclass
class _Partition:
    topic: str
    partition: int
    found: Recovered
    directory: Path

    @property
    def unreadable(self) -> list[Damage]:
        """Ranges of offsets that cannot be read and were not given up yet."""
        return [d for d in self.found.damage if not d.skipped]

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
    skipped: list[str] = field(default_factory=list)


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
            survey.partitions.append(_Partition(name, p, found, directory / str(p)))
            survey.problems += found.problems
            survey.notes += found.notes
            survey.skipped += found.skipped
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


def _not_a_log(root: Path) -> tuple[str, int] | None:
    """Why ``root`` is no log directory to look at, and the exit code; ``None`` if it is one."""
    if not root.is_dir():
        return f"{root}: no such directory", 2
    if not (root / "format.json").exists():
        return f"{root}: not a log directory (no format.json)", 1
    return None


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
    refused = _not_a_log(root)
    if refused is not None:
        print(refused[0], file=out)
        return refused[1]
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
    for skipped in survey.skipped:
        print(f"\nskipped {skipped}", file=out)
    for problem in survey.problems:
        print(f"\nDAMAGE {problem}", file=out)
    return 0


def verify(root: Path, out: TextIO | None = None) -> int:
    """Check every checksum, index and commit record under ``root``; 1 on damage, else 0."""
    out = out or sys.stdout
    refused = _not_a_log(root)
    if refused is not None:
        print(refused[0], file=out)
        return refused[1]
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
    for skipped in survey.skipped:
        print(f"skipped: {skipped}", file=out)
    for problem in survey.problems:
        print(f"DAMAGE: {problem}", file=out)
    verdict = f"{len(survey.problems)} problem(s)" if survey.problems else "no damage"
    print(f"{root}: {len(survey.partitions)} partition(s) checked, {verdict}", file=out)
    return 1 if survey.problems else 0


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[bool]:
    """Hold ``root/lock`` exclusively for the block, if no process has it open (else False).

    An app starting meanwhile waits for the block to end (it takes the lock shared).
    """
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def repair(root: Path, skip_damaged: bool = False, out: TextIO | None = None) -> int:
    """Give up what cannot be read under ``root`` (a dry run unless ``skip_damaged``).

    Returns 1 while damage remains (always after a dry run that found some), else 0.
    """
    out = out or sys.stdout
    refused = _not_a_log(root)
    if refused is not None:
        print(refused[0], file=out)
        return refused[1]
    with _exclusive(root) as alone:
        if not alone and skip_damaged:
            print(f"{root} is open in a running process: stop it first; nothing changed", file=out)
            return 1
        survey = _survey(root, full=True)
        if not skip_damaged:
            return _dry_run(root, survey, alone, out)
        _give_up(survey, out)
        return _mend(root, survey, out)


def _dry_run(root: Path, survey: _Survey, alone: bool, out: TextIO) -> int:
    if not alone:
        print(f"note: {root} is open in a running process (repair would refuse)", file=out)
    for skipped in survey.skipped:
        print(f"skipped before: {skipped}", file=out)
    ranges = 0
    for part in survey.partitions:
        for damage in part.unreadable:
            ranges += 1
            print(f"would skip {_range(part, damage)}", file=out)
    for problem in survey.problems:
        print(f"DAMAGE: {problem}", file=out)
    if not survey.problems:
        print(f"{root}: no damage", file=out)
        return 0
    print(
        f"{root}: {len(survey.problems)} problem(s), {ranges} range(s) to skip;"
        " dry run, nothing changed (`--skip-damaged` to repair)",
        file=out,
    )
    return 1


def _give_up(survey: _Survey, out: TextIO) -> None:
    """Record every unreadable range in its partition's ``skipped.json``, and say so."""
    for part in survey.partitions:
        unreadable = part.unreadable
        if unreadable:
            add_skips(part.directory, unreadable)
        for damage in unreadable:
            print(f"skipped {_range(part, damage)}", file=out)
            log.warning("log: repair gave up %s", _range(part, damage))


def _mend(root: Path, survey: _Survey, out: TextIO) -> int:
    """Recover every partition as a start would (torn tails cut, indexes rewritten); check."""
    for part in survey.partitions:
        label = f"{part.topic}/{part.partition}"
        found = recover(part.directory, label, repair=True, full=True)
        for segment in found.segments:
            segment.close()
    left = _survey(root, full=True)
    for problem in left.problems:
        print(f"DAMAGE: {problem}", file=out)
    verdict = f"{len(left.problems)} problem(s) left" if left.problems else "no damage left"
    print(f"{root}: repaired, {verdict}", file=out)
    return 1 if left.problems else 0


def _range(part: _Partition, damage: Damage) -> str:
    count = damage.end - damage.first
    return (
        f"{part.topic}/{part.partition}: offsets {damage.first}..{damage.end - 1}"
        f" ({count} record(s))"
    )


def main(action: str, path: str, skip_damaged: bool = False) -> int:
    """Run ``inspect``, ``verify`` or ``repair`` on ``path``; the exit code.

    A reader of the output that goes away (``binder log inspect PATH | head``) ends
    it quietly, as Unix tools do.
    """
    root = Path(path).expanduser()
    try:
        if action == "repair":
            code = repair(root, skip_damaged)
        else:
            code = {"inspect": inspect, "verify": verify}[action](root)
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return 1
    return code


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
