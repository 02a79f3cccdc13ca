"""Delayed delivery on Kafka: a timing wheel of partitions in a delay topic per destination.

A delayed record waits in the destination's delay topic ``<destination>.__delay``, made on
first use with :data:`PARTITIONS` partitions and kept :data:`RETENTION_MS` (whatever the
binder's ``topic-config`` says). Time is cut in slots of 2^10 ms aligned on the epoch.
Partition 0 holds records due within the slot they were written in; partition ``k`` (1 to
22) is the level of 2^(k+9) ms. A record due at D (epoch ms) written at ``now`` goes to the
level of the highest bit, above the slot's ten, in which ``now`` and D differ (capped at the
top level, 2^31 ms: a longer delay goes round it again), and may leave it at the next
multiple of that level's length after ``now`` (header ``x-scheduled-leave``), never after D
(:func:`place`). So the records of a level may leave in the order they were written (its
head is always the next one free), a record only ever hops down, and two records due at the
same time share every level from the moment the second is written. Each carries the
destination partition it is for (``x-scheduled-partition``) and when it was scheduled
(``x-scheduled-at``, which orders equal due times), after the headers an ordinary send
writes; :mod:`binders.kafka.forwarder` moves them down and out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

from binder.message import DELIVER_AT
from binder.spi import OutboundRecord
from binders.kafka.producer import wire_headers

__all__ = [
    "LEAVE",
    "PARTITIONS",
    "RETENTION_MS",
    "SCHEDULED_AT",
    "TARGET",
    "TOPIC_CONFIG",
    "Waiting",
    "delay_topic",
    "forwarder_group",
    "place",
    "scheduled",
    "waiting",
]

log = logging.getLogger("binder.kafka.scheduler")

SLOT_BITS = 10
"""A slot is 2^10 ms: records due within the current one are held in memory."""
TOP_BITS = 31
"""The top level is 2^31 ms (about 24.9 days)."""
PARTITIONS = TOP_BITS - SLOT_BITS + 2
"""Of a delay topic: 0 for the current slot, then one per level (2^10 to 2^31 ms)."""
RETENTION_MS = (1 << TOP_BITS) + 7 * 86_400_000
"""A record waits in a level at most the level's length; a week more for forwarders down."""
TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": str(RETENTION_MS)}
"""A delay topic's own configs, over the binder's ``topic-config``."""
TARGET = "x-scheduled-partition"
"""Header of a waiting record: the destination partition it is for."""
LEAVE = "x-scheduled-leave"
"""Header of a waiting record: when it may leave its partition (epoch ms)."""
SCHEDULED_AT = "x-scheduled-at"
"""Header of a waiting record: when it was scheduled (epoch ms); orders equal due times."""
_OURS = (TARGET, LEAVE, SCHEDULED_AT)


def delay_topic(destination: str) -> str:
    """The destination's delay topic."""
    return f"{destination}.__delay"


def forwarder_group(destination: str) -> str:
    """The consumer group of the destination's forwarders."""
    return f"{destination}.__forwarder"


def place(now: int, due: int) -> tuple[int, int]:
    """(partition, leave time) of a record due at ``due`` written at ``now`` (epoch ms)."""
    differ = ((now ^ due) >> SLOT_BITS).bit_length()
    if due <= now or differ == 0:
        return 0, now
    bit = min(differ - 1 + SLOT_BITS, TOP_BITS)
    return bit - SLOT_BITS + 1, ((now >> bit) + 1) << bit


def scheduled(records: Iterable[OutboundRecord], now: int) -> list[OutboundRecord]:
    """The delay topic's records of outbound ``records`` (``x-deliver-at`` in their headers):
    each in its partition, its headers as an ordinary send writes them, then ours."""
    placed = []
    for r in records:
        partition, leave = place(now, int(r.headers[DELIVER_AT]))
        plain = list(r.raw_headers) if r.raw_headers is not None else wire_headers(r.headers)
        ours = [(TARGET, b"%d" % r.partition), (LEAVE, b"%d" % leave), (SCHEDULED_AT, b"%d" % now)]
        placed.append(OutboundRecord(r.value, r.key, r.headers, partition, [*plain, *ours]))
    return placed


class Waiting(NamedTuple):
    """A record read from the delay topic, with what its headers say."""

    offset: int
    leave: int
    due: int
    at: int  # when it was scheduled
    target: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]  # as an ordinary send wrote them

    def moved(self, partition: int, leave: int) -> OutboundRecord:
        """This record in another partition of the delay topic."""
        ours = [
            (TARGET, b"%d" % self.target),
            (LEAVE, b"%d" % leave),
            (SCHEDULED_AT, b"%d" % self.at),
        ]
        return OutboundRecord(self.value, self.key, {}, partition, [*self.headers, *ours])


def waiting(record: Any) -> Waiting:
    """What a record read from the delay topic is, by its headers (one lacking ours is
    delivered at once, to partition 0, with an error logged)."""
    plain, ours = [], {}
    for name, value in record.headers:
        if name in _OURS:
            ours[name] = value
        else:
            plain.append((name, value))
            if name == DELIVER_AT:
                ours[name] = value
    try:
        due, at = int(ours[DELIVER_AT]), int(ours[SCHEDULED_AT])
        target, leave = int(ours[TARGET]), int(ours[LEAVE])
    except (KeyError, TypeError, ValueError):
        log.error(
            "delay topic %s: record %d lacks a header of ours or %s; delivered now to partition 0",
            record.topic,
            record.offset,
            DELIVER_AT,
        )
        due = at = target = leave = 0
    return Waiting(record.offset, leave, due, at, target, record.key, record.value, plain)
