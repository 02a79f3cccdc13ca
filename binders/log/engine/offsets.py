"""Committed offsets on disk: one append-only commit file per group, compacted on open.

``groups/<group>/<generation:010d>.offsets`` holds records, each framed as
``length u32, crc u32, payload``; a payload is ``kind u8, partition u32,
offset i64`` then the topic name in UTF-8. Kinds: ``COMMIT`` (the group's next
offset in a partition), ``REQUIRE`` (a required group: retention keeps what it
has not read), ``FORGET`` (the group left the topic).

A commit is one small ``os.write`` (so it survives the process being killed)
and is fsynced by the next pass of the storage's fsync thread (or at close).
Replaying a group's files in generation order rebuilds its state; a torn
last record is cut and logged. When a file has grown well past its live
state, the store starts the next generation with a snapshot of that state and
deletes the older files only once the new one is fsynced, so no crash leaves
a group without its offsets (and no fsync happens under the broker lock).

Several processes may commit to one group: every write happens holding an
exclusive ``flock`` on ``groups/<group>/lock``, after reading what other
processes appended since (and following a newer generation, should one have
rotated), and every read of a committed offset first reads the group's new
records (one ``stat`` when there are none). Compaction at open happens only
in the process that opened the directory first, alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

from binders.log.engine.sync import Syncer, fsync_path

__all__ = ["DiskOffsetStore", "read_group_dir"]

log = logging.getLogger("binder.log")

COMMIT, REQUIRE, FORGET = 0, 1, 2
_FRAME = struct.Struct("<II")
_RECORD = struct.Struct("<BIq")
ROTATE_AT = 50_000
"""Records in a file before a new generation may start (if the live state is much smaller)."""

State = dict[tuple[str, str], dict[int, int]]


def _encode(kind: int, topic: str, partition: int, offset: int) -> bytes:
    payload = _RECORD.pack(kind, partition, offset) + topic.encode()
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _records(raw: bytes) -> Iterator[tuple[int, int, str, int, int]]:
    """``(position, kind, topic, partition, offset)`` of each valid record, up to the first bad."""
    pos = 0
    while pos + _FRAME.size <= len(raw):
        length, crc = _FRAME.unpack_from(raw, pos)
        start, end = pos + _FRAME.size, pos + _FRAME.size + length
        if length < _RECORD.size or end > len(raw) or zlib.crc32(raw[start:end]) != crc:
            return
        kind, partition, offset = _RECORD.unpack_from(raw, start)
        try:
            topic = raw[start + _RECORD.size : end].decode()
        except UnicodeDecodeError:
            return
        yield pos, kind, topic, partition, offset
        pos = end


def _generations(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("*.offsets"):
        with contextlib.suppress(ValueError):
            found.append((int(path.stem), path))
    return sorted(found)


def read_group_dir(directory: Path) -> tuple[State, set[tuple[str, str]], list[str]]:
    """Replay a group's files: ``(offsets, required, problems)``; changes nothing on disk."""
    group = unquote(directory.name)
    state: State = {}
    required: set[tuple[str, str]] = set()
    problems: list[str] = []
    generations = _generations(directory)
    for i, (_, path) in enumerate(generations):
        raw = path.read_bytes()
        end = 0
        for pos, kind, topic, partition, offset in _records(raw):
            end = pos + _FRAME.size + _RECORD.size + len(topic.encode())
            _apply(state, required, (group, topic), kind, partition, offset)
        if end < len(raw):
            last = i == len(generations) - 1
            problems.append(
                f"{path}: {len(raw) - end} byte(s) after byte {end} are no valid commit record"
                + (" (a torn last write)" if last else " (superseded by a newer generation)")
            )
    return state, required, problems


def _apply(
    state: State,
    required: set[tuple[str, str]],
    key: tuple[str, str],
    kind: int,
    partition: int,
    offset: int,
) -> None:
    if kind == COMMIT:
        state.setdefault(key, {})[partition] = offset
    elif kind == REQUIRE:
        required.add(key)
    elif kind == FORGET:
        state.pop(key, None)
        required.discard(key)


