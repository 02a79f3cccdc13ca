"""Interop with plain redis-py, the second program on the other end: what it ``XADD``s is
received, and what the binder writes is what a plain ``XRANGE`` reads."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from redis import Redis

from binder import Message
from binder.spi import OutboundRecord
from binder.testing.conformance.support import Conformance, Inbox, run


def _received(redis: Conformance, stream: str, group: str, count: int) -> list[Message[Any]]:
    """The first ``count`` messages a group (made at 0) receives from ``stream``."""

    async def scenario() -> list[Message[Any]]:
        app = redis.app({"handle-in-0": {"destination": stream, "group": group}})
        seen: Inbox[Message[Any]] = Inbox()

        @app.consumer
        async def handle(message: Message[Any]) -> None:
            seen.add(message)

        async with app:
            return await seen.wait_count(count)

    return run(scenario())


# -- what another program writes ------------------------------------------------------------


def test_an_entry_with_the_binders_fields_is_received_as_they_say(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    headers = {"source": "plain", "contentType": "application/json"}
    fields = {"payload": b'{"a": 1}', "key": b"k-1", "headers": orjson.dumps(headers)}
    plain.xadd(key_prefix + stream, fields)
    (message,) = _received(redis, stream, group, 1)
    assert message.payload == {"a": 1}
    assert message.key == "k-1"
    assert message.headers["source"] == "plain"


def test_an_entry_without_payload_is_received_as_a_json_object_of_its_fields(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    plain.xadd(key_prefix + stream, {"sensor": "t1", "value": "21.5"})
    (message,) = _received(redis, stream, group, 1)
    assert message.payload == {"sensor": "t1", "value": "21.5"}
    assert message.key is None


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"', b"{"], ids=repr)
def test_headers_that_are_not_a_json_object_are_accepted(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str, raw: bytes
) -> None:
    plain.xadd(key_prefix + stream, {"payload": b'{"n": 1}', "headers": raw})
    (message,) = _received(redis, stream, group, 1)
    assert message.payload == {"n": 1}


def test_header_values_that_are_not_strings_arrive_as_their_json_text(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    headers = b'{"count": 2, "flag": true, "name": "x"}'
    plain.xadd(key_prefix + stream, {"payload": b'{"n": 1}', "headers": headers})
    (message,) = _received(redis, stream, group, 1)
    assert {k: message.headers[k] for k in ("count", "flag", "name")} == {
        "count": "2",
        "flag": "true",
        "name": "x",
    }


# -- what the binder writes -----------------------------------------------------------------


def test_the_binders_entries_have_exactly_payload_key_and_headers(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str
) -> None:
    records = [
        OutboundRecord(b"plain"),
        OutboundRecord(b"keyed", b"k-1"),
        OutboundRecord(b"headed", None, {"h": "v"}),
        OutboundRecord(b"both", b"k-2", {"h": "v", "i": "w"}),
        OutboundRecord(b""),
    ]

    async def send() -> None:
        async with redis.binder() as binder:
            await redis.send_raw(binder, stream, records)

    run(send())
    seen = [fields for _, fields in plain.xrange(key_prefix + stream)]
    assert seen == [
        {b"payload": b"plain"},
        {b"payload": b"keyed", b"key": b"k-1"},
        {b"payload": b"headed", b"headers": b'{"h":"v"}'},
        {b"payload": b"both", b"key": b"k-2", b"headers": b'{"h":"v","i":"w"}'},
        {b"payload": b""},
    ]


def test_an_apps_send_is_json_with_its_key_and_headers(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str
) -> None:
    async def send() -> None:
        async with redis.app() as app:
            await app.send(stream, {"id": 7}, key="c-42", headers={"source": "api"})

    run(send())
    ((_, fields),) = plain.xrange(key_prefix + stream)
    assert set(fields) == {b"payload", b"key", b"headers"}
    assert orjson.loads(fields[b"payload"]) == {"id": 7}
    assert fields[b"key"] == b"c-42"
    assert orjson.loads(fields[b"headers"])["source"] == "api"


def test_a_partitioned_destination_is_a_stream_per_partition_and_a_count(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str
) -> None:
    async def send() -> None:
        bindings = {"out": {"destination": stream, "producer": {"partition-count": 3}}}
        async with redis.app(bindings) as app:
            for n in range(30):
                await app.send("out", {"n": n}, key=f"k{n}")

    run(send())
    base = key_prefix + stream
    assert plain.get(f"{base}:partition-count") == b"3"
    lengths = [plain.xlen(f"{base}:{p}") for p in range(3)]
    assert sum(lengths) == 30 and all(lengths), lengths
    assert not plain.exists(base), "no unpartitioned stream besides the partitions"
    assert sorted(plain.scan_iter(match=f"{base}*")) == sorted(
        [f"{base}:{p}".encode() for p in range(3)] + [f"{base}:partition-count".encode()]
    )
