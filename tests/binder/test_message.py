"""binder.message: the Message type, header normalisation and the key's wire form."""

from __future__ import annotations

import pytest

from binder.message import Message, decode_key, key_bytes, normalize_headers


def test_message_defaults_have_no_origin() -> None:
    message = Message({"id": 1})
    assert message.payload == {"id": 1}
    assert message.key is None
    assert message.headers == {}
    assert (message.destination, message.partition, message.offset) == (None, None, None)
    assert message.timestamp is None


def test_message_keeps_origin_fields() -> None:
    message = Message(b"x", key="k", destination="orders", partition=2, offset=7, timestamp=1.5)
    assert (message.destination, message.partition, message.offset) == ("orders", 2, 7)
    assert message.timestamp == 1.5


def test_message_headers_are_normalised_to_strings() -> None:
    message = Message(None, headers={"n": 3, "b": b"raw", "s": "text", "f": True})
    assert message.headers == {"n": "3", "b": "raw", "s": "text", "f": "True"}


def test_message_headers_are_a_copy_of_the_given_mapping() -> None:
    given = {"a": "1"}
    message = Message(None, headers=given)
    given["a"] = "2"
    assert message.headers == {"a": "1"}


def test_message_equality_compares_payload_key_and_headers_only() -> None:
    a = Message({"x": 1}, key="k", headers={"h": "1"}, destination="d1", offset=1)
    b = Message({"x": 1}, key="k", headers={"h": 1}, destination="d2", offset=9)
    assert a == b
    assert a != Message({"x": 1}, key="other", headers={"h": "1"})
    assert a != Message({"x": 2}, key="k", headers={"h": "1"})
    assert a != Message({"x": 1}, key="k", headers={"h": "2"})


def test_message_is_not_equal_to_other_types_and_unhashable() -> None:
    assert Message(1) != 1
    with pytest.raises(TypeError):
        hash(Message(1))


def test_message_generic_subscript_is_allowed() -> None:
    message: Message[dict[str, int]] = Message[dict]({"a": 1})
    assert message.payload == {"a": 1}


def test_message_repr_shows_where_it_came_from() -> None:
    text = repr(Message("p", key="k", destination="orders", partition=1, offset=5))
    assert "'p'" in text and "key='k'" in text and "orders[1]@5" in text
    assert "orders" not in repr(Message("p"))


def test_normalize_headers_converts_each_value() -> None:
    headers = {"a": "x", "b": "café".encode(), "c": 1.5, "d": bytearray(b"y")}
    assert normalize_headers(headers) == {
        "a": "x",
        "b": "café",
        "c": "1.5",
        "d": "y",
    }


def test_normalize_headers_of_empty_mapping_is_empty() -> None:
    assert normalize_headers({}) == {}


@pytest.mark.parametrize(
    ("key", "wire"),
    [
        (None, None),
        (b"\x00\xff", b"\x00\xff"),
        ("c-42", b"c-42"),
        ("é", "é".encode()),
        (bytearray(b"ab"), b"ab"),
        (memoryview(b"mv"), b"mv"),
        (42, b"42"),
        (1.5, b"1.5"),
        (True, b"true"),
        ({"a": 1, "b": [1, 2]}, b'{"a":1,"b":[1,2]}'),
        (["x", 1], b'["x",1]'),
    ],
)
def test_key_bytes(key: object, wire: bytes | None) -> None:
    assert key_bytes(key) == wire


def test_key_bytes_returns_bytes_type_for_bytearray() -> None:
    assert type(key_bytes(bytearray(b"ab"))) is bytes


def test_decode_key_gives_text_for_utf8_and_bytes_otherwise() -> None:
    assert decode_key(None) is None
    assert decode_key(b"c-42") == "c-42"
    assert decode_key("é".encode()) == "é"
    assert decode_key(b"\xff\xfe") == b"\xff\xfe"


def test_key_round_trips_through_wire_form() -> None:
    for key in ("c-42", b"\x80\x81"):
        assert decode_key(key_bytes(key)) == key
