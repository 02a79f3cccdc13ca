"""binder.outputs: encoding, partition selection, the contentType header, sending, observers."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from binder.converters import ConverterRegistry
from binder.errors import ClosedError, ConversionError
from binder.outputs import OutputBinding
from binder.partitioning import compile_expression, select_partition
from binder.retry import dead_letter_record
from binder.spi import InboundRecord, OutboundRecord
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
    assert record.partition == 0


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


def test_a_destination_of_one_partition_gets_partition_zero(binder: LogBinder) -> None:
    assert _output(binder).record({"id": 1}, "c-42").partition == 0
    assert _output(binder).record({"id": 1}).partition == 0


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


def _keyless_batches(output: OutputBinding, batches: int, size: int) -> list[set[int]]:
    """The partitions of the keyless records of each of ``batches`` send_records calls."""

    async def scenario() -> list[set[int]]:
        await output.binder.start()
        seen = []
        for _ in range(batches):
            records = output.records([({"n": n}, None, {}) for n in range(size)])
            seen.append({r.partition for r in records})
            await output.send_records(records)
        await output.close()
        return seen

    return asyncio.run(scenario())


def test_keyless_records_are_sticky_per_batch_and_the_next_batch_moves_on(
    binder: LogBinder,
) -> None:
    seen = _keyless_batches(_output(binder, partition_count=3), batches=4, size=5)
    assert seen == [{0}, {1}, {2}, {0}], "one partition per batch, each batch the next one"


def test_key_expression_yielding_none_is_sticky_per_batch(binder: LogBinder) -> None:
    output = _output(binder, partition_count=2, key_expression=compile_expression("key"))
    assert _keyless_batches(output, batches=3, size=4) == [{0}, {1}, {0}]


def test_keyed_records_of_a_batch_keep_their_own_partition(binder: LogBinder) -> None:
    output = _output(binder, partition_count=4)
    records = output.records([({}, f"k{n}", {}) for n in range(20)])
    assert [r.partition for r in records] == [select_partition(b"k%d" % n, 4) for n in range(20)]


def test_submitted_sends_of_one_loop_iteration_are_one_batch(binder: LogBinder) -> None:
    """``app.send``'s path: the keyless sends submitted together share a partition; the
    sends after their flush go to the next one. Read back from the log itself."""

    async def scenario() -> dict[int, list[int]]:
        await binder.start()
        output = _output(binder, partition_count=4)
        await output.start()
        for batch in range(3):
            await asyncio.gather(*(output.submit({"b": batch, "n": n}) for n in range(10)))
        await output.close()
        return {
            p: [json.loads(r.value)["b"] for r in binder.broker.read("orders", p, 0, 100)]
            for p in range(4)
        }

    assert _nonempty(asyncio.run(scenario())) == {0: [0] * 10, 1: [1] * 10, 2: [2] * 10}


def _nonempty(by_partition: dict[int, list[int]]) -> dict[int, list[int]]:
    return {p: got for p, got in by_partition.items() if got}


def test_placement_uses_the_real_partition_count_of_the_destination(
    binder: LogBinder,
) -> None:
    """A destination made elsewhere with more partitions than the binding asks for: keys
    land where any producer of that destination puts them, keyless records spread over all."""

    async def scenario() -> tuple[int, list[int], list[set[int]]]:
        await binder.start()
        await binder.provision("orders", 6)  # made by someone else, with 6
        output = _output(binder, partition_count=2)
        await output.start()
        keyed = [output.record({}, f"k{n}").partition for n in range(30)]
        spread = []
        for _ in range(6):
            record = output.record({})
            spread.append({record.partition})
            await output.send_records([record])
        await output.close()
        return output.partitions, keyed, spread

    partitions, keyed, spread = asyncio.run(scenario())
    assert partitions == 6
    assert keyed == [select_partition(b"k%d" % n, 6) for n in range(30)]
    assert set().union(*spread) == set(range(6)), "keyless batches move over all six"


# -- dead letters ----------------------------------------------------------------------------


def _letters(binder: LogBinder, dlq_partitions: int | None) -> list[tuple[int, int | None]]:
    """Dead letters of records from partitions 0..3 of ``orders`` (keys chosen to land
    elsewhere), sent through a dead-letter output of ``parking``: (original, written)."""

    async def scenario() -> list[tuple[int, int | None]]:
        await binder.start()
        await binder.provision("orders", 4)
        if dlq_partitions is not None:
            await binder.provision("parking", dlq_partitions)
        dlq = _output(binder, destination="parking", dead_letters_of="orders")
        originals = [InboundRecord("orders", p, 0, b"{}", f"key-{p}".encode()) for p in range(4)]
        await dlq.send_records([dead_letter_record(r, ValueError(), "g", 1) for r in originals])
        await dlq.close()
        written = {
            int(stored.headers["x-original-partition"]): p
            for p in range(binder.broker.topic("parking").partition_count)  # type: ignore[union-attr]
            for stored in binder.broker.read("parking", p, 0, 10)
        }
        return sorted(written.items())

    return asyncio.run(scenario())


def test_a_dead_letter_keeps_its_original_partition_whatever_the_destination_name(
    binder: LogBinder,
) -> None:
    """``parking`` is not named ``*.dlq``: made for the dead letters of ``orders``, it gets
    its four partitions, and each letter goes to the partition its original came from."""
    assert _letters(binder, None) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_a_dead_letter_whose_partition_the_destination_lacks_is_placed_by_key(
    binder: LogBinder,
) -> None:
    placed = _letters(binder, 2)
    assert placed[:2] == [(0, 0), (1, 1)], "partitions the destination has are kept"
    assert placed[2:] == [(p, select_partition(f"key-{p}".encode(), 2)) for p in (2, 3)]


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
