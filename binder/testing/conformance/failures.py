"""Failures: a refused output send, a consumer that fails, a restart of the backend client.

The refusals and the consumer failure are injected at the SPI boundary by
:class:`Faults`, which wraps the real binder under test: the producer of one
destination refuses the records a predicate picks, or a consumer's fetch raises
once. Everything else (delivery, commits, dead letters, the new consumer) is the
real binder's, so the scenarios show what the core does with the failure on each
backend: a refused send is a failed attempt of its input message (retried, then
dead-lettered naming the send error) and the partition goes on and commits; a
consumer that fails is replaced by the binding's supervisor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from binder.bindings import BindingState, InputBinding
from binder.errors import BackendError
from binder.message import DELIVERY_ATTEMPT, EXCEPTION_MESSAGE, EXCEPTION_TYPE, Message
from binder.spi import (
    Binder,
    Consumer,
    ConsumerSpec,
    InboundRecord,
    OutboundRecord,
    Producer,
    ProducerSpec,
    RebalanceListener,
)
from binder.testing.conformance.support import (
    Conformance,
    Inbox,
    fetch_records,
    require,
    run,
)

__all__ = [
    "test_binding_restarts_after_its_consumer_failed",
    "test_messages_survive_a_restart_of_the_binder",
    "test_refused_output_send_is_retried_then_dead_lettered",
]

REFUSED = "refused by the conformance fault injector"


class Faults:
    """Wraps a binder: ``refuse(destination, record)`` picks sends to refuse, and the
    fetch of consumer number ``fail_fetch_of`` (1-based, per destination) raises once."""

    def __init__(
        self,
        refuse: Callable[[str, OutboundRecord], bool] = lambda destination, record: False,
        fail_fetch_of: dict[str, int] | None = None,
    ) -> None:
        self.refuse = refuse
        self.fail_fetch_of = dict(fail_fetch_of or {})
        self.opened: dict[str, int] = {}
        self.seen_on_reopen: list[tuple[BindingState, BaseException | None]] = []

    def wrap(self, binder: Binder) -> Binder:
        return _FaultyBinder(binder, self)


class _FaultyBinder:
    def __init__(self, inner: Binder, faults: Faults) -> None:
        self._inner, self._faults = inner, faults
        self.name, self.capabilities = inner.name, inner.capabilities

    def __getattr__(self, name: str) -> Any:  # start, provision, delete, close
        return getattr(self._inner, name)

    async def producer(self, spec: ProducerSpec) -> Producer:
        return _FaultyProducer(await self._inner.producer(spec), spec.destination, self._faults)

    async def consumer(self, spec: ConsumerSpec, listener: RebalanceListener) -> Consumer:
        faults = self._faults
        number = faults.opened[spec.destination] = faults.opened.get(spec.destination, 0) + 1
        if number > 1 and isinstance(listener, InputBinding):
            faults.seen_on_reopen.append((listener.state, listener.error))
        inner = await self._inner.consumer(spec, listener)
        failing = faults.fail_fetch_of.get(spec.destination) == number
        return _FailingConsumer(inner) if failing else inner


class _FaultyProducer:
    def __init__(self, inner: Producer, destination: str, faults: Faults) -> None:
        self._inner, self._destination, self._faults = inner, destination, faults

    async def send_batch(self, records: Sequence[OutboundRecord]) -> None:
        if any(self._faults.refuse(self._destination, record) for record in records):
            raise BackendError(f"{self._destination}: {REFUSED}")
        await self._inner.send_batch(records)

    async def close(self) -> None:
        await self._inner.close()


class _FailingConsumer:
    """Fetches once normally, then raises once, as a consumer whose backend went away."""

    def __init__(self, inner: Consumer) -> None:
        self._inner = inner
        self._fetches = 0

    async def fetch(self) -> list[InboundRecord]:
        self._fetches += 1
        if self._fetches == 2:
            raise BackendError("the consumer lost its backend (injected)")
        return await self._inner.fetch()

    def __getattr__(self, name: str) -> Any:  # commit, pause, resume, close
        return getattr(self._inner, name)


def test_refused_output_send_is_retried_then_dead_lettered(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    out = conformance.declare(f"{dest}-out", f"{group}-collect")
    dlq = conformance.dead_letters(dest, group)
    flaky_refusals = [1]

    def refuse(destination: str, record: OutboundRecord) -> bool:
        if destination != out:
            return False
        if b"flaky" in record.value and flaky_refusals[0]:
            flaky_refusals[0] -= 1
            return True
        return b"poison" in record.value

    faults = Faults(refuse)
    sent = [{"n": 1}, {"n": "flaky"}, {"n": "poison"}, {"n": 2}, {"n": "end"}]

    async def scenario() -> tuple[list[Any], list[Message[Any]], list[str], BindingState, Any]:
        for destination in (dest, out, dlq):
            await conformance.provision(destination, 1)
        app = conformance.app(
            {
                "relay-in-0": {
                    "destination": dest,
                    "group": group,
                    "consumer": {"max-attempts": 3, "back-off-initial-interval": 0.01},
                },
                "relay-out-0": {"destination": out},
                "collect-in-0": {"destination": out, "group": f"{group}-collect"},
                "inspect-in-0": {"destination": dlq, "group": f"{group}-inspect"},
            },
            wrap=faults.wrap,
        )
        collected: Inbox[Any] = Inbox()
        letters: Inbox[Message[Any]] = Inbox()
        attempts: list[str] = []

        @app.function
        async def relay(message: Message[dict[str, Any]]) -> dict[str, Any]:
            if message.payload["n"] == "poison":
                attempts.append(message.headers[DELIVERY_ATTEMPT])
            return message.payload

        @app.consumer
        async def collect(payload: dict[str, Any]) -> None:
            collected.add(payload["n"])

        @app.consumer
        async def inspect(message: Message[dict[str, Any]]) -> None:
            letters.add(message)

        async with app:
            for payload in sent:
                await app.send(dest, payload, key="one-key")
            await collected.wait_for("end")
            await letters.wait_count(1, f"the poison message's dead letter on {dlq}")
            state = app.binding("relay-in-0").state
        async with conformance.binder() as binder:  # the group committed past all of them
            await conformance.send_raw(binder, dest, [OutboundRecord(b'{"n": "witness"}')])
        after = await conformance.read_raw(dest, group, 1)
        return collected.items, letters.items, attempts, state, after[0].value

    collected, letters, attempts, state, after = run(scenario())
    assert [n for n in collected if n != "flaky"] == [1, 2, "end"], collected
    assert "flaky" in collected, "a send refused once is retried and goes through"
    assert attempts == ["1", "2", "3"], "a refused send is a failed attempt, retried in place"
    (letter,) = letters
    assert letter.payload == {"n": "poison"}
    assert letter.headers[EXCEPTION_TYPE] == "binder.errors.BackendError"
    assert REFUSED in letter.headers[EXCEPTION_MESSAGE]
    assert state is BindingState.RUNNING
    assert after == b'{"n": "witness"}', "every message before the witness was committed"


def test_binding_restarts_after_its_consumer_failed(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "consumer_groups")
    faults = Faults(fail_fetch_of={dest: 1})

    async def scenario() -> tuple[list[Any], InputBinding, list[Any]]:
        await conformance.provision(dest, 1)
        app = conformance.app(
            {"sink-in-0": {"destination": dest, "group": group}}, wrap=faults.wrap
        )
        inbox: Inbox[Any] = Inbox()

        @app.consumer
        async def sink(payload: Any) -> None:
            inbox.add(payload)

        async with app:
            await app.send(dest, {"n": 1})
            await inbox.wait_for({"n": 1})  # the first fetch; the second one fails
            await app.send(dest, {"n": 2})
            await inbox.wait_for({"n": 2})  # handled by the consumer that replaced it
            binding = app.binding("sink-in-0")
            assert isinstance(binding, InputBinding)
            return inbox.items, binding, list(faults.seen_on_reopen)

    items, binding, seen_on_reopen = run(scenario())
    assert items[0] == {"n": 1} and items[-1] == {"n": 2}
    assert binding.restarts == 1
    ((state, error),) = seen_on_reopen
    assert state is BindingState.FAILED, "a binding shows failed while it waits to restart"
    assert isinstance(error, BackendError) and "lost its backend" in str(error)


def test_messages_survive_a_restart_of_the_binder(
    conformance: Conformance, dest: str, group: str
) -> None:
    require(conformance.capabilities, "persistence", "consumer_groups")
    values = [b"first", b"second", b"third"]

    async def scenario() -> list[bytes]:
        await conformance.provision(dest, 1, [group])
        async with conformance.binder() as binder:
            await conformance.send_raw(binder, dest, [OutboundRecord(v) for v in values])
        async with conformance.binder() as binder:  # a new client: what it reads was kept
            consumer = await conformance.consumer(binder, dest, group)
            try:
                return [r.value for r in await fetch_records(consumer, len(values))]
            finally:
                await consumer.close()

    assert run(scenario()) == values
