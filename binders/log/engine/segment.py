"""One segment of a partition: ``<base:020d>.log`` and its sparse ``<base:020d>.index``.

The ``.log`` file is a run of record batches (:mod:`binders.log.engine.records`);
its name is the offset of its first record. The ``.index`` file maps some
record offsets to the file position of the batch holding them (one entry per
``INDEX_INTERVAL`` bytes of log), so a read seeks close to its offset and
decodes forward from there::

    head     magic "SBX1" 4s, log_bytes u64, end u64, max_ts f64, count u32
    entries  count x (relative offset u32, position u32)
    crc      u32 over head and entries

``log_bytes`` is the size of the ``.log`` the index describes: an index whose
``log_bytes`` differs from the file's size (the process died after appending
more), or whose crc fails, is stale and is rebuilt by scanning the log. An
index is written when its segment is sealed (rolled) and when the partition is
closed cleanly; the active segment's index lives in memory in between.

Positions are u32, so a segment holds at most 2 GiB (``segment-bytes`` is
capped accordingly; a roll happens before a batch would cross the limit).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from binder.errors import BackendError
from binder.spi import InboundRecord
from binders.log.engine.records import FRAME, HEAD, MAGIC, BatchInfo, decode, frame_size, read_frame

__all__ = [
    "INDEX_INTERVAL",
    "CorruptLogError",
    "Damage",
    "Scan",
    "Segment",
    "log_name",
    "scan",
]

INDEX_INTERVAL = 4096
"""Bytes of log between two index entries."""
READ_CHUNK = 256 * 1024
"""Bytes read at once when decoding from disk (more when one batch is larger)."""
INDEX_HEAD = struct.Struct("<4sQQdI")
INDEX_MAGIC = b"SBX1"
_ENTRY = struct.Struct("<II")
_CRC = struct.Struct("<I")


class CorruptLogError(BackendError):
    """A batch on disk fails its checksum or framing where records were expected.

    ``topic`` and ``partition`` say where; ``first`` is the first offset that
    cannot be read, ``end`` the offset reading could go on from (``None`` when
    only a full scan, ``binder log verify``, can tell).
    """

    def __init__(
        self,
        message: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        first: int | None = None,
        end: int | None = None,
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.partition = partition
        self.first = first
        self.end = end


def log_name(base: int) -> str:
    return f"{base:020d}.log"


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes that are not a valid batch, followed by valid ones (so not a torn tail)."""

    position: int
    size: int
    first: int
    """First offset lost (the offset expected at ``position``)."""
    end: int
    """Offset of the next valid batch."""
    skipped: bool = False
    """Given up by ``binder log repair --skip-damaged``: readers go on from ``end``."""


@dataclass(slots=True)
class Scan:
    """What a scan of a ``.log`` file found: its valid batches, summarised."""

    offsets: array[int] = field(default_factory=lambda: array("I"))
    positions: array[int] = field(default_factory=lambda: array("I"))
    valid_bytes: int = 0
    """Position after the last valid batch."""
    end: int = 0
    """Offset after the last valid batch."""
    first_ts: float | None = None
    max_ts: float = 0.0
    damage: list[Damage] = field(default_factory=list)
    torn: tuple[int, int] | None = None
    """``(position, size)`` of trailing bytes that are no valid batch."""


def scan(fd: int, size: int, base: int, start: int = 0, start_offset: int | None = None) -> Scan:
    """Walk a ``.log`` from ``start`` (a batch boundary) to ``size``, checking every batch."""
    result = Scan(end=base if start_offset is None else start_offset, valid_bytes=start)
    pos, expected, last_indexed = start, result.end, start
    chunk, chunk_pos = b"", start
    while pos < size:
        at = pos - chunk_pos
        info = read_frame(chunk, at, pos)
        if info is None and _incomplete(chunk, at, chunk_pos, size):
            chunk = os.pread(fd, max(READ_CHUNK, frame_size(chunk, at) or 0), pos)
            chunk_pos = pos
            continue
        if info is None or info.base != expected:
            found = _resync(fd, size, pos + 1, expected)
            if found is None:
                result.torn = (pos, size - pos)
                break
            result.damage.append(Damage(pos, found.position - pos, expected, found.base))
            pos, expected, chunk = found.position, found.base, b""
            continue
        if pos - last_indexed >= INDEX_INTERVAL:
            result.offsets.append(info.base - base)
            result.positions.append(pos)
            last_indexed = pos
        _account(result, info)
        pos += info.size
        expected = info.end
    return result