class _GroupFile:
    """The current generation of one group's commit file."""

    __slots__ = ("directory", "fd", "generation", "path", "records", "size")

    def __init__(self, directory: Path, generation: int, fresh: bool = True) -> None:
        self.directory = directory
        self.generation = generation
        self.path = directory / f"{generation:010d}.offsets"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if fresh else 0)
        self.fd = os.open(self.path, flags, 0o644)
        self.records = 0
        self.size = 0

    def write(self, record: bytes) -> None:
        os.write(self.fd, record)
        self.records += 1

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class DiskOffsetStore:
    """An :class:`~binders.log.engine.storage.OffsetStore` in ``<path>/groups``.

    Called only under the broker lock, like every storage object.
    """

    def __init__(
        self,
        directory: Path,
        syncer: Syncer | None,
        rotate_at: int = ROTATE_AT,
        *,
        exclusive: bool = True,
    ) -> None:
        """``exclusive``: no other process has the directory open (so compacting is safe)."""
        self._dir = directory
        self._syncer = syncer
        self._rotate_at = rotate_at
        self._offsets: State = {}
        self._required: set[tuple[str, str]] = set()
        self._files: dict[str, _GroupFile] = {}
        self._seen: dict[str, tuple[int, int]] = {}
        """Per group: the newest generation read, and the bytes of it read."""
        self._locks: dict[str, int] = {}
        directory.mkdir(parents=True, exist_ok=True)
        for group_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
            if exclusive:
                self._open_group(group_dir)
            else:
                self._reload(unquote(group_dir.name))

    def _open_group(self, group_dir: Path) -> None:
        state, required, problems = read_group_dir(group_dir)
        for problem in problems:
            log.warning("log: offsets of group %r: %s", unquote(group_dir.name), problem)
        self._offsets.update(state)
        self._required.update(required)
        group = unquote(group_dir.name)
        old = _generations(group_dir)
        if not any(name == group for name, _ in (*state, *required)):
            shutil.rmtree(group_dir, ignore_errors=True)  # a group that left every topic
            return
        file = self._files[group] = self._snapshot(group, old[-1][0] + 1 if old else 0)
        self._seen[group] = (file.generation, file.size)
        if self._syncer is not None:  # compacting at open is rare: fsync now
            fsync_path(self._files[group].path)
            fsync_path(group_dir)
        for _, path in old:
            path.unlink()

    def _snapshot(self, group: str, generation: int) -> _GroupFile:
        file = _GroupFile(self._dir / quote(group, safe=""), generation)
        records = [
            _encode(COMMIT, topic, partition, offset)
            for (name, topic), partitions in self._offsets.items()
            if name == group
            for partition, offset in sorted(partitions.items())
        ]
        records += [
            _encode(REQUIRE, t, 0, 0) for name, t in sorted(self._required) if name == group
        ]
        for record in records:
            file.write(record)
        file.size = sum(map(len, records))
        return file

    # -- the OffsetStore protocol ----------------------------------------------------------------

    def committed(self, group: str, topic: str, partition: int) -> int | None:
        self._refresh(group)
        partitions = self._offsets.get((group, topic))
        return None if partitions is None else partitions.get(partition)

    def commit(self, group: str, topic: str, partition: int, next_offset: int) -> None:
        self._write(group, COMMIT, topic, partition, next_offset)

    def groups(self, topic: str) -> set[str]:
        return {group for group, name in self._offsets if name == topic}

    def delete_group(self, group: str, topic: str) -> None:
        key = (group, topic)
        self._refresh(group)
        if key in self._offsets or key in self._required:
            self._write(group, FORGET, topic, 0, 0)

    def require(self, group: str, topic: str) -> None:
        """Mark ``group`` required on ``topic``: retention keeps what it has not consumed."""
        self._refresh(group)
        if (group, topic) not in self._required:
            self._write(group, REQUIRE, topic, 0, 0)

    def floor(self, topic: str, partition: int) -> tuple[int, list[str]] | None:
        """The lowest committed offset of ``topic``'s required groups, and those groups."""
        found = [
            (self._offsets.get((group, name), {}).get(partition, 0), group)
            for group, name in self._required
            if name == topic
        ]
        if not found:
            return None
        low = min(offset for offset, _ in found)
        return low, sorted(group for offset, group in found if offset == low)

    def snapshot(self) -> tuple[State, set[tuple[str, str]]]:
        """Every group's offsets and the required groups (copies, for tools)."""
        return {k: dict(v) for k, v in self._offsets.items()}, set(self._required)

    def close(self) -> None:
        for file in self._files.values():
            if file.fd >= 0:
                os.fsync(file.fd)
            file.close()
        self._files.clear()
        for fd in self._locks.values():
            os.close(fd)
        self._locks.clear()

    # -- writing ---------------------------------------------------------------------------------

    def _write(self, group: str, kind: int, topic: str, partition: int, offset: int) -> None:
        record = _encode(kind, topic, partition, offset)
        lock = self._group_lock(group)
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            self._refresh(group)
            file = self._current(group)
            file.write(record)
            self._seen[group] = (file.generation, self._seen[group][1] + len(record))
            _apply(self._offsets, self._required, (group, topic), kind, partition, offset)
            if self._syncer is not None:
                self._syncer.written(("offsets", group), file.generation, file.path)
            if file.records > self._rotate_at and file.records > 8 * self._live(group):
                self._rotate(group, file)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    def _group_lock(self, group: str) -> int:
        fd = self._locks.get(group)
        if fd is None:
            directory = self._dir / quote(group, safe="")
            directory.mkdir(exist_ok=True)
            fd = self._locks[group] = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        return fd

    def _current(self, group: str) -> _GroupFile:
        """The file of the newest generation, for appending (holding the group's lock)."""
        generation, size = self._seen.setdefault(group, (0, 0))
        file = self._files.get(group)
        if file is None or file.generation != generation:
            if file is not None:
                file.close()
            file = self._files[group] = _GroupFile(self._group_dir(group), generation, fresh=False)
            if self._syncer is not None:
                self._syncer.also(("offsets", group), self._dir, file.directory)
        if os.fstat(file.fd).st_size != size:  # a torn record a dead process left
            os.ftruncate(file.fd, size)
        return file

    def _group_dir(self, group: str) -> Path:
        return self._dir / quote(group, safe="")

    # -- reading what other processes wrote --------------------------------------------------------

    def _refresh(self, group: str) -> None:
        """Apply the records other processes appended to ``group``'s files since the last look."""
        seen = self._seen.get(group)
        if seen is None:
            if self._group_dir(group).is_dir():
                self._reload(group)
            return
        generation, position = seen
        directory = self._group_dir(group)
        path = directory / f"{generation:010d}.offsets"
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = -1
        if size < position or (directory / f"{generation + 1:010d}.offsets").exists():
            self._reload(group)
        elif size > position:
            self._seen[group] = (generation, self._replay(group, path, position))

    def _reload(self, group: str) -> None:
        """Forget ``group``'s state and replay its files from the start."""
        for key in [k for k in self._offsets if k[0] == group]:
            del self._offsets[key]
        self._required = {k for k in self._required if k[0] != group}
        generations = _generations(self._group_dir(group))
        end = 0
        for _, path in generations:
            end = self._replay(group, path, 0)
        self._seen[group] = (generations[-1][0], end) if generations else (0, 0)

    def _replay(self, group: str, path: Path, start: int) -> int:
        """Apply the valid records of ``path`` from byte ``start``; the byte after the last."""
        try:
            with open(path, "rb") as file:
                file.seek(start)
                raw = file.read()
        except FileNotFoundError:
            return start
        end = 0
        for pos, kind, topic, partition, offset in _records(raw):
            end = pos + _FRAME.size + _RECORD.size + len(topic.encode())
            _apply(self._offsets, self._required, (group, topic), kind, partition, offset)
        return start + end

    def _live(self, group: str) -> int:
        return sum(len(p) for (name, _), p in self._offsets.items() if name == group) + 1

    def _rotate(self, group: str, old: _GroupFile) -> None:
        new = self._files[group] = self._snapshot(group, old.generation + 1)
        self._seen[group] = (new.generation, new.size)
        old.close()
        stale = [
            path for generation, path in _generations(new.directory) if generation < new.generation
        ]

        def drop() -> None:
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

        if self._syncer is None:
            drop()
            return
        owner = ("offsets", group)
        self._syncer.written(owner, new.generation, new.path)
        self._syncer.also(owner, new.directory)
        self._syncer.after(owner, new.generation, drop)
