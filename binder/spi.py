"""The binder SPI: pluggy hookspecs, the records a binder moves, and its protocols.

A binder moves bytes, keys, headers and offsets; everything else (conversion,
retries, dead letters, ordering, concurrency, partition selection) is done once
in the core. A binder package registers through the ``binder`` entry-point
group with a module that implements the hooks of :class:`BinderSpec`
(``binder_add_binder_types``, ...), exactly as the built-in ``binders.log`` does;
``binders.log`` also answers ``binder_make_test_binder``, which gives ``app.test()``
its in-memory binders without the core importing a backend.

The core calls, in order: :meth:`Binder.start`; :meth:`Binder.provision` for each
destination it sends to (the count it returns is what records are placed over);
:meth:`Binder.producer` and :meth:`Producer.send_batch`; :meth:`Binder.consumer`,
then :meth:`Consumer.fetch` / :meth:`Consumer.commit` in a loop; ``close`` last.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
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
    "GroupPosition",
    "InboundRecord",
    "OutboundRecord",
    "Producer",
    "ProducerSpec",
    "RawHeaders",
    "RebalanceListener",
    "hookimpl",
    "hookspec",
]

RawHeaders = Sequence[tuple[str, bytes | None]]
"""A backend's header list: ``(name, value)`` pairs in order, names may repeat."""

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
    """The backend can hold a message back until a given time (the producer's ``schedule``)."""
    transactions: bool = False
    """Sends and acknowledgements can be made atomic."""
    max_payload_bytes: int | None = None
    """Largest payload the backend accepts by default; ``None`` when not limited."""
    tombstones: bool = False
    """Records without a value (Kafka's tombstones, which compacted topics need) can be sent
    and are received as such: ``value`` ``None`` in :class:`OutboundRecord` and
    :class:`InboundRecord`. The core sends none to a binder without it."""

    def table_row(self) -> dict[str, bool | int | None]:
        """Capability name → value, in declaration order (for the README table)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(slots=True)
class OutboundRecord:
    """What the core hands a producer: wire key and value, string headers, the partition.

    ``partition`` is always chosen by the core (:class:`binder.outputs.OutputBinding`):
    by the binding's key expression or the key (murmur2), keyless records sticky per
    batch, a dead letter on its original partition when the destination has it. It is
    within the partition count :meth:`Binder.provision` returned; a binder writes it as
    given and never places a record itself. A record built by hand (tools, tests)
    without one goes to partition 0.

    ``value`` ``None`` is a tombstone (a record without a value, sent for
    :data:`binder.TOMBSTONE`); only a binder declaring :attr:`Capabilities.tombstones`
    is given one, and it writes it as the backend's null value, never as empty bytes.

    ``raw_headers``, when not ``None``, are the headers to write instead of ``headers``,
    exactly as given (names repeated, values ``None``, any bytes): the core sets them on a
    dead letter whose original carried :attr:`InboundRecord.raw_headers`. A binder whose
    backend can write such a list writes it; any other writes ``headers``, which always
    hold the same record's headers as strings.
    """

    value: bytes | None
    key: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    partition: int = 0
    raw_headers: RawHeaders | None = None


@dataclass(slots=True)
class InboundRecord:
    """What a consumer hands the core.

    ``offset`` is the backend's position in the partition (``None`` where it has
    none); ``token`` is whatever the binder needs to acknowledge the record.
    ``value`` ``None`` is a tombstone (the backend's null value), handed over only by a
    binder declaring :attr:`Capabilities.tombstones`; an empty value is ``b""``.

    ``headers`` are strings. A binder whose backend has headers that a ``str`` → ``str``
    dict cannot hold exactly (Kafka: a name repeated, a null value, bytes that are not
    UTF-8) also sets ``raw_headers`` to the backend's own list, in order and byte-exact,
    so that a dead letter can carry them unchanged; it may leave it ``None`` (or empty)
    for a record without headers. Nothing else reads it.

    ``deliveries`` is how many times the backend has delivered the record to the group,
    this delivery included, where the backend counts them (Redis: the pending entry's
    delivery count; RabbitMQ: a quorum queue's delivery count, or 2 for a redelivered
    message); 1 otherwise. The core numbers this delivery's first attempt so
    (``x-delivery-attempt``), retries in place from there up to ``max-attempts``, and
    dead-letters a record delivered more than ``max-attempts`` times without calling its
    function (:class:`~binder.errors.DeliveryLimitExceeded`): a message that kills its
    consumer every time cannot loop.

    ``message_id`` is the backend's own id of the record where it has one and no offset
    (Redis: the entry id; RabbitMQ: the ``message-id`` property); tracing reports it.
    """

    destination: str
    partition: int
    offset: int | None
    value: bytes | None
    key: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timestamp: float | None = None
    token: Any = None
    raw_headers: RawHeaders | None = None
    deliveries: int = 1
    message_id: str | None = None


@dataclass(frozen=True)
class ProducerSpec:
    """Where a producer sends: ``destination``, already provisioned by the core with
    ``partition_count`` (what :meth:`Binder.provision` returned)."""

    destination: str
    partition_count: int = 1


@dataclass(frozen=True)
class ConsumerSpec:
    """What a consumer reads: destination, group (``None`` = anonymous), which partitions.

    ``start`` overrides where a group without a committed position begins;
    ``None`` means the contract's default (named group: earliest, anonymous:
    latest). ``instance_count`` > 1 asks for static partition assignment: this
    instance owns the partitions ``p % instance_count == instance_index``.
    ``max_records`` bounds what one :meth:`Consumer.fetch` returns; ``concurrency`` is how
    many records the core handles at once (the binding's ``concurrency``). ``options`` are
    the binding's binder-specific keys under ``consumer:``, validated by the binder type's
    ``binding_options`` model (``None`` when it set none).
    """

    destination: str
    group: str | None
    instance_index: int = 0
    instance_count: int = 1
    start: Literal["earliest", "latest"] | None = None
    max_records: int = 500
    concurrency: int = 1
    options: Any = None
    browse: bool = False
    """The consumer will commit nothing (a tool looking at what is there): a binder may read
    accordingly; every record stays for the group."""
    sole: bool = False
    """The consumer is its group's only member (a tool: ``binder dlq replay``): a binder whose
    group members hold records unacknowledged (Redis' pending entries) hands it at once what
    earlier members of the group left, instead of waiting for them to be idle long enough."""


@runtime_checkable
class Producer(Protocol):
    """Sends records to one destination; made by :meth:`Binder.producer`.

    The producer of a binder declaring :attr:`Capabilities.delayed_delivery` also has
    ``async def schedule(records)``: hold each record (its headers carry ``x-deliver-at``, the
    epoch ms it is due, in the future) in the backend, durably where the backend is, and
    write it to its ``partition``, headers as given, once due: never before, and once in
    normal operation, also when the process that scheduled it is gone (every consumer and
    producer of the destination takes part in moving its due records). Records of one
    partition due at the same time are written in call order; earlier due first otherwise.
    Returns once the backend holds them; raises as :meth:`send_batch` does.
    """

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        """Send ``records`` in order, pipelined; return once the backend accepted all of them
        (Kafka ack, publisher confirm, Redis reply, log append under its fsync policy).

        Each record goes to its ``partition`` as given. Records are handed to the backend
        before the first ``await`` of the call, so concurrent calls keep the order in which
        they were made (the core relies on it: ``app.send`` delivers one batch per loop
        iteration without waiting for the last); order per partition is call order.

        Raises :class:`~binder.errors.BackendError` when the backend refuses a record or
        fails or cannot be reached, :class:`~binder.errors.ClosedError` after :meth:`close`.
        On failure some records may have been accepted (at least once: the caller resends
        all). Cancelling the call abandons only the wait: the records may still be written.
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
    """Reads one destination for one group (or anonymously); made by :meth:`Binder.consumer`.

    :meth:`fetch` is called by one task at a time; the other methods from any task of
    the same event loop.

    Every built-in consumer also has ``async def lag(self) -> dict[int, int]``: partition →
    messages of the group not yet committed, for the partitions it reads (end offset minus
    committed on the log and Kafka, pending + unread on Redis, ready + unacknowledged on
    RabbitMQ). The core reads it every few seconds while the binding serves, for
    ``streambinder_consumer_lag``; a consumer without it reports no lag.
    """

    async def fetch(self) -> list[InboundRecord]:
        """Block until at least one record is available; ``[]`` once closed (never
        :class:`~binder.errors.ClosedError`).

        Records of one partition come in offset order; a record is fetched again (by
        this or another member) only if it was not committed before its partition moved
        or its consumer died. Safe to cancel: a cancelled fetch loses no record (what it
        had taken is fetched again by the next call). While a rebalance is in progress
        it returns nothing of the partitions being moved. Raises
        :class:`~binder.errors.BackendError` when the backend fails or cannot be reached
        (the core then closes this consumer and opens a new one after a back-off).
        """

    async def commit(self, records: Sequence[InboundRecord]) -> None:
        """Acknowledge ``records``: they are never delivered to this group again.

        The core calls it only for records whose processing finished, in offset
        order per partition. Idempotent for records already committed. A binder
        may finish the acknowledgement in the background (coalescing later calls
        into one request), provided it is done before the partitions are given up
        in a rebalance and before :meth:`close` returns, and a failure is raised
        from a later call; a crash in between redelivers (at least once). Raises
        :class:`~binder.errors.BackendError` when the backend refused or failed (the
        core retries with back-off).
        """

    def pause(self) -> None:
        """Stop returning records from :meth:`fetch` (membership is kept, rebalances are
        still handled). Survives a reassignment: partitions assigned while paused stay
        paused until :meth:`resume`. Idempotent; does not block."""

    def resume(self) -> None:
        """Undo :meth:`pause`, waking a waiting :meth:`fetch`. Idempotent; does not block."""

    async def close(self) -> None:
        """Leave the group, after acknowledgements already accepted by :meth:`commit`
        are done, without committing anything more. Idempotent.

        Records fetched but not committed are redelivered to the group. A waiting
        :meth:`fetch` returns ``[]``.
        """


@dataclass(frozen=True, slots=True)
class GroupPosition:
    """Where a group is in one partition (for tools: ``binder groups``).

    ``committed`` is the next position the group reads (``None``: it never committed there);
    ``start`` the first position kept, ``end`` the next one written; ``lag`` what the group has
    not committed. Positions are offsets on the log and Kafka, entry ids on Redis; a binder
    that has no positions (RabbitMQ) gives ``None`` for them and only ``lag``."""

    committed: int | str | None
    start: int | str | None
    end: int | str | None
    lag: int | None


@runtime_checkable
class Binder(Protocol):
    """One configured backend connection: provisions destinations, makes clients.

    A binder is used from one event loop: the loop of the app that started it (every
    method, and the clients it makes, run there; a binder may keep loop-bound state).
    Methods other than :meth:`start` and :meth:`close` raise
    :class:`~binder.errors.ClosedError` once it is closed (until started again).

    A binder may have a ``messaging_system`` attribute: what tracing reports as
    ``messaging.system`` (``kafka``, ``redis``, ``rabbitmq``; the log's is
    ``streambinder``); without one it is the binder's name.

    For the operator's tools (``binder groups``, ``binder dlq``) a binder may also have:
    ``async groups(destination) -> list[str]`` (the groups it knows of the destination),
    ``async positions(destination, group) -> dict[int, GroupPosition]``,
    ``async members(destination, group) -> list[str]`` (the live members' names),
    ``async reset(destination, group, to) -> dict[int, position]``, which moves the group's
    committed position of every partition to ``to``: ``"earliest"``, ``"latest"``, a
    position, or a ``datetime`` (the first message at or after it), and returns the new
    positions (with ``dry_run=True`` only returns them), and
    ``async read(destination, partition, since, limit) -> (records, next)``: up to ``limit``
    records of one partition from the position ``since`` on (an offset: that record and later;
    an entry id: the entries after it), where ``since`` is a group's ``committed`` or a
    partition's ``end`` as :class:`GroupPosition` gives them, a position ``send_located`` gave,
    or a ``next`` this returned (``None``: from the first kept), taking and committing
    nothing, and the position to read on from (``binder dlq replay`` looks there for a copy it
    may have sent before it was killed). A tool says the binder cannot when one is missing.

    A binder with a ``clock``
    attribute (a :class:`binder.clock.Clock`) is given the app's before it starts, and
    goes by it for when delayed records are due.
    """

    name: str
    capabilities: Capabilities

    async def start(self) -> None:
        """Connect. Idempotent. Raises :class:`~binder.errors.BackendError` naming the
        server when it cannot be reached."""

    async def provision(
        self,
        destination: str,
        partition_count: int,
        required_groups: Sequence[str] = (),
        *,
        dead_letters_of: str | None = None,
        options: Any = None,
    ) -> int:
        """Make ``destination`` exist with at least ``partition_count`` partitions (and
        durable ``required_groups`` on it); return its real partition count. Idempotent.

        The count returned may be larger than asked (the destination was made elsewhere,
        or the binder creates destinations with more): the core places records over it.
        ``dead_letters_of`` names the destination whose dead letters ``destination``
        receives; a binder may create it to match (Kafka's ``dlq-partition-count: same``:
        as many partitions as that one, so each letter keeps its partition). ``options`` are
        the provisioning binding's binder-specific keys under ``producer:`` (validated by the
        binder type's ``binding_options``; ``None`` when none), e.g. how to declare the
        required groups' queues; a binder without such keys ignores it. Raises
        :class:`~binder.errors.ConfigError` when the destination cannot be what is asked
        (too few partitions and growing is off), :class:`~binder.errors.BackendError`
        when the backend fails.
        """

    async def producer(self, spec: ProducerSpec) -> Producer:
        """A producer for ``spec.destination``, which the core provisioned first (a binder
        may still make a missing one, as :meth:`provision` would with one partition).
        Raises :class:`~binder.errors.BackendError` when the backend fails."""

    async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> Consumer:
        """A consumer of ``spec.destination`` (made with the binder's default partitions if
        missing), the group starting as :class:`ConsumerSpec` says.

        Returns only once the subscription is live: every record sent after it returns
        reaches this consumer (anonymous) or its group. ``listener`` is called from
        within :meth:`Consumer.fetch` or the client's own tasks on this loop. Raises
        :class:`~binder.errors.BackendError` when the backend fails, cannot be reached or
        gives no assignment in time.
        """

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
        """The model of the binder's own keys under ``binder.binders.<name>``.

        A type may also have ``binding_options``: the model of the keys its bindings may set
        beside the core's under ``consumer:`` and ``producer:`` (RabbitMQ's ``queue-type``);
        they reach it as :attr:`ConsumerSpec.options` and :meth:`Binder.provision`'s
        ``options``. Without it such keys are unknown keys.

        And it may describe itself to ``binder docs asyncapi`` (each optional, given the
        binder's options): ``asyncapi_server(options)`` the AsyncAPI server object (else
        one from a ``url`` option), ``asyncapi_channel(options, destination, partitions)``
        a channel's ``bindings`` and ``asyncapi_receive(options, group)`` a receive
        operation's (both ``{}`` for none)."""

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

    @hookspec(firstresult=True)
    def binder_make_test_binder(self, name: str, entry: Any, broker: str) -> Binder | None:
        """An in-memory binder for ``app.test()``, standing in for the app's binder ``name``
        (``entry`` is its configuration: ``entry.type``, ``entry.options``), on the private
        in-memory broker called ``broker`` (made on first use; apps given the same name
        share its destinations and groups). ``None`` from a plugin that has none; the
        first answer is used (the built-in ``binders.log`` gives one)."""

    @hookspec
    def binder_drop_test_broker(self, broker: str) -> None:
        """Forget the in-memory broker ``broker`` made for a test (its destinations, groups
        and offsets); nothing when there is none. Idempotent."""
