"""binder.converters: the built-in converters, the registry and Target adaptation."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import BaseModel

from binder.converters import (
    BytesConverter,
    Converter,
    ConverterRegistry,
    JsonConverter,
    Target,
    TextConverter,
    mime_base,
)
from binder.errors import ConfigError, ConversionError


class Order(BaseModel):
    id: int
    customer: str = "anon"


# -- JSON ------------------------------------------------------------------------------------


def test_json_encode_is_compact_utf8() -> None:
    assert JsonConverter().encode({"a": 1, "b": "é"}) == '{"a":1,"b":"é"}'.encode()


def test_json_round_trip() -> None:
    value = {"a": [1, 2.5, None, True], "b": {"c": "d"}}
    converter = JsonConverter()
    assert converter.decode(converter.encode(value)) == value


def test_json_encodes_pydantic_models_sets_tuples_and_dates() -> None:
    converter = JsonConverter()
    assert converter.decode(converter.encode(Order(id=1))) == {"id": 1, "customer": "anon"}
    assert converter.decode(converter.encode({"o": Order(id=2)})) == {
        "o": {"id": 2, "customer": "anon"}
    }
    assert converter.decode(converter.encode({"s": {3}, "t": (1, 2)})) == {"s": [3], "t": [1, 2]}
    assert converter.encode(datetime.date(2024, 1, 2)) == b'"2024-01-02"'


def test_json_encode_of_unserialisable_value_is_conversion_error() -> None:
    with pytest.raises(ConversionError, match="object"):
        JsonConverter().encode(object())


def test_json_encode_of_circular_reference_is_conversion_error() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ConversionError):
        JsonConverter().encode(cyclic)


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe", b""])
def test_json_decode_of_malformed_bytes_is_conversion_error(data: bytes) -> None:
    with pytest.raises(ConversionError, match="not valid JSON"):
        JsonConverter().decode(data)


# -- text and bytes --------------------------------------------------------------------------


def test_text_round_trip_and_str_of_other_values() -> None:
    converter = TextConverter()
    assert converter.encode("héllo") == "héllo".encode()
    assert converter.decode("héllo".encode()) == "héllo"
    assert converter.encode(42) == b"42"


def test_text_decode_of_invalid_utf8_is_conversion_error() -> None:
    with pytest.raises(ConversionError, match="UTF-8"):
        TextConverter().decode(b"\xff")


def test_bytes_converter_passes_bytes_through() -> None:
    converter = BytesConverter()
    assert converter.encode(b"\x00\x01") == b"\x00\x01"
    assert converter.encode(bytearray(b"ab")) == b"ab"
    assert converter.decode(b"\x00") == b"\x00"


def test_bytes_converter_refuses_non_bytes() -> None:
    with pytest.raises(ConversionError, match="needs bytes, got str"):
        BytesConverter().encode("text")


def test_builtins_satisfy_the_converter_protocol() -> None:
    for converter in (JsonConverter(), TextConverter(), BytesConverter()):
        assert isinstance(converter, Converter)


# -- mime_base and the registry --------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("application/json", "application/json"),
        ("application/json; charset=utf-8", "application/json"),
        ("Application/JSON", "application/json"),
        ("application/vnd.order+json", "application/json"),
        ("application/cloudevents+json; charset=utf-8", "application/json"),
        (" text/plain ;charset=latin-1", "text/plain"),
        ("application/octet-stream", "application/octet-stream"),
    ],
)
def test_mime_base(given: str, base: str) -> None:
    assert mime_base(given) == base


def test_registry_finds_builtins_by_parameterised_type() -> None:
    registry = ConverterRegistry()
    assert isinstance(registry.get("application/json; charset=utf-8"), JsonConverter)
    assert isinstance(registry.get("application/problem+json"), JsonConverter)
    assert isinstance(registry.get("text/plain"), TextConverter)
    assert isinstance(registry.get("application/octet-stream"), BytesConverter)


def test_registry_unknown_type_is_conversion_error() -> None:
    with pytest.raises(ConversionError, match="application/x-nope"):
        ConverterRegistry().get("application/x-nope")


def test_registry_require_unknown_type_is_config_error_naming_path() -> None:
    with pytest.raises(ConfigError) as info:
        ConverterRegistry().require("application/x-nope", "binder.bindings.a-in-0.content-type")
    assert info.value.path == "binder.bindings.a-in-0.content-type"
    assert info.value.value == "application/x-nope"
    assert "application/json" in str(info.value)


def test_registry_accepts_extra_converters() -> None:
    class Upper:
        content_type = "text/x-upper"

        def encode(self, value: Any) -> bytes:
            return str(value).upper().encode()

        def decode(self, data: bytes) -> Any:
            return data.decode().lower()

    registry = ConverterRegistry([Upper()])
    assert registry.encode("abc", "text/x-upper") == b"ABC"
    assert registry.get("text/x-upper").decode(b"ABC") == "abc"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/x-nope"])
def test_bytes_payload_is_sent_as_is_whatever_the_content_type(content_type: str) -> None:
    assert ConverterRegistry().encode(b"\x00raw\xff", content_type) == b"\x00raw\xff"


def test_registry_encode_uses_the_content_type() -> None:
    registry = ConverterRegistry()
    assert registry.encode({"a": 1}, "application/json") == b'{"a":1}'
    assert registry.encode("plain", "text/plain") == b"plain"
    assert registry.encode("plain", "application/json") == b'"plain"'


# -- Target ----------------------------------------------------------------------------------


@pytest.mark.parametrize("annotation", [None, Any, object])
def test_target_without_type_passes_value_through(annotation: Any) -> None:
    value = {"any": ["thing"]}
    assert Target(annotation).adapt(value) is value
    assert Target(annotation).from_json is None


def test_target_dict_accepts_dict_and_refuses_list() -> None:
    target = Target(dict)
    value = {"a": 1}
    assert target.adapt(value) is value
    with pytest.raises(ConversionError, match="not a valid dict"):
        target.adapt([1, 2])


def test_target_str_refuses_a_mapping() -> None:
    with pytest.raises(ConversionError):
        Target(str).adapt({"a": 1})


def test_target_int_coerces_numeric_string() -> None:
    assert Target(int).adapt("12") == 12


def test_target_pydantic_model_validates_dicts() -> None:
    order = Target(Order).adapt({"id": "3"})
    assert isinstance(order, Order)
    assert order == Order(id=3)


def test_target_pydantic_model_keeps_an_instance() -> None:
    order = Order(id=1)
    assert Target(Order).adapt(order) is order


def test_target_pydantic_model_from_json_bytes() -> None:
    target = Target(Order)
    assert target.from_json is not None
    assert target.from_json(b'{"id": 5, "customer": "c"}') == Order(id=5, customer="c")


def test_target_pydantic_invalid_payload_is_conversion_error() -> None:
    target = Target(Order)
    with pytest.raises(ConversionError, match="Order"):
        target.adapt({"customer": "no id"})
    assert target.from_json is not None
    with pytest.raises(ConversionError, match="Order"):
        target.from_json(b'{"id": "not-a-number"}')


def test_target_list_of_int() -> None:
    target = Target(list[int])
    assert target.adapt([1, "2", 3]) == [1, 2, 3]
    with pytest.raises(ConversionError):
        target.adapt(["x"])


def test_target_remembers_its_type() -> None:
    assert Target(list[int]).type == list[int]


class Summary(BaseModel):
    id: int


def test_target_dict_takes_a_model_as_its_fields() -> None:
    assert Target(dict).adapt(Order(id=1, customer="c")) == {"id": 1, "customer": "c"}


def test_target_model_takes_another_model_by_its_fields() -> None:
    assert Target(Summary).adapt(Order(id=4)) == Summary(id=4)
