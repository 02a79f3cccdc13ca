"""What a send refuses: every field that no backend could carry is a ConversionError naming it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import BaseModel

from binder import App, ConversionError, Message
from binder.converters import JsonConverter
from binder.message import key_bytes, normalize_headers

TIMEOUT = 2.0


class Price(BaseModel):
    amount: float


# -- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [1, b"raw", None, ("a", "b")])
def test_a_header_name_that_is_not_a_str_is_refused_naming_it(name: Any) -> None:
    with pytest.raises(ConversionError, match=r"header name .* must be a str") as caught:
        normalize_headers({name: "v"})
    assert repr(name) in str(caught.value)


def test_a_header_name_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ConversionError, match=r"header name .*UTF-8"):
        normalize_headers({"bad\udcff": "v"})


def test_a_header_value_with_a_lone_surrogate_is_refused_naming_the_header() -> None:
    with pytest.raises(ConversionError, match=r"header 'trace' cannot be encoded as UTF-8"):
        normalize_headers({"trace": "abc\ud800"})


def test_a_non_str_value_whose_text_has_a_surrogate_is_refused() -> None:
    class Odd:
        def __str__(self) -> str:
            return "\udcff"

    with pytest.raises(ConversionError, match="header 'odd'"):
        normalize_headers({"odd": Odd()})


def test_a_bytes_header_value_is_decoded_as_utf8() -> None:
    assert normalize_headers({"h": "ünï".encode(), "m": memoryview(b"ok")}) == {
        "h": "ünï",
        "m": "ok",
    }


def test_a_bytes_header_value_that_is_not_utf8_is_refused_naming_the_header() -> None:
    with pytest.raises(ConversionError, match="header 'blob': bytes value is not valid UTF-8"):
        normalize_headers({"blob": b"\xff\xfe"})


def test_non_ascii_text_headers_pass_unchanged() -> None:
    assert normalize_headers({"ñame": "välue", "n": 3}) == {"ñame": "välue", "n": "3"}


def test_a_message_with_a_bad_header_is_refused_when_built() -> None:
    with pytest.raises(ConversionError, match="header name 7"):
        Message({}, headers={7: "x"})


# -- keys ------------------------------------------------------------------------------------


def test_a_key_with_a_lone_surrogate_is_refused_naming_the_key() -> None:
    with pytest.raises(ConversionError, match=r"key 'c-\\udcff' cannot be encoded as UTF-8"):
        key_bytes("c-\udcff")


def test_keys_that_encode_are_unchanged() -> None:
    assert key_bytes("ключ") == "ключ".encode()
    assert key_bytes({"a": "\udcff"}) == b'{"a":"\\udcff"}', "JSON text escapes it"


# -- JSON payloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_float_is_refused_naming_where_it_is(bad: float) -> None:
    payload = {"id": 1, "lines": [{"qty": 2}, {"price": bad}]}
    with pytest.raises(ConversionError, match=r"payload\['lines'\]\[1\]\['price'\]"):
        JsonConverter().encode(payload)


def test_a_top_level_nan_is_refused() -> None:
    with pytest.raises(ConversionError, match="JSON has no NaN or Infinity"):
        JsonConverter().encode(math.nan)


def test_a_nan_in_a_pydantic_model_is_refused() -> None:
    with pytest.raises(ConversionError, match=r"payload\['amount'\]"):
        JsonConverter().encode(Price(amount=math.nan))
    with pytest.raises(ConversionError, match=r"payload\['p'\]\['amount'\]"):
        JsonConverter().encode({"p": Price(amount=math.inf)})


def test_nulls_and_finite_floats_still_encode() -> None:
    payload = {"note": None, "price": 1.5, "tags": ("null", None), "nested": {"x": [None]}}
    assert JsonConverter().encode(payload) == (
        b'{"note":null,"price":1.5,"tags":["null",null],"nested":{"x":[null]}}'
    )
    assert JsonConverter().encode(Price(amount=2.0)) == b'{"amount":2.0}'


# -- through app.send and a function's outputs -----------------------------------------------


def _app() -> App:
    return App(config={"binder": {"bindings": {"echo-in-0": {"group": "g"}}}}, environ={})


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"headers": {1: "x"}}, "header name 1"),
        ({"headers": {"h": "\udcff"}}, "header 'h'"),
        ({"headers": {"h": b"\xff"}}, "header 'h'"),
        ({"key": "k\udcff"}, "key"),
        ({"payload": {"price": math.nan}}, "payload['price']"),
    ],
)
def test_app_send_refuses_each_field_with_a_conversion_error(
    kwargs: dict[str, Any], field: str
) -> None:
    app = _app()
    payload = kwargs.pop("payload", {"id": 1})
    with app.test() as t:
        with pytest.raises(ConversionError) as caught:
            t.send("orders", payload, **kwargs)
        assert field in str(caught.value)


def test_app_send_of_a_utf8_bytes_header_arrives_as_text() -> None:
    app = _app()
    with app.test() as t:
        t.send("orders", {"id": 1}, headers={"who": "zoë".encode()})
        received = t.receive("orders", timeout=TIMEOUT)
        assert received is not None and received.headers["who"] == "zoë"


def test_a_function_output_with_nan_is_dead_lettered_as_a_conversion_error() -> None:
    app = _app()

    @app.function
    def echo(order: dict[str, Any]) -> dict[str, Any]:
        return {**order, "ratio": math.nan}

    with app.test() as t:
        t.send("echo-in-0", {"id": 1})
        letter = t.receive("echo-in-0.g.dlq", timeout=TIMEOUT)
        assert letter is not None
        assert letter.headers["x-exception-type"] == "binder.errors.ConversionError"
        assert "payload['ratio']" in letter.headers["x-exception-message"]
