"""Trimming on the real server: ``max-length`` on every send, and ``trim: safe``, which
drops only what every group of a stream is done with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis import Redis

from binder.testing.conformance.support import Conformance, Inbox, run

TOTAL = 1_000


def test_max_length_keeps_a_stream_near_its_bound(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str
) -> None:
    """``XADD MAXLEN ~ 100``: Redis drops whole nodes only, so up to one node more stays."""

    async def send() -> None:
        async with redis.app(options={"max-length": 100}) as app:
            for start in range(0, TOTAL, 100):  # ten pipelines: trimmed as it grows
                await asyncio.gather(
                    *(app.send(stream, {"n": n}) for n in range(start, start + 100))
                )

    run(send())
    node = int(plain.config_get("stream-node-max-entries")["stream-node-max-entries"])
    length = plain.xlen(key_prefix + stream)
    assert 100 <= length <= 100 + node, f"XLEN {length}"
    ((_, newest),) = plain.xrevrange(key_prefix + stream, count=1)
    assert orjson.loads(newest[b"payload"]) == {"n": TOTAL - 1}, "the newest entries stay"


def _until(done: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll the stream until ``done()`` (a trim happens in the consumer's own time)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.02)


def _exists(plain: Redis, key: str, entry_id: bytes) -> bool:
    return bool(plain.xrange(key, entry_id, entry_id))


def _first(plain: Redis, key: str) -> tuple[int, int]:
    ((entry_id, _),) = plain.xrange(key, count=1)
    ms, _, seq = entry_id.decode().partition("-")
    return int(ms), int(seq)


def _tuple(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.decode().partition("-")
    return int(ms), int(seq)


def test_safe_trimming_keeps_what_a_slower_group_has_not_acknowledged_or_read(
    redis: Conformance, key_prefix: str, plain: Redis, stream: str, group: str
) -> None:
    """A fast group (the app, ``trim: safe``) reads all 1000 entries; a slow one (plain
    redis-py) has read 600 and acknowledged 300. The stream is trimmed below the slow
    group's oldest unacknowledged entry, never past it; once the slow group acknowledges
    all it read, below its oldest unread one, never past it."""
    key, slow = key_prefix + stream, f"{group}-slow"

    async def fill() -> None:
        await redis.provision(stream, 1, [group, slow])
        async with redis.app() as app:
            await asyncio.gather(*(app.send(stream, {"n": n}) for n in range(TOTAL)))

    run(fill())
    ids = [entry_id for entry_id, _ in plain.xrange(key)]
    ((_, read),) = plain.xreadgroup(slow, "slow-1", {key: ">"}, count=600)
    assert [entry_id for entry_id, _ in read] == ids[:600]
    plain.xack(key, slow, *ids[:300])

    async def consume() -> None:
        app = redis.app(
            {"fast-in-0": {"destination": stream, "group": group}}, options={"trim": "safe"}
        )
        seen: Inbox[Any] = Inbox()
        app.consumer(lambda payload: seen.add(payload["n"]), name="fast")
        async with app:
            await seen.wait_count(TOTAL)
            await asyncio.to_thread(_until, lambda: plain.xlen(key) < TOTAL, "a first trim")
            assert _exists(plain, key, ids[300]), "the slow group's oldest unacknowledged entry"
            assert _first(plain, key) <= _tuple(ids[300])
            plain.xack(key, slow, *ids[300:600])
            await asyncio.to_thread(
                _until, lambda: _first(plain, key) > _tuple(ids[300]), "a trim past the acked"
            )
            assert _exists(plain, key, ids[600]), "the slow group's oldest unread entry"
            assert _first(plain, key) <= _tuple(ids[600])
            assert plain.xlen(key) >= TOTAL - 600

    run(consume())
