"""The producer's own wire packing on the real server: what it writes is what redis-py's
``XADD`` would write, and a send larger than one pipeline arrives whole and in order."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from redis import Redis

from binder.spi import OutboundRecord, ProducerSpec
from binder.testing.conformance.support import Conformance, run
from binders.redis.producer import PIPELINE_RECORDS


def _records(count: int, partitions: int) -> list[OutboundRecord]:
    """Keyless and keyed, with and without headers, small and large (> 16 KiB) values."""
    records = []
    for n in range(count):
        value = (b"v%d-" % n) * (5_000 if n % 997 == 0 else 1)
        key = None if n % 3 == 0 else b"key-\xff-%d" % (n % 50)
        headers = {} if n % 2 else {"n": str(n), "ünï": "çödé"}
        records.append(OutboundRecord(value, key, headers, n % partitions))
    return records


def _expected(record: OutboundRecord) -> dict[bytes, bytes]:
    fields = {b"payload": record.value or b""}
    if record.key is not None:
        fields[b"key"] = record.key
    if record.headers:
        fields[b"headers"] = orjson.dumps(record.headers)
    return fields


@pytest.mark.parametrize("options", [{}, {"max-length": 1_000_000}], ids=["plain", "trimmed"])
def test_a_send_of_several_pipelines_arrives_whole_and_in_order(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, options: dict[str, Any]
) -> None:
    count, partitions = 2 * PIPELINE_RECORDS + 1, 2
    records = _records(count, partitions)

    async def send() -> None:
        redis.binder_config.update(options)
        async with redis.binder() as binder:
            redis.declare(stream)
            total = await binder.provision(stream, partitions)
            producer = await binder.producer(ProducerSpec(stream, total))
            try:
                later = asyncio.ensure_future(producer.send_batch(records[:1]))
                await producer.send_batch(records)
                await later
            finally:
                await producer.close()

    run(send())
    for p in range(partitions):
        entries = plain.xrange(f"{key_prefix}{stream}:{p}")
        mine = [r for r in records if r.partition == p]
        if p == 0:  # the small send, queued once the large one was, is written after it
            mine = [*mine, records[0]]
        assert len(entries) == len(mine), f"partition {p}"
        for (_, fields), record in zip(entries, mine, strict=True):
            assert fields == _expected(record)


def test_the_packed_xadd_is_redis_pys(redis: Conformance, key_prefix: str, plain: Redis) -> None:
    """The same records through the binder and through redis-py's own ``xadd`` give equal
    entries (fields, order, bytes)."""
    records = _records(60, 1)
    ours, theirs = "packed-ours", "packed-theirs"

    async def send() -> None:
        async with redis.binder() as binder:
            redis.declare(ours)
            producer = await binder.producer(ProducerSpec(ours, 1))
            try:
                await producer.send_batch(records)
            finally:
                await producer.close()

    run(send())
    for record in records:
        plain.xadd(key_prefix + theirs, _expected(record))
    mine = [fields for _, fields in plain.xrange(key_prefix + ours)]
    reference = [fields for _, fields in plain.xrange(key_prefix + theirs)]
    assert mine == reference
