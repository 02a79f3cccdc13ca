"""The on-disk record batch: one framed, checksummed batch per append.

A batch is written with one ``os.writev`` and is the unit of every check::

    frame   magic  4s   b"SBL1"
            length u32  bytes of the body that follows the frame
            crc    u32  zlib.crc32 of the body
    body    base   u64  offset of the first record
            count  u32  records in the batch
            flags  u32  which optional columns follow (TIMESTAMPS, KEYS, HEADERS)
            max_ts f64  largest timestamp (seconds since the epoch; retention by age)
            [count x f64 timestamps]     only when they differ (else all are max_ts)
            [count x i32 key lengths]    only when some record has a key (-1: no key)
            count x u32 value lengths
            [count x u32 header lengths] only when some record has headers (0: none)
            keys, values, headers        concatenated; headers are JSON objects

Integers are little-endian. The layout is columnar so that encoding and
decoding run in C (``array``, ``zip``, ``bytes.join``) rather than a Python
loop per field; a record's offset is ``base`` plus its index. A reader trusts
nothing it has not checked: :func:`read_frame` checks magic, length and crc
before anything is decoded.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise, repeat
from typing import Any

import orjson

from binder.spi import InboundRecord
from binders.log.engine.storage import Entry, make_records

__all__ = [
    "FRAME",
    "MAGIC",
    "BatchInfo",
    "Entry",
    "decode",
    "encode",
    "frame_size",
    "read_frame",
]

MAGIC = b"SBL1"
FRAME = struct.Struct("<4sII")
HEAD = struct.Struct("<QIId")
TIMESTAMPS, KEYS, HEADERS = 1, 2, 4
_BIG_ENDIAN = sys.byteorder == "big"
_MAX_BODY = 1 << 31


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What the frame and head of a valid batch say, without its records."""

    position: int
    """Where the frame starts in its segment file."""
    size: int
    """Bytes of frame and body."""
    base: int
    count: int
    max_ts: float

    @property
    def end(self) -> int:
        """Offset after the batch's last record."""
        return self.base + self.count


def _column(code: str, values: Any) -> bytes:
    column = array(code, values)
    if _BIG_ENDIAN:
        column.byteswap()
    return column.tobytes()


def _lengths(code: str, raw: bytes | memoryview, start: int, count: int) -> array[int]:
    column = array(code)
    column.frombytes(raw[start : start + 4 * count])
    if _BIG_ENDIAN:
        column.byteswap()
    return column


def encode(base: int, entries: Sequence[Entry]) -> tuple[list[bytes], int, float]:
    """``entries`` as one batch starting at offset ``base``.

    Returns ``(parts, size, max_ts)``: the buffers to write in order (frame
    first; ``os.writev`` takes them as they are), their total size, and the
    batch's largest timestamp.
    """
    if len(entries) == 1:
        return _encode_one(base, *entries[0])
    keys, values, headers, stamps = zip(*entries, strict=True)
    count = len(values)
    max_ts = max(stamps)
    flags = 0
    parts: list[bytes] = [b"", b""]
    if min(stamps) != max_ts:
        flags |= TIMESTAMPS
        parts.append(_column("d", stamps))
    if keys.count(None) != count:
        flags |= KEYS
        parts.append(_column("i", [-1 if k is None else len(k) for k in keys]))
    parts.append(_column("I", map(len, values)))
    blobs: list[bytes] = []
    if any(headers):
        flags |= HEADERS
        blobs = _header_blobs(headers)
        parts.append(_column("I", map(len, blobs)))
    if flags & KEYS:
        parts.append(b"".join([k for k in keys if k]))
    parts.append(b"".join(values))
    if blobs:
        parts.append(b"".join(blobs))
    parts[1] = HEAD.pack(base, count, flags, max_ts)
    crc, length = 0, 0
    for part in parts:
        crc = zlib.crc32(part, crc)
        length += len(part)
    parts[0] = FRAME.pack(MAGIC, length, crc)
    return parts, FRAME.size + length, max_ts


def _header_blobs(headers: Sequence[dict[str, str]]) -> list[bytes]:
    """Each record's headers as JSON; a run of equal dicts (the usual case) is encoded once."""
    blobs: list[bytes] = []
    previous: dict[str, str] | None = None
    blob = b""
    for current in headers:
        if current != previous:
            previous, blob = current, orjson.dumps(current) if current else b""
        blobs.append(blob)
    return blobs


_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")


