"""The record batch format: what is encoded decodes the same, and damage is always noticed."""

from __future__ import annotations

import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from binders.log.engine.records import FRAME, HEAD, decode, encode, frame_size, read_frame

keys = st.none() | st.binary(max_size=20)
headers = st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=3)
stamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)
records = st.lists(
    st.tuples(keys, st.binary(max_size=200), headers, stamps), min_size=1, max_size=40
)


def _bytes(base: int, batch: list) -> bytes:
    parts, size, _ = encode(base, batch)
    raw = b"".join(parts)
    assert len(raw) == size
    return raw


@settings(max_examples=150, deadline=None)
@given(records, st.integers(min_value=0, max_value=2**40))
def test_a_batch_decodes_to_what_was_encoded(batch: list, base: int) -> None:
    raw = _bytes(base, batch)
    info = read_frame(raw, 0, 0)
    assert info is not None and (info.base, info.count, info.size) == (base, len(batch), len(raw))
    assert info.max_ts == max(ts for *_, ts in batch)
    decoded = decode(raw, 0, "topic", 3)
    assert [(r.key, r.value, r.headers, r.timestamp) for r in decoded] == batch
    assert [r.offset for r in decoded] == list(range(base, base + len(batch)))
    assert {(r.destination, r.partition) for r in decoded} == {("topic", 3)}


@settings(max_examples=150, deadline=None)
@given(records, st.data())
def test_any_flipped_byte_or_cut_is_refused(batch: list, data: st.DataObject) -> None:
    raw = bytearray(_bytes(0, batch))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    assert read_frame(bytes(raw[:cut]), 0, 0) is None
    flip = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[flip] ^= data.draw(st.integers(min_value=1, max_value=255))
    assert read_frame(bytes(raw), 0, 0) is None


def test_records_of_one_batch_get_their_own_header_dicts() -> None:
    batch = [(None, b"a", {"h": "1"}, 1.0), (None, b"b", {"h": "1"}, 1.0)]
    first, second = decode(_bytes(0, batch), 0, "t", 0)
    first.headers["x"] = "changed"
    assert second.headers == {"h": "1"}


def test_the_frame_is_magic_length_and_crc_of_the_body() -> None:
    raw = _bytes(7, [(b"k", b"value", {}, 2.5)])
    magic, length, crc = FRAME.unpack_from(raw)
    assert magic == b"SBL1" and length == len(raw) - FRAME.size
    assert crc == zlib.crc32(raw[FRAME.size :])
    assert HEAD.unpack_from(raw, FRAME.size)[:2] == (7, 1)
    assert frame_size(raw, 0) == len(raw)
    assert frame_size(b"nope" + raw[4:], 0) is None


def test_a_frame_is_found_inside_a_larger_buffer() -> None:
    one, two = _bytes(0, [(None, b"x", {}, 1.0)]), _bytes(1, [(None, b"y", {}, 1.0)])
    info = read_frame(one + two, len(one), 500)
    assert info is not None and (info.base, info.position) == (1, 500)
    assert [r.value for r in decode(one + two, len(one), "t", 0)] == [b"y"]
