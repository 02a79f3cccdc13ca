"""The binder SPI: pluggy hookspecs, the records a binder moves, and its protocols.

A binder moves bytes, keys, headers and offsets; everything else (conversion,
retries, dead letters, ordering, concurrency, partition selection) is done once
in the core. A binder package registers through the ``binder`` entry-point
group with a module that implements :func:`binder_add_binder_types`, exactly as
the built-in ``binders.log`` does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import pluggy
from pydantic import BaseModel, ConfigDict

__all__ = [
    "PROJECT",
    "Binder",
    "BinderOptions",
    "BinderType",
    "Capabilities",
    "Consumer",
    "ConsumerSpec",
    "InboundRecord",
    "OutboundRecord",
    "Producer",
    "ProducerSpec",
    "RebalanceListener",
    "hookimpl",
    "hookspec",
]

PROJECT = "binder"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class Capabilities:
    """What a binder can do, declared once in code.

    The conformance suite reads these to skip a scenario (naming the
    capability) and the README's binder table is generated from them.
    """

    consumer_groups: bool = True
    """A group's members share the messages; each message goes to one member."""
    native_partitions: bool = False
    """The backend itself has partitions with an order each (Kafka, the log)."""
    order_per_key: bool = True
    """Messages with one key arrive in the order they were sent."""
    persistence: bool = False
    """Messages survive a restart of the backend."""
    replay_to_new_groups: bool = False
    """A group created later still receives messages sent before it existed."""
    redelivery_on_failure: bool = True
    """A message taken but not acknowledged by a consumer that died is delivered again."""
    anonymous_consumers: bool = True
    """Consumers without a group each receive every message sent while subscribed."""
    offsets: bool = False
    """Messages carry a position (offset) in their partition."""
    delayed_delivery: bool = False
    """The backend can hold a message back until a given time."""
    transactions: bool = False
    """Sends and acknowledgements can be made atomic."""
    max_payload_bytes: int | None = None
    """Largest payload the backend accepts by default; ``None`` when not limited."""

    def table_row(self) -> dict[str, bool | int | None]:
        """Capability name → value, in declaration order (for the README table)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(slots=True)
class OutboundRecord:
    """What the core hands a producer: wire key and value, string headers.

    ``partition`` is chosen by the core when the binding is partitioned;
    ``None`` lets the binder spread keyless messages (or apply its own default).
    """

    value: bytes
    key: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    partition: int | None = None


@dataclass(slots=True)
class InboundRecord:
    """What a consumer hands the core.

    ``offset`` is the backend's position in the partition (``None`` where it has
    none); ``token`` is whatever the binder needs to acknowledge the record.
    """

    destination: str
    partition: int
    offset: int | None
    value: bytes
    key: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timestamp: float | None = None
    token: Any = None


@dataclass(frozen=True)
class ProducerSpec:
    """Where a producer sends and with what partitioning."""

    destination: str
    partition_count: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConsumerSpec:
    """What a consumer reads: destination, group (``None`` = anonymous), which partitions.

    ``start`` overrides where a group without a committed position begins;
    ``None`` means the contract's default (named group: earliest, anonymous:
    latest). ``instance_count`` > 1 asks for static partition assignment.
    """

    destination: str
    group: str | None
    partition_count: int = 1
    instance_index: int = 0
    instance_count: int = 1
    start: Literal["earliest", "latest"] | None = None
    max_records: int = 500
    options: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Producer(Protocol):
    """Sends records to one destination."""

    async def send(self, record: OutboundRecord) -> None:
        """Return once the backend has accepted ``record`` (ack, confirm, append).

        Concurrent calls may be pipelined; records from one task keep their order
        per partition. Raises :class:`~binder.errors.BackendError` on refusal and
        :class:`~binder.errors.ClosedError` after :meth:`close`.
        """

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        """Send ``records`` in order, pipelined; return once the backend accepted all of them.

        Records are handed to the backend before the first ``await`` of the call, so
        concurrent calls keep the order in which they were made (the core relies on it:
        ``app.send`` delivers one batch per loop iteration without waiting for the last).

        On failure some may have been accepted (at-least-once: the caller resends all).
        """

    async def close(self) -> None:
        """Flush what was accepted and release resources. Idempotent."""


class RebalanceListener(Protocol):
    """The core's side of a group rebalance, called by a consumer."""

    async def on_revoked(self, partitions: set[int]) -> None:
        """Finish in-flight work on ``partitions`` and commit it; return when done.

        The consumer calls this before it gives those partitions up, so another
        member starts exactly after the last committed record.
        """

    async def on_assigned(self, partitions: set[int]) -> None:
        """The consumer now owns ``partitions`` (informational)."""


