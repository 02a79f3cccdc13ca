"""Delayed delivery on RabbitMQ 3.10 (no delayed-message plugin): a ladder of TTL queues.

For destination exchange ``d``, level ``k`` (0 ≤ k ≤ :data:`TOP`) is a durable headers
exchange ``d.delay.<k>`` and a durable queue of the same name whose messages live ``2^k`` ms
(``x-message-ttl``) and are then dead-lettered, with their routing key, to ``d.delay.<k-1>``
(level 0: to ``d`` itself). A message delayed by ``D`` ms carries the bits of ``D`` as the
headers ``sb-delay-<k>`` (``"1"``/``"0"``) and is published to the level of its highest bit;
each level's exchange routes a message whose bit is set into its queue (it waits ``2^k`` ms
there) and passes any other straight down. So the broker itself holds the message (durable
queue, persistent message: it survives restarts of every app and of the broker) and delivers
it to ``d`` with its original routing key once the ``D`` ms have passed; no process has to be
running for it. A queue's messages all live equally long, so each level is first in, first
out, and messages due at the same time keep their order. The consumer removes the ladder's
headers (and RabbitMQ's ``x-death`` record of the hops) from a delayed message.

A delayed message reaching ``d`` when no queue is bound for its routing key is dropped by
RabbitMQ, as an unroutable dead letter is: provision the groups up front (``required-groups``)
for messages sent before their consumers start, as for any message on RabbitMQ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from binder.errors import ConversionError
from binder.message import DELIVER_AT
from binder.spi import OutboundRecord

if TYPE_CHECKING:
    from binders.rabbit.binder import RabbitBinder

__all__ = ["BIT", "TOP", "Ladder", "is_ladder_header", "level_name", "strip_ladder"]

TOP = 32
"""The highest level: delays up to ``2^33 - 1`` ms (about 99 days)."""
BIT = "sb-delay-"
"""Prefix of the ladder's headers (no ``x-``: a headers exchange ignores those)."""
_DEATH = ("x-death", "x-first-death-", "x-last-death-")


def level_name(exchange: str, level: int) -> str:
    return f"{exchange}.delay.{level}"


def is_ladder_header(name: str) -> bool:
    """A header the ladder (or RabbitMQ's dead-lettering on the way) added."""
    return name.startswith(BIT) or name.startswith(_DEATH)


class Ladder:
    """The delay levels of one binder's destinations: declared on first use, per level."""

    def __init__(self, binder: RabbitBinder) -> None:
        self.binder = binder
        self._declared: dict[str, int] = {}  # exchange → highest level declared

    async def declare(self, exchange: str, top: int) -> None:
        """Levels 0..``top`` of ``exchange`` (each idempotent on the broker)."""
        done = self._declared.get(exchange, -1)
        for level in range(done + 1, top + 1):
            await self._declare_level(exchange, level)
            self._declared[exchange] = level

    async def _declare_level(self, exchange: str, level: int) -> None:
        binder, name = self.binder, level_name(exchange, level)
        below = level_name(exchange, level - 1) if level else exchange
        await binder.declare(
            f"declare the delay exchange {name!r}",
            lambda ch: ch.exchange_declare(name, exchange_type="headers", durable=True),
        )
        arguments = {"x-message-ttl": 1 << level, "x-dead-letter-exchange": below}
        await binder.declare(
            f"declare the delay queue {name!r}",
            lambda ch: ch.queue_declare(name, durable=True, arguments=arguments),
        )
        bit = f"{BIT}{level}"
        await binder.declare(
            f"bind the delay queue {name!r}",
            lambda ch: ch.queue_bind(name, name, arguments={"x-match": "all", bit: "1"}),
        )
        await binder.declare(
            f"bind {below!r} below {name!r}",
            lambda ch: ch.exchange_bind(below, name, arguments={"x-match": "all", bit: "0"}),
        )

    def plan(
        self, records: Sequence[OutboundRecord], now_ms: int
    ) -> tuple[list[OutboundRecord], dict[int, list[OutboundRecord]]]:
        """Records due now, and the others by the level they enter, their bits in their
        headers."""
        now: list[OutboundRecord] = []
        levels: dict[int, list[OutboundRecord]] = {}
        for record in records:
            delay = int(record.headers[DELIVER_AT]) - now_ms
            if delay <= 0:
                now.append(record)
                continue
            top = delay.bit_length() - 1
            if top > TOP:
                raise ConversionError(
                    f"a delay of {delay} ms is longer than RabbitMQ's ladder holds "
                    f"({(1 << (TOP + 1)) - 1} ms, about 99 days)"
                )
            headers = dict(record.headers)
            for level in range(top + 1):
                headers[f"{BIT}{level}"] = "1" if delay >> level & 1 else "0"
            levels.setdefault(top, []).append(
                OutboundRecord(record.value, record.key, headers, record.partition)
            )
        return now, levels

    async def delete(self, exchange: str) -> None:
        """Remove every level of ``exchange``, when it has any (its level 0 exists)."""
        binder = self.binder
        top = self._declared.pop(exchange, None)
        if top is None:
            if not await binder.queue_exists(level_name(exchange, 0)):
                return
            top = TOP
        for level in range(top + 1):
            name = level_name(exchange, level)
            await binder.declare(
                f"delete the delay queue {name!r}", lambda ch, q=name: ch.queue_delete(q)
            )
            await binder.declare(
                f"delete the delay exchange {name!r}", lambda ch, e=name: ch.exchange_delete(e)
            )


def strip_ladder(headers: dict[str, Any]) -> None:
    """Remove the ladder's headers from a delivered delayed message's ``headers``."""
    for name in [n for n in headers if is_ladder_header(n)]:
        del headers[name]
