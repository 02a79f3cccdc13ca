"""binder.invoke: decoding records, calling pipelines, and what their results send."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from binder.converters import ConverterRegistry
from binder.errors import ConversionError, HandlerError
from binder.functions import FunctionDef, Kind, Pipeline
from binder.invoke import Invoker, propagated_headers
from binder.message import Message, key_bytes
from binder.spi import InboundRecord


class Order(BaseModel):
    id: int
    status: str = "NEW"


def _stage(fn: Callable[..., Any], kind: Kind = "function", name: str | None = None) -> FunctionDef:
    return FunctionDef.inspect(fn, kind, name)


def _invoker(
    *fns: Callable[..., Any],
    kind: Kind = "function",
    content_type: str = "application/json",
    batch: bool = False,
) -> Invoker:
    stages = [_stage(fn) for fn in fns[:-1]] + [_stage(fns[-1], kind)]
    pipeline = Pipeline("".join(s.name for s in stages), stages)
    return Invoker(pipeline, ConverterRegistry(), content_type, batch)


def _record(
    value: bytes = b'{"id": 1}',
    *,
    key: bytes | None = b"k-1",
    headers: dict[str, str] | None = None,
    partition: int = 0,
    offset: int = 0,
) -> InboundRecord:
    return InboundRecord(
        destination="orders",
        partition=partition,
        offset=offset,
        value=value,
        key=key,
        headers=headers if headers is not None else {},
        timestamp=123.0,
    )


def _on_wire(outputs: list[Any]) -> list[Any]:
    """Outputs with their keys as wire bytes (an input key may be passed on as text or bytes)."""
    return [(payload, key_bytes(key), headers) for payload, key, headers in outputs]


# -- headers ---------------------------------------------------------------------------------


CORE_AND_USER = {
    "source": "api",
    "x-custom": "1",
    "contentType": "application/json",
    "x-delivery-attempt": "2",
    "x-exception-type": "builtins.ValueError",
    "x-exception-message": "boom",
    "x-original-destination": "orders",
    "x-original-group": "g",
    "x-original-partition": "0",
    "x-original-offset": "4",
}


def test_propagated_headers_drop_only_the_core_headers() -> None:
    assert propagated_headers(CORE_AND_USER) == {"source": "api", "x-custom": "1"}
    assert propagated_headers({}) == {}


def test_plain_return_keeps_input_key_and_user_headers() -> None:
    def fn(order: dict) -> dict:
        return {**order, "status": "UPPER"}

    outputs = _invoker(fn).run(_record(headers=dict(CORE_AND_USER)), 1)
    assert _on_wire(outputs) == [
        ({"id": 1, "status": "UPPER"}, b"k-1", {"source": "api", "x-custom": "1"})
    ]


def test_message_return_sets_key_and_headers_and_drops_the_inputs() -> None:
    def fn(order: dict) -> Message[dict]:
        return Message(order, key="other", headers={"mine": 7})

    outputs = _invoker(fn).run(_record(headers={"source": "api"}), 1)
    assert outputs == [({"id": 1}, "other", {"mine": "7"})]


def test_none_return_sends_nothing() -> None:
    assert _invoker(lambda order: None).run(_record(), 1) == []


def test_consumer_sends_nothing_even_when_it_returns_a_value() -> None:
    def audit(order: dict) -> dict:
        return order

    assert _invoker(audit, kind="consumer").run(_record(), 1) == []


def test_binary_key_stays_bytes_on_output() -> None:
    outputs = _invoker(lambda order: order).run(_record(key=b"\xff\x00"), 1)
    assert outputs[0][1] == b"\xff\x00"


def test_keyless_input_gives_keyless_output() -> None:
    outputs = _invoker(lambda order: order).run(_record(key=None), 1)
    assert outputs[0][1] is None


# -- decoding and arguments ------------------------------------------------------------------


def test_message_parameter_gets_the_whole_received_message() -> None:
    seen: list[Message[Any]] = []

    def fn(msg: Message[Order]) -> None:
        seen.append(msg)

    record = _record(headers={"source": "api"}, partition=3, offset=41)
    _invoker(fn).run(record, 2)
    (msg,) = seen
    assert msg.payload == Order(id=1)
    assert msg.key == "k-1"
    assert msg.headers == {"source": "api", "x-delivery-attempt": "2"}
    assert (msg.destination, msg.partition, msg.offset, msg.timestamp) == ("orders", 3, 41, 123.0)


def test_bare_message_parameter_gets_decoded_json() -> None:
    seen: list[Any] = []

    def fn(msg: Message) -> None:
        seen.append(msg.payload)

    _invoker(fn).run(_record(b'[1, "two"]'), 1)
    assert seen == [[1, "two"]]


def test_pydantic_parameter_is_validated() -> None:
    seen: list[Any] = []

    def fn(order: Order) -> None:
        seen.append(order)

    _invoker(fn).run(_record(b'{"id": "7"}'), 1)
    assert seen == [Order(id=7)]


def test_invalid_payload_for_model_is_conversion_error() -> None:
    def fn(order: Order) -> None: ...

    with pytest.raises(ConversionError):
        _invoker(fn).run(_record(b'{"status": "no id"}'), 1)


def test_undecodable_payload_is_conversion_error_and_function_not_called() -> None:
    calls: list[Any] = []
    with pytest.raises(ConversionError):
        _invoker(calls.append).run(_record(b"{broken"), 1)
    assert calls == []


def test_record_content_type_header_wins_over_binding_default() -> None:
    seen: list[Any] = []
    invoker = _invoker(seen.append, content_type="application/json")
    invoker.run(_record(b"plain words", headers={"contentType": "text/plain; charset=utf-8"}), 1)
    assert seen == ["plain words"]


def test_binding_content_type_applies_without_header() -> None:
    seen: list[Any] = []
    invoker = _invoker(seen.append, content_type="application/octet-stream")
    invoker.run(_record(b"\x00\x01"), 1)
    assert seen == [b"\x00\x01"]


def test_bytes_parameter_with_octet_stream() -> None:
    def fn(data: bytes) -> bytes:
        return data[::-1]

    outputs = _invoker(fn, content_type="application/octet-stream").run(_record(b"abc"), 1)
    assert outputs[0][0] == b"cba"


def test_list_parameter_outside_batch_mode_gets_the_list_payload() -> None:
    def total(values: list[int]) -> int:
        return sum(values)

    outputs = _invoker(total).run(_record(b"[1, 2, 3]"), 1)
    assert outputs[0][0] == 6


def test_function_error_is_handler_error_wrapping_the_cause() -> None:
    def fn(order: dict) -> dict:
        raise KeyError("missing")

    with pytest.raises(HandlerError, match="fn raised KeyError") as info:
        _invoker(fn).run(_record(), 1)
    assert isinstance(info.value.__cause__, KeyError)


# -- composition -----------------------------------------------------------------------------


def test_composition_converts_between_stages() -> None:
    def parse(order: dict) -> dict:
        return {**order, "status": "PARSED"}

    def enrich(order: Order) -> Order:
        assert isinstance(order, Order)
        return order.model_copy(update={"status": order.status + "+ENRICHED"})

    outputs = _invoker(parse, enrich).run(_record(headers={"source": "api"}), 1)
    assert _on_wire(outputs) == [(Order(id=1, status="PARSED+ENRICHED"), b"k-1", {"source": "api"})]


def test_composition_model_into_dict_stage() -> None:
    def to_model(order: dict) -> Order:
        return Order(**order)

    def to_dict(order: dict) -> dict:
        assert type(order) is dict
        return order

    outputs = _invoker(to_model, to_dict).run(_record(), 1)
    assert outputs[0][0] == {"id": 1, "status": "NEW"}


def test_composition_none_stops_the_chain() -> None:
    later: list[Any] = []

    def drop(order: dict) -> None:
        return None

    assert _invoker(drop, later.append).run(_record(), 1) == []
    assert later == []


def test_composition_passes_message_to_a_message_stage() -> None:
    seen: list[Message[Any]] = []

    def first(order: dict) -> Message[dict]:
        return Message(order, key="k-2", headers={"h": "1"})

    def second(msg: Message[Order]) -> Order:
        seen.append(msg)
        return msg.payload

    outputs = _invoker(first, second).run(_record(), 1)
    assert seen[0].payload == Order(id=1)
    assert (seen[0].key, seen[0].headers) == ("k-2", {"h": "1"})
    assert outputs == [(Order(id=1), "k-2", {"h": "1"})]


def test_composition_last_stage_message_sets_output() -> None:
    def first(order: dict) -> dict:
        return order

    def second(order: dict) -> Message[dict]:
        return Message(order, key="last")

    outputs = _invoker(first, second).run(_record(headers={"source": "api"}), 1)
    assert outputs == [({"id": 1}, "last", {})]


def test_composition_into_consumer_sends_nothing() -> None:
    seen: list[Any] = []

    def first(order: dict) -> dict:
        return order

    assert _invoker(first, seen.append, kind="consumer").run(_record(), 1) == []
    assert seen == [{"id": 1}]


# -- async -----------------------------------------------------------------------------------


def test_run_async_awaits_async_stages() -> None:
    async def fn(order: dict) -> dict:
        await asyncio.sleep(0)
        return {**order, "async": True}

    invoker = _invoker(fn)
    assert invoker.pipeline.is_async
    outputs = asyncio.run(invoker.run_async(_record(), 1))
    assert _on_wire(outputs) == [({"id": 1, "async": True}, b"k-1", {})]


def test_run_async_runs_sync_stages_off_the_loop_thread() -> None:
    threads: dict[str, int] = {}

    async def first(order: dict) -> dict:
        threads["async"] = threading.get_ident()
        return order

    def second(order: dict) -> dict:
        threads["sync"] = threading.get_ident()
        return {**order, "second": True}

    outputs = asyncio.run(_invoker(first, second).run_async(_record(), 1))
    assert outputs[0][0] == {"id": 1, "second": True}
    assert threads["sync"] != threads["async"]


def test_run_async_wraps_errors_in_handler_error() -> None:
    async def fn(order: dict) -> dict:
        raise ValueError("nope")

    with pytest.raises(HandlerError) as info:
        asyncio.run(_invoker(fn).run_async(_record(), 1))
    assert isinstance(info.value.__cause__, ValueError)


def test_run_async_message_parameter_sees_attempt() -> None:
    seen: list[str] = []

    async def fn(msg: Message[dict]) -> None:
        seen.append(msg.headers["x-delivery-attempt"])

    asyncio.run(_invoker(fn).run_async(_record(), 3))
    assert seen == ["3"]


# -- batch -----------------------------------------------------------------------------------


def test_batch_function_gets_adapted_list_and_sends_one_message_per_item() -> None:
    seen: list[Any] = []

    def fn(orders: list[Order]) -> list[Any]:
        seen.extend(orders)
        return [Order(id=o.id * 10) for o in orders]

    records = [_record(b'{"id": 1}'), _record(b'{"id": 2}', offset=1)]
    outputs = _invoker(fn, batch=True).run_batch(records, 1)
    assert seen == [Order(id=1), Order(id=2)]
    assert outputs == [(Order(id=10), None, {}), (Order(id=20), None, {})]


def test_batch_outputs_honour_messages_and_skip_none_items() -> None:
    def fn(items: list[dict]) -> list[Any]:
        return [Message(items[0], key="a", headers={"h": "1"}), None, items[1]]

    records = [_record(b'{"id": 1}'), _record(b'{"id": 2}', offset=1)]
    outputs = _invoker(fn, batch=True).run_batch(records, 1)
    assert outputs == [({"id": 1}, "a", {"h": "1"}), ({"id": 2}, None, {})]


def test_batch_single_value_return_is_one_message() -> None:
    def count(items: list[dict]) -> dict:
        return {"count": len(items)}

    records = [_record(), _record(offset=1), _record(offset=2)]
    assert _invoker(count, batch=True).run_batch(records, 1) == [({"count": 3}, None, {})]


def test_batch_none_return_and_consumer_send_nothing() -> None:
    records = [_record()]
    assert _invoker(lambda items: None, batch=True).run_batch(records, 1) == []
    assert _invoker(lambda items: items, kind="consumer", batch=True).run_batch(records, 1) == []


def test_batch_of_messages_async() -> None:
    async def fn(msgs: list[Message[Order]]) -> list[Order]:
        return [m.payload for m in msgs if m.offset == 1]

    records = [_record(b'{"id": 1}'), _record(b'{"id": 2}', offset=1)]
    outputs = asyncio.run(_invoker(fn, batch=True).run_batch_async(records, 1))
    assert outputs == [(Order(id=2), None, {})]


# -- supplier helpers ------------------------------------------------------------------------


def test_single_output() -> None:
    assert Invoker.single_output(None) == []
    assert Invoker.single_output({"a": 1}) == [({"a": 1}, None, {})]
    assert Invoker.single_output({"a": 1}, "k", {"contentType": "x", "u": "1"}) == [
        ({"a": 1}, "k", {"u": "1"})
    ]
    assert Invoker.single_output(Message(1, key="k", headers={"h": "v"})) == [(1, "k", {"h": "v"})]


def test_feed_runs_a_supplier_value_through_the_tail() -> None:
    def double(value: int) -> int:
        return value * 2

    tail = Pipeline("double", [_stage(double)])
    assert asyncio.run(Invoker.feed(tail, "21")) == [(42, None, {})]
    assert asyncio.run(Invoker.feed(tail, Message(4, key="k", headers={"h": "1"}))) == [
        (8, "k", {"h": "1"})
    ]


def test_feed_into_consumer_tail_sends_nothing() -> None:
    seen: list[Any] = []
    tail = Pipeline("c", [_stage(seen.append, "consumer", "c")])
    assert asyncio.run(Invoker.feed(tail, {"x": 1})) == []
    assert seen == [{"x": 1}]


def test_batch_composition_passes_the_list_along_adapting_each_element() -> None:
    later: list[Any] = []

    def first(items: list[dict]) -> list[dict]:
        return [{**item, "status": "FIRST"} for item in items]

    def second(orders: list[Order]) -> list[Order]:
        later.extend(orders)
        return orders

    records = [_record(b'{"id": 1}'), _record(b'{"id": 2}', offset=1)]
    outputs = _invoker(first, second, batch=True).run_batch(records, 1)
    assert later == [Order(id=1, status="FIRST"), Order(id=2, status="FIRST")]
    assert [payload for payload, _, _ in outputs] == later


def test_batch_composition_into_message_stage_adapts_payloads() -> None:
    later: list[Message[Any]] = []

    def first(items: list[dict]) -> list[Any]:
        return [items[0], Message(items[1], key="k", headers={"h": "1"})]

    async def second(msgs: list[Message[Order]]) -> None:
        later.extend(msgs)

    records = [_record(b'{"id": 1}'), _record(b'{"id": 2}', offset=1)]
    invoker = _invoker(first, second, kind="consumer", batch=True)
    assert asyncio.run(invoker.run_batch_async(records, 1)) == []
    assert [m.payload for m in later] == [Order(id=1), Order(id=2)]
    assert (later[1].key, later[1].headers) == ("k", {"h": "1"})