@runtime_checkable
class Consumer(Protocol):
    """Reads one destination for one group (or anonymously)."""

    async def fetch(self) -> list[InboundRecord]:
        """Block until at least one record is available; ``[]`` once closed.

        Records of one partition come in offset order; a record is fetched
        again (by this or another member) only if it was not committed before
        its partition moved or its consumer died.
        """

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Acknowledge ``records``: they are never delivered to this group again.

        The core calls it only for records whose processing finished, in offset
        order per partition. Idempotent for records already committed. A binder
        may finish the acknowledgement in the background (coalescing later calls
        into one request), provided it is done before the partitions are given up
        in a rebalance and before :meth:`close` returns, and a failure is raised
        from a later call; a crash in between redelivers (at least once).
        """

    def pause(self) -> None:
        """Stop returning records from :meth:`fetch` (membership is kept)."""

    def resume(self) -> None:
        """Undo :meth:`pause`."""

    async def close(self) -> None:
        """Leave the group, after acknowledgements already accepted by :meth:`commit`
        are done, without committing anything more. Idempotent.

        Records fetched but not committed are redelivered to the group.
        """


@runtime_checkable
class Binder(Protocol):
    """One configured backend connection: provisions destinations, makes clients."""

    name: str
    capabilities: Capabilities

    async def start(self) -> None:
        """Connect. Raises :class:`~binder.errors.BackendError` naming the server."""

    async def provision(
        self, destination: str, partition_count: int, required_groups: Sequence[str] = ()
    ) -> None:
        """Create ``destination`` (and durable ``required_groups``) if missing. Idempotent."""

    async def producer(self, spec: ProducerSpec) -> Producer:
        """A producer for ``spec.destination``, provisioning it if needed."""

    async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> Consumer:
        """A consumer subscribed from now on; the group starts as ``ConsumerSpec`` says."""

    async def delete(self, destination: str, groups: Sequence[str] = ()) -> None:
        """Remove ``destination`` and its groups (tests clean up with it). Idempotent."""

    async def close(self) -> None:
        """Close every client this binder made. Idempotent."""


def kebab(name: str) -> str:
    """The YAML key of attribute ``name`` (``bootstrap_servers`` → ``bootstrap-servers``)."""
    return name.replace("_", "-")


class BinderOptions(BaseModel):
    """Base of a binder's options model: kebab-case YAML keys (``bootstrap-servers`` for
    ``bootstrap_servers``), unknown keys refused, attributes settable by name too."""

    model_config = ConfigDict(extra="forbid", alias_generator=kebab, populate_by_name=True)


class BinderType(Protocol):
    """A kind of backend, as registered by a plugin (``type: log`` in the YAML)."""

    @property
    def name(self) -> str:
        """The ``type:`` value that selects it."""

    @property
    def capabilities(self) -> Capabilities:
        """What every binder of this type can do."""

    @property
    def options(self) -> type[BaseModel]:
        """The model of the binder's own keys under ``binder.binders.<name>``."""

    def create(self, name: str, options: BaseModel) -> Binder:
        """A new, not yet started binder configured with validated ``options``."""


class BinderSpec:
    """Hook specifications; a plugin implements them with :data:`hookimpl`."""

    @hookspec
    def binder_add_binder_types(self) -> Sequence[BinderType]:  # type: ignore[empty-body]
        """Binder types this plugin provides."""

    @hookspec
    def binder_add_commands(self, commands: Any) -> None:
        """Add ``binder`` subcommands: ``commands`` is the CLI's argparse subparsers object;
        each parser sets ``handler`` (a function of the parsed args returning the exit code)."""

    @hookspec
    def binder_add_converters(self) -> Sequence[Any]:  # type: ignore[empty-body]
        """Content-type converters (:class:`binder.converters.Converter`) to add."""
