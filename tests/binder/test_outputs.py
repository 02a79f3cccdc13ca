"""binder.outputs: encoding, partition selection, the contentType header, sending, observers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from binder.converters import ConverterRegistry
from binder.errors import ClosedError, ConversionError
from binder.outputs import OutputBinding
from binder.partitioning import compile_expression, select_partition
from binder.spi import OutboundRecord
from binders.log import LogOptions
from binders.log.binder import LogBinder
from binders.log.engine import Broker


class Order(BaseModel):
    id: int
    customer: str


@pytest.fixture
def binder() -> Iterator[LogBinder]:
    name = f"test-outputs-{uuid.uuid4().hex}"
    yield LogBinder("local", LogOptions(broker=name))
    Broker.forget(name)


def _output(binder: LogBinder, destination: str = "orders", **kw: Any) -> OutputBinding:
    return OutputBinding("orders-out-0", destination, binder, ConverterRegistry(), **kw)


# -- encoding --------------------------------------------------------------------------------


def test_record_encodes_with_binding_content_type_and_sets_header(binder: LogBinder) -> None:
    record = _output(binder).record({"id": 1}, "c-42", {"source": "api"})
    assert record.value == b'{"id":1}'
    assert record.key == b"c-42"
    assert record.headers == {"source": "api", "contentType": "application/json"}
    assert record.partition is None


def test_caller_content_type_header_is_kept_and_used(binder: LogBinder) -> None:
    record = _output(binder).record("hello", None, {"contentType": "text/plain"})
    assert record.value == b"hello"
    assert record.headers["contentType"] == "text/plain"


def test_binding_content_type_is_used_for_encoding(binder: LogBinder) -> None:
    record = _output(binder, content_type="text/plain").record(42)
    assert record.value == b"42"
    assert record.headers == {"contentType": "text/plain"}


def test_bytes_payload_goes_as_is_under_json_content_type(binder: LogBinder) -> None:
    record = _output(binder).record(b"\x00\xff")
    assert record.value == b"\x00\xff"
    assert record.headers["contentType"] == "application/json"


def test_model_payload_is_encoded_as_json(binder: LogBinder) -> None:
    record = _output(binder).record(Order(id=1, customer="c"))
    assert record.value == b'{"id":1,"customer":"c"}'


def test_record_does_not_modify_the_given_headers(binder: LogBinder) -> None:
    headers = {"a": "1"}
    _output(binder).record({}, None, headers)
    assert headers == {"a": "1"}


def test_unencodable_payload_is_conversion_error(binder: LogBinder) -> None:
    with pytest.raises(ConversionError):
        _output(binder).record(object())


def test_records_encodes_a_list_of_outputs(binder: LogBinder) -> None:
    records = _output(binder).records([(1, None, {}), (2, "k", {"h": "v"})])
    assert [(r.value, r.key, r.headers.get("h")) for r in records] == [
        (b"1", None, None),
        (b"2", b"k", "v"),
    ]


# -- partition selection ---------------------------------------------------------------------


def test_unpartitioned_binding_leaves_partition_to_the_binder(binder: LogBinder) -> None:
    assert _output(binder).record({"id": 1}, "c-42").partition is None


def test_partition_by_message_key(binder: LogBinder) -> None:
    output = _output(binder, partition_count=4)
    for key, wire in (("c-42", b"c-42"), (b"\x01\x02", b"\x01\x02"), (1234, b"1234")):
        assert output.record({}, key).partition == select_partition(wire, 4)


def test_partition_by_key_expression_ignores_message_key(binder: LogBinder) -> None:
    expression = compile_expression("payload.customer")
    output = _output(binder, partition_count=8, key_expression=expression)
    for customer in ("alice", "bob", "carol"):
        expected = select_partition(customer.encode(), 8)
        assert output.record({"customer": customer}, "other-key").partition == expected


def test_key_expression_reads_model_attributes_headers_and_key(binder: LogBinder) -> None:
    by_model = _output(binder, partition_count=8, key_expression=compile_expression("payload.id"))
    assert by_model.record(Order(id=7, customer="c")).partition == select_partition(b"7", 8)
    by_header = _output(
        binder, partition_count=8, key_expression=compile_expression("headers.tenant")
    )
    assert by_header.record({}, None, {"tenant": "t1"}).partition == select_partition(b"t1", 8)
    by_key = _output(binder, partition_count=8, key_expression=compile_expression("key"))
    assert by_key.record({}, "k9").partition == select_partition(b"k9", 8)


def test_key_expression_with_a_single_partition_picks_zero(binder: LogBinder) -> None:
    output = _output(binder, key_expression=compile_expression("payload.customer"))
    assert output.record({"customer": "alice"}).partition == 0


def test_keyless_messages_are_spread_round_robin(binder: LogBinder) -> None:
    output = _output(binder, partition_count=3)
    assert [output.record({"n": n}).partition for n in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_key_expression_yielding_none_is_spread(binder: LogBinder) -> None:
    output = _output(binder, partition_count=2, key_expression=compile_expression("key"))
    assert [output.record({}).partition for _ in range(4)] == [0, 1, 0, 1]


# -- sending ---------------------------------------------------------------------------------


def test_start_provisions_destination_and_required_groups(binder: LogBinder) -> None:
    async def scenario() -> None:
        await binder.start()
        output = _output(binder, partition_count=3, required_groups=["billing"])
        assert not output.started
        await output.start()
        assert output.started
        assert binder.broker.end_offsets("orders") == {0: 0, 1: 0, 2: 0}
        assert binder.broker.committed("billing", "orders") == {0: 0, 1: 0, 2: 0}
        await output.close()
        assert not output.started
        await output.close()  # idempotent

    asyncio.run(scenario())


def test_send_appends_to_the_chosen_partition(binder: LogBinder) -> None:
    async def scenario() -> None:
        await binder.start()
        output = _output(binder, partition_count=4)
        await output.start()
        await output.send({"id": 1}, "c-42", {"attempt": 1})
        partition = select_partition(b"c-42", 4)
        (stored,) = binder.broker.read("orders", partition, 0, 10)
        assert (stored.key, stored.value) == (b"c-42", b'{"id":1}')
        assert stored.headers == {"attempt": "1", "contentType": "application/json"}
        await output.close()

    asyncio.run(scenario())


def test_send_before_start_starts_the_output(binder: LogBinder) -> None:
    async def scenario() -> None:
        await binder.start()
        output = _output(binder, destination="lazy")
        await output.send("x")
        assert output.started
        assert len(binder.broker.read("lazy", 0, 0, 10)) == 1
        await output.close()

    asyncio.run(scenario())


def test_observers_see_every_accepted_record_in_order(binder: LogBinder) -> None:
    seen: list[tuple[str, OutboundRecord]] = []

    async def scenario() -> None:
        await binder.start()
        output = _output(binder, observers=[lambda d, r: seen.append((d, r))])
        await output.start()
        await output.send({"n": 1})
        await output.send_records(output.records([({"n": 2}, None, {}), ({"n": 3}, None, {})]))
        await output.send_records([])
        await output.close()

    asyncio.run(scenario())
    assert [d for d, _ in seen] == ["orders"] * 3
    assert [r.value for _, r in seen] == [b'{"n":1}', b'{"n":2}', b'{"n":3}']


def test_observer_list_is_shared_not_copied(binder: LogBinder) -> None:
    observers: list[Any] = []
    seen: list[str] = []

    async def scenario() -> None:
        await binder.start()
        output = _output(binder, observers=observers)
        observers.append(lambda d, r: seen.append(d))  # added after the output was made
        await output.send(1)
        await output.close()

    asyncio.run(scenario())
    assert seen == ["orders"]


def test_failed_send_is_not_observed(binder: LogBinder) -> None:
    seen: list[Any] = []

    async def scenario() -> None:
        await binder.start()
        output = _output(binder, observers=[lambda d, r: seen.append(r)])
        await output.start()
        Broker.forget(binder.options.broker)  # the backend goes away: sends are refused
        with pytest.raises(ClosedError):
            await output.send({"n": 1})
        with pytest.raises(ConversionError):
            await output.send(object())
        await output.close()

    asyncio.run(scenario())
    assert seen == []