def _incomplete(chunk: bytes, at: int, chunk_pos: int, size: int) -> bool:
    """Whether the batch at ``chunk[at:]`` may just be cut off by the end of the chunk."""
    if chunk_pos + len(chunk) >= size:
        return False
    claimed = frame_size(chunk, at)
    return at + (claimed or FRAME.size + HEAD.size) > len(chunk)


def _account(result: Scan, info: BatchInfo) -> None:
    if result.first_ts is None:
        result.first_ts = info.max_ts
    result.max_ts = max(result.max_ts, info.max_ts)
    result.valid_bytes = info.position + info.size
    result.end = info.end


def _resync(fd: int, size: int, start: int, expected: int) -> BatchInfo | None:
    """The next valid batch at or after ``start`` whose offsets follow ``expected``."""
    pos = start
    while pos < size:
        chunk = os.pread(fd, READ_CHUNK, pos)
        at = chunk.find(MAGIC)
        while at != -1:
            info = _frame_at(fd, size, pos + at, chunk, at)
            if info is not None and info.base >= expected:
                return info
            at = chunk.find(MAGIC, at + 1)
        pos += max(len(chunk) - len(MAGIC) + 1, 1)
    return None


def _frame_at(fd: int, size: int, position: int, chunk: bytes, at: int) -> BatchInfo | None:
    claimed = frame_size(chunk, at) if at + FRAME.size <= len(chunk) else None
    if claimed is None:
        head = os.pread(fd, FRAME.size, position)
        claimed = frame_size(head, 0)
    if claimed is None or position + claimed > size:
        return None
    if at + claimed <= len(chunk):
        return read_frame(chunk, at, position)
    return read_frame(os.pread(fd, claimed, position), 0, position)


