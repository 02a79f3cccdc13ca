"""Opening a partition's segments after a clean or an unclean stop, and checking them.

:func:`recover` is used by the engine on start-up (``repair=True``) and by
``binder log inspect``/``verify`` (``repair=False``, nothing on disk changes):

- a sealed segment whose ``.index`` matches its ``.log`` is trusted as it is
  (``full=True``, as ``verify`` asks, scans it all the same); otherwise it is
  scanned, batch by batch, and its index is rebuilt;
- the last segment is checked from its last index entry when its index
  matches (a clean stop) and scanned whole otherwise (an unclean one);
- bytes at the end of the last segment that are not a valid batch, with no
  valid batch after them, are a torn tail: cut, and logged with the file,
  position, size and first offset cut;
- bytes that are not a valid batch but are followed by valid ones, and any
  gap between segments, are damage in the middle of the log: logged as an
  error, left on disk for inspection, and reported by ``verify``; a reader
  that reaches those offsets gets a :class:`~binders.log.engine.segment.CorruptLogError`
  instead of silently skipping them;
- damage that ``binder log repair --skip-damaged`` gave up (the ranges in the
  partition's ``skipped.json``) is no longer a problem: it is kept as
  :class:`~binders.log.engine.segment.Damage` with ``skipped`` set, which
  readers go past, and listed in :attr:`Recovered.skipped`. A segment holding
  such a range is scanned on every start (its index does not say where the
  bad bytes are).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from binders.log.engine.records import FRAME, frame_size, read_frame
from binders.log.engine.segment import Damage, Scan, Segment, scan
from binders.log.engine.sync import fsync_path

__all__ = ["SKIPS", "Recovered", "Skip", "add_skips", "read_skips", "recover", "segment_bases"]

log = logging.getLogger("binder.log")

SKIPS = "skipped.json"
"""The file in a partition's directory listing the offset ranges given up by a repair."""


@dataclass(frozen=True)
class Skip:
    """Offsets ``first..last`` of a partition, given up by ``binder log repair`` at ``at``."""

    first: int
    last: int
    at: str

    def covers(self, damage: Damage) -> bool:
        return self.first <= damage.first and damage.end <= self.last + 1

    def touches(self, segment: Segment) -> bool:
        return self.first < segment.end and segment.base <= self.last