def _encode_one(
    base: int, key: bytes | None, value: bytes, headers: dict[str, str], stamp: float
) -> tuple[list[bytes], int, float]:
    """:func:`encode` of a single record (a lone send: the common case), without columns."""
    flags = 0
    parts = [b"", b""]
    if key is not None:
        flags = KEYS
        parts.append(_I32.pack(len(key)))
    parts.append(_U32.pack(len(value)))
    if headers:
        flags |= HEADERS
        blob = orjson.dumps(headers)
        parts.append(_U32.pack(len(blob)))
        if key:
            parts.append(key)
        parts.append(value)
        parts.append(blob)
    else:
        if key:
            parts.append(key)
        parts.append(value)
    parts[1] = HEAD.pack(base, 1, flags, stamp)
    body = b"".join(parts)
    parts = [FRAME.pack(MAGIC, len(body), zlib.crc32(body)), body]
    return parts, FRAME.size + len(body), stamp


def read_frame(buf: bytes | memoryview, at: int, position: int) -> BatchInfo | None:
    """The batch framed at ``buf[at:]`` if it is whole and its checksum holds, else ``None``.

    ``position`` is where ``buf[at]`` lies in the file (recorded in the result).
    """
    end = len(buf)
    if at + FRAME.size + HEAD.size > end:
        return None
    magic, length, crc = FRAME.unpack_from(buf, at)
    body = at + FRAME.size
    if magic != MAGIC or length < HEAD.size or length > _MAX_BODY or body + length > end:
        return None
    if zlib.crc32(memoryview(buf)[body : body + length]) != crc:
        return None
    base, count, _flags, max_ts = HEAD.unpack_from(buf, body)
    if count == 0:
        return None
    return BatchInfo(position, FRAME.size + length, base, count, max_ts)


def frame_size(buf: bytes | memoryview, at: int) -> int | None:
    """The size a frame starting at ``buf[at:]`` claims (unchecked); ``None`` if not a frame."""
    if at + FRAME.size > len(buf):
        return None
    magic, length, _crc = FRAME.unpack_from(buf, at)
    if magic != MAGIC or length < HEAD.size or length > _MAX_BODY:
        return None
    return FRAME.size + length


def decode(buf: bytes, at: int, topic: str, partition: int) -> list[InboundRecord]:
    """The records of the batch framed at ``buf[at:]`` (already checked by :func:`read_frame`)."""
    body = at + FRAME.size
    base, count, flags, max_ts = HEAD.unpack_from(buf, body)
    pos = body + HEAD.size
    stamps: Any = repeat(max_ts, count)
    if flags & TIMESTAMPS:
        stamps = array("d")
        stamps.frombytes(buf[pos : pos + 8 * count])
        if _BIG_ENDIAN:
            stamps.byteswap()
        pos += 8 * count
    key_lengths = None
    if flags & KEYS:
        key_lengths = _lengths("i", buf, pos, count)
        pos += 4 * count
    value_lengths = _lengths("I", buf, pos, count)
    pos += 4 * count
    header_lengths = None
    if flags & HEADERS:
        header_lengths = _lengths("I", buf, pos, count)
        pos += 4 * count
    keys: Any = repeat(None, count)
    if key_lengths is not None:
        keys, pos = _keys(buf, pos, key_lengths)
    values, pos = _slices(buf, pos, value_lengths)
    headers = (
        [{} for _ in range(count)] if header_lengths is None else _headers(buf, pos, header_lengths)
    )
    return make_records(topic, partition, base, values, keys, headers, stamps)


def _slices(buf: bytes, pos: int, lengths: array[int]) -> tuple[list[bytes], int]:
    bounds = list(accumulate(lengths, initial=pos))
    return [buf[a:b] for a, b in pairwise(bounds)], bounds[-1]


def _keys(buf: bytes, pos: int, lengths: array[int]) -> tuple[list[bytes | None], int]:
    present, end = _slices(buf, pos, array("I", [max(n, 0) for n in lengths]))
    return [None if n < 0 else k for n, k in zip(lengths, present)], end  # noqa: B905


def _headers(buf: bytes, pos: int, lengths: array[int]) -> list[dict[str, str]]:
    """Each record gets its own dict; equal blobs (the usual case) are parsed once."""
    blobs, _ = _slices(buf, pos, lengths)
    parsed: dict[bytes, dict[str, str]] = {}
    out: list[dict[str, str]] = []
    for blob in blobs:
        if not blob:
            out.append({})
            continue
        found = parsed.get(blob)
        if found is None:
            found = parsed[blob] = orjson.loads(blob)
        out.append(found.copy())
    return out