class Segment:
    """A segment's files, its sparse index in memory, and where its records end.

    The partition log that owns it calls every method under the broker lock;
    the fsync of its files happens elsewhere, by path (see :mod:`binders.log.engine.sync`).
    """

    __slots__ = (
        "_fd",
        "_last_indexed",
        "base",
        "end",
        "first_ts",
        "index_path",
        "max_ts",
        "offsets",
        "path",
        "positions",
        "sealed",
        "size",
    )

    def __init__(self, directory: Path, base: int) -> None:
        self.base = base
        self.path = directory / log_name(base)
        self.index_path = self.path.with_suffix(".index")
        self.end = base
        self.size = 0
        self.first_ts: float | None = None
        self.max_ts = 0.0
        self.offsets = array("I")
        self.positions = array("I")
        self.sealed = False
        self._last_indexed = 0
        self._fd: int | None = None

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, directory: Path, base: int) -> Segment:
        """A new, empty active segment (an existing empty file of that name is reused)."""
        segment = cls(directory, base)
        segment._fd = os.open(segment.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        segment.size = os.fstat(segment._fd).st_size
        if segment.size:
            os.close(segment._fd)
            segment._fd = None
            raise BackendError(f"log: refusing to overwrite non-empty segment {segment.path}")
        return segment

    def load_index(self) -> bool:
        """Adopt the ``.index`` file if it describes the ``.log`` as it is now; True if it did."""
        try:
            raw = self.index_path.read_bytes()
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        parsed = parse_index(raw)
        if parsed is None or parsed[0] != size:
            return False
        log_bytes, end, max_ts, offsets, positions = parsed
        if not _index_consistent(offsets, positions, log_bytes) or end < self.base:
            return False
        self.size, self.end, self.max_ts = log_bytes, end, max_ts
        self.offsets, self.positions = offsets, positions
        self._last_indexed = positions[-1] if positions else 0
        return True

    def adopt(self, found: Scan) -> None:
        """Take the scan's view of the log (after recovery truncated what it had to)."""
        self.size, self.end = found.valid_bytes, found.end
        self.offsets, self.positions = found.offsets, found.positions
        self.max_ts = found.max_ts
        self.first_ts = found.first_ts
        self._last_indexed = self.positions[-1] if self.positions else 0

    def reopen_active(self) -> None:
        """Make this (the last) segment the one appends go to."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        if self.first_ts is None and self.size:
            head = read_frame(os.pread(self._fd, min(self.size, READ_CHUNK), 0), 0, 0)
            self.first_ts = None if head is None else head.max_ts

    # -- writing ---------------------------------------------------------------------------------

    def append(self, parts: list[bytes], size: int, base: int, count: int, max_ts: float) -> None:
        """Write one encoded batch (its bytes reach the OS before this returns)."""
        fd = self._writer()
        try:
            written = os.writev(fd, parts)
            if written < size:  # a short write to a regular file: finish it
                rest = b"".join(parts)[written:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)
            raise BackendError(f"log: cannot append to {self.path}: {exc}") from exc
        if self.size - self._last_indexed >= INDEX_INTERVAL:
            self.offsets.append(base - self.base)
            self.positions.append(self.size)
            self._last_indexed = self.size
        if self.first_ts is None:
            self.first_ts = max_ts
        self.size += size
        self.end = base + count
        if max_ts > self.max_ts:
            self.max_ts = max_ts

    def catch_up(self) -> int:
        """Adopt whole batches other processes appended past this view; the file's size now.

        Stops before bytes that are no valid batch (yet): a write in progress
        elsewhere, or a torn tail, which only a writer holding the partition
        lock may cut (see :meth:`cut_to_view`).
        """
        fd = self._reader()
        size = os.fstat(fd).st_size
        if size <= self.size:
            return size
        found = scan(fd, size, self.base, self.size, self.end)
        if found.damage:  # keep only what precedes the first bad bytes
            found = scan(fd, found.damage[0].position, self.base, self.size, self.end)
        if found.valid_bytes > self.size:
            self.offsets.extend(found.offsets)
            self.positions.extend(found.positions)
            if found.positions:
                self._last_indexed = found.positions[-1]
            self.size, self.end = found.valid_bytes, found.end
            self.max_ts = max(self.max_ts, found.max_ts)
            if self.first_ts is None:
                self.first_ts = found.first_ts
        return size

    def cut_to_view(self) -> None:
        """Cut bytes past this view (a dead writer's torn tail); call holding the partition lock."""
        fd = self._writer()
        with contextlib.suppress(OSError):
            os.ftruncate(fd, self.size)

    def truncate(self, size: int) -> None:
        """Cut the ``.log`` file to ``size`` bytes (recovery of a torn tail)."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def write_index(self) -> None:
        """Write the ``.index`` describing the log as it is now (not fsynced here)."""
        self.index_path.write_bytes(
            render_index(self.size, self.end, self.max_ts, self.offsets, self.positions)
        )

    def seal(self) -> None:
        """No more appends: write the index and close the write handle."""
        self.write_index()
        self.sealed = True
        self.close()

    def _writer(self) -> int:
        if self._fd is None or self.sealed:
            raise BackendError(f"log: segment {self.path} is not open for appends")
        return self._fd

    # -- reading ---------------------------------------------------------------------------------

    def locate(self, offset: int) -> int:
        """Position of a batch at or before the one holding ``offset``."""
        i = bisect_right(self.offsets, offset - self.base) - 1
        return 0 if i < 0 else self.positions[i]

    def read(
        self, position: int, offset: int, max_records: int, topic: str, partition: int
    ) -> tuple[list[InboundRecord], int]:
        """Records from ``offset`` on, decoding whole batches from ``position``.

        Returns the records (possibly more than ``max_records``: whole batches)
        and the position after the last batch decoded. Stops before a batch
        that fails its checks, raising :class:`CorruptLogError` if nothing
        was read before it.
        """
        fd = self._reader()
        out: list[InboundRecord] = []
        while position < self.size and len(out) < max_records:
            chunk = os.pread(fd, min(READ_CHUNK, self.size - position), position)
            at = 0
            while at < len(chunk) and len(out) < max_records:
                info = read_frame(chunk, at, position + at)
                if info is None:
                    claimed = frame_size(chunk, at) or FRAME.size + HEAD.size
                    whole = at + claimed <= len(chunk)
                    if whole or position + at + claimed > self.size:
                        return self._stop(out, position + at, offset, topic, partition)
                    if at:
                        break  # cut off by the end of the chunk: read on from here
                    chunk = os.pread(fd, claimed, position)
                    info = read_frame(chunk, 0, position)
                    if info is None:
                        return self._stop(out, position, offset, topic, partition)
                if info.end > offset:
                    records = decode(chunk, at, topic, partition)
                    out.extend(records if info.base >= offset else records[offset - info.base :])
                at += info.size
            position += at
        return out, position

    def _stop(
        self, out: list[InboundRecord], position: int, offset: int, topic: str, partition: int
    ) -> tuple[list[InboundRecord], int]:
        """At a batch that fails its checks: what was read before it, else the error."""
        if out:
            return out, position
        raise CorruptLogError(
            f"log: corrupt batch in {self.path} at byte {position} (reading offset {offset});"
            f" run `binder log verify` on the log's path",
            topic=topic,
            partition=partition,
            first=offset,
        )

    def _reader(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    def release(self) -> None:
        """Close a sealed segment's read handle (it reopens on the next read)."""
        if self.sealed:
            self.close()

    def close(self) -> None:
        """Close the file handle, if open. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def delete(self) -> None:
        """Close and remove both files."""
        self.close()
        for path in (self.path, self.index_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def __repr__(self) -> str:
        return f"Segment({self.path.name}, offsets {self.base}..{self.end}, {self.size} bytes)"


def render_index(
    log_bytes: int, end: int, max_ts: float, offsets: array[int], positions: array[int]
) -> bytes:
    """The bytes of an ``.index`` file."""
    entries = b"".join(_ENTRY.pack(o, p) for o, p in zip(offsets, positions, strict=True))
    head = INDEX_HEAD.pack(INDEX_MAGIC, log_bytes, end, max_ts, len(offsets))
    return head + entries + _CRC.pack(zlib.crc32(entries, zlib.crc32(head)))


def parse_index(raw: bytes) -> tuple[int, int, float, array[int], array[int]] | None:
    """``(log_bytes, end, max_ts, offsets, positions)`` of an index file, or ``None`` if damaged."""
    if len(raw) < INDEX_HEAD.size + _CRC.size:
        return None
    magic, log_bytes, end, max_ts, count = INDEX_HEAD.unpack_from(raw)
    body_end = INDEX_HEAD.size + count * _ENTRY.size
    if magic != INDEX_MAGIC or len(raw) != body_end + _CRC.size:
        return None
    if zlib.crc32(raw[:body_end]) != _CRC.unpack_from(raw, body_end)[0]:
        return None
    offsets, positions = array("I"), array("I")
    for o, p in _ENTRY.iter_unpack(raw[INDEX_HEAD.size : body_end]):
        offsets.append(o)
        positions.append(p)
    return log_bytes, end, max_ts, offsets, positions


def _index_consistent(offsets: array[int], positions: array[int], log_bytes: int) -> bool:
    pairs = list(zip(offsets, positions, strict=True))
    ordered = all(a[0] < b[0] and a[1] < b[1] for a, b in pairwise(pairs))
    return ordered and (not positions or positions[-1] < log_bytes)
