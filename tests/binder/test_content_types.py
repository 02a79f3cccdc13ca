"""Received ``contentType`` in the forms Spring (and other producers) write, and JSON with a BOM."""

from __future__ import annotations

import queue
from typing import Any

import pytest
from pydantic import BaseModel

from binder import App
from binder.converters import BOM, ConverterRegistry, JsonConverter, Target, mime_base
from binder.errors import ConversionError

TIMEOUT = 5.0


class Order(BaseModel):
    id: int


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ('"application/json"', "application/json"),
        (' "application/json" ', "application/json"),
        ("application/json;charset=UTF-8", "application/json"),
        ('"application/json;charset=UTF-8"', "application/json"),
        ('"text/plain"', "text/plain"),
        ('"application/vnd.acme+json"', "application/json"),
        ("", ""),
        ('""', ""),
    ],
)
def test_mime_base_reads_springs_forms(given: str, base: str) -> None:
    assert mime_base(given) == base


def test_the_registry_finds_a_converter_for_a_quoted_type() -> None:
    assert isinstance(ConverterRegistry().get('"application/json"'), JsonConverter)


def test_json_with_a_bom_is_decoded() -> None:
    assert JsonConverter().decode(BOM + b'{"id": 1}') == {"id": 1}


def test_a_bom_alone_or_twice_is_still_not_json() -> None:
    for data in (BOM, BOM + BOM + b"{}"):
        with pytest.raises(ConversionError):
            JsonConverter().decode(data)


def test_a_model_is_validated_from_json_with_a_bom() -> None:
    target = Target(Order)
    assert target.from_json is not None
    assert target.from_json(BOM + b'{"id": 4}') == Order(id=4)
    with pytest.raises(ConversionError, match="not a valid Order"):
        target.from_json(BOM + b'{"id": "x"}')


def _received(
    sent: list[tuple[bytes, dict[str, str]]], annotation: Any, content_type: str | None = None
) -> list[Any]:
    """What a consumer declaring ``annotation`` gets for raw ``sent`` records, in order."""
    binding: dict[str, Any] = {"destination": "in", "group": "g"}
    if content_type is not None:
        binding["content-type"] = content_type
    app = App(config={"binder": {"bindings": {"take-in-0": binding}}}, environ={})
    got: queue.Queue[Any] = queue.Queue()

    def take(payload: Any) -> None:
        got.put(payload)

    take.__annotations__["payload"] = annotation
    app.consumer(take)
    with app.test() as t:
        for value, headers in sent:
            t.send("in", value, key="one", headers=headers)
        return [got.get(timeout=TIMEOUT) for _ in sent]


SPRING_FORMS = [
    (b'{"id": 1}', {"contentType": '"application/json"'}),
    (b'{"id": 2}', {"contentType": "application/json;charset=UTF-8"}),
    (b'{"id": 3}', {"contentType": '"application/json;charset=UTF-8"'}),
    (b'{"id": 4}', {"contentType": ""}),
    (BOM + b'{"id": 5}', {"contentType": "application/json"}),
    (BOM + b'{"id": 6}', {}),
]


@pytest.mark.parametrize("annotation", [dict, Order, Any])
def test_a_function_gets_the_payload_of_each_form(annotation: Any) -> None:
    received = _received(SPRING_FORMS, annotation)
    as_dicts = [r.model_dump() if isinstance(r, BaseModel) else r for r in received]
    assert as_dicts == [{"id": n} for n in range(1, 7)]


def test_an_empty_content_type_means_the_bindings_own() -> None:
    sent = [(b"plain words", {"contentType": ""}), (b"more", {"contentType": '""'})]
    assert _received(sent, str, content_type="text/plain") == ["plain words", "more"]