def read_skips(directory: Path) -> list[Skip]:
    """The ranges given up in the partition in ``directory`` (none when there is no file)."""
    try:
        raw = json.loads((directory / SKIPS).read_text(encoding="utf-8"))
        return [Skip(int(s["first"]), int(s["last"]), str(s.get("at", ""))) for s in raw["skipped"]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("log: %s unreadable (%s); its ranges count as damage", directory / SKIPS, exc)
        return []


def add_skips(directory: Path, ranges: Sequence[Damage]) -> list[Skip]:
    """Record ``ranges`` as given up (atomically, fsynced); the ranges added."""
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    added = [Skip(d.first, d.end - 1, at) for d in ranges]
    rows = [dataclasses.asdict(s) for s in [*read_skips(directory), *added]]
    temp = directory / f"{SKIPS}.{uuid.uuid4().hex[:8]}.tmp"
    with open(temp, "w", encoding="utf-8") as file:
        json.dump({"skipped": rows}, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temp, directory / SKIPS)
    fsync_path(directory)
    return added


@dataclass
class Recovered:
    """The segments of a partition (the last one active) and what recovery found."""

    segments: list[Segment] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """Damage: torn tails, corrupt batches, gaps, index entries that point astray."""
    notes: list[str] = field(default_factory=list)
    """What a start-up simply redoes: missing or stale indexes."""
    skipped: list[str] = field(default_factory=list)
    """Damage a repair gave up (``skipped.json``): known, read past, not a problem."""


def segment_bases(directory: Path) -> list[int]:
    """Base offsets of the ``<base:020d>.log`` files in ``directory``, sorted."""
    found = []
    for path in directory.glob("*.log"):
        if len(path.stem) == 20 and path.stem.isdigit():
            found.append(int(path.stem))
    return sorted(found)


def recover(directory: Path, label: str, *, repair: bool, full: bool = False) -> Recovered:
    """Open (``repair``: and fix) the segments of the partition in ``directory``."""
    result = Recovered()
    bases = segment_bases(directory)
    skips = read_skips(directory)
    if repair:
        _remove_strays(directory, bases)
    if not bases:
        if repair:
            result.segments.append(Segment.create(directory, 0))
        return result
    for i, base in enumerate(bases):
        last = i == len(bases) - 1
        segment = Segment(directory, base)
        _open_segment(segment, label, last, repair, full, result, skips)
        if result.segments:
            _check_continuity(result.segments[-1], segment, label, result, repair, skips)
        result.segments.append(segment)
    if repair:
        result.segments[-1].reopen_active()
    return result


def _remove_strays(directory: Path, bases: list[int]) -> None:
    """Temporary files and indexes without their log (left by a crash mid-delete)."""
    keep = {f"{base:020d}" for base in bases}
    for path in directory.iterdir():
        stray = path.suffix == ".tmp" or (path.suffix == ".index" and path.stem not in keep)
        if stray:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _open_segment(
    segment: Segment,
    label: str,
    last: bool,
    repair: bool,
    full: bool,
    result: Recovered,
    skips: list[Skip],
) -> None:
    trusted = segment.load_index()
    full = full or any(skip.touches(segment) for skip in skips)
    if trusted and not full and not last:
        return
    if trusted and not full:
        start, start_offset = segment.locate(segment.end), None
        if segment.positions:
            start_offset = segment.base + segment.offsets[-1]
        found = _scan_file(segment, start, start_offset)
        _merge_tail(segment, found)
    else:
        if not trusted:
            result.notes.append(f"{label}: index of {segment.path.name} missing or stale")
        found = _scan_file(segment, 0, None)
        if trusted:
            trusted = _check_index(segment, label, result)
        segment.adopt(found)
    _report(segment, found, label, last, repair, result, skips)
    if repair and not trusted and not last:
        segment.write_index()


def _scan_file(segment: Segment, start: int, start_offset: int | None) -> Scan:
    fd = os.open(segment.path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        found = scan(fd, size, segment.base, start, start_offset)
        if found.first_ts is None and size:
            head = read_frame(os.pread(fd, 64 * 1024, 0), 0, 0)
            found.first_ts = None if head is None else head.max_ts
        return found
    finally:
        os.close(fd)


def _merge_tail(segment: Segment, tail: Scan) -> None:
    """A clean segment's loaded index, extended by a scan of its last stretch."""
    segment.offsets.extend(tail.offsets)
    segment.positions.extend(tail.positions)
    segment.size, segment.end = tail.valid_bytes, tail.end
    segment.max_ts = max(segment.max_ts, tail.max_ts)
    segment.first_ts = tail.first_ts if segment.first_ts is None else segment.first_ts


def _report(
    segment: Segment,
    found: Scan,
    label: str,
    last: bool,
    repair: bool,
    result: Recovered,
    skips: list[Skip],
) -> None:
    for damage in found.damage:
        if _known(damage, label, result, repair, skips):
            continue
        result.damage.append(damage)
        _problem(
            result,
            f"{label}: {damage.size} corrupt byte(s) at byte {damage.position} of"
            f" {segment.path}; offsets {damage.first}..{damage.end - 1} cannot be read",
            repair,
        )
    if found.torn is None:
        return
    position, size = found.torn
    if not last:  # more of the log follows: damage (the gap is reported by the continuity check)
        if any(skip.first == found.end for skip in skips):
            return  # the gap after it was given up: a repair left the bytes as they are
        _problem(
            result,
            f"{label}: {size} byte(s) at the end of sealed segment {segment.path} (byte"
            f" {position}) are no valid batch",
            repair,
        )
        return
    message = (
        f"{label}: torn tail of {segment.path}: {size} byte(s) from byte {position} are no"
        f" valid batch (records from offset {found.end} on were never acknowledged)"
    )
    result.problems.append(message)
    if repair:
        segment.truncate(position)
        log.warning("log: %s; cut them", message)


def _known(damage: Damage, label: str, result: Recovered, repair: bool, skips: list[Skip]) -> bool:
    """Whether a repair gave ``damage`` up; if so it is kept as skipped, and listed."""
    skip = next((s for s in skips if s.covers(damage)), None)
    if skip is None:
        return False
    result.damage.append(dataclasses.replace(damage, skipped=True))
    message = (
        f"{label}: offsets {damage.first}..{damage.end - 1} were given up by"
        f" `binder log repair` ({skip.at}); readers go on from offset {damage.end}"
    )
    result.skipped.append(message)
    if repair:
        log.info("log: %s", message)
    return True


def _problem(result: Recovered, message: str, repair: bool) -> None:
    result.problems.append(message)
    if repair:
        log.error("log: %s", message)


def _check_index(segment: Segment, label: str, result: Recovered) -> bool:
    """``verify``: every index entry points at the batch holding its offset (else False)."""
    fd = os.open(segment.path, os.O_RDONLY)
    try:
        for rel, position in zip(segment.offsets, segment.positions, strict=True):
            claimed = frame_size(os.pread(fd, FRAME.size, position), 0) or 0
            info = read_frame(os.pread(fd, claimed, position), 0, position)
            if info is None or not info.base <= segment.base + rel < info.end:
                result.problems.append(
                    f"{label}: index of {segment.path.name} maps offset {segment.base + rel}"
                    f" to byte {position}, which does not hold it"
                )
                return False
    finally:
        os.close(fd)
    return True


def _check_continuity(
    previous: Segment,
    segment: Segment,
    label: str,
    result: Recovered,
    repair: bool,
    skips: list[Skip],
) -> None:
    if previous.end == segment.base:
        return
    if previous.end < segment.base:
        gap = Damage(previous.size, 0, previous.end, segment.base)
        if _known(gap, label, result, repair, skips):
            return
        result.damage.append(gap)
        _problem(
            result,
            f"{label}: offsets {previous.end}..{segment.base - 1} are missing between"
            f" {previous.path.name} and {segment.path.name}",
            repair,
        )
    else:
        _problem(
            result,
            f"{label}: {previous.path.name} runs to offset {previous.end - 1}, past the start of"
            f" {segment.path.name}",
            repair,
        )
