"""Prometheus metrics of the running apps, read from the bindings' own counters when scraped.

Bindings count in plain integers as they work (:class:`InputStats`, :class:`OutputStats`);
nothing in the message path touches ``prometheus_client``. One collector per registry reads
every live app registered with it at scrape time (:func:`register`), so apps sharing the
default registry give one set of series. ``prometheus_client`` is imported only here, when an
app starts with it installed (the ``metrics`` extra).

Series (names and labels as the contract gives them):
``streambinder_messages_received_total{binding,destination,group}``,
``streambinder_messages_processed_total{binding,destination,group,outcome}`` (``ok``,
``retried``: an attempt that failed and will be retried, ``dead_lettered``, ``dropped``),
``streambinder_process_seconds{binding}`` (a histogram: buckets from 100 µs, :data:`BOUNDS`),
``streambinder_messages_sent_total{destination}``,
``streambinder_send_errors_total{destination}``,
``streambinder_rebalances_total{destination,group}``,
``streambinder_assigned_partitions{destination,group}``,
``streambinder_consumer_lag{destination,group,partition}`` (from the SPI's optional
``Consumer.lag()``, read every few seconds), ``streambinder_binding_up{binding}``.
The group of an anonymous consumer is ``anonymous``.
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from binder.app import App

__all__ = [
    "BOUNDS",
    "OUTCOMES",
    "InputStats",
    "OutputStats",
    "UntimedStats",
    "register",
    "unregister",
]

OUTCOMES = ("ok", "retried", "dead_lettered", "dropped")
ANONYMOUS = "anonymous"
BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Upper bounds (seconds) of ``streambinder_process_seconds``' buckets, then ``+Inf``: from
100 µs, since a message is often handled in microseconds."""


@dataclass(slots=True)
class InputStats:
    """What an input binding did, counted as it happens (messages, not batches), and how long
    its messages (batches in batch mode) took to handle."""

    received: int = 0
    ok: int = 0
    retried: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BOUNDS) + 1))
    seconds: float = 0.0
    rebalances: int = 0
    """Partitions assigned or revoked (each change of the binding's assignment)."""
    assigned: set[int] = field(default_factory=set)
    """The partitions the binding's consumer holds now."""
    lag: dict[int, int] = field(default_factory=dict)
    """Partition → messages not yet committed by the group (read every few seconds)."""

    def took(self, seconds: float) -> None:
        """One message (or batch) handled in ``seconds``."""
        self.buckets[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.seconds += seconds


class UntimedStats(InputStats):
    """The stats of a binding whose app has metrics off: counted, never timed."""

    __slots__ = ()

    def took(self, seconds: float) -> None:
        """Nothing: metrics are off."""


@dataclass(slots=True)
class OutputStats:
    """Records an output sent (accepted by the backend) and failed to send."""

    sent: int = 0
    errors: int = 0


class _AppsCollector:
    """Every live app of one registry, read at scrape time."""

    def __init__(self) -> None:
        self.apps: weakref.WeakSet[App] = weakref.WeakSet()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        received = CounterMetricFamily(
            "streambinder_messages_received",
            "Messages an input binding received from its backend.",
            labels=["binding", "destination", "group"],
        )
        processed = CounterMetricFamily(
            "streambinder_messages_processed",
            "Messages an input binding finished, by outcome (retried: a failed attempt that "
            "will be retried).",
            labels=["binding", "destination", "group", "outcome"],
        )
        sent = CounterMetricFamily(
            "streambinder_messages_sent",
            "Records the backend accepted, by destination.",
            labels=["destination"],
        )
        errors = CounterMetricFamily(
            "streambinder_send_errors",
            "Records whose send failed, by destination.",
            labels=["destination"],
        )
        took = HistogramMetricFamily(
            "streambinder_process_seconds",
            "Seconds one message (one batch in batch mode) took to handle, retries included.",
            labels=["binding"],
        )
        rebalances = CounterMetricFamily(
            "streambinder_rebalances",
            "Changes of a group's assignment seen by this process's member.",
            labels=["destination", "group"],
        )
        assigned = GaugeMetricFamily(
            "streambinder_assigned_partitions",
            "Partitions of the destination this process's member of the group holds.",
            labels=["destination", "group"],
        )
        lag = GaugeMetricFamily(
            "streambinder_consumer_lag",
            "Messages of a partition not yet committed by the group (end offset minus "
            "committed on the log and Kafka; pending + unread on Redis; ready + unacknowledged "
            "on RabbitMQ).",
            labels=["destination", "group", "partition"],
        )
        up = GaugeMetricFamily(
            "streambinder_binding_up",
            "1 while the binding is running, else 0.",
            labels=["binding"],
        )
        outputs: dict[str, OutputStats] = {}
        members: dict[tuple[str, str], list[int]] = {}  # the bindings of one group, summed
        for app in list(self.apps):
            for name, binding in app.bindings.items():
                up.add_metric([name], 1.0 if str(binding.state) == "running" else 0.0)
                stats = getattr(binding, "stats", None)
                if stats is None:
                    continue
                labels = [name, binding.destination, binding.group or ANONYMOUS]
                received.add_metric(labels, stats.received)
                for outcome in OUTCOMES:
                    processed.add_metric([*labels, outcome], getattr(stats, outcome))
                took.add_metric([name], _cumulative(stats.buckets), stats.seconds)
                for partition, behind in sorted(stats.lag.items()):
                    lag.add_metric([labels[1], labels[2], str(partition)], behind)
                member = members.setdefault((labels[1], labels[2]), [0, 0])
                member[0] += stats.rebalances
                member[1] += len(stats.assigned)
            for output in app.outputs():
                total = outputs.setdefault(output.destination, OutputStats())
                total.sent += output.stats.sent
                total.errors += output.stats.errors
        for (destination, group), (changes, held) in members.items():
            rebalances.add_metric([destination, group], changes)
            assigned.add_metric([destination, group], held)
        for destination, total in outputs.items():
            sent.add_metric([destination], total.sent)
            errors.add_metric([destination], total.errors)
        yield from (received, processed, took, sent, errors, rebalances, assigned, lag, up)


def _cumulative(buckets: list[int]) -> list[tuple[str, float]]:
    """``(upper bound, messages at most that long)`` per bucket, ``+Inf`` last."""
    total, rows = 0, []
    for bound, count in zip((*map(str, BOUNDS), "+Inf"), buckets, strict=True):
        total += count
        rows.append((bound, float(total)))
    return rows


_COLLECTORS: weakref.WeakKeyDictionary[Any, _AppsCollector] = weakref.WeakKeyDictionary()


def register(app: App, registry: Any) -> bool:
    """Add ``app`` to the collector of ``registry`` (``None``: the default one), making it
    on first use; ``False`` when ``prometheus_client`` is not installed."""
    try:
        import prometheus_client
    except ImportError:
        return False
    registry = registry if registry is not None else prometheus_client.REGISTRY
    collector = _COLLECTORS.get(registry)
    if collector is None:
        collector = _COLLECTORS[registry] = _AppsCollector()
        registry.register(collector)
    collector.apps.add(app)
    return True


def unregister(app: App, registry: Any) -> None:
    """Stop reading ``app`` (it stopped); nothing when it was not registered."""
    try:
        import prometheus_client
    except ImportError:
        return
    registry = registry if registry is not None else prometheus_client.REGISTRY
    collector = _COLLECTORS.get(registry)
    if collector is not None:
        collector.apps.discard(app)
